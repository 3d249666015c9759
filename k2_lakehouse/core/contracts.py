"""Table contracts: the one place each of the nine tables (and the two hot tables) is defined.

A contract is engine-neutral: columns with Arrow types, the day partition, the sort order, the key
that must be unique within a day, and value rules. Everything else is derived from it: the Iceberg
schema, partition spec and sort order, the Pandera schema the checks validate, the column schema the
Dagster UI shows, and, for the two hot tables, the ClickHouse DDL (a binding of the bronze contract).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path

import pyarrow as pa

from k2_lakehouse.core.errors import ConfigError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
PRICE = pa.decimal128(18, 8)  # exchange prices and quantities: 10 integer digits, 8 decimals, exact
VOLUME = pa.decimal128(38, 8)  # sums of quantities
QUOTE = pa.decimal128(38, 16)  # price x quantity, exact, and its sums
MICROS_UTC = pa.timestamp("us", tz="UTC")


def validate_identifier(name: str) -> str:
    """Return `name` if it is a plain SQL identifier; identifiers cannot be bound as parameters."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(f"not a valid identifier: {name!r}")
    return name


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False
    gt: int | None = None  # value rules, checked by the Pandera contract
    ge: int | None = None
    isin: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.name)  # column names reach SQL text (SELECT lists, DDL, GROUP BY)


