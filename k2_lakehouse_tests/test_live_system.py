"""The live system end to end: `k2 live` runs the feed, the webserver and the daemon; the hot-tier sensor
launches the bronze runs, automation rebuilds silver and gold, and every layer ends exactly equal to the
hot tier with no run of ours started by hand."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

from k2_lakehouse.core import hot_tier
from k2_lakehouse.core.contracts import GOLD_TABLES, HOT_TABLES, SILVER_TRADES
from k2_lakehouse.core.verify import verify
from k2_lakehouse.defs.automation import IN_FLIGHT
from k2_lakehouse_tests.support import Lake, free_ports

PROJECT = Path(__file__).resolve().parents[1]
FEED_S = 30  # the feed writes this long, then stops: the system must catch up by itself
CATCH_UP_S = 300  # generous: every daemon-launched run starts a Python process (~10 s on 2 cores)


def test_sensor_and_automation_keep_every_layer_equal_to_the_hot_tier(lake: Lake) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [today - dt.timedelta(days=1), today]
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2_lakehouse.cli", "live", "--port", str(free_ports(1)[0]), "--history-days", "1",
         "--history-rows", "5000", "--rate", "40", "--feed-for", f"{FEED_S}s", "--keep-services"],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + CATCH_UP_S
        result = None
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(10)
            if not _feed_done(lake, days):
                continue
            result = verify(lake.settings, days)
            if result.bronze and not result.mismatched and len(result.derived) == 2 * (2 + len(GOLD_TABLES)):
                break
        assert proc.poll() is None, "".join(output)
        assert result is not None and not result.mismatched and result.bronze, result and result.report()
        assert all(r.in_sync and r.actual > 0 for r in result.bronze), result.report()

        with DagsterInstance.get() as instance:
            # Iceberg is published before the run records its events (gold's six one by one): let runs finish.
            settle = time.monotonic() + 120
            while instance.get_run_records(RunsFilter(statuses=IN_FLIGHT), limit=1) and time.monotonic() < settle:
                time.sleep(2)
            runs = instance.get_run_records(RunsFilter(tags={"k2/trigger": "hot_tier_sensor"}))
            assert runs and all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in runs
                                if r.dagster_run.status not in (DagsterRunStatus.QUEUED, DagsterRunStatus.STARTED))
            # The catch-up schedule (every 15 min) may fire during the test: its runs are the daemon's too.
            catch_up = {r.dagster_run.run_id for r in instance.get_run_records(
                RunsFilter(tags={"dagster/schedule_name": "catch_up_schedule"}))}
            by_sensor = {r.dagster_run.run_id for r in runs} | catch_up
            for hot in HOT_TABLES.values():  # every bronze day was written by sensor-launched runs
                for day in days:
                    record = _latest(instance, AssetKey(hot.asset_path), day)
                    assert record is not None and record.run_id in by_sensor, (hot.name, day)
            automated = {r.dagster_run.run_id for r in instance.get_run_records(
                RunsFilter(tags={"dagster/sensor_name": "lakehouse_automation"}))} | catch_up
            for key in [AssetKey(SILVER_TRADES.asset_path), *(AssetKey(c.asset_path) for c in GOLD_TABLES.values())]:
                for day in days:
                    record = _latest(instance, key, day)
                    assert record is not None and record.run_id in automated, (key, day)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
        reader.join(timeout=5)
    assert rc == 0, "".join(output)


def _feed_done(lake: Lake, days: list[dt.date]) -> bool:
    """The feed has written today's trades and stopped: the hot tier no longer moves."""
    client = lake.client()
    try:
        first = {(hot.name, day): hot_tier.high_offsets(client, hot, day) for hot in HOT_TABLES.values() for day in days}
        time.sleep(2)
        again = {(hot.name, day): hot_tier.high_offsets(client, hot, day) for hot in HOT_TABLES.values() for day in days}
    finally:
        client.disconnect()
    return all(first[(hot.name, days[-1])] for hot in HOT_TABLES.values()) and first == again


def _latest(instance: DagsterInstance, key: AssetKey, day: dt.date):
    from dagster import AssetRecordsFilter

    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]), limit=1).records
    return records[0] if records else None
