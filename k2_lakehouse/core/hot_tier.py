"""The hot tier: ClickHouse over the native protocol (clickhouse-driver).

Values always travel as bound parameters or as column data, never pasted into SQL text; the only names
in SQL text are validated identifiers from the table contracts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import clickhouse_driver
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_driver.errors import Error as ClickHouseError

from k2_lakehouse.core.contracts import HOT_TABLES, UNDECODABLE_PREFIX, HotTable, text_value, validate_identifier
from k2_lakehouse.core.errors import HotTierUnavailable
from k2_lakehouse.core.settings import ClickHouseAddress, Settings

# 18.16 with clickhouse-driver 0.2.11 can hang on some statements: never wait forever.
_TIMEOUTS = {"connect_timeout": 5, "send_receive_timeout": 300, "sync_request_timeout": 5}


def connect(settings: Settings, *, database: str | None = None, write: bool = False) -> clickhouse_driver.Client:
    """A client for the hot tier; `database=""` connects without selecting the k2 database. `write`: the
    writer's client (K2_CLICKHOUSE_WRITER_URL), for what changes the hot tier (feed inserts, DDL, retention
    deletes); otherwise the read-only user's (K2_CLICKHOUSE_URL: reads and per-query settings only)."""
    addr: ClickHouseAddress = settings.clickhouse_writer if write else settings.clickhouse
    return clickhouse_driver.Client(
        host=addr.host,
        port=addr.port,
        user=addr.user,
        password=addr.password,
        database=addr.database if database is None else database,
        settings={"use_numpy": True},
        **_TIMEOUTS,
    )


@contextmanager
def hot_tier_errors(settings: Settings) -> Iterator[None]:
    """Turn connection failures into one clear error that names the server."""
    try:
        yield
    except (ClickHouseError, OSError, EOFError) as exc:
        addr = settings.clickhouse
        raise HotTierUnavailable(
            f"ClickHouse at {addr.host}:{addr.port} is unreachable or failed ({type(exc).__name__}: {exc}); "
            "is it running? (`k2 services status`)"
        ) from exc


def create_hot_tables(client: clickhouse_driver.Client, database: str) -> None:
    client.execute(f"CREATE DATABASE IF NOT EXISTS {validate_identifier(database)}")
    for table in HOT_TABLES.values():
        client.execute(table.ddl(database))


def table_columns(client: clickhouse_driver.Client, table: HotTable) -> list[tuple[str, str]]:
    """The hot table's columns as ClickHouse holds them now, (name, type) in table order: what schema drift
    (`drift.hot_shape`) compares with the contract. `system.columns` reads the same on 18.16 and current releases."""
    rows = client.execute(
        "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = %(table)s",
        {"table": table.name},
        settings={"use_numpy": False},
    )
    return [(str(name), str(type_)) for name, type_ in rows]


Watermark = dict[int, int]  # {kafka_partition: highest offset}

# Reads that decide what to copy (high offsets) or copy it (range streams): on a replicated hot table, a
# replica that lags would show a high offset without every row below it, and the watermark would then pass
# rows never copied. Sequential consistency refuses a replica missing a quorum-acknowledged insert (the writer
# inserts with insert_quorum, README "Hot-tier writer"); a plain MergeTree (18.16 and current) ignores it.
CONSISTENT_READ = {"select_sequential_consistency": 1}


def high_offsets(client: clickhouse_driver.Client, table: HotTable, day: dt.date) -> Watermark:
    """The hot tier's current highest offset per feed partition for one trade day."""
    rows = client.execute(
        f"SELECT kafka_partition, max(kafka_offset) FROM {table.name} "
        "WHERE trade_date = %(day)s GROUP BY kafka_partition",
        {"day": day},
        settings={"use_numpy": False, **CONSISTENT_READ},
    )
    return {int(p): int(o) for p, o in rows}