@dataclass(frozen=True)
class TableContract:
    namespace: str
    name: str
    doc: str
    columns: tuple[Column, ...]
    day_column: str  # partition: day(day_column), one UTC day of trade time on every layer
    sort_columns: tuple[str, ...]
    unique: tuple[str, ...]  # unique within a day partition
    non_decreasing: tuple[tuple[str, ...], ...] = ()  # e.g. (low, open, high): low <= open <= high on every row
    properties: dict[str, str] = field(default_factory=dict)  # extra Iceberg table properties

    def __post_init__(self) -> None:
        for name in (self.namespace, self.name, self.day_column, *self.sort_columns, *self.unique):
            validate_identifier(name)  # every name of a contract may reach SQL text

    @property
    def identifier(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def asset_path(self) -> list[str]:
        return list(self.identifier)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

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

        source = self.iceberg_schema.find_field(self.day_column).field_id
        return PartitionSpec(PartitionField(source_id=source, field_id=1000, transform=DayTransform(), name="trade_day"))

    @cached_property
    def sort_order(self):  # -> pyiceberg.table.sorting.SortOrder
        from pyiceberg.table.sorting import SortField, SortOrder
        from pyiceberg.transforms import IdentityTransform

        schema = self.iceberg_schema
        return SortOrder(*(SortField(source_id=schema.find_field(n).field_id, transform=IdentityTransform()) for n in self.sort_columns))

    def day_bounds(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        start = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
        return start, start + dt.timedelta(days=1)

    def pandera_schema(self, day: dt.date | None = None):
        """The Pandera contract of one day partition, over Arrow-backed pandas frames (no Python objects per value).

        Uniqueness of `unique` is a property of the whole partition, so it is checked over the whole
        partition (`quality.validate_partition`), not by this per-batch schema.
        """
        import pandas as pd
        import pandera.pandas as pa_

        def col(c: Column) -> pa_.Column:
            checks = []
            if c.gt is not None:
                checks.append(pa_.Check.gt(c.gt))
            if c.ge is not None:
                checks.append(pa_.Check.ge(c.ge))
            if c.isin is not None:
                checks.append(pa_.Check.isin(list(c.isin)))
            if c.name == self.day_column and day is not None:
                checks.append(_on_day(c, day, *self.day_bounds(day)))
            return pa_.Column(pd.ArrowDtype(c.type), checks=checks, nullable=c.nullable, description=c.doc)

        return pa_.DataFrameSchema(
            {c.name: col(c) for c in self.columns},
            checks=[_non_decreasing(names) for names in self.non_decreasing],
            strict=True,
            name=self.qualified_name,
            description=self.doc,
        )


def _on_day(c: Column, day: dt.date, start: dt.datetime, end: dt.datetime):
    import pandera.pandas as pa_

    if pa.types.is_date(c.type):
        return pa_.Check(lambda s: s == day, error=f"{c.name} must equal the partition day {day}")
    return pa_.Check(lambda s: (s >= start) & (s < end), error=f"{c.name} must fall on the partition day {day}")


def _non_decreasing(names: tuple[str, ...]):
    import pandera.pandas as pa_

    def rule(frame):
        ok = frame[names[0]] == frame[names[0]]
        for lo, hi in zip(names, names[1:]):
            ok &= frame[lo] <= frame[hi]
        return ok

    return pa_.Check(rule, name=" <= ".join(names), error=f"{' <= '.join(names)} must hold on every row")


# --- hot tier and bronze ---------------------------------------------------------------------------

# The hot tier stores ids, times, offsets and counts unsigned; Iceberg's integers are signed, and
# every real id, time and offset fits a long. One binding, from the contract's types to ClickHouse's.
_CLICKHOUSE_TYPES = {
    pa.string(): "String",
    pa.int64(): "UInt64",
    pa.int32(): "UInt32",
    pa.bool_(): "UInt8",
    pa.date32(): "Date",
    MICROS_UTC: "DateTime('UTC')",
}

# Columns every hot table ends with: the event day and the feed position, set by the consumer.
_FEED_COLUMNS = (
    Column("trade_date", pa.date32(), "UTC day of the trade (event) time; when the message's own time is "
           "unreadable, the day of the feed record's timestamp (identical on every redelivery)"),
    Column("kafka_partition", pa.int32(), "feed partition the message was consumed from", ge=0),
    Column("kafka_offset", pa.int64(), "feed offset within the partition (unit of exactly-once)", ge=0),
    Column("kafka_timestamp", pa.int64(), "feed record timestamp, epoch milliseconds: set when the record "
           "was produced, identical on every redelivery", ge=0),
    Column("ingested_at", MICROS_UTC, "when the consumer wrote the message into the hot tier"),
)

# Trade ids rise with trade time within a symbol on both exchanges: the same order as (symbol, time),
# cheaper to sort than Kraken's time strings, and the trade identity silver de-duplicates on.
_BRONZE_UNIQUE = ("kafka_partition", "kafka_offset")

# Text that is not UTF-8. A ClickHouse String is bytes, but Arrow's and Iceberg's `string` is UTF-8 text, so a
# hot value that is not UTF-8 cannot be copied to bronze as it is. It is kept, reversibly, as this prefix plus
# the hex of its bytes (a U+FFFD REPLACEMENT CHARACTER first, as any reader would show the bad bytes); a UTF-8
# value that itself starts with the prefix is escaped too, so `text_bytes` always gives back the exact bytes
# the hot tier holds. Every other value is copied unchanged. (Bronze columns of type binary would hold the
# bytes directly but would make every reader decode every value of every row for a fault real feeds,
# being JSON over WebSocket text frames, almost never have.)
UNDECODABLE_PREFIX = "\ufffdk2:hex:"


def text_value(raw: bytes) -> str:
    """A hot-tier String value as bronze holds it: the text itself, or `UNDECODABLE_PREFIX` + hex when it is
    not UTF-8 (or starts with the prefix)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return UNDECODABLE_PREFIX + raw.hex()
    return UNDECODABLE_PREFIX + raw.hex() if text.startswith(UNDECODABLE_PREFIX) else text


def text_bytes(value: str) -> bytes:
    """The exact bytes of the hot-tier value a bronze text value holds (the inverse of `text_value`)."""
    if value.startswith(UNDECODABLE_PREFIX):
        return bytes.fromhex(value[len(UNDECODABLE_PREFIX):])
    return value.encode("utf-8")


def _bronze(exchange: str, doc: str, columns: tuple[Column, ...], symbol_column: str) -> TableContract:
    return TableContract(
        namespace="bronze", name=f"trades_{exchange}", doc=doc, columns=(*columns, *_FEED_COLUMNS),
        day_column="trade_date", sort_columns=(symbol_column, "trade_id"), unique=_BRONZE_UNIQUE,
    )


@dataclass(frozen=True)
class HotTable:
    """A hot-tier table in one exchange's own message shape: the ClickHouse binding of its bronze contract."""

    exchange: str
    bronze: TableContract
    symbol_column: str  # where the exchange's symbol is, as sent
    # Columns the hot table gained beyond the contract (ALTER TABLE ... ADD COLUMN), found at the start of an
    # offload (`drift.hot_shape`) and copied to bronze too, which stays an exact copy; () on the contract itself.
    extra_columns: tuple[Column, ...] = ()

    def __post_init__(self) -> None:
        validate_identifier(self.name)  # the hot table's name reaches every hot-tier SQL text
        validate_identifier(self.symbol_column)

    @property
    def name(self) -> str:
        return f"bronze_trades_{self.exchange}"

    @property
    def columns(self) -> tuple[Column, ...]:
        return (*self.bronze.columns, *self.extra_columns)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def arrow_schema(self) -> pa.Schema:
        if not self.extra_columns:
            return self.bronze.arrow_schema
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    @property
    def bronze_identifier(self) -> tuple[str, str]:
        return self.bronze.identifier

    @property
    def asset_path(self) -> list[str]:
        return self.bronze.asset_path

    @property
    def sort_columns(self) -> list[str]:
        return list(self.bronze.sort_columns)

    @property
    def hot_asset_path(self) -> list[str]:
        """The hot table itself as an (external) asset, upstream of its bronze asset: hot/trades_<exchange>, named
        like its bronze copy (the ClickHouse table name is in the asset's metadata)."""
        return ["hot", self.bronze.name]

    def clickhouse_type(self, column: Column) -> str:
        return _CLICKHOUSE_TYPES[column.type]

    def ddl(self, database: str) -> str:
        cols = ",\n  ".join(f"{c.name} {self.clickhouse_type(c)}" for c in self.columns)
        # Runs unchanged on ClickHouse 18.16 and current releases: no DateTime64, Map, JSON, Bool, codecs.
        return (
            f"CREATE TABLE IF NOT EXISTS {validate_identifier(database)}.{self.name} (\n  {cols}\n)\n"
            "ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(trade_date)\n"
            "ORDER BY (kafka_partition, kafka_offset)"
        )


BINANCE = HotTable(
    exchange="binance",
    symbol_column="symbol",
    bronze=_bronze("binance", "Exact copy of the Binance trade stream as it reached the hot tier, one row per feed position.", (
        Column("event_type", pa.string(), "e: always 'trade'"),
        Column("event_time", pa.int64(), "E: event time, epoch milliseconds", ge=0),
        Column("symbol", pa.string(), "s: exchange symbol, e.g. BTCUSDT"),
        Column("trade_id", pa.int64(), "t: trade id", ge=0),
        Column("price", pa.string(), "p: price as the exchange sent it (exact decimal string)"),
        Column("quantity", pa.string(), "q: quantity as sent"),
        Column("trade_time", pa.int64(), "T: trade time, epoch milliseconds", ge=0),
        Column("is_buyer_maker", pa.bool_(), "m: the buyer is the maker (the aggressor sold)"),
        Column("is_best_match", pa.bool_(), "M: ignore-able flag Binance sends"),
    ), "symbol"),
)

KRAKEN = HotTable(
    exchange="kraken",
    symbol_column="pair",
    bronze=_bronze("kraken", "Exact copy of the Kraken trade feed as it reached the hot tier, one row per feed position.", (
        Column("channel_id", pa.int64(), "WebSocket v1 channel id", ge=0),
        Column("pair", pa.string(), "pair as sent, e.g. XBT/USD"),
        Column("price", pa.string(), "price as sent (exact decimal string)"),
        Column("volume", pa.string(), "volume as sent"),
        Column("time", pa.string(), "trade time as sent: 'seconds.micros'"),
        Column("side", pa.string(), "'b' buy or 's' sell (aggressor)"),
        Column("order_type", pa.string(), "'l' limit or 'm' market"),
        Column("misc", pa.string(), "miscellaneous field as sent"),
        Column("trade_id", pa.int64(), "v2 integer trade id", ge=0),
    ), "pair"),
)

HOT_TABLES: dict[str, HotTable] = {t.exchange: t for t in (BINANCE, KRAKEN)}
EXCHANGES = tuple(HOT_TABLES)


def hot_table(exchange: str) -> HotTable:
    try:
        return HOT_TABLES[exchange]
    except KeyError:
        raise ConfigError(f"unknown exchange {exchange!r}; known: {', '.join(EXCHANGES)}") from None


# --- symbols ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SymbolMapping:
    exchange: str
    exchange_symbol: str  # as the exchange sends it: BTCUSDT, XBT/USD
    symbol: str  # canonical BASE/QUOTE: BTC/USDT, BTC/USD


@cache
def symbol_map() -> tuple[SymbolMapping, ...]:
    """The one symbol map (data in `symbols.csv`): exchange symbol -> canonical symbol."""
    with (Path(__file__).with_name("symbols.csv")).open(newline="") as f:
        return tuple(SymbolMapping(**row) for row in csv.DictReader(f))


def canonical_symbols() -> tuple[str, ...]:
    return tuple(sorted({m.symbol for m in symbol_map()}))


# --- silver ----------------------------------------------------------------------------------------

# Why a row is rejected, in the order they are tested (the first that applies is recorded).
REJECT_REASONS = (
    "oversized_message",  # its text fields hold more than MAX_MESSAGE_TEXT characters together
    "invalid_utf8",  # a text field is not UTF-8 (bronze holds it escaped: UNDECODABLE_PREFIX)
    "malformed_message",  # the message's shape is wrong (event type, side flag)
    "unknown_symbol",  # not in symbols.csv, compared exactly: `btcusdt` is not Binance's `BTCUSDT`
    "missing_trade_time",
    "unparseable_trade_time",
    "implausible_trade_time",  # readable, but too far from when the feed record was produced (1970, 9999, ...)
    "trade_time_outside_day",
    "non_numeric_price",
    "price_out_of_range",  # a number, but more than 10 integer digits or 8 decimals: beyond decimal(18,8)
    "non_numeric_quantity",
    "quantity_out_of_range",
    "non_positive_price",
    "non_positive_quantity",
    "conflicting_duplicate",  # a later feed position of a trade identity silver holds, with other content
)
# A message's trade time is plausible within [record timestamp - MAX_LATE, record timestamp + MAX_AHEAD]: a
# trade reaches the feed after it happened (late trades by days at most), never long before (clock skew).
# The consumer dates a message by its trade time only when plausible, else by the record timestamp (as an
# unreadable time), so a trade time in 1970 or 9999 neither breaks ClickHouse's Date nor lands in a day no
# run ever builds; silver rejects it as `implausible_trade_time` in the day it was delivered.
TRADE_TIME_MAX_LATE_US = 7 * 86_400_000_000
TRADE_TIME_MAX_AHEAD_US = 3_600_000_000
MAX_MESSAGE_TEXT = 4096  # characters in all text fields of one message (real ones hold under 100)

SILVER_TRADES = TableContract(
    namespace="silver", name="trades",
    doc="Trades of every exchange in one schema: canonical symbols, exact decimals, one row per trade identity "
        "(exchange, symbol, trade_id); an exchange replay keeps its earliest feed position.",
    columns=(
        Column("exchange", pa.string(), "exchange the trade happened on", isin=EXCHANGES),
        Column("symbol", pa.string(), "canonical symbol BASE/QUOTE, e.g. BTC/USDT, BTC/USD", isin=canonical_symbols()),
        Column("exchange_symbol", pa.string(), "symbol as the exchange sent it, e.g. BTCUSDT, XBT/USD"),
        Column("trade_id", pa.int64(), "the exchange's trade id", ge=0),
        Column("price", PRICE, "trade price, exact", gt=0),
        Column("quantity", PRICE, "traded quantity of the base asset, exact", gt=0),
        Column("quote_volume", QUOTE, "price x quantity, exact", gt=0),
        Column("side", pa.string(), "aggressor side", isin=("buy", "sell")),
        Column("trade_ts", MICROS_UTC, "trade (event) time, UTC, microseconds"),
        Column("kafka_partition", pa.int32(), "feed position: partition", ge=0),
        Column("kafka_offset", pa.int64(), "feed position: offset (the earliest of the trade's deliveries)", ge=0),
    ),
    day_column="trade_ts",
    sort_columns=("exchange", "symbol", "trade_ts", "trade_id"),
    unique=("exchange", "symbol", "trade_id"),
)

SILVER_REJECTED = TableContract(
    namespace="silver", name="trades_rejected",
    doc="Bronze rows that failed validation, with the reason and their raw values: nothing is dropped silently.",
    columns=(
        Column("exchange", pa.string(), "exchange (feed) the message came from", isin=EXCHANGES),
        Column("kafka_partition", pa.int32(), "feed position: partition", ge=0),
        Column("kafka_offset", pa.int64(), "feed position: offset", ge=0),
        Column("trade_date", pa.date32(), "the bronze day partition the row was read from"),
        Column("reason", pa.string(), "why the row was rejected (machine-readable)", isin=REJECT_REASONS),
        Column("raw_symbol", pa.string(), "symbol as sent", nullable=True),
        Column("raw_trade_id", pa.string(), "trade id as sent", nullable=True),
        Column("raw_price", pa.string(), "price as sent", nullable=True),
        Column("raw_quantity", pa.string(), "quantity as sent", nullable=True),
        Column("raw_time", pa.string(), "trade time as sent (Binance: epoch ms; Kraken: 'seconds.micros')", nullable=True),
        Column("raw_side", pa.string(), "side as sent (Binance: is_buyer_maker; Kraken: b/s)", nullable=True),
    ),
    day_column="trade_date",
    sort_columns=("exchange", "kafka_partition", "kafka_offset"),
    unique=("exchange", "kafka_partition", "kafka_offset"),
)


# --- gold ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    name: str  # 1m, 5m, ...
    seconds: int

    @property
    def micros(self) -> int:
        return self.seconds * 1_000_000


INTERVALS = tuple(Interval(n, s) for n, s in (("1m", 60), ("5m", 300), ("15m", 900), ("30m", 1800), ("1h", 3600), ("1d", 86400)))


def ohlcv_contract(interval: Interval) -> TableContract:
    return TableContract(
        namespace="gold", name=f"ohlcv_{interval.name}",
        doc=f"{interval.name} OHLCV bars per exchange and canonical symbol, from silver trades; open and close are "
            "the first and last trade by (trade time, trade id).",
        columns=(
            Column("exchange", pa.string(), "exchange", isin=EXCHANGES),
            Column("symbol", pa.string(), "canonical symbol", isin=canonical_symbols()),
            Column("window_start", MICROS_UTC, f"start of the {interval.name} window, UTC"),
            Column("open", PRICE, "price of the first trade by (trade time, trade id)", gt=0),
            Column("high", PRICE, "highest price", gt=0),
            Column("low", PRICE, "lowest price", gt=0),
            Column("close", PRICE, "price of the last trade by (trade time, trade id)", gt=0),
            Column("volume", VOLUME, "sum of quantities, exact", gt=0),
            Column("quote_volume", QUOTE, "sum of price x quantity, exact", gt=0),
            Column("vwap", PRICE, "quote_volume / volume, rounded half-even to 8 decimals", gt=0),
            Column("trade_count", pa.int64(), "number of trades", gt=0),
        ),
        day_column="window_start",
        sort_columns=("exchange", "symbol", "window_start"),
        unique=("exchange", "symbol", "window_start"),
        non_decreasing=(("low", "open", "high"), ("low", "close", "high"), ("low", "vwap", "high")),
    )


GOLD_TABLES: dict[str, TableContract] = {i.name: ohlcv_contract(i) for i in INTERVALS}

# Every Iceberg table of the lakehouse, in dependency order.
TABLES: tuple[TableContract, ...] = (
    *(t.bronze for t in HOT_TABLES.values()), SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values(),
)


# --- column lineage --------------------------------------------------------------------------------
# Where every column of a derived table comes from, as (upstream table, upstream column) pairs: declared once,
# here beside the contracts, read off the SQL texts in `sql/` (the Dagster shell shows it as column lineage;
# `k2_lakehouse_tests/core/test_lineage.py` checks that every column has an entry and every source exists).

Upstream = TableContract | HotTable


@dataclass(frozen=True)
class ColumnSource:
    table: Upstream
    column: str


def _from(table: Upstream, *columns: str) -> tuple[ColumnSource, ...]:
    return tuple(ColumnSource(table, c) for c in columns)


def _per_exchange(binance: tuple[str, ...], kraken: tuple[str, ...]) -> tuple[ColumnSource, ...]:
    return (*_from(BINANCE.bronze, *binance), *_from(KRAKEN.bronze, *kraken))


# `exchange` in silver is the constant of the bronze table a row was read from ('binance' or 'kraken',
# silver_normalized.sql): no column feeds it, so its sources are empty.
_SILVER_COMMON: dict[str, tuple[ColumnSource, ...]] = {
    "exchange": (),
    "kafka_partition": _per_exchange(("kafka_partition",), ("kafka_partition",)),
    "kafka_offset": _per_exchange(("kafka_offset",), ("kafka_offset",)),
}

_LINEAGE: dict[str, dict[str, tuple[ColumnSource, ...]]] = {
    SILVER_TRADES.qualified_name: {
        **_SILVER_COMMON,
        "symbol": _per_exchange(("symbol",), ("pair",)),  # through the symbol map (symbols.csv)
        "exchange_symbol": _per_exchange(("symbol",), ("pair",)),
        "trade_id": _per_exchange(("trade_id",), ("trade_id",)),
        "price": _per_exchange(("price",), ("price",)),
        "quantity": _per_exchange(("quantity",), ("volume",)),
        "quote_volume": _per_exchange(("price", "quantity"), ("price", "volume")),
        "side": _per_exchange(("is_buyer_maker",), ("side",)),
        "trade_ts": _per_exchange(("trade_time",), ("time",)),
    },
    SILVER_REJECTED.qualified_name: {
        **_SILVER_COMMON,
        "trade_date": _per_exchange(("trade_date",), ("trade_date",)),
        # the first failing rule: message shape, symbol, trade time, price, quantity (silver_normalized.sql)
        "reason": _per_exchange(("event_type", "symbol", "trade_time", "price", "quantity", "kafka_timestamp", "trade_id"),
                                ("side", "pair", "time", "price", "volume", "order_type", "misc", "kafka_timestamp",
                                 "trade_id")),
        "raw_symbol": _per_exchange(("symbol",), ("pair",)),
        "raw_trade_id": _per_exchange(("trade_id",), ("trade_id",)),
        "raw_price": _per_exchange(("price",), ("price",)),
        "raw_quantity": _per_exchange(("quantity",), ("volume",)),
        "raw_time": _per_exchange(("trade_time",), ("time",)),
        "raw_side": _per_exchange(("is_buyer_maker",), ("side",)),
    },
}

# Every interval's bars are a function of the silver trades (gold_bars_from_trades.sql); coarser intervals
# are computed from the finer bars (gold_bars_from_bars.sql), which is the same function of the same silver
# columns (the `agrees_with_finer` check holds it to that), so each gold table's sources are silver's.
_GOLD_LINEAGE: dict[str, tuple[ColumnSource, ...]] = {
    "exchange": _from(SILVER_TRADES, "exchange"),
    "symbol": _from(SILVER_TRADES, "symbol"),
    "window_start": _from(SILVER_TRADES, "trade_ts"),
    "open": _from(SILVER_TRADES, "price", "trade_ts", "trade_id"),  # first trade by (trade_ts, trade_id)
    "high": _from(SILVER_TRADES, "price"),
    "low": _from(SILVER_TRADES, "price"),
    "close": _from(SILVER_TRADES, "price", "trade_ts", "trade_id"),  # last trade by (trade_ts, trade_id)
    "volume": _from(SILVER_TRADES, "quantity"),
    "quote_volume": _from(SILVER_TRADES, "quote_volume"),
    "vwap": _from(SILVER_TRADES, "quote_volume", "quantity"),  # sum(quote_volume) / sum(quantity)
    "trade_count": _from(SILVER_TRADES, "trade_id"),  # one silver row per trade identity
}
_LINEAGE.update({c.qualified_name: _GOLD_LINEAGE for c in GOLD_TABLES.values()})


def lineage(contract: TableContract) -> dict[str, tuple[ColumnSource, ...]]:
    """Column -> the upstream columns it is computed from. Bronze is an exact copy of its hot table."""
    for hot in HOT_TABLES.values():
        if contract is hot.bronze:
            return {c: _from(hot, c) for c in hot.column_names}
    return _LINEAGE.get(contract.qualified_name, {})
