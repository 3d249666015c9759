"""Exactly-once reconciliation: feed positions in the hot tier against rows in bronze.

A set of feed positions is summarised by its size and a checksum (the wrapping sum of
`partition << 40 | offset`), computed the same way by ClickHouse and by Arrow, so equal counts with
different members still disagree.

A day retention removed from the hot tier (core/retention.py) carries a retirement record in the bronze
table: the positions at or below the record's watermark are taken from the record (whether or not the hot
tier still holds them), the ones above it from the hot tier.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import clickhouse_driver
import numpy as np
import pyarrow as pa
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import HotTable
from k2_lakehouse.core.hot_tier import CONSISTENT_READ, Watermark


@dataclass(frozen=True)
class Positions:
    rows: int  # rows holding a position (duplicates counted)
    distinct: int
    checksum: int

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct


@dataclass(frozen=True)
class Verified:
    """How far a day's checks have passed: its watermark then, and the rows the partition held."""

    watermark: Watermark
    rows: int


NOTHING_VERIFIED = Verified({}, 0)  # a day never offloaded: trivially exact


@dataclass(frozen=True)
class Reconciliation:
    """Bronze for one day against the hot tier: `expected` positions up to the watermark."""

    table: str
    day: dt.date
    expected: int  # distinct hot positions up to the watermark (retired ones from the retirement record)
    actual: int  # rows in bronze
    distinct: int  # distinct positions in bronze
    duplicates: int
    missing: int  # expected - distinct (negative: bronze holds positions the hot tier lacks)
    checksum_match: bool
    not_yet_offloaded: int  # distinct hot positions above the watermark (lag, not an error for a check)
    hot_rows: int  # every hot row of the day still in ClickHouse, redelivered copies included
    incremental: bool = False  # only the rows one offload added were read; the rest was reconciled before
    retired: int = 0  # positions of `expected` taken from the retirement record: no longer in the hot tier

    @property
    def scope(self) -> str:
        return "rows added" if self.incremental else "whole partition"

    @property
    def hot_positions(self) -> int:
        """Distinct positions the hot tier holds or, retired, held: retired + live ones."""
        return self.expected + self.not_yet_offloaded

    @property
    def in_sync(self) -> bool:
        """Exactly once and nothing left to offload: hot = bronze."""
        return self.exactly_once and self.not_yet_offloaded == 0

    @property
    def difference(self) -> int:
        return self.actual - self.expected

    @property
    def exactly_once(self) -> bool:
        return self.duplicates == 0 and self.missing == 0 and self.checksum_match

    def as_dict(self) -> dict:
        return {**asdict(self), "day": self.day.isoformat(), "difference": self.difference}


POSITION = ["kafka_partition", "kafka_offset"]


def bronze_positions(table: Table, hot: HotTable, day: dt.date) -> Positions:
    """Positions in one bronze partition, streamed two columns at a time: 8 bytes of memory per row."""
    return _positions(_sorted_keys(iceberg.partition_batches(table, hot.bronze, day, POSITION)))


def _sorted_keys(batches: Iterable[pa.RecordBatch]) -> np.ndarray:
    parts = [_keys(batch) for batch in batches]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)


def _positions(keys: np.ndarray) -> Positions:
    distinct = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys  # np.unique hashes: 10x slower
    return Positions(rows=len(keys), distinct=len(distinct), checksum=_wrapping_sum(distinct))


def reconcile_increment(
    table: Table, client: clickhouse_driver.Client, hot: HotTable, day: dt.date,
    verified: Verified, after: Watermark, paths: Sequence[str], rows: int,
) -> Reconciliation:
    """Bronze against the hot tier for what one offload added: work bounded by the rows it wrote.

    Sound on a day reconciled up to `verified.watermark` by an earlier passing check, whose partition
    held `verified.rows` then: the day is exact now iff the new files hold exactly the distinct hot
    positions above that watermark up to `after`, none twice and none outside, and nothing else was added
    (`rows`: the partition's rows now, from the manifests). Retention deletes hot rows at or below its record's
    watermark only: when the verified watermark lies below that, the hot tier lacks the rows to compare, and
    the whole partition is reconciled against the record instead.
    """
    retired = iceberg.read_retired(table, day)
    if retired is not None and not covers(verified.watermark, retired.watermark):
        return reconcile(table, client, hot, day, after)
    keys = _sorted_keys(iceberg.read_files(table, list(paths), POSITION))
    added = _positions(keys)
    outside = _outside(keys, verified.watermark, after)
    hot_added, hot_above, hot_rows = hot_range_positions(client, hot, day, verified.watermark, after)
    distinct = verified.rows + added.distinct - outside
    return Reconciliation(
        table=".".join(hot.bronze_identifier),
        day=day,
        expected=verified.rows + hot_added.distinct,
        actual=rows,
        distinct=distinct,
        duplicates=rows - distinct,  # repeats among the new rows, or rows some other writer added
        missing=hot_added.distinct - (added.distinct - outside),
        checksum_match=hot_added.checksum == added.checksum and outside == 0,
        not_yet_offloaded=hot_above,
        hot_rows=hot_rows,
        incremental=True,
        retired=retired.positions if retired else 0,
    )