def high_offsets_by_day(client: clickhouse_driver.Client, table: HotTable) -> dict[dt.date, Watermark]:
    """Every trade day in the hot tier with its highest offset per feed partition."""
    rows = client.execute(
        f"SELECT trade_date, kafka_partition, max(kafka_offset) FROM {table.name} GROUP BY trade_date, kafka_partition",
        settings={"use_numpy": False, **CONSISTENT_READ},
    )
    days: dict[dt.date, Watermark] = {}
    for day, partition, offset in rows:
        days.setdefault(day, {})[int(partition)] = int(offset)
    return dict(sorted(days.items()))


@dataclass(frozen=True)
class OffsetRange:
    """Offsets `lo < offset <= hi` of one feed partition."""

    partition: int
    lo: int  # exclusive: the watermark, -1 when nothing was copied yet
    hi: int  # inclusive

    def split(self, size: int) -> Iterator[OffsetRange]:
        lo = self.lo
        while lo < self.hi:
            hi = min(lo + size, self.hi)
            yield OffsetRange(self.partition, lo, hi)
            lo = hi


def missing_ranges(watermark: Watermark, high: Watermark) -> list[OffsetRange]:
    """Per partition, the offsets above the watermark and up to the hot tier's high offset."""
    return [
        OffsetRange(p, watermark.get(p, -1), hi) for p, hi in sorted(high.items()) if hi > watermark.get(p, -1)
    ]


def stream_range(
    client: clickhouse_driver.Client, table: HotTable, day: dt.date, rng: OffsetRange, *, block_rows: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """One offset slice of a day as Arrow record batches in the contract's types, one per ClickHouse block.

    clickhouse-driver's Arrow stream decodes blocks straight into Arrow buffers (no Python objects per
    value), several times faster than numpy columns with object strings, and memory stays one block.
    """
    reader = client.query_arrow_stream(
        f"SELECT {', '.join(table.column_names)} FROM {table.name} "
        "WHERE trade_date = %(day)s AND kafka_partition = %(p)s AND kafka_offset > %(lo)s AND kafka_offset <= %(hi)s "
        # at-least-once delivery wrote some offsets twice (identical messages): keep one
        "LIMIT 1 BY kafka_partition, kafka_offset",
        {"day": day, "p": rng.partition, "lo": rng.lo, "hi": rng.hi},
        settings={"max_block_size": block_rows, **CONSISTENT_READ},
        field_metadata=False,
        # Strings as the bytes ClickHouse holds: the driver's own cast to Arrow text fails on a value that is
        # not UTF-8, which would stop every offload of the day (to_contract escapes such a value instead).
        arrow_types={f.name: pa.binary() for f in table.arrow_schema if pa.types.is_string(f.type)},
    )
    for batch in reader:
        yield to_contract(table, batch)


def to_contract(table: HotTable, batch: pa.RecordBatch) -> pa.RecordBatch:
    """ClickHouse's Arrow types (unsigned, seconds, bytes) cast to the contract's (Iceberg has no unsigned types;
    its strings are UTF-8: a value that is not is kept reversibly escaped, `contracts.text_value`)."""
    arrays = [
        pc.not_equal(col, 0) if pa.types.is_boolean(field.type)
        else _text(col) if pa.types.is_string(field.type) else col.cast(field.type)
        for col, field in zip(batch.columns, table.arrow_schema)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=table.arrow_schema)


def _text(col: pa.Array) -> pa.Array:
    """Bytes (or text) as UTF-8 text: unchanged when every value is UTF-8 and none needs escaping (the
    cast validates in C); otherwise value by value, which only a batch holding such a value pays for."""
    try:
        text = col.cast(pa.string())
    except pa.ArrowInvalid:  # some value is not UTF-8
        text = None
    if text is not None and not pc.any(pc.starts_with(text, UNDECODABLE_PREFIX)).as_py():
        return text
    raw = col.cast(pa.binary()) if text is None else text.cast(pa.binary())
    return pa.array([None if v is None else text_value(v) for v in raw.to_pylist()], pa.string())
