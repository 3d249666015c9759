"""Exactly-once offload of one hot-tier day into its bronze Iceberg table (DESIGN §5).

1. Read the watermark W (from the Iceberg table's properties) and the hot tier's high offsets H.
2. Stream the rows with W < offset <= H of that day, in bounded offset slices, redeliveries removed by
   the server, into Parquet files (a reader thread overlaps ClickHouse with sorting and writing).
   Before any row is read, the hot table's columns are compared with the contract and the bronze
   schema (`drift.hot_shape`): a removed, renamed or retyped column stops the run (SchemaDrift); an
   added one is copied too.
3. Commit the files and the new watermark (and the schema evolution of added columns, if any) in one
   Iceberg transaction: a compare-and-swap on the table's current snapshot. A lost race reloads the
   table: if W is unchanged the same files are committed again after a short back-off; if another
   writer moved W, our files are dropped and the copy starts over. Every commit attempt, first or
   repeated, spends one budget of MAX_ATTEMPTS; when it runs out our files are deleted and
   OffloadConflict is raised, nothing committed.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import clickhouse_driver
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from k2_lakehouse.core import drift, hot_tier, iceberg
from k2_lakehouse.core.contracts import HotTable
from k2_lakehouse.core.errors import OffloadConflict, SchemaDrift
from k2_lakehouse.core.failpoints import failpoint
from k2_lakehouse.core.hot_tier import OffsetRange, Watermark
from k2_lakehouse.core.iceberg import WrittenFiles
from k2_lakehouse.core.streams import prefetch

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8  # commit attempts per run, recommits included
FILE_ROWS = 4_000_000  # roll to a new Parquet file past this many rows
SORT_CHUNK_ROWS = 500_000  # rows sorted together and written as one row group
WRITER_LANES = 2  # sort + Parquet encoding is the costly part: one lane per core

# Copies offset ranges of a day into uncommitted Parquet files: in this process (`write_ranges`), or
# fanned out over Spark tasks (`spark.offload_writer`). Either way the commit below is the same.
RangeWriter = Callable[[Table, clickhouse_driver.Client, HotTable, dt.date, Sequence[OffsetRange], int], WrittenFiles]


@dataclass(frozen=True)
class OffloadResult:
    table: str
    day: dt.date
    rows: int
    watermark_before: Watermark
    watermark_after: Watermark
    snapshot_id: int | None  # the table's current snapshot after the run; None while the table is empty
    files: int
    bytes_written: int
    duration_s: float
    attempts: int  # commit attempts made, recommits included: 0 when nothing was missing
    summary: dict[str, str] = field(default_factory=dict)
    paths: tuple[str, ...] = ()  # the data files this run committed: what an incremental check reads
    columns_added: tuple[str, ...] = ()  # columns this run's commit added to the bronze schema (schema drift)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def bytes_per_row(self) -> float:
        return self.bytes_written / self.rows if self.rows else 0.0


def offload_day(
    table: Table,
    client: clickhouse_driver.Client,
    hot: HotTable,
    day: dt.date,
    *,
    batch_rows: int = 1_000_000,
    run_id: str = "",
    writer_id: str | None = None,
    reload: Callable[[], Table] | None = None,
    write: RangeWriter | None = None,
) -> OffloadResult:
    """Copy exactly the rows of `day` that bronze lacks; commit once. Safe to run any number of times."""
    started = time.perf_counter()
    writer_id = writer_id or f"k2-{uuid.uuid4().hex[:12]}"
    reload = reload or table.refresh
    attempts = 0  # commit attempts so far: first commits and recommits spend the one MAX_ATTEMPTS budget
    while True:
        before = iceberg.read_watermark(table, day)
        high = hot_tier.high_offsets(client, hot, day)
        # Read after the high offsets: every row up to them was inserted before, under these columns.
        shape = drift.hot_shape(hot, hot_tier.table_columns(client, hot), table.schema(), _database(client))
        ranges = hot_tier.missing_ranges(before, high)
        if not ranges:
            return OffloadResult(
                ".".join(hot.bronze_identifier), day, 0, before, before, iceberg.snapshot_id(table), 0, 0,
                time.perf_counter() - started, attempts,
            )
        after = {**before, **{r.partition: r.hi for r in ranges}}
        written = (write or _write_files)(table, client, shape, day, ranges, batch_rows)
        summary = {
            "k2.writer-id": writer_id,
            "k2.dagster-run-id": run_id,
            "k2.partition": day.isoformat(),
            "k2.watermark": iceberg.encode_watermark(after),
            "k2.rows": str(written.rows),
        }
        while True:  # commit; on a lost race keep our files only while nobody moved our watermark
            attempts += 1
            try:
                snapshot_id, added = _commit(table, day, written, after, summary, shape)
            except SchemaDrift:  # raised before the transaction committed: our files are nobody's
                written.delete(table)
                raise
            except CommitFailedException as exc:  # any other error leaves the commit's fate unknown: keep the files
                if attempts >= MAX_ATTEMPTS:  # the swap surely failed: our files are nobody's
                    written.delete(table)
                    raise OffloadConflict(
                        f"{hot.name} {day}: gave up after {attempts} commit attempts lost to concurrent writers; "
                        "nothing committed"
                    ) from exc
                table = reload()
                if iceberg.read_watermark(table, day) == before:
                    log.info("commit race lost to a writer of another partition (%s); committing again", exc)
                    _back_off(attempts, 0.01, 0.05)  # the winner is done; only avoid racing in lockstep
                    continue
                log.warning("another writer offloaded %s %s first; dropping our files and starting over", hot.name, day)
                written.delete(table)
                break
            failpoint("after_iceberg_commit")
            if added:
                log.warning("%s gained column(s) %s: added to %s as optional columns (earlier rows read as null)",
                            hot.name, ", ".join(added), ".".join(hot.bronze_identifier))
            return OffloadResult(
                ".".join(hot.bronze_identifier), day, written.rows, before, after, snapshot_id,
                len(written.paths), written.bytes, time.perf_counter() - started, attempts, summary,
                tuple(written.paths), added,
            )
        _back_off(attempts, 0.05, 0.3)  # concurrent writers of this day: back off, then re-read W


def pending_days(table: Table, client: clickhouse_driver.Client, hot: HotTable) -> list[dt.date]:
    """Days whose hot-tier offsets moved past the bronze watermark: the work an incremental run has."""
    return [
        day
        for day, high in hot_tier.high_offsets_by_day(client, hot).items()
        if hot_tier.missing_ranges(iceberg.read_watermark(table, day), high)
    ]


def _back_off(attempts: int, low_s: float, high_s: float) -> None:
    """Sleep a random, growing while: racing writers do not retry in lockstep."""
    time.sleep(random.uniform(low_s, high_s) * attempts)


def _database(client: clickhouse_driver.Client) -> str:
    connection = getattr(client, "connection", None)
    return getattr(connection, "database", "") or ""


def _commit(
    table: Table, day: dt.date, written: WrittenFiles, after: Watermark, summary: dict[str, str], shape: HotTable,
) -> tuple[int, tuple[str, ...]]:
    """One transaction: the columns the hot table gained (if the schema lacks them), the files, the watermark.
    Evolving first lets add_files check the new files against the evolved schema; a racing writer that
    evolved first makes this commit fail and, reloaded, find the columns there."""
    with table.transaction() as tx:
        added = drift.evolve(tx, shape)
        tx.add_files(written.paths, snapshot_properties=summary, check_duplicate_files=False)
        tx.set_properties({iceberg.watermark_key(day): iceberg.encode_watermark(after)})
    return table.current_snapshot().snapshot_id, added


def sort_chunk(hot: HotTable, chunk: pa.Table) -> pa.Table:
    """Rows sorted by the table's sort columns: neighbours share values, so zstd packs them."""
    return chunk.sort_by([(c, "ascending") for c in hot.sort_columns])


