"""The local Prometheus and Alertmanager (Debian's `prometheus` and `prometheus-alertmanager`) that `k2 live`
runs beside the metrics exporter: their configuration and command lines. Both listen on 127.0.0.1 only;
Alertmanager's cluster listener (0.0.0.0:9094 by default) is switched off.

The alert rules are the repository's `ops/prometheus/alerts.yml`, used as they are (the compose stack mounts
the same file). Alertmanager delivers through the exporter's relay (`metrics.app`), so the webhook URL
(`K2_ALERT_WEBHOOK_URL`, which may carry a token) stays in the K2 processes' environment; without it alerts
stay visible in Alertmanager's UI and API and go nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

PROMETHEUS = Path("/usr/bin/prometheus")
PROMTOOL = Path("/usr/bin/promtool")
ALERTMANAGER = Path("/usr/bin/prometheus-alertmanager")
OPS_DIR = Path(__file__).resolve().parents[2] / "ops"
ALERT_RULES = OPS_DIR / "prometheus" / "alerts.yml"
WEBHOOK_VAR = "K2_ALERT_WEBHOOK_URL"


@dataclass(frozen=True)
class Monitoring:
    """Where the exporter, Prometheus and Alertmanager listen, and how often things happen."""

    metrics_port: int = 9464
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    scrape_interval: str = "15s"  # also the rule evaluation interval
    group_wait: str = "10s"  # Alertmanager: how long it gathers a new group's alerts before the first post
    retention: str = "15d"  # Prometheus keeps this much history (the soak's 2 h are far inside it)


def prometheus_config(m: Monitoring, rules: Path = ALERT_RULES) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": m.scrape_interval, "evaluation_interval": m.scrape_interval},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{m.alertmanager_port}"]}]}]},
        "scrape_configs": [
            {"job_name": "k2", "scrape_timeout": m.scrape_interval,
             "static_configs": [{"targets": [f"127.0.0.1:{m.metrics_port}"]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{m.prometheus_port}"]}]},
        ],
    }, sort_keys=False)


def alertmanager_config(m: Monitoring, webhook_url: str | None) -> str:
    """Alertmanager posts to the exporter's relay, which forwards to the webhook: the URL itself (it may carry a
    token) never reaches Alertmanager, whose 0.25 logs it when a post fails and serves it on /api/v2/status."""
    receiver: dict = {"name": "k2"}
    if webhook_url:
        receiver["webhook_configs"] = [{"url": f"http://127.0.0.1:{m.metrics_port}/alertmanager", "send_resolved": True}]
    return yaml.safe_dump({
        "route": {"receiver": "k2", "group_by": ["alertname"], "group_wait": m.group_wait,
                  "group_interval": "1m", "repeat_interval": "4h"},
        "receivers": [receiver],
    }, sort_keys=False)


def write_configs(m: Monitoring, home: Path, env: dict[str, str] | None = None) -> tuple[Path, Path]:
    """Write both configurations under `home` (K2_HOME); returns (prometheus.yml, alertmanager.yml)."""
    env = dict(os.environ if env is None else env)
    prom_dir, am_dir = home / "prometheus", home / "alertmanager"
    for d in (prom_dir / "data", am_dir / "data"):
        d.mkdir(parents=True, exist_ok=True)
    prom = prom_dir / "prometheus.yml"
    prom.write_text(prometheus_config(m))
    am = am_dir / "alertmanager.yml"
    am.write_text(alertmanager_config(m, env.get(WEBHOOK_VAR) or None))
    return prom, am


def prometheus_argv(m: Monitoring, config: Path, data: Path) -> list[str]:
    return [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--storage.tsdb.retention.time={m.retention}", f"--web.listen-address=127.0.0.1:{m.prometheus_port}"]


def alertmanager_argv(m: Monitoring, config: Path, data: Path) -> list[str]:
    return [str(ALERTMANAGER), f"--config.file={config}", f"--storage.path={data}",
            f"--web.listen-address=127.0.0.1:{m.alertmanager_port}", "--cluster.listen-address="]
