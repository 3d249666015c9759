"""`k2 metrics serve`: the lake's state in the Prometheus exposition format, on 127.0.0.1.

Every scrape asks the real sources again (`core.observe` for the hot tier, Iceberg and PostgreSQL;
`instance_state` for the Dagster instance; /proc for the live system's memory), so no value is a counter
that starts over when this process restarts. A source that fails is reported as `k2_source_up{source} 0`
and the others are still served. Alert thresholds are served as metrics too (`k2_alert_threshold_seconds`),
so the rule file in the repository stays one static text that `promtool` checks, and an installation (or a
test) moves a threshold through the environment.

The metric names are the contract of `ops/prometheus/alerts.yml` and `ops/grafana/dashboards/k2-lakehouse.json`:
`METRICS` lists each with its help text, and a test scrapes a live exporter against it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from k2_lakehouse.core import observe
from k2_lakehouse.core.errors import ConfigError
from k2_lakehouse.core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464
DEFAULT_REFRESH_S = 10.0  # K2_METRICS_REFRESH: how often the exporter reads the sources
WINDOW_S = 3600.0  # the window of the *_1h metrics


@dataclass(frozen=True)
class Thresholds:
    """When an alert fires, from the environment (seconds): served as `k2_alert_threshold_seconds{alert}`."""

    lag_s: float = 600.0  # K2_ALERT_LAG: the cold tier is behind the hot tier by more than this
    stale_s: float = 1800.0  # K2_ALERT_STALE: an asset has not been materialized for longer than this
    maintenance_s: float = 26 * 3600.0  # K2_ALERT_MAINTENANCE: a table has not been maintained for longer than this

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Thresholds:
        from k2_lakehouse.core.settings import parse_duration

        env = dict(os.environ if env is None else env)
        values = {}
        for field_name, variable in (("lag_s", "K2_ALERT_LAG"), ("stale_s", "K2_ALERT_STALE"), ("maintenance_s", "K2_ALERT_MAINTENANCE")):
            if env.get(variable):
                try:
                    values[field_name] = parse_duration(env[variable]).total_seconds()
                except Exception as exc:
                    raise ConfigError(f"{variable}: {exc}") from None
        return cls(**values)


METRICS: dict[str, str] = {
    "k2_source_up": "1 if the last reading could read the source (hot_tier, iceberg, postgres, processes, disk, dagster), else 0",
    "k2_scrape_duration_seconds": "time the last reading of every source took",
    "k2_reading_age_seconds": "seconds since the sources were last read (every K2_METRICS_REFRESH)",
    "k2_alert_threshold_seconds": "threshold of an alert rule, from the environment (K2_ALERT_*)",
    "k2_hot_high_offset": "the hot tier's highest feed offset, per hot table, trade day and feed partition",
    "k2_bronze_watermark_offset": "the highest feed offset bronze holds (its Iceberg watermark), per hot table, day and partition",
    "k2_bronze_lag_rows": "hot rows above bronze's watermark, per hot table and trade day",
    "k2_bronze_lag_seconds": "age of the oldest hot row bronze does not hold yet, per hot table and trade day (0: caught up)",
    "k2_asset_last_materialization_timestamp_seconds": "when the asset was last materialized (any partition)",
    "k2_asset_last_materialization_age_seconds": "seconds since the asset was last materialized",
    "k2_asset_last_rows": "rows written by the asset's last materialization",
    "k2_asset_last_bytes": "bytes of data files written by the asset's last materialization",
    "k2_asset_last_rows_per_second": "rows per second of the asset's last materialization",
    "k2_asset_materializations_1h": "materializations of the asset in the last hour",
    "k2_asset_rows_written_1h": "rows written by the asset in the last hour",
    "k2_asset_commit_conflicts_1h": "Iceberg commit or publish attempts beyond the first in the last hour (lost compare-and-swaps)",
    "k2_check_passed": "1 if the latest evaluation of the check passed, 0 if it failed (any partition)",
    "k2_check_last_evaluation_timestamp_seconds": "when the check was last evaluated",
    "k2_job_runs_1h": "runs of the Dagster job (label dagster_job) updated in the last hour, by status",
    "k2_job_runs_in_flight": "runs of the job queued, starting or started",
    "k2_job_last_run_success": "1 if the job's newest finished run succeeded, else 0",
    "k2_job_last_run_duration_seconds": "duration of the job's newest finished run",
    "k2_job_consecutive_failures": "the job's newest finished runs that failed, in a row",
    "k2_job_last_success_timestamp_seconds": "when a run of the job last succeeded",
    "k2_process_resident_memory_bytes": "resident memory of each part of the live system (its process group) and of this exporter",
    "k2_iceberg_data_files": "data files in the table's main branch",
    "k2_iceberg_rows": "rows in the table's main branch",
    "k2_iceberg_bytes": "bytes of data files in the table's main branch",
    "k2_iceberg_snapshots": "snapshots the table's metadata keeps",
    "k2_iceberg_metadata_bytes": "size of the table's current metadata file",
    "k2_iceberg_last_commit_age_seconds": "seconds since the table's current snapshot was committed",
    "k2_table_maintenance_age_seconds": "seconds since the table was last maintained (if never: since its oldest snapshot)",
    "k2_postgres_event_log_bytes": "size of Dagster's event log in PostgreSQL, indexes included",
    "k2_postgres_event_log_rows": "rows of Dagster's event log (the planner's estimate)",
    "k2_postgres_database_bytes": "size of each PostgreSQL database",
    "k2_disk_free_bytes": "free bytes on the filesystem of K2_HOME (path=home) and of a file:// warehouse (path=warehouse)",
    "k2_disk_size_bytes": "size of that filesystem",
}


class _Families:
    """The metric families of one scrape, created on first use with their help text from METRICS."""

    def __init__(self) -> None:
        self.families: dict[str, GaugeMetricFamily] = {}
        self.labels: dict[str, tuple[str, ...]] = {}

    def add(self, name: str, value: float, **labels: object) -> None:
        if name not in self.families:
            self.labels[name] = tuple(labels)
            self.families[name] = GaugeMetricFamily(name, METRICS[name], labels=list(labels))
        self.families[name].add_metric([str(labels[k]) for k in self.labels[name]], float(value))


class LakeCollector(Collector):
    """Reads every source and serves the reading.

    With `refresh_s`, a background thread (`start`) reads every `refresh_s` seconds and a scrape returns the
    latest reading at once: scrapes never time out on a busy machine, and the sources are read at one pace
    however many scrapers there are. Without it (tests, one-off use) each scrape reads the sources itself.
    """

    def __init__(self, settings: Settings, thresholds: Thresholds | None = None, *, dagster: bool = True,
                 refresh_s: float | None = None) -> None:
        self.settings = settings
        self.thresholds = thresholds or Thresholds.from_env()
        self.refresh_s = refresh_s
        self._dagster = dagster
        self._instance = None
        self._graph = None
        self._lock = threading.Lock()
        self._latest: tuple[float, list[GaugeMetricFamily]] | None = None  # (read at, families)
        # The Iceberg source's reading of this scrape: the dagster source joins it with the maintenance record.
        self._tables: list[observe.TableStats] = []

    def describe(self):  # no describe-time scrape: registering must not read the sources
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.refresh_s is None:
            yield from self.read()
            return
        latest = self._latest
        if latest is None:  # the first reading is still being taken
            return
        read_at, families = latest
        age = GaugeMetricFamily("k2_reading_age_seconds", METRICS["k2_reading_age_seconds"])
        age.add_metric([], time.time() - read_at)
        yield from [*families, age]

    def start(self, stop: threading.Event) -> threading.Thread:
        """Read now and every `refresh_s` seconds until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                read_at = time.time()
                self._latest = (read_at, self.read())
                stop.wait(max(0.0, self.refresh_s - (time.time() - read_at)))

        thread = threading.Thread(target=loop, name="k2-metrics-reader", daemon=True)
        thread.start()
        return thread

    def read(self) -> list[GaugeMetricFamily]:
        with self._lock:
            began = time.perf_counter()
            out = _Families()
            now = time.time()
            for alert, value in (("lag", self.thresholds.lag_s), ("stale", self.thresholds.stale_s),
                                 ("maintenance", self.thresholds.maintenance_s)):
                out.add("k2_alert_threshold_seconds", value, alert=alert)
            sources: list[tuple[str, Callable[[_Families, float], None]]] = [
                ("hot_tier", self._hot_tier), ("iceberg", self._iceberg), ("postgres", self._postgres), ("processes", self._processes),
                ("disk", self._disk),
            ]
            if self._dagster:
                sources.append(("dagster", self._dagster_state))
            for source, read in sources:
                try:
                    read(out, now)
                    up = 1
                except Exception:  # noqa: BLE001 - one source down must not hide the others
                    log.warning("metrics: reading %s failed", source, exc_info=True)
                    up = 0
                out.add("k2_source_up", up, source=source)
            out.add("k2_scrape_duration_seconds", time.perf_counter() - began)
            return list(out.families.values())

    # -- the sources -------------------------------------------------------------------------------

    def _hot_tier(self, out: _Families, now: float) -> None:
        from k2_lakehouse import live

        for lag in observe.bronze_lag(self.settings, now=now, first_day=live.running_first_day(self.settings)):
            day = lag.day.isoformat()
            for partition, offset in lag.high.items():
                out.add("k2_hot_high_offset", offset, table=lag.table, day=day, partition=partition)
                out.add("k2_bronze_watermark_offset", lag.watermark.get(partition, -1), table=lag.table, day=day, partition=partition)
            out.add("k2_bronze_lag_rows", lag.rows_behind, table=lag.table, day=day)
            out.add("k2_bronze_lag_seconds", lag.seconds_behind, table=lag.table, day=day)

    def _iceberg(self, out: _Families, now: float) -> None:
        self._tables = []  # stays empty if the read fails: no maintenance age from a stale reading
        self._tables = observe.table_stats(self.settings, now=now)
        for t in self._tables:
            labels = {"table": t.table, "layer": t.layer}
            out.add("k2_iceberg_data_files", t.data_files, **labels)
            out.add("k2_iceberg_rows", t.rows, **labels)
            out.add("k2_iceberg_bytes", t.bytes, **labels)
            out.add("k2_iceberg_snapshots", t.snapshots, **labels)
            out.add("k2_iceberg_metadata_bytes", t.metadata_bytes, **labels)
            if t.last_commit_age_s is not None:
                out.add("k2_iceberg_last_commit_age_seconds", t.last_commit_age_s, **labels)

    def _postgres(self, out: _Families, now: float) -> None:
        sizes = observe.postgres_sizes(self.settings)
        out.add("k2_postgres_event_log_bytes", sizes.event_log_bytes)
        out.add("k2_postgres_event_log_rows", sizes.event_log_rows)
        for database, size in sizes.database_bytes.items():
            out.add("k2_postgres_database_bytes", size, database=database)

    def _disk(self, out: _Families, now: float) -> None:
        for path, (free, size) in observe.disk_usage(self.settings).items():
            out.add("k2_disk_free_bytes", free, path=path)
            out.add("k2_disk_size_bytes", size, path=path)

    def _processes(self, out: _Families, now: float) -> None:
        from k2_lakehouse import live

        parts = live.process_rss(self.settings)
        for name, rss in parts.items():
            out.add("k2_process_resident_memory_bytes", rss, process=name)
        if "metrics" not in parts:  # an exporter outside `k2 live` reports itself
            out.add("k2_process_resident_memory_bytes", _own_rss(), process="exporter")

    def _dagster_state(self, out: _Families, now: float) -> None:
        from dagster import AssetKey

        from k2_lakehouse import instance_state

        instance, graph = self._dagster_handles()
        assets = sorted(graph.materializable_asset_keys, key=lambda k: k.to_user_string())
        for a in instance_state.asset_states(instance, assets, window_s=WINDOW_S, now=now):
            if a.materialized_at is not None:
                out.add("k2_asset_last_materialization_timestamp_seconds", a.materialized_at, asset=a.asset)
                out.add("k2_asset_last_materialization_age_seconds", max(0.0, now - a.materialized_at), asset=a.asset)
            for name, value in (("k2_asset_last_rows", a.rows), ("k2_asset_last_bytes", a.bytes),
                                ("k2_asset_last_rows_per_second", a.rows_per_s)):
                if value is not None:
                    out.add(name, value, asset=a.asset)
            out.add("k2_asset_materializations_1h", a.recent_materializations, asset=a.asset)
            out.add("k2_asset_rows_written_1h", a.recent_rows, asset=a.asset)
            out.add("k2_asset_commit_conflicts_1h", a.recent_conflicts, asset=a.asset)
        checks = list(graph.asset_check_keys)
        blocking = frozenset(k for k in checks if graph.get_check_spec(k).blocking)
        for c in instance_state.check_states(instance, checks, blocking):
            labels = {"asset": c.asset, "check": c.check, "blocking": str(c.blocking).lower()}
            if c.passed is not None:
                out.add("k2_check_passed", int(c.passed), **labels)
            out.add("k2_check_last_evaluation_timestamp_seconds", c.at, **labels)
        for job in instance_state.job_runs(instance, window_s=WINDOW_S, now=now):
            for status, count in job.by_status.items():
                out.add("k2_job_runs_1h", count, dagster_job=job.job, status=status)
            out.add("k2_job_runs_in_flight", job.in_flight, dagster_job=job.job)
            if job.last_status is not None:
                out.add("k2_job_last_run_success", int(job.last_status == "SUCCESS"), dagster_job=job.job)
                out.add("k2_job_consecutive_failures", job.consecutive_failures, dagster_job=job.job)
            if job.last_duration_s is not None:
                out.add("k2_job_last_run_duration_seconds", job.last_duration_s, dagster_job=job.job)
            if job.last_success_at is not None:
                out.add("k2_job_last_success_timestamp_seconds", job.last_success_at, dagster_job=job.job)
        maintained = instance_state.maintenance_at(instance, [AssetKey(t.table.split(".")) for t in self._tables])
        for t in self._tables:
            asset = "/".join(t.table.split("."))
            since = maintained.get(asset)
            age = now - since if since is not None else t.oldest_snapshot_age_s
            if age is not None:
                out.add("k2_table_maintenance_age_seconds", max(0.0, age), table=t.table)

    def _dagster_handles(self):
        if self._instance is None:
            from dagster import DagsterInstance

            from k2_lakehouse.definitions import defs

            self._graph = defs.resolve_asset_graph()
            self._instance = DagsterInstance.get()
        return self._instance, self._graph