class _Lane:
    """One Parquet file at a time, rolled past FILE_ROWS; lanes write in parallel (Arrow releases the GIL)."""

    def __init__(self, table: Table, hot: HotTable, directory: str, written: WrittenFiles) -> None:
        self.table, self.hot, self.directory, self.written = table, hot, directory, written
        self.writer: pq.ParquetWriter | None = None
        self.stream = None
        self.rows = 0

    def write(self, chunk: pa.Table) -> int:
        chunk = sort_chunk(self.hot, chunk)
        if self.writer is None or self.rows >= FILE_ROWS:
            self.close()
            path = f"{self.directory}/{uuid.uuid4()}.parquet"
            self.written.paths.append(path)
            self.stream = self.table.io.new_output(path).create(overwrite=False)
            self.writer = pq.ParquetWriter(self.stream, self.hot.arrow_schema, compression="zstd", write_statistics=True)
            self.rows = 0
        self.writer.write_table(chunk, row_group_size=SORT_CHUNK_ROWS)
        self.rows += chunk.num_rows
        failpoint("mid_write")
        return chunk.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.stream is not None:
            self.stream.close()
        self.writer = self.stream = None


def _write_files(
    table: Table, client: clickhouse_driver.Client, hot: HotTable, day: dt.date, ranges: list[OffsetRange], batch_rows: int
) -> WrittenFiles:
    """Stream the ranges into sorted zstd Parquet files. Memory holds a few sort chunks and blocks, whatever the day's size."""
    written = WrittenFiles()
    directory = iceberg.data_directory(table, day)
    lanes = [_Lane(table, hot, directory, written) for _ in range(WRITER_LANES)]
    in_flight: collections.deque[Future[int]] = collections.deque()
    try:
        with ThreadPoolExecutor(WRITER_LANES, thread_name_prefix="k2-parquet") as pool:
            pieces = chunks(prefetch(_read_slices(client, hot, day, ranges, batch_rows)), SORT_CHUNK_ROWS)
            for i, chunk in enumerate(pieces):
                if len(in_flight) == WRITER_LANES:  # the lane for chunk i is the one the oldest chunk used
                    written.rows += in_flight.popleft().result()
                in_flight.append(pool.submit(lanes[i % WRITER_LANES].write, chunk))
            while in_flight:
                written.rows += in_flight.popleft().result()
    except BaseException:
        for future in in_flight:
            future.cancel()
        for lane in lanes:
            lane.close()
        written.delete(table)  # never leave a half-written run behind
        raise
    for lane in lanes:
        lane.close()
    written.bytes = sum(len(table.io.new_input(path)) for path in written.paths)
    return written


def _read_slices(
    client: clickhouse_driver.Client, hot: HotTable, day: dt.date, ranges: list[OffsetRange], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    for rng in ranges:
        for piece in rng.split(batch_rows):  # bounded slices bound the server's LIMIT BY state too
            yield from hot_tier.stream_range(client, hot, day, piece)
            failpoint("mid_read")


def chunks(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Group record batches into tables of about `rows` rows: the unit that is sorted and written."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        pending.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending)
