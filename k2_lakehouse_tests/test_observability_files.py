"""The monitoring files (ops/) and their services in docker-compose.yml, checked without any service running.

The Grafana dashboard may name only metrics the exporter serves (`k2_lakehouse.metrics.METRICS`) and query only
the provisioned data source; Prometheus, Alertmanager and Grafana are wired to each other, to the exporter and to
the files of this repository; Alertmanager posts to the exporter's relay and never holds the webhook URL.
`dashboard_expressions()` lists the dashboard's queries for a test against a live Prometheus.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import pytest
import yaml

from k2_lakehouse.metrics import METRICS, RELAY_PATH
from k2_lakehouse_tests.test_compose import COMPOSE_FILE, ROOT, docker_compose, env_file_values, render

OPS = ROOT / "ops"
DASHBOARDS_DIR = OPS / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS_DIR / "k2-lakehouse.json"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = OPS / "grafana" / "provisioning" / "dashboards" / "k2.yml"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = OPS / "alertmanager" / "alertmanager.yml"

MONITORING = {"metrics": "9464", "prometheus": "9090", "alertmanager": "9093", "grafana": "3000"}  # container ports
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
K2_METRIC = re.compile(r"\bk2_[a-z0-9_]+")
# What the dashboard must show (the brief of the dashboard): each of these in at least one query.
SHOWN = {
    "k2_bronze_lag_seconds", "k2_bronze_lag_rows", "k2_hot_high_offset", "k2_bronze_watermark_offset",
    "k2_asset_rows_written_1h", "k2_asset_last_rows_per_second", "k2_asset_materializations_1h", "k2_check_passed",
    "k2_asset_commit_conflicts_1h", "k2_job_runs_1h", "k2_job_consecutive_failures", "k2_job_last_run_duration_seconds",
    "k2_iceberg_data_files", "k2_iceberg_bytes", "k2_iceberg_rows", "k2_iceberg_snapshots", "k2_iceberg_metadata_bytes",
    "k2_asset_last_materialization_age_seconds", "k2_process_resident_memory_bytes", "k2_postgres_event_log_bytes",
    "k2_source_up",
}
# PromQL's own words (functions, aggregations, operators) that the queries may use besides metric names.
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "and", "or", "unless", "bool", "offset", "time", "vector",
    "scalar", "abs", "clamp_min", "clamp_max", "sort", "sort_desc", "rate", "increase", "delta", "deriv",
    "max_over_time", "min_over_time", "avg_over_time", "last_over_time", "label_replace",
}


# ------------------------------------------------------------------------------------------- helpers


class DashboardExpression(NamedTuple):
    panel: str  # the panel's title
    ref_id: str  # the query's refId within the panel
    expr: str  # PromQL, complete: the dashboard has no template variables
    instant: bool  # Grafana sends it as an instant query (tables) rather than a range query


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def dashboard_panels(board: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    board = load_dashboard() if board is None else board
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_expressions(path: Path = DASHBOARD) -> list[DashboardExpression]:
    """Every PromQL query of the dashboard as Grafana sends it to the `prometheus` data source: evaluate each
    against a live Prometheus (GET /api/v1/query?query=...) to see that it parses there and returns series."""
    return [
        DashboardExpression(panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
        for panel in dashboard_panels(load_dashboard(path))
        for target in panel.get("targets", [])
    ]


def metric_names(expr: str) -> set[str]:
    """The identifiers of a PromQL expression that are neither label names, strings nor PromQL's own words."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    return set(re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*", text)) - PROMQL_WORDS


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only) of a rendered service (1.29 renders strings, compose v2 dictionaries)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out[volume["target"]] = (str(volume.get("source", "")), bool(volume.get("read_only")))
        else:
            source, target, *mode = volume.split(":")
            out[target] = (source, "ro" in mode[0].split(",") if mode else False)
    return out


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port["target"])))
        else:
            host_ip = port.split(":")[0] if port.count(":") == 2 else ""
            out.append((host_ip, port.split(":")[-1].split("/")[0]))
    return out


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return render()["services"]


# ------------------------------------------------------------------------------------------- Grafana dashboard


def test_the_dashboard_parses_and_needs_no_variables() -> None:
    board = load_dashboard()
    assert board["uid"] == "k2-lakehouse" and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board.get("id") is None  # provisioned by uid: an id from another Grafana would collide
    assert board["templating"]["list"] == []  # so every expression is complete as written
    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    for e in expressions:
        assert e.expr.strip() and "$" not in e.expr, e


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    for panel in dashboard_panels():
        if panel["type"] == "row":
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel.get("targets") or []
        assert targets, f"{panel['title']} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE, (panel["title"], target["refId"])