def hot_range_positions(
    client: clickhouse_driver.Client, hot: HotTable, day: dt.date, lo: Watermark, hi: Watermark
) -> tuple[Positions, int, int]:
    """Distinct hot positions of `day` with lo < offset <= hi (lo = {}: from the first), how many distinct
    positions lie above hi, and the day's hot rows, redelivered copies included.

    The table is ordered by (kafka_partition, kafka_offset), so ClickHouse reads only the granules above `lo`.
    """
    at_or_below_lo, lo_params = at_or_below(lo, "lo")
    at_or_below_hi, hi_params = at_or_below(hi, "hi")
    key = "bitShiftLeft(toUInt64(kafka_partition), 40) + kafka_offset"
    (rows, distinct, checksum, above), = client.execute(
        f"SELECT sumIf(n, upto), countIf(upto), sumIf({key}, upto), countIf(NOT upto) FROM ("
        f" SELECT kafka_partition, kafka_offset, count() AS n, ({at_or_below_hi}) AS upto FROM {hot.name}"
        f" WHERE trade_date = %(day)s AND NOT ({at_or_below_lo}) GROUP BY kafka_partition, kafka_offset)",
        {"day": day, **lo_params, **hi_params},
        settings={"use_numpy": False, **CONSISTENT_READ},
    )
    (hot_rows,), = client.execute(
        f"SELECT count() FROM {hot.name} WHERE trade_date = %(day)s", {"day": day}, settings={"use_numpy": False}
    )
    return Positions(int(rows or 0), int(distinct), int(checksum or 0)), int(above), int(hot_rows)


def reconcile(
    table: Table, client: clickhouse_driver.Client, hot: HotTable, day: dt.date, watermark: Watermark
) -> Reconciliation:
    bronze = bronze_positions(table, hot, day)
    retired = iceberg.read_retired(table, day)
    expected, above, hot_rows = expected_positions(client, hot, day, watermark, retired)
    return Reconciliation(
        table=".".join(hot.bronze_identifier),
        day=day,
        expected=expected.distinct,
        actual=bronze.rows,
        distinct=bronze.distinct,
        duplicates=bronze.duplicates,
        missing=expected.distinct - bronze.distinct,
        checksum_match=expected.checksum == bronze.checksum,
        not_yet_offloaded=above,
        hot_rows=hot_rows,
        retired=retired.positions if retired else 0,
    )


def expected_positions(
    client: clickhouse_driver.Client, hot: HotTable, day: dt.date, watermark: Watermark, retired: iceberg.Retired | None
) -> tuple[Positions, int, int]:
    """What bronze must hold of `day` at `watermark`, as `hot_range_positions` returns it: on a retired day,
    the record's positions plus the hot tier's above the record's watermark (a retirement killed before its
    delete left those rows in ClickHouse: they count once, from the record)."""
    if retired is None:
        return hot_range_positions(client, hot, day, {}, watermark)
    live, above, hot_rows = hot_range_positions(client, hot, day, retired.watermark, watermark)
    return add_positions(Positions(retired.positions, retired.positions, retired.checksum), live), above, hot_rows


def add_positions(a: Positions, b: Positions) -> Positions:
    """Two disjoint sets of positions as one."""
    return Positions(a.rows + b.rows, a.distinct + b.distinct, (a.checksum + b.checksum) % 2**64)  # ClickHouse's UInt64 wraps


def covers(wm: Watermark, other: Watermark) -> bool:
    """`wm` is at or above `other` in every feed partition `other` names."""
    return all(wm.get(p, -1) >= o for p, o in other.items())


def at_or_below(wm: Watermark, name: str = "w") -> tuple[str, dict]:
    """A ClickHouse condition for the feed positions at or below `wm`, and its bound parameters."""
    if not wm:
        return "0", {}
    terms, params = [], {}
    for i, (partition, offset) in enumerate(sorted(wm.items())):
        terms.append(f"(kafka_partition = %({name}p{i})s AND kafka_offset <= %({name}o{i})s)")
        params[f"{name}p{i}"], params[f"{name}o{i}"] = partition, offset
    return " OR ".join(terms), params


def _outside(keys: np.ndarray, lo: Watermark, hi: Watermark) -> int:
    """Keys whose offset is not in (lo, hi] of their partition (a partition absent from `hi` has no range)."""
    if not len(keys):
        return 0
    partitions = (keys >> np.uint64(40)).astype(np.int64)
    offsets = (keys & np.uint64((1 << 40) - 1)).astype(np.int64)
    size = int(max(partitions.max(), *hi, *lo, 0)) + 1
    lo_of, hi_of = np.full(size, -1, dtype=np.int64), np.full(size, -1, dtype=np.int64)
    for p, o in lo.items():
        lo_of[p] = o
    for p, o in hi.items():
        hi_of[p] = o
    return int(np.count_nonzero((offsets <= lo_of[partitions]) | (offsets > hi_of[partitions])))


def _keys(positions: pa.RecordBatch) -> np.ndarray:
    partition = positions.column("kafka_partition").to_numpy().astype(np.uint64)
    offset = positions.column("kafka_offset").to_numpy().astype(np.uint64)
    return (partition << np.uint64(40)) + offset


def _wrapping_sum(keys: np.ndarray) -> int:
    # ClickHouse's UInt64 sum wraps at 2**64; numpy's uint64 sum wraps the same way.
    return int(np.sum(keys, dtype=np.uint64))


def verify(table: Table, client: clickhouse_driver.Client, hot: HotTable, days: list[dt.date]) -> list[Reconciliation]:
    """Hot against cold for each day, at each day's committed watermark."""
    return [reconcile(table, client, hot, day, iceberg.read_watermark(table, day)) for day in days]
