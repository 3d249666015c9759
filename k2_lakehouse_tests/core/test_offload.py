"""The exactly-once offload against a real ClickHouse, a real PostgreSQL catalog and Iceberg files on disk."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pyiceberg.exceptions import CommitFailedException

from k2_lakehouse.core import iceberg, offload, reconcile
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.core.errors import HotTierUnavailable, OffloadConflict
from k2_lakehouse.core.hot_tier import connect, hot_tier_errors
from k2_lakehouse_tests.support import Lake, free_ports, insert_binance, race, then_wait

DAY = dt.date(2026, 3, 14)


def _table(lake: Lake):
    return iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)


def _assert_exactly_once(lake: Lake, table, day: dt.date = DAY) -> reconcile.Reconciliation:
    table.refresh()
    result = reconcile.reconcile(table, lake.client(), BINANCE, day, iceberg.read_watermark(table, day))
    assert result.exactly_once, result
    assert result.not_yet_offloaded == 0, result
    return result


def _data_files(table) -> list[Path]:
    """Parquet files on disk under the table's data directory, committed or not."""
    return sorted((Path(urlparse(table.location()).path) / "data").rglob("*.parquet"))


def _offload_in_a_process(batch_rows: int) -> list[str]:
    """A separate Python process that offloads DAY, for races and kills."""
    return [sys.executable, "-c", (
        "import datetime as dt\n"
        "from k2_lakehouse.core import hot_tier, iceberg, offload\n"
        "from k2_lakehouse.core.contracts import BINANCE\n"
        "from k2_lakehouse.core.settings import Settings\n"
        "s = Settings.from_env()\n"
        "t = iceberg.bronze_table(iceberg.catalog(s), BINANCE)\n"
        f"r = offload.offload_day(t, hot_tier.connect(s), BINANCE, dt.date.fromisoformat('{DAY}'), batch_rows={batch_rows})\n"
        "print(r.rows)\n"
    )]


def test_rerun_copies_nothing_more(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(0, 500))
    insert_binance(client, DAY, 1, range(0, 300))
    table = _table(lake)

    first = offload.offload_day(table, client, BINANCE, DAY, batch_rows=128)
    assert first.rows == 800 and first.watermark_after == {0: 499, 1: 299}
    snapshots = len(table.snapshots())
    for _ in range(3):
        again = offload.offload_day(table, client, BINANCE, DAY)
        assert again.rows == 0 and again.snapshot_id == first.snapshot_id
    assert len(table.refresh().snapshots()) == snapshots  # a no-op run commits nothing
    assert _assert_exactly_once(lake, table).actual == 800


