"""Table maintenance on real services: compaction, abandoned branches, snapshot expiry, orphan files —
alone, after killed runs, and next to offloads and publishes that keep committing."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from k2_lakehouse.core import iceberg, maintenance, offload, reconcile, verify
from k2_lakehouse.core.contracts import BINANCE, SILVER_TRADES
from k2_lakehouse.core.gold import build_gold_day
from k2_lakehouse.core.publish import AUDIT_BRANCH_PREFIX
from k2_lakehouse.core.silver import build_silver_day, is_current
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 4, 2)
NOW = dt.timedelta(0)  # maintenance of everything, however young: nothing else runs in these tests


def _files_on_disk(table) -> set[Path]:
    return set((Path(urlparse(table.location()).path) / "data").rglob("*.parquet"))


def _positions(table, day: dt.date = DAY) -> list[tuple[int, int]]:
    batches = iceberg.partition_batches(table.refresh(), BINANCE.bronze, day, ["kafka_partition", "kafka_offset"])
    return sorted(p for b in batches for p in zip(*(c.to_pylist() for c in b.columns)))


def _incremental_day(lake: Lake, runs: int, rows_per_run: int = 500) -> object:
    """A bronze day made of `runs` small offloads: one small file and one snapshot each."""
    cat = iceberg.catalog(lake.settings)
    table = iceberg.bronze_table(cat, BINANCE)
    client = lake.client()
    for run in range(runs):
        insert_binance(client, DAY, run % 2, range(run * rows_per_run, (run + 1) * rows_per_run))
        offload.offload_day(table, client, BINANCE, DAY)
    return table


def test_compaction_expiry_and_orphans_keep_every_row_and_the_watermark(lake: Lake) -> None:
    table = _incremental_day(lake, runs=12)
    cat = iceberg.catalog(lake.settings)
    build_silver_day(cat, DAY)
    build_gold_day(cat, DAY)
    before = _positions(table)
    watermark = iceberg.read_watermark(table.refresh(), DAY)
    assert len(iceberg.partition_files(table, BINANCE.bronze, DAY)) == 12
    snapshots_before = len(table.metadata.snapshots)

    report = maintenance.maintain(lake.settings, older_than=NOW)
    print(report.report())
    bronze = next(t for t in report.tables if t.table == BINANCE.bronze.qualified_name)
    assert (bronze.days_compacted, bronze.files_compacted, bronze.files_written, bronze.rows_compacted) == (1, 12, 1, 6_000)
    assert bronze.snapshots_expired == snapshots_before  # all but the compaction's own, now main's head
    assert bronze.snapshots_kept == 1
    assert bronze.orphans_removed >= 12  # the twelve small files, their manifests and manifest lists

    table.refresh()
    assert _positions(table) == before  # rows unchanged, none lost or doubled
    assert iceberg.read_watermark(table, DAY) == watermark  # the watermark is untouched
    assert len(_files_on_disk(table)) == 1 == len(iceberg.partition_files(table, BINANCE.bronze, DAY))
    assert is_current(cat, DAY)  # the data versions outlived the snapshots that recorded them
    result = verify.verify(lake.settings, [DAY])
    assert result.mismatched == 0, result.report()
    # Nothing left to do: a second run changes nothing and commits nothing.
    head = iceberg.snapshot_id(table)
    again = maintenance.maintain(lake.settings, older_than=NOW)
    assert all(t.days_compacted == t.snapshots_expired == t.orphans_removed == 0 for t in again.tables), again.report()
    assert iceberg.snapshot_id(table.refresh()) == head


def test_young_files_and_snapshots_are_kept(lake: Lake) -> None:
    """The age margin: what is younger than `older_than` may belong to a run in flight."""
    table = _incremental_day(lake, runs=3)
    stray = Path(urlparse(iceberg.data_directory(table, DAY)).path) / "uncommitted.parquet"
    stray.write_bytes(b"a run in flight is writing this")
    report = maintenance.maintain(lake.settings, older_than=dt.timedelta(hours=1), tables=[BINANCE.bronze])
    (bronze,) = report.tables
    assert (bronze.snapshots_expired, bronze.orphans_removed) == (0, 0)
    assert bronze.days_compacted == 1  # compaction swaps files in a commit: it needs no margin
    assert stray.exists()
    maintenance.maintain(lake.settings, older_than=NOW, tables=[BINANCE.bronze])
    assert not stray.exists()


def test_files_of_a_killed_offload_are_removed(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(3_000))
    script = (
        "import datetime as dt\n"
        "from k2_lakehouse.core import hot_tier, iceberg, offload\n"
        "from k2_lakehouse.core.contracts import BINANCE\n"
        "from k2_lakehouse.core.settings import Settings\n"
        "s = Settings.from_env()\n"
        f"offload.offload_day(iceberg.bronze_table(iceberg.catalog(s), BINANCE), hot_tier.connect(s), BINANCE, "
        f"dt.date.fromisoformat('{DAY}'), batch_rows=1000)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, **lake.env, "K2_FAILPOINT": "mid_write"}, timeout=120)
    assert proc.returncode == -9
    table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
    left = _files_on_disk(table)
    assert left and table.current_snapshot() is None  # files of a run that never committed
    (bronze,) = maintenance.maintain(lake.settings, older_than=NOW, tables=[BINANCE.bronze]).tables
    assert bronze.orphans_removed >= len(left)
    assert not _files_on_disk(table)
    offload.offload_day(table.refresh(), client, BINANCE, DAY)
    assert _positions(table) == [(0, o) for o in range(3_000)]


def test_abandoned_audit_branch_is_dropped_and_a_live_one_kept(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    _incremental_day(lake, runs=2)
    script = (
        "import datetime as dt\n"
        "from k2_lakehouse.core import iceberg\n"
        "from k2_lakehouse.core.settings import Settings\n"
        "from k2_lakehouse.core.silver import build_silver_day\n"
        f"build_silver_day(iceberg.catalog(Settings.from_env()), dt.date.fromisoformat('{DAY}'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, **lake.env, "K2_FAILPOINT": "before_publish"}, timeout=180)
    assert proc.returncode == -9
    cat = iceberg.catalog(lake.settings)
    silver = iceberg.ensure_table(cat, SILVER_TRADES, branches=True)
    assert any(name.startswith(AUDIT_BRANCH_PREFIX) for name in silver.metadata.refs)
    staged = _files_on_disk(silver)
    assert staged

    young = maintenance.maintain(lake.settings, older_than=NOW, tables=[SILVER_TRADES])
    assert young.tables[0].branches_dropped == 0  # younger than ABANDONED_BRANCH_AGE: it may be a publish in flight
    assert _files_on_disk(silver) >= staged
    monkeypatch.setattr(maintenance, "ABANDONED_BRANCH_AGE", dt.timedelta(0))
    (report,) = maintenance.maintain(lake.settings, older_than=NOW, tables=[SILVER_TRADES]).tables
    assert report.branches_dropped == 1
    assert not [n for n in silver.refresh().metadata.refs if n.startswith(AUDIT_BRANCH_PREFIX)]
    assert not _files_on_disk(silver)  # the staged files went with the branch's snapshot
    build_silver_day(cat, DAY)
    build_gold_day(cat, DAY)
    assert verify.verify(lake.settings, [DAY]).mismatched == 0


def test_maintenance_next_to_offloads_and_publishes_stays_exact(lake: Lake) -> None:
    """Offloads and silver/gold rebuilds keep committing while maintenance loops: every
    compaction, expiry and orphan sweep races real commits. Afterwards every layer is exact."""
    days = [DAY, DAY + dt.timedelta(days=1)]
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"offloads": 0, "maintenance": 0, "compacted": 0, "expired": 0, "orphans": 0}

    def guarded(work):
        def run():
            try:
                work()
            except BaseException as exc:  # surfaced by the main thread
                errors.append(exc)
                stop.set()
        return threading.Thread(target=run)

    def offloads():
        settings = lake.settings
        client = lake.client()
        table = iceberg.bronze_table(iceberg.catalog(settings), BINANCE)
        n = 0
        while not stop.is_set():
            day = days[n % 2]
            insert_binance(client, day, n % 3, range(n * 200, n * 200 + 200))
            offload.offload_day(table, client, BINANCE, day)
            counts["offloads"] += 1
            n += 1
            time.sleep(0.3)  # still far more often than the live system's one offload per table per 10 s

    def rebuilds():
        cat = iceberg.catalog(lake.settings)
        while not stop.is_set():
            for day in days:
                build_silver_day(cat, day)
                build_gold_day(cat, day)

    def maintains():
        while not stop.is_set():
            # A window shorter than any real one, but longer than these runs: what is older belongs to nobody.
            report = maintenance.maintain(lake.settings, older_than=dt.timedelta(seconds=30))
            counts["maintenance"] += 1
            counts["compacted"] += sum(t.files_compacted for t in report.tables)
            counts["expired"] += sum(t.snapshots_expired for t in report.tables)
            counts["orphans"] += sum(t.orphans_removed for t in report.tables)

    threads = [guarded(offloads), guarded(rebuilds), guarded(maintains)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 75  # past the window: snapshots expire, orphans go
    while time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=300)
    if errors:
        raise errors[0]
    print(counts)
    assert counts["maintenance"] >= 2 and counts["compacted"] > 0 and counts["expired"] > 0, counts

    cat = iceberg.catalog(lake.settings)
    for day in days:  # catch up what the last loop iteration left, then everything must be exact
        offload.offload_day(iceberg.bronze_table(cat, BINANCE), lake.client(), BINANCE, day)
        build_silver_day(cat, day)
        build_gold_day(cat, day)
    table = iceberg.bronze_table(cat, BINANCE)
    for day in days:
        recon = reconcile.reconcile(table, lake.client(), BINANCE, day, iceberg.read_watermark(table, day))
        assert recon.in_sync and recon.duplicates == 0 and recon.missing == 0, recon
    result = verify.verify(lake.settings, days)
    assert result.mismatched == 0, result.report()
