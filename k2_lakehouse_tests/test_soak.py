"""`k2 soak` for five minutes: the whole live system (feed, webserver, daemon with its sensors, the exporter,
Prometheus, Alertmanager) runs, is sampled from outside, catches up by itself after the feed stops (the
hot-tier sensor launches the bronze runs, automation rebuilds silver and gold, no run started by hand),
verifies exact, and the report says so with its plots. The committed report under docs/soak/ is the same
command run for hours."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from k2_lakehouse_tests.support import Lake, free_ports

PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_five_minute_soak_ends_exact_and_writes_its_report(lake: Lake, tmp_path: Path) -> None:
    report = tmp_path / "soak"
    ui, metrics, prometheus, alertmanager = free_ports(4)
    done = subprocess.run(
        [sys.executable, "-m", "k2_lakehouse.cli", "soak", "--for", "5m", "--interval", "15s", "--rate", "50",
         "--history-days", "0", "--catch-up", "5m", "--maintain-every", "3m", "--maintain-older-than", "1m",
         "--port", str(ui), "--report", str(report), f"--live-arg=--metrics-port={metrics}",
         f"--live-arg=--prometheus-port={prometheus}", f"--live-arg=--alertmanager-port={alertmanager}"],
        cwd=PROJECT, capture_output=True, text=True, timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output + _tail(report / "live.log")
    text = (report / "report.md").read_text()
    assert "`k2 verify` at the end: **every layer exact**" in text, text

    samples = [json.loads(line) for line in (report / "samples.jsonl").read_text().splitlines()]
    feed = [s for s in samples if s["phase"] == "feed"]
    assert len(feed) >= 12, len(feed)  # every 15 s while the feed runs, from when the UI answered (~1 min in)
    for part in ("feed", "webserver", "webserver children", "daemon", "daemon children", "metrics", "prometheus", "alertmanager"):
        assert all(s["rss"].get(part, 0) > 0 for s in feed), (part, [s["rss"] for s in feed])
    assert {"bronze_trades_binance", "bronze_trades_kraken"} <= set(feed[-1]["lag_s"])
    assert set(samples[-1]["layers"]) == {"bronze", "silver", "gold"}
    assert samples[-1]["event_log_bytes"] > feed[0]["event_log_bytes"]
    assert not any(samples[-1]["rows_behind"].values())
    for png in ("lag.png", "rss.png", "growth.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    # The runs came from the sensor and automation, maintenance ran, and a healthy soak alerts nobody.
    assert "| hot_tier_sensor |" in text and "| lakehouse_automation |" in text, text
    _every_table_day_built_by_the_daemon(json.loads((report / "samples.jsonl").read_text().splitlines()[-1])["t"])
    assert "`k2 maintain --older-than 1m` exit 0" in text, text
    assert (report / "alerts.jsonl").read_text() == "", (report / "alerts.jsonl").read_text()
    assert "- none: no Prometheus alert fired" in text


def _every_table_day_built_by_the_daemon(until: float) -> None:
    """Every day of every table was last written by a run the hot-tier sensor (bronze) or automation (silver,
    gold) launched, or the catch-up schedule (every 15 min, it may fire during the test): none by hand."""
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, RunsFilter

    from k2_lakehouse.core.contracts import TABLES

    with DagsterInstance.get() as instance:
        def launched_by(tag: str, value: str) -> set[str]:
            return {r.dagster_run.run_id for r in instance.get_run_records(RunsFilter(tags={tag: value}))}

        catch_up = launched_by("dagster/schedule_name", "catch_up_schedule")
        by_sensor = launched_by("k2/trigger", "hot_tier_sensor") | catch_up
        automated = launched_by("dagster/sensor_name", "lakehouse_automation") | catch_up
        for contract in TABLES:
            key = AssetKey(contract.asset_path)
            days = instance.get_materialized_partitions(key)
            assert days, key
            for day in days:
                (record,) = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1).records
                assert record.run_id in (by_sensor if contract.qualified_name.startswith("bronze.") else automated), (key, day)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text()[-chars:] if path.exists() else ""
