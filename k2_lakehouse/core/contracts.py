"""Table contracts: the one place each table's columns are defined.

From one column list per table we derive the ClickHouse DDL (hot tier), the Arrow schema, the Iceberg
schema and partition spec (bronze), and the Pandera schema the checks validate against.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa

from k2_lakehouse.core.errors import ConfigError

# Iceberg's own integers are signed: UInt64 offsets and trade ids fit in a long for any real feed.
_ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "UInt64": pa.int64(),
    "UInt32": pa.int32(),
    "UInt8": pa.bool_(),
    "Date": pa.date32(),
    "DateTime('UTC')": pa.timestamp("us", tz="UTC"),
}

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Return `name` if it is a plain SQL identifier; identifiers cannot be bound as parameters."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(f"not a valid identifier: {name!r}")
    return name


@dataclass(frozen=True)
class Column:
    name: str
    clickhouse_type: str
    doc: str

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.clickhouse_type]


# Columns every hot table ends with: the event day and the feed position, set by the consumer.
_FEED_COLUMNS = (
    Column("trade_date", "Date", "UTC day of the trade (event) time, assigned by the feed consumer; "
           "the ingestion day when the message's own time is unreadable"),
    Column("kafka_partition", "UInt32", "feed partition the message was consumed from"),
    Column("kafka_offset", "UInt64", "feed offset within the partition (unit of exactly-once)"),
    Column("ingested_at", "DateTime('UTC')", "when the consumer wrote the message into the hot tier"),
)


@dataclass(frozen=True)
class HotTable:
    """A hot-tier table in one exchange's own message shape, and its exact-copy bronze table."""

    exchange: str
    columns: tuple[Column, ...]

    @property
    def name(self) -> str:
        return f"bronze_trades_{self.exchange}"

    @property
    def bronze_identifier(self) -> tuple[str, str]:
        return ("bronze", f"trades_{self.exchange}")

    @property
    def asset_path(self) -> list[str]:
        return list(self.bronze_identifier)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self, database: str) -> str:
        cols = ",\n  ".join(f"{c.name} {c.clickhouse_type}" for c in self.columns)
        # Runs unchanged on ClickHouse 18.16 and current releases: no DateTime64, Map, JSON, Bool, codecs.
        return (
            f"CREATE TABLE IF NOT EXISTS {validate_identifier(database)}.{self.name} (\n  {cols}\n)\n"
            "ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(trade_date)\n"
            "ORDER BY (kafka_partition, kafka_offset)"
        )

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.arrow_type, nullable=False) for c in self.columns])

    @cached_property
    def iceberg_schema(self):  # -> pyiceberg.schema.Schema
        from pyiceberg.io.pyarrow import pyarrow_to_schema
        from pyiceberg.table.name_mapping import MappedField, NameMapping

        mapping = NameMapping([MappedField(field_id=i, names=[c.name]) for i, c in enumerate(self.columns, 1)])
        return pyarrow_to_schema(self.arrow_schema, name_mapping=mapping)

    @cached_property
    def partition_spec(self):  # -> pyiceberg.partitioning.PartitionSpec
        from pyiceberg.partitioning import PartitionField, PartitionSpec
        from pyiceberg.transforms import DayTransform

        source = self.iceberg_schema.find_field("trade_date").field_id
        return PartitionSpec(PartitionField(source_id=source, field_id=1000, transform=DayTransform(), name="trade_day"))

    @property
    def sort_columns(self) -> list[str]:
        """Rows are written sorted by symbol then trade id (time order): neighbours share prices, so zstd packs them."""
        return [self.columns[i].name for i in self._sort_index]

    @property
    def _sort_index(self) -> tuple[int, ...]:
        names = self.column_names
        return tuple(names.index(n) for n in _SORT_KEYS[self.exchange])

    def pandera_schema(self, day: dt.date | None = None):
        """The Pandera contract of a bronze partition `day` (pandas flavour, validated batch by batch)."""
        import pandera.pandas as pa_

        def col(c: Column) -> pa_.Column:
            checks = []
            if c.name == "trade_date" and day is not None:
                checks.append(pa_.Check(lambda s: s == day, error=f"trade_date must equal the partition day {day}"))
            if c.clickhouse_type.startswith("UInt"):
                checks.append(pa_.Check.ge(0))
            return pa_.Column(_PANDAS_DTYPES[c.clickhouse_type], checks=checks, nullable=False, description=c.doc)

        return pa_.DataFrameSchema(
            {c.name: col(c) for c in self.columns},
            unique=["kafka_partition", "kafka_offset"],
            strict=True,
            name=".".join(self.bronze_identifier),
        )


_PANDAS_DTYPES = {
    "String": object,
    "UInt64": "int64",
    "UInt32": "int32",
    "UInt8": "bool",
    "Date": object,  # datetime.date objects
    "DateTime('UTC')": "datetime64[us, UTC]",
}

# Trade ids rise with trade time within a symbol on both exchanges: the same order as (symbol, time), cheaper
# to sort than Kraken's time strings, and the trade identity silver de-duplicates on.
_SORT_KEYS = {
    "binance": ("symbol", "trade_id"),
    "kraken": ("pair", "trade_id"),
}

BINANCE = HotTable(
    exchange="binance",
    columns=(
        Column("event_type", "String", "e: always 'trade'"),
        Column("event_time", "UInt64", "E: event time, epoch milliseconds"),
        Column("symbol", "String", "s: exchange symbol, e.g. BTCUSDT"),
        Column("trade_id", "UInt64", "t: trade id"),
        Column("price", "String", "p: price as the exchange sent it (exact decimal string)"),
        Column("quantity", "String", "q: quantity as sent"),
        Column("trade_time", "UInt64", "T: trade time, epoch milliseconds"),
        Column("is_buyer_maker", "UInt8", "m: the buyer is the maker (the aggressor sold)"),
        Column("is_best_match", "UInt8", "M: ignore-able flag Binance sends"),
        *_FEED_COLUMNS,
    ),
)

KRAKEN = HotTable(
    exchange="kraken",
    columns=(
        Column("channel_id", "UInt64", "WebSocket v1 channel id"),
        Column("pair", "String", "pair as sent, e.g. XBT/USD"),
        Column("price", "String", "price as sent (exact decimal string)"),
        Column("volume", "String", "volume as sent"),
        Column("time", "String", "trade time as sent: 'seconds.micros'"),
        Column("side", "String", "'b' buy or 's' sell (aggressor)"),
        Column("order_type", "String", "'l' limit or 'm' market"),
        Column("misc", "String", "miscellaneous field as sent"),
        Column("trade_id", "UInt64", "v2 integer trade id"),
        *_FEED_COLUMNS,
    ),
)

HOT_TABLES: dict[str, HotTable] = {t.exchange: t for t in (BINANCE, KRAKEN)}
EXCHANGES = tuple(HOT_TABLES)


def hot_table(exchange: str) -> HotTable:
    try:
        return HOT_TABLES[exchange]
    except KeyError:
        raise ConfigError(f"unknown exchange {exchange!r}; known: {', '.join(EXCHANGES)}") from None
