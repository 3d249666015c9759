"""Hot-tier retention gated on the offload (DESIGN §5.6), against real ClickHouse, PostgreSQL and Iceberg files."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from k2_lakehouse.core import bronze, hot_tier, iceberg, offload, reconcile, retention, sensing, verify
from k2_lakehouse.core.contracts import BINANCE, HOT_TABLES
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 3, 14)
TODAY = DAY + dt.timedelta(days=3)
KEEP = 2  # with TODAY: days before DAY + 1 are retired, DAY + 1 and later stay


def _table(lake: Lake):
    return iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)


def _retire(lake: Lake) -> retention.RetentionReport:
    return retention.retire(lake.settings, retention_days=KEEP, today=TODAY)


def _hot_rows(lake: Lake, day: dt.date = DAY) -> int:
    (n,), = lake.client().execute(
        f"SELECT count() FROM {BINANCE.name} WHERE trade_date = %(day)s", {"day": day}, settings={"use_numpy": False}
    )
    return n


def _exact(lake: Lake, day: dt.date = DAY) -> reconcile.Reconciliation:
    table = _table(lake)
    result = reconcile.reconcile(table, lake.client(), BINANCE, day, iceberg.read_watermark(table, day))
    assert result.in_sync, result
    return result


def _day(report: retention.RetentionReport, day: dt.date = DAY, table: str = BINANCE.name) -> retention.DayRetention:
    (found,) = [d for d in report.days if d.day == day and d.table == table]
    return found


def _seed_and_offload(lake: Lake, day: dt.date = DAY) -> None:
    """70 positions over two feed partitions, 5 of them delivered twice: 75 hot rows."""
    client = lake.client()
    insert_binance(client, day, 0, range(50))
    insert_binance(client, day, 0, range(45, 50))
    insert_binance(client, day, 1, range(20))
    assert offload.offload_day(_table(lake), client, BINANCE, day).rows == 70


def test_retired_day_reruns_and_verifies_exact(lake: Lake) -> None:
    _seed_and_offload(lake)
    recent = DAY + dt.timedelta(days=1)
    insert_binance(lake.client(), recent, 0, range(50, 60))  # within the retention: never touched

    report = _retire(lake)
    retired = _day(report, DAY)
    assert retired.retired and retired.rows_deleted == 75 and retired.retired_positions == 70
    assert retired.watermark == {0: 49, 1: 19}
    assert [d.day for d in report.days] == [DAY]
    assert report.metadata() == {"retention_days": KEEP, "days_retired": 1, "days_kept": 0, "rows_deleted": 75}
    assert "retired" in report.report() and "75" in report.report()
    assert _hot_rows(lake) == 0 and _hot_rows(lake, recent) == 10
    record = iceberg.read_retired(_table(lake), DAY)
    assert (record.watermark, record.positions) == ({0: 49, 1: 19}, 70)

    # Before the record, this was `expected=0 actual=70 missing=-70`, for ever.
    table = _table(lake)
    assert offload.offload_day(table, lake.client(), BINANCE, DAY).rows == 0
    result = _exact(lake)
    assert (result.expected, result.actual, result.retired, result.hot_rows, result.hot_positions) == (70, 70, 70, 0, 70)
    built = bronze.build_bronze_day(lake.settings, BINANCE, DAY)  # what the Dagster asset runs, whole partition
    assert all(c.passed for c in built.checks), built.checks
    checked = verify.verify(lake.settings, days=[DAY], layers=("bronze",))  # `recent` lags: not offloaded
    assert checked.mismatched == 0, checked.report()
    line = next(ln for ln in checked.report().splitlines() if ln.startswith("bronze.trades_binance") and str(DAY) in ln)
    assert line.split()[2:5] == ["0", "70", "70"]  # hot rows, hot positions (held), retired

    # Nothing new for the retired day: no run requested, and a second retirement has nothing to do.
    assert offload.pending_days(table, lake.client(), BINANCE) == [recent]
    assert sensing.pending_days(lake.settings, bronze={BINANCE.name}, silver_wanted=False, gold_wanted=False) == [recent]
    highs = {BINANCE.bronze.name: hot_tier.high_offsets_by_day(lake.client(), BINANCE)}
    request, _ = sensing.bronze_request(highs, {}, lambda t, d: iceberg.read_watermark(table, d))
    assert request.day == recent
    assert _retire(lake).days == ()


def test_lagging_or_failing_days_are_kept_with_the_reason(lake: Lake) -> None:
    client = lake.client()
    lagging, failing, never = DAY, DAY - dt.timedelta(days=1), DAY - dt.timedelta(days=2)
    insert_binance(client, lagging, 0, range(30))
    insert_binance(client, failing, 0, range(100, 120))
    insert_binance(client, never, 0, range(200, 205))
    table = _table(lake)
    offload.offload_day(table, client, BINANCE, lagging)
    offload.offload_day(table, client, BINANCE, failing)
    insert_binance(client, lagging, 0, range(30, 40))  # not offloaded yet
    table.refresh()
    rows = table.scan(row_filter=iceberg.day_filter(BINANCE.bronze, failing), limit=3).to_arrow()
    table.append(rows.cast(table.schema().as_arrow()))  # three positions of `failing` now twice in bronze

    report = _retire(lake)
    assert [(d.day, d.action, d.rows_deleted) for d in report.days] == [
        (never, "kept: lagging 5 positions", 0),
        (failing, "kept: check failed (expected 20, bronze 23, missing 0, duplicates 3, checksum match)", 0),
        (lagging, "kept: lagging 10 positions", 0),
    ]
    assert report.metadata()["days_kept"] == 3 and report.rows_deleted == 0
    assert (_hot_rows(lake, lagging), _hot_rows(lake, failing), _hot_rows(lake, never)) == (40, 20, 5)
    table.refresh()
    assert not [k for k in table.properties if k.startswith(iceberg.RETIRED_PREFIX)]
    assert "kept: lagging 10 positions" in report.report()

    # Once offloaded, the lagging day goes.
    offload.offload_day(table, client, BINANCE, lagging)
    assert _day(_retire(lake), lagging).retired and _hot_rows(lake, lagging) == 0
    assert _exact(lake, lagging).retired == 40


def test_late_rows_for_a_retired_day_are_offloaded_and_retired_again(lake: Lake) -> None:
    _seed_and_offload(lake)
    first = _retire(lake)
    assert _day(first).retired
    client = lake.client()
    insert_binance(client, DAY, 0, range(100, 110))  # late trades: higher offsets
    insert_binance(client, DAY, 0, [10])  # a redelivery of a retired position: counted once, from the record
    insert_binance(client, DAY, 3, range(5))  # a feed partition the day never had

    table = _table(lake)
    assert offload.pending_days(table, client, BINANCE) == [DAY]
    late = offload.offload_day(table, client, BINANCE, DAY)
    assert late.rows == 15 and late.watermark_after == {0: 109, 1: 19, 3: 4}
    # The incremental check of that run, as the asset makes it: on top of the verified, retired 70.
    increment = reconcile.reconcile_increment(
        table, client, BINANCE, DAY, reconcile.Verified(late.watermark_before, 70), late.watermark_after, late.paths, 85,
    )
    assert increment.incremental and increment.exactly_once and (increment.expected, increment.retired) == (85, 70)
    # A verified watermark below the record's: the hot rows it would compare with are gone; the whole partition then.
    fallback = reconcile.reconcile_increment(
        table, client, BINANCE, DAY, reconcile.NOTHING_VERIFIED, late.watermark_after, late.paths, 85,
    )
    assert not fallback.incremental and fallback.exactly_once and fallback.expected == 85
    assert _exact(lake).hot_rows == 16

    second = _day(_retire(lake))
    assert second.retired and second.rows_deleted == 16 and second.retired_positions == 85
    record = iceberg.read_retired(_table(lake), DAY)
    assert (record.watermark, record.positions) == ({0: 109, 1: 19, 3: 4}, 85)
    assert _hot_rows(lake) == 0
    assert _exact(lake).expected == 85
    assert verify.verify(lake.settings, layers=("bronze",)).mismatched == 0


def _retire_in_a_process(failpoint: str, lake: Lake) -> subprocess.CompletedProcess:
    code = (
        "import datetime as dt\n"
        "from k2_lakehouse.core import retention\n"
        "from k2_lakehouse.core.settings import Settings\n"
        f"print(retention.retire(Settings.from_env(), retention_days={KEEP}, today=dt.date.fromisoformat('{TODAY}')).report())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **lake.env, "K2_FAILPOINT": failpoint},
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("point", ["after_retirement_record", "mid_delete"])
def test_killed_between_record_and_delete(lake: Lake, point: str) -> None:
    _seed_and_offload(lake)
    crashed = _retire_in_a_process(point, lake)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # SIGKILL: no cleanup ran
    table = _table(lake)
    assert iceberg.read_retired(table, DAY).positions == 70
    if point == "after_retirement_record":
        assert _hot_rows(lake) == 75  # recorded, nothing deleted: still exact, the record counts them once
        assert _exact(lake).expected == 70
    assert verify.verify(lake.settings, layers=("bronze",)).mismatched == 0

    rerun = _retire(lake)  # finishes the job (the mutation a killed run sent goes on in the server)
    assert _hot_rows(lake) == 0
    if point == "after_retirement_record":
        assert _day(rerun).retired and _day(rerun).rows_deleted == 75
    result = _exact(lake)
    assert (result.expected, result.actual, result.retired) == (70, 70, 70)
    assert iceberg.read_retired(_table(lake), DAY).positions == 70  # re-running did not count anything twice


def test_a_late_row_between_check_and_delete_survives(lake: Lake) -> None:
    _seed_and_offload(lake)
    table = _table(lake)
    reader, writer = lake.client(), hot_tier.connect(lake.settings, write=True)
    record = retention.check_day(table, reader, BINANCE, DAY)
    assert isinstance(record, iceberg.Retired) and record.watermark == {0: 49, 1: 19}
    insert_binance(reader, DAY, 0, [50])  # lands after the check, before the delete
    insert_binance(reader, DAY, 2, [0])
    assert retention.record_retirement(table, DAY, record, None)
    assert retention.delete_retired(writer, BINANCE, DAY, record.watermark) == (75, True)
    assert sorted(hot_tier.high_offsets(reader, BINANCE, DAY).items()) == [(0, 50), (2, 0)]  # both survived

    late = offload.offload_day(_table(lake), reader, BINANCE, DAY)
    assert late.rows == 2 and late.watermark_after == {0: 50, 1: 19, 2: 0}
    result = _exact(lake)
    assert (result.expected, result.actual, result.retired) == (72, 72, 70)


def test_record_written_by_another_retirement_meanwhile_is_not_overwritten(lake: Lake) -> None:
    """A retirement checks again when the record changed under it, instead of replacing it blindly."""
    _seed_and_offload(lake)
    table = _table(lake)
    record = retention.check_day(table, lake.client(), BINANCE, DAY)
    other = iceberg.Retired({0: 49, 1: 19}, 70, record.checksum)
    with _table(lake).transaction() as tx:
        tx.set_properties({iceberg.retired_key(DAY): iceberg.encode_retired(other)})
    assert not retention.record_retirement(table, DAY, record, None)
    assert retention.record_retirement(table, DAY, record, other)  # the same record: nothing to write


def test_retention_off_keeps_everything(lake: Lake) -> None:
    _seed_and_offload(lake)
    report = retention.retire(lake.settings, today=TODAY)  # K2_HOT_RETENTION_DAYS defaults to 0
    assert report.days == () and report.cutoff is None and "off" in report.report()
    assert _hot_rows(lake) == 75


def test_kraken_days_retire_too(lake: Lake) -> None:
    """Every hot table is considered: both exchanges' rows of an old day go once bronze holds them."""
    from k2_lakehouse.core import feed

    feed.seed(lake.settings, DAY, 300, seed=7, progress=False)
    for hot in HOT_TABLES.values():
        assert bronze.build_bronze_day(lake.settings, hot, DAY).reconciliation.in_sync
    report = _retire(lake)
    assert sorted(d.table for d in report.days if d.retired) == sorted(h.name for h in HOT_TABLES.values())
    checked = verify.verify(lake.settings, layers=("bronze",))
    assert checked.mismatched == 0 and all(r.hot_rows == 0 and r.retired > 0 for r in checked.bronze), checked.report()