def test_incremental_reconciliation_reads_only_what_a_run_added(lake: Lake) -> None:
    """The bounded check agrees with the whole-partition one, and fails with numbers when it should."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(0, 50))
    table = _table(lake)
    first = offload.offload_day(table, client, BINANCE, DAY)
    ok = reconcile.reconcile_increment(table, client, BINANCE, DAY, reconcile.NOTHING_VERIFIED, first.watermark_after, first.paths, 50)
    assert ok.exactly_once and ok.incremental and (ok.expected, ok.actual) == (50, 50)
    doubled = reconcile.reconcile_increment(  # the same file counted twice: 50 positions repeat
        table, client, BINANCE, DAY, reconcile.NOTHING_VERIFIED, first.watermark_after, first.paths * 2, 100,
    )
    assert not doubled.exactly_once and doubled.duplicates == 50 and doubled.difference == 50

    insert_binance(client, DAY, 0, range(50, 80))
    insert_binance(client, DAY, 0, range(90, 95))  # not yet offloaded when the check runs: lag, not an error
    verified = reconcile.Verified(first.watermark_after, 50)
    second = offload.offload_day(table, client, BINANCE, DAY)
    assert second.rows == 35
    insert_binance(client, DAY, 0, range(95, 99))
    added = reconcile.reconcile_increment(table, client, BINANCE, DAY, verified, second.watermark_after, second.paths, 85)
    assert added.exactly_once and (added.expected, added.actual, added.not_yet_offloaded) == (85, 85, 4)
    wrong_files = reconcile.reconcile_increment(  # files outside (verified, after]: never taken for the new rows
        table, client, BINANCE, DAY, verified, second.watermark_after, first.paths, 85,
    )
    assert not wrong_files.exactly_once and not wrong_files.checksum_match and wrong_files.missing == 35
    full = reconcile.reconcile(table, client, BINANCE, DAY, second.watermark_after)
    assert (full.expected, full.actual, full.not_yet_offloaded, full.exactly_once) == (85, 85, 4, True)


def test_watermark_and_lineage_are_in_the_same_commit(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(10))
    table = _table(lake)
    result = offload.offload_day(table, client, BINANCE, DAY, run_id="run-42", writer_id="w-1")
    snapshot = table.current_snapshot()
    assert snapshot.snapshot_id == result.snapshot_id
    summary = snapshot.summary.additional_properties
    assert summary["k2.dagster-run-id"] == "run-42" and summary["k2.writer-id"] == "w-1"
    assert summary["k2.partition"] == DAY.isoformat()
    assert iceberg.decode_watermark(summary["k2.watermark"]) == {0: 9}
    assert table.properties[iceberg.watermark_key(DAY)] == summary["k2.watermark"]
    assert table.properties["commit.retry.num-retries"] == "0"


def test_late_data_and_redeliveries(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(0, 100))
    insert_binance(client, DAY, 0, range(90, 100))  # at-least-once: offsets 90..99 delivered twice
    table = _table(lake)
    assert offload.offload_day(table, client, BINANCE, DAY).rows == 100

    other_day = DAY - dt.timedelta(days=1)
    insert_binance(client, other_day, 0, range(100, 110))  # a late trade for an earlier day: higher offsets
    insert_binance(client, DAY, 0, range(110, 150))
    insert_binance(client, DAY, 0, range(140, 150))  # redelivered again, inside the new range
    late = offload.offload_day(table, client, BINANCE, DAY, batch_rows=7)
    assert late.rows == 40 and late.watermark_after == {0: 149}
    assert offload.offload_day(table, client, BINANCE, other_day).rows == 10
    assert _assert_exactly_once(lake, table).actual == 140
    assert _assert_exactly_once(lake, table, other_day).actual == 10
    assert offload.pending_days(table, client, BINANCE) == []


def test_lost_commit_race_never_duplicates(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers copy the same range and commit at the same moment: one wins, the loser re-reads the watermark."""
    client_a, client_b = lake.client(), lake.client()
    insert_binance(client_a, DAY, 0, range(1000))
    barrier = threading.Barrier(2, timeout=30)
    # Both have their files, then both race to commit.
    monkeypatch.setattr(offload, "_write_files", then_wait(offload._write_files, barrier))
    # Both create the table on first use, concurrently, as two first runs would.
    results = race(*(lambda c=c: offload.offload_day(_table(lake), c, BINANCE, DAY) for c in (client_a, client_b)))
    monkeypatch.undo()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(r.rows for r in results) == [0, 1000], results
    loser = next(r for r in results if r.rows == 0)
    assert loser.attempts == 1  # its one commit lost the race; it reloaded and found nothing missing
    table = _table(lake)
    assert _assert_exactly_once(lake, table).actual == 1000
    assert len(table.inspect.files()) == 1  # the loser's files were deleted, not left behind


