"""Dagster's own alerts from a running `dagster-daemon`: the hot-tier sensor offloads a day, bronze is then
corrupted behind the offload's back, the next sensor-launched run fails its exactly-once check, and the alert
sensors post that check failure and that run failure to a webhook here, each once; so is the failure of a
`k2 run` of the day, in process."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from k2_lakehouse import runner
from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.soak import WebhookReceiver
from k2_lakehouse_tests.support import Lake, insert_binance, wait_until

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_running_daemon_posts_a_failed_check_and_its_failed_run_once(lake: Lake, tmp_path: Path) -> None:
    day = dt.datetime.now(dt.timezone.utc).date()
    receiver = WebhookReceiver()
    insert_binance(lake.client(), day, 0, range(50))
    env = {**os.environ, **lake.env, "K2_ALERT_WEBHOOK_URL": receiver.url, "K2_FIRST_DAY": day.isoformat()}
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(PROJECT / "workspace.yaml")],
                              cwd=PROJECT, env=env, stdout=open(tmp_path / "daemon.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    key = AssetKey(BINANCE.asset_path)

    def log() -> str:
        return (tmp_path / "daemon.log").read_text()[-4000:]
    try:
        with DagsterInstance.get() as instance:
            wait_until(lambda: instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day.isoformat()]),
                                                               limit=1).records, 300, log, every=2)
            # Behind the offload's back: three rows of bronze appended again. The next offload's check must fail.
            table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
            table.append(table.scan(limit=3).to_arrow().cast(table.schema().as_arrow()))
            insert_binance(lake.client(), day, 0, range(50, 60))

            def posted() -> list[dict]:
                return [b for b in receiver.bodies if b.get("kind") in ("check_failure", "run_failure")]

            wait_until(lambda: {"check_failure", "run_failure"} <= {b["kind"] for b in posted()}, 300, log, every=2)
            # An operator's `k2 run` of the day, in this process (no code location): it fails the same check,
            # and its failure is posted too.
            before = {r.run_id for r in instance.get_runs()}
            assert not all(row.success for row in runner.run("/".join(BINANCE.asset_path), [day.isoformat()], instance))
            (by_hand,) = [r for r in instance.get_runs() if r.run_id not in before and r.remote_job_origin is None]
            wait_until(lambda: any(b["kind"] == "run_failure" and b["run_id"] == by_hand.run_id for b in posted()),
                       120, log, every=2)
            time.sleep(35)  # two more ticks of each alert sensor: nothing is posted twice
        alerts = posted()
        checks = [b for b in alerts if b["kind"] == "check_failure"]
        runs = [b for b in alerts if b["kind"] == "run_failure"]
        assert any(b["asset"] == "bronze/trades_binance" and b["check"] == "exactly_once" and b["partition"] == day.isoformat()
                   and b["numbers"]["difference"] != 0 and b["blocking"] is True for b in checks), checks
        assert len({(b["run_id"], b["asset"], b["check"], b["partition"]) for b in checks}) == len(checks), checks  # once each
        assert len({b["run_id"] for b in runs}) == len(runs), runs
        failed_run = next(b for b in runs if "bronze/trades_binance" in b["assets"])
        assert failed_run["partition"] == day.isoformat() and failed_run["link"].endswith(f"/runs/{failed_run['run_id']}")
        assert all(b["severity"] == "ERROR" for b in checks)  # the WARN freshness checks are not posted
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        receiver.close()