def _own_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def registry(settings: Settings, thresholds: Thresholds | None = None, *, dagster: bool = True,
             collector: LakeCollector | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector or LakeCollector(settings, thresholds, dagster=dagster))
    return reg


RELAY_PATH = "/alertmanager"  # Alertmanager posts here; the exporter forwards to K2_ALERT_WEBHOOK_URL


def app(settings: Settings, reg: CollectorRegistry, webhook_url: str | None):
    """/metrics, and the relay through which Alertmanager reaches the webhook.

    Alertmanager never sees the webhook URL (it may carry a token): Debian's 0.25 prints a webhook URL in its
    log when a post fails and serves its whole configuration on /api/v2/status. It posts to this relay, which
    forwards Alertmanager's notifications only (redacted like every alert) and answers 502 when the webhook does
    not take one, so Alertmanager retries.
    """
    from prometheus_client import make_wsgi_app

    from k2_lakehouse.core import alerting

    metrics_app = make_wsgi_app(reg)
    secrets = alerting.secrets_of(settings, webhook_url or "")

    def answer(start_response, status: str, text: str) -> list[bytes]:
        start_response(status, [("Content-Type", "text/plain")])
        return [text.encode()]

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO") != RELAY_PATH:
            return metrics_app(environ, start_response)
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("Allow", "POST")])
            return [b""]
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > alerting.MAX_NOTIFICATION_BYTES:
            return answer(start_response, "413 Content Too Large", "at most 1 MiB\n")
        try:  # 4xx: Alertmanager does not retry what can never be delivered
            payload = alerting.alertmanager_notification(environ["wsgi.input"].read(int(length)))
        except ValueError as exc:
            log.warning("refused to relay a POST: %s", exc)
            return answer(start_response, "400 Bad Request", f"{exc}\n")
        try:
            if not webhook_url:
                raise alerting.AlertDeliveryError(f"{alerting.WEBHOOK_VARIABLE} is not set")
            alerting.send(webhook_url, payload, secrets)
        except alerting.AlertDeliveryError as exc:  # its text never holds the URL
            log.warning("relaying an Alertmanager notification failed: %s", exc)
            return answer(start_response, "502 Bad Gateway", f"{exc}\n")
        return answer(start_response, "200 OK", "relayed\n")

    return dispatch


