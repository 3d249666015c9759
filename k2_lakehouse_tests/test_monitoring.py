"""Metrics, Prometheus and Alertmanager on real processes: the exporter reads a real lake, Debian's Prometheus
scrapes it and evaluates the repository's rules, and Alertmanager delivers the lag alert to a webhook here."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance
from prometheus_client.parser import text_string_to_metric_families

from k2_lakehouse import metrics, runner
from k2_lakehouse.soak import WebhookReceiver
from k2_lakehouse.core import alerting, feed, monitoring
from k2_lakehouse.core.contracts import TABLES
from k2_lakehouse.core.settings import Settings
from k2_lakehouse_tests.support import Lake, free_ports, wait_until

PROJECT = Path(__file__).resolve().parents[1]
RULES_DIR = PROJECT / "ops" / "prometheus"
LAG_THRESHOLD_S = 20  # K2_ALERT_LAG for this test; the rule then holds for 1 minute


def test_alert_rules_pass_promtool_checks_and_their_unit_tests() -> None:
    checked = subprocess.run([str(monitoring.PROMTOOL), "check", "rules", "alerts.yml"], cwd=RULES_DIR, capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run([str(monitoring.PROMTOOL), "test", "rules", "alerts_test.yml"], cwd=RULES_DIR, capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_generated_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    m = monitoring.Monitoring()
    prom, am = monitoring.write_configs(m, tmp_path, env={monitoring.WEBHOOK_VAR: "https://hooks.example/T0K3N"})
    checked = subprocess.run([str(monitoring.PROMTOOL), "check", "config", str(prom)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    amtool = Path("/usr/bin/amtool")
    if amtool.exists():
        checked = subprocess.run([str(amtool), "check-config", str(am)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    # The webhook URL (it may carry a token) stays with K2: Alertmanager posts to the exporter's relay.
    assert "T0K3N" not in prom.read_text() + am.read_text()
    assert f"http://127.0.0.1:{m.metrics_port}/alertmanager" in am.read_text()


def test_a_source_down_is_reported_and_the_others_still_served(lake: Lake) -> None:
    broken = Settings.from_env({**lake.env, "K2_CLICKHOUSE_PORT": str(free_ports(1)[0]), "K2_CLICKHOUSE_URL": ""})
    families = _parse(_generate(metrics.registry(broken, dagster=False)))
    up = {s.labels["source"]: s.value for s in families["k2_source_up"].samples}
    assert up == {"hot_tier": 0.0, "iceberg": 1.0, "postgres": 1.0, "processes": 1.0, "disk": 1.0}
    assert families["k2_postgres_event_log_bytes"].samples[0].value >= 0
    assert "k2_bronze_lag_seconds" not in families


def test_the_relay_forwards_alertmanager_notifications_only_and_redacted() -> None:
    """The relay listens where other programs reach it: it must not carry whatever they post to the webhook."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import CollectorRegistry

    receiver = WebhookReceiver()
    settings = Settings.from_env({"K2_POSTGRES_URL": "postgresql://k2:pg-S3cret-pw@127.0.0.1:5432/dagster"})
    relays = []
    for webhook in (receiver.url, f"http://127.0.0.1:{free_ports(1)[0]}/down"):  # the second: nothing listens
        server = make_server("127.0.0.1", 0, metrics.app(settings, CollectorRegistry(), webhook),
                             handler_class=type("Quiet", (WSGIRequestHandler,), {"log_message": lambda *a: None}))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        relays.append(server)
    relay, relay_to_nothing = (f"http://127.0.0.1:{s.server_port}{metrics.RELAY_PATH}" for s in relays)
    notification = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "K2ColdTierBehind", "table": "bronze_trades_kraken"},
         "annotations": {"description": "ClickHouse at clickhouse://k2:pg-S3cret-pw@127.0.0.1 is behind"}}]}
    try:
        assert _post(relay, json.dumps(notification).encode()) == 200
        [relayed] = receiver.bodies
        assert relayed["alerts"][0]["labels"]["alertname"] == "K2ColdTierBehind"
        assert "pg-S3cret-pw" not in json.dumps(relayed) and "***" in relayed["alerts"][0]["annotations"]["description"]

        refused = [
            json.dumps({"text": "anything at all"}).encode(),  # a chat message, not an alert
            json.dumps({"version": "4", "alerts": []}).encode(),
            json.dumps({"version": "4", "alerts": [{"labels": {}}]}).encode(),
            b"not json",
        ]
        assert [_post(relay, body) for body in refused] == [400] * len(refused)
        # Refused on its announced length, unread (sending the body would race the server's early answer).
        too_big = http.client.HTTPConnection("127.0.0.1", relays[0].server_port, timeout=10)
        too_big.putrequest("POST", metrics.RELAY_PATH)
        too_big.putheader("Content-Length", str(alerting.MAX_NOTIFICATION_BYTES + 1))
        too_big.endheaders()
        assert too_big.getresponse().status == 413
        too_big.close()
        with pytest.raises(urllib.error.HTTPError) as get:
            urllib.request.urlopen(relay, timeout=10)
        assert get.value.code == 405
        assert len(receiver.bodies) == 1  # none of those reached the webhook

        assert _post(relay_to_nothing, json.dumps(notification).encode()) == 502  # Alertmanager retries a 5xx
    finally:
        for server in relays:
            server.shutdown()
            server.server_close()
        receiver.close()