def test_every_expression_names_only_exported_metrics() -> None:
    used: set[str] = set()
    for e in dashboard_expressions():
        tokens = set(K2_METRIC.findall(e.expr))
        assert tokens, f"{e.panel} [{e.ref_id}] names no k2 metric: {e.expr}"
        assert tokens <= set(METRICS), f"{e.panel} [{e.ref_id}]: not exported: {sorted(tokens - set(METRICS))}"
        names = metric_names(e.expr)  # stricter: no other metric (up, a typo without the k2_ prefix) either
        assert names <= set(METRICS), f"{e.panel} [{e.ref_id}]: not exported: {sorted(names - set(METRICS))}"
        used |= tokens
    assert SHOWN <= used, f"not on the dashboard: {sorted(SHOWN - used)}"


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    # promtool parses a rule file's expressions: one recording rule per dashboard query.
    rules = [{"record": f"k2_dashboard_query_{i}", "expr": e.expr} for i, e in enumerate(dashboard_expressions())]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------- provisioning


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(stack: dict[str, Any]) -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert {k: source[k] for k in ("type", "uid")} == DATASOURCE
    assert source["url"] == f"http://prometheus:{MONITORING['prometheus']}" and source["access"] == "proxy"

    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    grafana = mounts(stack["grafana"])
    dashboards_at = provider["options"]["path"]
    assert grafana[dashboards_at] == (str(DASHBOARDS_DIR), True)
    assert grafana["/etc/grafana/provisioning/datasources"] == (str(DATASOURCES.parent), True)
    assert grafana["/etc/grafana/provisioning/dashboards"] == (str(DASHBOARD_PROVIDERS.parent), True)
    home = stack["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == str(PurePosixPath(dashboards_at) / DASHBOARD.name)


# ------------------------------------------------------------------------------------------- Prometheus


def test_prometheus_scrapes_the_exporter_and_alerts_through_alertmanager(stack: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    (k2,) = [job for job in config["scrape_configs"] if job["job_name"] == "k2"]  # alerts.yml: up{job="k2"}
    assert k2.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    # k2_job_* name the Dagster job `dagster_job`: no clash with `job`, so the exporter's labels need no honoring.
    assert "honor_labels" not in k2
    assert [target for group in k2["static_configs"] for target in group["targets"]] == [f"metrics:{MONITORING['metrics']}"]
    assert config["rule_files"] == ["alerts.yml"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": [f"alertmanager:{MONITORING['alertmanager']}"]}]

    command = stack["metrics"]["command"]
    assert command[:3] == ["k2", "metrics", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0" and command[command.index("--port") + 1] == MONITORING["metrics"]

    prometheus = stack["prometheus"]
    config_file = PurePosixPath(next(a for a in prometheus["command"] if a.startswith("--config.file=")).split("=", 1)[1])
    assert mounts(prometheus)[str(config_file.parent)] == (str(PROMETHEUS_CONFIG.parent), True)  # with alerts.yml
    assert config_file.name == PROMETHEUS_CONFIG.name

    promtool = shutil.which("promtool")
    if promtool is not None:  # the rule file is checked by its own tests
        done = subprocess.run([promtool, "check", "config", "--syntax-only", str(PROMETHEUS_CONFIG)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------------- Alertmanager


def test_alertmanager_posts_to_the_exporters_relay_and_delivers_resolved_alerts_too() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    route = config["route"]
    assert (route["group_by"], route["group_wait"], route["repeat_interval"]) == (["alertname"], "30s", "4h")
    (receiver,) = config["receivers"]
    assert receiver["name"] == route["receiver"] and set(receiver) == {"name", "webhook_configs"}
    (webhook,) = receiver["webhook_configs"]
    # The relay of `k2 metrics serve` (service metrics), which alone holds K2_ALERT_WEBHOOK_URL.
    assert webhook["url"] == f"http://metrics:{MONITORING['metrics']}{RELAY_PATH}" and "url_file" not in webhook
    assert webhook["send_resolved"] is True
    assert sorted(p.name for p in ALERTMANAGER_CONFIG.parent.iterdir()) == [ALERTMANAGER_CONFIG.name]


def test_the_alertmanager_config_passes_amtool() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not installed (Debian package prometheus-alertmanager)")
    done = subprocess.run([amtool, "check-config", str(ALERTMANAGER_CONFIG)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_webhook_url_reaches_the_exporter_and_the_code_location_never_alertmanager(tmp_path: Path) -> None:
    url = "https://hooks.example.invalid/services/T0KEN-sentinel"
    env_file = tmp_path / "webhook.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {**env_file_values(), "K2_ALERT_WEBHOOK_URL": url}.items()))
    services = render(env_file)["services"]
    # The exporter (its relay forwards Alertmanager's notifications) and the code location, whose sensors post
    # Dagster's own alerts (k2_lakehouse/defs/alerts.py).
    with_url = sorted(name for name, service in services.items() if url in yaml.safe_dump(service))
    assert with_url == ["code-location", "metrics"]
    assert services["metrics"]["environment"]["K2_ALERT_WEBHOOK_URL"] == url
    alertmanager = services["alertmanager"]
    assert "K2_ALERT_WEBHOOK_URL" not in (alertmanager.get("environment") or {})
    assert url not in COMPOSE_FILE.read_text()

    # The image's own entrypoint (/bin/alertmanager) on the repository's config, mounted read-only.
    assert "entrypoint" not in alertmanager and "tmpfs" not in alertmanager
    command = alertmanager["command"]
    config_file = PurePosixPath(next(a for a in command if a.startswith("--config.file=")).split("=", 1)[1])
    assert all(a.startswith("--") for a in command) and config_file.name == ALERTMANAGER_CONFIG.name
    assert mounts(alertmanager)[str(config_file.parent)] == (str(ALERTMANAGER_CONFIG.parent), True)


# ------------------------------------------------------------------------------------------- compose


def test_the_monitoring_services_publish_on_loopback_and_mount_files_of_the_repository(stack: dict[str, Any]) -> None:
    assert set(MONITORING) <= set(stack)
    for name, port in MONITORING.items():
        service = stack[name]
        assert published(service) and all(host == "127.0.0.1" for host, _ in published(service)), name
        assert port in [target for _, target in published(service)], name
        for target, (source, read_only) in mounts(service).items():
            if source.startswith("/"):  # a bind mount (the others are named volumes)
                assert Path(source).exists() and Path(source).resolve().is_relative_to(ROOT), (name, source)
                assert read_only, f"{name} may write to {source}"
    for name in ("prometheus", "alertmanager", "grafana"):
        assert stack[name]["image"].startswith(f"{'grafana' if name == 'grafana' else 'prom'}/{name}:"), name


def test_the_exporter_runs_the_k2_image_with_the_readers_settings(stack: dict[str, Any]) -> None:
    metrics, daemon = stack["metrics"], stack["daemon"]
    assert metrics["image"] == daemon["image"]
    env = metrics["environment"]
    settings = {k: v for k, v in stack["code-location"]["environment"].items()
                if k not in ("K2_CLICKHOUSE_WRITER_URL", "SPARK_LOCAL_HOSTNAME")}
    # The daemon's instance, every source it reads, and the webhook its relay forwards Alertmanager's alerts to.
    assert {k: env.get(k) for k in settings} == settings and "K2_ALERT_WEBHOOK_URL" in settings
    assert "K2_CLICKHOUSE_WRITER_URL" not in env  # it only reads
    assert {"K2_ALERT_LAG", "K2_ALERT_STALE", "K2_ALERT_MAINTENANCE"} <= set(env)


def test_grafana_credentials_come_only_from_the_environment(tmp_path: Path) -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]["environment"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", raw["GF_SECURITY_ADMIN_PASSWORD"])
    example = env_file_values()
    assert example["GRAFANA_ADMIN_PASSWORD"].startswith("CHANGE_ME") and example["K2_ALERT_WEBHOOK_URL"] == ""
    env_file = tmp_path / "incomplete.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example.items() if k != "GRAFANA_ADMIN_PASSWORD"))
    done = docker_compose("config", "-q", env_file=env_file)
    assert done.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in done.stderr, done.stderr


def test_the_exporters_health_check_answers_without_a_scrape() -> None:
    """The compose health check GETs /favicon.ico: prometheus_client answers it without collecting (a scrape
    reads every source)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    collected = threading.Event()

    class Recorder:
        def collect(self):
            collected.set()
            return iter(())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Recorder())
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/favicon.ico", timeout=10) as response:
            assert response.status == 200
        assert not collected.is_set()
    finally:
        server.shutdown()
        thread.join(timeout=5)