def serve(settings: Settings, port: int = DEFAULT_PORT, *, host: str = "127.0.0.1", stop: threading.Event | None = None,
          refresh_s: float = DEFAULT_REFRESH_S) -> None:
    """Serve /metrics (and the alert relay) until `stop` is set (or forever), reading every `refresh_s`."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client.exposition import ThreadingWSGIServer

    from k2_lakehouse.core import alerting

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # one line per scrape would drown the log
            pass

    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)  # the instance of these settings, in this process
    webhook = os.environ.get(alerting.WEBHOOK_VARIABLE, "").strip() or None
    stop = stop or threading.Event()
    collector = LakeCollector(settings, refresh_s=refresh_s)
    server = make_server(host, port, app(settings, registry(settings, collector=collector), webhook), ThreadingWSGIServer,
                         handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    reader = collector.start(stop)
    if threading.current_thread() is threading.main_thread():  # SIGTERM (`k2 live` stopping) ends it like Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("metrics on http://%s:%d/metrics, sources read every %g s", host, port, refresh_s)
    try:
        while not stop.wait(1.0):  # a timed wait: signals are handled between waits
            pass
    finally:
        stop.set()
        server.shutdown()
        thread.join(timeout=5)
        reader.join(timeout=5)  # a reading in progress may take longer; the thread is a daemon and dies with us