@pytest.mark.slow
def test_a_stalled_offload_fires_the_lag_alert_through_prometheus_and_alertmanager(lake: Lake, tmp_path: Path) -> None:
    day = dt.datetime.now(dt.timezone.utc).date()
    feed.seed(lake.settings, day, 2_000, seed=3, progress=False)
    rows = runner.run("*", [day.isoformat()], DagsterInstance.get())
    assert all(r.success for r in rows), runner.format_rows(rows)

    receiver = WebhookReceiver()
    webhook = f"{receiver.url}/T0K3N-0123456789abcdef"  # a token in the path, as chat webhooks have
    m = monitoring.Monitoring(*free_ports(3), scrape_interval="2s", group_wait="1s")
    prom_cfg, am_cfg = monitoring.write_configs(m, tmp_path, env={monitoring.WEBHOOK_VAR: webhook})
    env = {**os.environ, **lake.env, "K2_ALERT_LAG": f"{LAG_THRESHOLD_S}s", "K2_METRICS_REFRESH": "2s", monitoring.WEBHOOK_VAR: webhook}
    procs = [
        subprocess.Popen([sys.executable, "-m", "k2_lakehouse.cli", "metrics", "serve", "--port", str(m.metrics_port)],
                         env=env, stdout=open(tmp_path / "metrics.log", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen(monitoring.prometheus_argv(m, prom_cfg, prom_cfg.parent / "data"),
                         stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen(monitoring.alertmanager_argv(m, am_cfg, am_cfg.parent / "data"),
                         stdout=open(tmp_path / "alertmanager.log", "w"), stderr=subprocess.STDOUT),
    ]
    prometheus = f"http://127.0.0.1:{m.prometheus_port}"
    try:
        # Prometheus scrapes the exporter, and every source answers.
        up = wait_until(lambda: _query(prometheus, "min(k2_source_up)") == [1.0] and _query(prometheus, 'up{job="k2"}') == [1.0], 120,
                   lambda: (tmp_path / "metrics.log").read_text()[-3000:])
        assert up
        assert _query(prometheus, "sum(k2_bronze_lag_rows)") == [0.0]
        assert _query(prometheus, 'k2_alert_threshold_seconds{alert="lag"}') == [float(LAG_THRESHOLD_S)]
        assert min(_query(prometheus, 'k2_iceberg_data_files{layer="bronze"}')) >= 1
        assert len(_query(prometheus, "k2_asset_last_materialization_age_seconds")) == len(TABLES)
        assert _query(prometheus, 'k2_check_passed{asset="bronze/trades_binance", check="exactly_once"}') == [1.0]
        assert _query(prometheus, 'k2_job_last_run_success') and _query(prometheus, "k2_process_resident_memory_bytes")
        rules = _get(f"{prometheus}/api/v1/rules")["data"]["groups"][0]["rules"]
        assert len(rules) == 8 and all(r["health"] == "ok" for r in rules), rules

        # The feed goes on while nothing offloads: the lag alert must reach the webhook.
        stalled_at = time.time()
        feed.seed(lake.settings, day, 500, seed=4, progress=False)
        fired = wait_until(lambda: receiver.alerts("K2ColdTierBehind"), 240, lambda: (tmp_path / "alertmanager.log").read_text()[-3000:])
        delivered_after = time.time() - stalled_at
        fired = fired[0]
        assert fired["status"] == "firing" and fired["labels"]["table"].startswith("bronze_trades_")
        assert fired["annotations"]["summary"].startswith(fired["labels"]["table"])
        lag = max(_query(prometheus, "k2_bronze_lag_seconds"))
        assert lag >= LAG_THRESHOLD_S
        # threshold + the rule's 1 minute hold + scrape, evaluation and Alertmanager's group wait
        print(f"stall to webhook: {delivered_after:.1f} s (K2_ALERT_LAG={LAG_THRESHOLD_S}s, for: 1m, scrape/eval 2s, group_wait 1s)")
        assert LAG_THRESHOLD_S + 60 <= delivered_after < LAG_THRESHOLD_S + 60 + 60
        # Alertmanager never held the token: not in its configuration API, its log or its files.
        status = json.dumps(_get(f"http://127.0.0.1:{m.alertmanager_port}/api/v2/status"))
        assert "/alertmanager" in status and "T0K3N" not in status
        assert not any("T0K3N" in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".yml"))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        receiver.close()


# -- helpers --------------------------------------------------------------------------------------


def _generate(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def _parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _query(prometheus: str, expr: str) -> list[float]:
    try:
        data = _get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    except OSError:
        return []
    return sorted(float(r["value"][1]) for r in data["data"]["result"])
