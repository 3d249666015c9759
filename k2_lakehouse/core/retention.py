"""Hot-tier retention gated on the offload (DESIGN §5.6): a hot day leaves ClickHouse only once bronze holds all of it.

For each hot table and each hot day older than the retention:
1. Check: the bronze watermark W covers the hot tier's high offsets (nothing lags) and a whole-partition
   reconciliation is exactly once now.
2. Record what goes, in one metadata-only commit on the bronze table (`k2.retired.<day>`): W, the distinct
   positions at or below it and their checksum. Cumulative: the old record plus the hot positions in
   (old W, W].
3. Delete exactly the hot rows at or below W (an `ALTER TABLE … DELETE` mutation, waited for). Never DROP
   PARTITION: a late trade landing meanwhile carries a higher offset, stays, and is offloaded as usual.

From step 2 on, checks take the positions up to W from the record (reconcile.py), whether or not ClickHouse
still has them: a run killed after the record or during the delete leaves the day exact, and the next
`retire` finishes the delete.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import clickhouse_driver
from pyiceberg.table import Table

from k2_lakehouse.core import hot_tier, iceberg, reconcile
from k2_lakehouse.core.contracts import HOT_TABLES, HotTable
from k2_lakehouse.core.failpoints import failpoint
from k2_lakehouse.core.hot_tier import Watermark
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings

log = logging.getLogger(__name__)

RETIRED = "retired"
MUTATION_TIMEOUT_S = 600.0  # an 18.16 mutation rewrites the table's parts: minutes on a big table
RECORD_ATTEMPTS = 3  # another retirement of the same day moved the record under us: check again


@dataclass(frozen=True)
class DayRetention:
    """What retention did with one hot day of one table."""

    table: str  # the hot table
    day: dt.date
    action: str  # "retired", or "kept: <why>" (the day stays in ClickHouse)
    rows_deleted: int = 0  # hot rows this run deleted (redelivered copies included)
    retired_positions: int = 0  # positions the day's retirement record holds after this run
    watermark: Watermark = field(default_factory=dict)  # the watermark retired up to (kept: bronze's)

    @property
    def retired(self) -> bool:
        return self.action == RETIRED


@dataclass(frozen=True)
class RetentionReport:
    retention_days: int  # 0: retention is off, every day stays
    cutoff: dt.date | None  # hot days before this one were considered
    days: tuple[DayRetention, ...] = ()

    @property
    def days_retired(self) -> int:
        return sum(d.retired for d in self.days)

    @property
    def days_kept(self) -> int:
        return len(self.days) - self.days_retired

    @property
    def rows_deleted(self) -> int:
        return sum(d.rows_deleted for d in self.days)

    def metadata(self) -> dict[str, int]:
        """Counts for a Dagster materialization or check."""
        return {
            "retention_days": self.retention_days, "days_retired": self.days_retired, "days_kept": self.days_kept,
            "rows_deleted": self.rows_deleted,
        }

    def report(self) -> str:
        if self.cutoff is None:
            return "hot-tier retention is off (K2_HOT_RETENTION_DAYS=0): every day stays in ClickHouse"
        head = f"hot days before {self.cutoff} (retention {self.retention_days} days)"
        if not self.days:
            return f"{head}: none in ClickHouse"
        table = format_table(
            ("table", "day", "action", "rows deleted"),
            [(d.table, d.day, d.action, f"{d.rows_deleted:,}") for d in self.days],
        )
        return (f"{head}:\n{table}\n{self.days_retired} days retired, {self.days_kept} kept, "
                f"{self.rows_deleted:,} hot rows deleted")


def retire(
    settings: Settings, *, retention_days: int | None = None, today: dt.date | None = None,
    tables: Sequence[HotTable] | None = None,
) -> RetentionReport:
    """Retire every hot day more than `retention_days` days before `today` (UTC) whose rows bronze holds
    exactly once (retention 1: today and yesterday stay), in `tables` (default: both hot tables).
    Default retention: K2_HOT_RETENTION_DAYS; 0 keeps everything."""
    keep = settings.hot_retention_days if retention_days is None else retention_days
    if keep <= 0:
        return RetentionReport(0, None)
    cutoff = (today or dt.datetime.now(dt.timezone.utc).date()) - dt.timedelta(days=keep)
    done: list[DayRetention] = []
    with hot_tier.hot_tier_errors(settings):
        reader = hot_tier.connect(settings)
        writer = hot_tier.connect(settings, write=True)
        try:
            cat = iceberg.catalog(settings)
            for hot in tables or list(HOT_TABLES.values()):
                table = iceberg.bronze_table(cat, hot)
                for day in hot_tier.high_offsets_by_day(reader, hot):
                    if day < cutoff:
                        done.append(retire_day(table, reader, writer, hot, day))
        finally:
            reader.disconnect()
            writer.disconnect()
    return RetentionReport(keep, cutoff, tuple(done))


def retire_day(
    table: Table, reader: clickhouse_driver.Client, writer: clickhouse_driver.Client, hot: HotTable, day: dt.date,
    *, timeout_s: float = MUTATION_TIMEOUT_S,
) -> DayRetention:
    """Check, record, delete one day (module doc). `reader` reads as the offload does; `writer` deletes."""
    for _ in range(RECORD_ATTEMPTS):
        table.refresh()
        previous = iceberg.read_retired(table, day)
        checked = check_day(table, reader, hot, day)
        if isinstance(checked, DayRetention):
            return checked
        if record_retirement(table, day, checked, previous):
            break
    else:
        return _kept(hot, day, "another retirement of this day kept moving its record", iceberg.read_watermark(table, day))
    failpoint("after_retirement_record")
    deleted, finished = delete_retired(writer, hot, day, checked.watermark, timeout_s=timeout_s)
    action = RETIRED if finished else f"recorded; delete still running after {timeout_s:.0f}s (run again to finish)"
    return DayRetention(hot.name, day, action, deleted, checked.positions, checked.watermark)


def check_day(table: Table, reader: clickhouse_driver.Client, hot: HotTable, day: dt.date) -> iceberg.Retired | DayRetention:
    """The retirement record to write if bronze holds all of the day now, else why the day is kept."""
    watermark = iceberg.read_watermark(table, day)
    if hot_tier.missing_ranges(watermark, hot_tier.high_offsets(reader, hot, day)):
        _, lagging, _ = reconcile.hot_range_positions(reader, hot, day, watermark, watermark)
        return _kept(hot, day, f"lagging {lagging:,} positions", watermark)
    recon = reconcile.reconcile(table, reader, hot, day, watermark)
    if not recon.exactly_once:
        return _kept(hot, day, (
            f"check failed (expected {recon.expected:,}, bronze {recon.actual:,}, missing {recon.missing:,}, "
            f"duplicates {recon.duplicates:,}, checksum {'match' if recon.checksum_match else 'differs'})"
        ), watermark)
    if recon.not_yet_offloaded:  # arrived since the high offsets were read
        return _kept(hot, day, f"lagging {recon.not_yet_offloaded:,} positions", watermark)
    previous = iceberg.read_retired(table, day)
    if previous is not None and not reconcile.covers(watermark, previous.watermark):
        return _kept(hot, day, f"bronze watermark {watermark} below the retirement record's {previous.watermark}", watermark)
    # Cumulative: what was retired before, plus the hot positions above it that bronze now holds.
    previous = previous or iceberg.Retired({}, 0, 0)
    added, _, _ = reconcile.hot_range_positions(reader, hot, day, previous.watermark, watermark)
    total = reconcile.add_positions(reconcile.Positions(previous.positions, previous.positions, previous.checksum), added)
    if total.distinct != recon.expected:  # hot rows at or below W vanished between the two reads: another retire
        return _kept(hot, day, "hot tier changed during the check (another retirement running?)", watermark)
    return iceberg.Retired(dict(watermark), total.distinct, total.checksum)


def record_retirement(table: Table, day: dt.date, record: iceberg.Retired, previous: iceberg.Retired | None) -> bool:
    """Write the record unless another retirement replaced `previous` meanwhile (False: check again).

    A metadata-only commit is applied to the table's newest metadata, whatever snapshot was checked: right,
    since bronze only grows above a watermark, but no guard against another retirement; hence the re-read."""
    table.refresh()
    current = iceberg.read_retired(table, day)
    if current != previous:
        log.warning("%s %s: the retirement record changed during the check; checking again", table.name(), day)
        return False
    if current != record:  # unchanged after a run killed before its delete: nothing to write
        with table.transaction() as tx:
            tx.set_properties({iceberg.retired_key(day): iceberg.encode_retired(record)})
    return True


def delete_retired(
    writer: clickhouse_driver.Client, hot: HotTable, day: dt.date, watermark: Watermark, *, timeout_s: float = MUTATION_TIMEOUT_S
) -> tuple[int, bool]:
    """Delete the day's hot rows at or below `watermark` (never those above: late trades) and wait until
    ClickHouse has: the rows deleted, and whether the delete finished within `timeout_s`. Idempotent: a
    second call deletes what is left, if anything."""
    covered, params = reconcile.at_or_below(watermark)
    where = f"trade_date = %(day)s AND ({covered})"
    params = {"day": day, **params}
    before = _count(writer, hot, where, params)
    finished = True
    if before:
        # 18.16 has no mutations_sync: the mutation runs in the background, waited for below.
        writer.execute(f"ALTER TABLE {hot.name} DELETE WHERE {where}", params, settings={"use_numpy": False})
        failpoint("mid_delete")
        finished = wait_for_mutations(writer, hot, timeout_s=timeout_s)
    return before - _count(writer, hot, where, params), finished


def wait_for_mutations(writer: clickhouse_driver.Client, hot: HotTable, *, timeout_s: float = MUTATION_TIMEOUT_S) -> bool:
    """Until no mutation of the table is left unfinished (ours, or one a killed run left behind); False if
    some still is after `timeout_s` (it goes on in the server: the retirement stays recorded)."""
    deadline = time.monotonic() + timeout_s
    pause = 0.05
    while True:
        pending = writer.execute(
            "SELECT mutation_id, command FROM system.mutations "
            "WHERE database = currentDatabase() AND table = %(table)s AND is_done = 0",
            {"table": hot.name}, settings={"use_numpy": False},
        )
        if not pending:
            return True
        if time.monotonic() > deadline:
            log.warning("%s: mutations still running after %.0fs (system.mutations): %s", hot.name, timeout_s, pending)
            return False
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def _count(client: clickhouse_driver.Client, hot: HotTable, where: str, params: dict) -> int:
    (n,), = client.execute(f"SELECT count() FROM {hot.name} WHERE {where}", params, settings={"use_numpy": False})
    return int(n)


def _kept(hot: HotTable, day: dt.date, why: str, watermark: Watermark) -> DayRetention:
    return DayRetention(hot.name, day, f"kept: {why}", watermark=dict(watermark))