def test_recommits_are_bounded_and_counted(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that keeps losing while our watermark stays unchanged gives up after MAX_ATTEMPTS, leaving nothing."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(100))
    table = _table(lake)
    commits: list[dt.date] = []
    back_offs: list[int] = []

    def always_lose(tbl, day, *args):
        commits.append(day)
        raise CommitFailedException("branch main has changed")  # as if a writer of another day won each time

    monkeypatch.setattr(offload, "_commit", always_lose)
    monkeypatch.setattr(offload, "_back_off", lambda attempts, *_: back_offs.append(attempts))
    with pytest.raises(OffloadConflict, match=f"{offload.MAX_ATTEMPTS} commit attempts"):
        offload.offload_day(table, client, BINANCE, DAY)
    assert commits == [DAY] * offload.MAX_ATTEMPTS
    assert back_offs == list(range(1, offload.MAX_ATTEMPTS)), "a back-off between recommits, none after the last"
    table.refresh()
    assert table.current_snapshot() is None and iceberg.read_watermark(table, DAY) == {}
    assert _data_files(table) == []  # our uncommitted files were deleted


def test_recommit_after_losing_to_another_day(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer of another day commits between our read and our commit: the same files are committed again."""
    client = lake.client()
    other_day = DAY - dt.timedelta(days=1)
    insert_binance(client, DAY, 0, range(200))
    insert_binance(client, other_day, 0, range(200, 250))  # a late trade: the same partition, higher offsets
    table = _table(lake)
    real_commit = offload._commit
    ours: list[dt.date] = []

    def commit_after_another_day(tbl, day, *args):
        if day == DAY:
            ours.append(day)
            if len(ours) == 1:  # the other writer wins the race: our table's snapshot is now stale
                assert offload.offload_day(_table(lake), lake.client(), BINANCE, other_day).rows == 50
        return real_commit(tbl, day, *args)

    monkeypatch.setattr(offload, "_commit", commit_after_another_day)
    result = offload.offload_day(table, client, BINANCE, DAY)
    monkeypatch.undo()
    assert result.attempts == 2 and len(ours) == 2  # lost once with an unchanged watermark, then committed
    assert result.rows == 200 and result.watermark_after == {0: 199}
    assert _assert_exactly_once(lake, table).actual == 200
    assert _assert_exactly_once(lake, table, other_day).actual == 50
    assert len(table.inspect.files()) == 2 == len(_data_files(table))  # one file per day, none left over


def test_pyiceberg_own_retry_is_off(lake: Lake) -> None:
    """Why bronze retries by itself: a stale transaction must fail, not be silently re-applied."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(10))
    stale = _table(lake)
    fresh = _table(lake)
    offload.offload_day(fresh, client, BINANCE, DAY)
    with pytest.raises(CommitFailedException):
        with stale.transaction() as tx:
            tx.set_properties({"k2.test": "x"})
            tx.append(fresh.scan().to_arrow())


def test_concurrent_processes(lake: Lake) -> None:
    client = lake.client()
    for partition in range(4):
        insert_binance(client, DAY, partition, range(20_000))
    procs = [
        subprocess.Popen(_offload_in_a_process(5000), env={**os.environ, **lake.env}, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    rows = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(rows) == 80_000, rows
    assert _assert_exactly_once(lake, _table(lake)).actual == 80_000


@pytest.mark.parametrize("point", ["mid_read", "mid_write", "after_iceberg_commit"])
def test_killed_at_every_step(lake: Lake, point: str) -> None:
    client = lake.client()
    for partition in range(2):
        insert_binance(client, DAY, partition, range(3_000))
    proc = subprocess.run(
        _offload_in_a_process(1000), env={**os.environ, **lake.env, "K2_FAILPOINT": point}, timeout=120
    )
    assert proc.returncode == -9  # SIGKILL: no cleanup ran
    table = _table(lake)
    committed = point == "after_iceberg_commit"
    assert (table.current_snapshot() is not None) == committed
    assert iceberg.read_watermark(table, DAY) == ({0: 2999, 1: 2999} if committed else {})
    rerun = offload.offload_day(table, client, BINANCE, DAY)
    assert rerun.rows == (0 if committed else 6_000)
    assert _assert_exactly_once(lake, table).actual == 6_000


def test_clickhouse_unreachable_commits_nothing(lake: Lake) -> None:
    table = _table(lake)
    (port,) = free_ports(1)
    down = type(lake.settings)(**{**lake.settings.__dict__, "clickhouse_url": f"clickhouse://default@127.0.0.1:{port}/k2"})
    with pytest.raises(HotTierUnavailable, match=f"127.0.0.1:{port}"):
        with hot_tier_errors(down):
            offload.offload_day(table, connect(down), BINANCE, DAY)
    assert table.refresh().current_snapshot() is None


def test_malformed_messages_are_copied_verbatim(lake: Lake) -> None:
    """Bronze is an exact copy: a malformed price reaches bronze as sent, for silver to quarantine."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(5), price="not-a-number")
    insert_binance(client, DAY, 0, range(5, 10), price="")
    table = _table(lake)
    offload.offload_day(table, client, BINANCE, DAY)
    prices = sorted(table.scan(selected_fields=("price",)).to_arrow().column("price").to_pylist())
    assert prices == [""] * 5 + ["not-a-number"] * 5
    _assert_exactly_once(lake, table)
