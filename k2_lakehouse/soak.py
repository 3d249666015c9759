"""`k2 soak --for 2h`: the live system with its feed for a long while, watched from outside, then a report.

It starts `k2 live` (services, history, feed, webserver, daemon, sensors on) and samples, every
`--interval`, what the real sources say (`core.observe`, `live.process_rss`): bronze lag per table, the
resident memory of every part of the live system, the size of Dagster's event log in PostgreSQL, and the
Iceberg file, snapshot and metadata counts per layer. Every `--maintain-every` it runs `k2 maintain` as an
operator's cron would. When the time is up the feed stops, the system is given `--catch-up` to drain, and
`k2 verify` must find every layer exact. The report (Markdown and PNG plots) goes under `--report`, with
the raw samples beside it (samples.jsonl, written as they come, so an interrupted soak keeps its data).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from k2_lakehouse import live
from k2_lakehouse.core import observe
from k2_lakehouse.core.settings import Settings

Log = live.Log


@dataclass(frozen=True)
class SoakOptions:
    duration_s: float  # the feed runs this long
    report_dir: Path
    interval_s: float = 30.0
    rate: float = 100.0  # trades per second per exchange
    history_days: int = 1
    history_rows: int = 100_000
    catch_up_s: float = 600.0  # after the feed stops, at most this long for every layer to be exact
    maintain_every_s: float | None = 1800.0  # None: never
    maintain_older_than: str = "15m"
    port: int = 3000
    live_args: tuple[str, ...] = ()  # more `k2 live` arguments (other monitoring ports, --no-monitoring)


class WebhookReceiver:
    """A webhook on 127.0.0.1 keeping every JSON body posted to it (Alertmanager's and the Dagster sensors'):
    the soak listens for alerts itself when K2_ALERT_WEBHOOK_URL is not set."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies: list[dict] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                bodies.append({"received_at": time.time(), **body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, name: str) -> list[dict]:
        """Alertmanager's alerts of that name, in the order they arrived."""
        return [a for body in list(self.bodies) for a in body.get("alerts", []) if a.get("labels", {}).get("alertname") == name]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(settings: Settings, options: SoakOptions, *, log: Log = print) -> int:
    """0 when every layer verified exact at the end, 1 otherwise (the report is written either way)."""
    options.report_dir.mkdir(parents=True, exist_ok=True)
    receiver = None if os.environ.get("K2_ALERT_WEBHOOK_URL") else WebhookReceiver()
    samples_path = options.report_dir / "samples.jsonl"
    samples_path.unlink(missing_ok=True)
    live_log = options.report_dir / "live.log"
    argv = [sys.executable, "-m", "k2_lakehouse.cli", "live", "--port", str(options.port), "--rate", f"{options.rate:g}",
            "--history-days", str(options.history_days), "--history-rows", str(options.history_rows),
            "--feed-for", f"{options.duration_s:g}s", *options.live_args]
    started = time.time()
    with open(live_log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **settings.exports(), "PYTHONUNBUFFERED": "1",
                                     **({"K2_ALERT_WEBHOOK_URL": receiver.url} if receiver else {})})
    maintenance: list[dict] = []
    maintainer: threading.Thread | None = None
    verification: dict = {"ran": False}
    try:
        _wait_for_ui(proc, options.port, live_log)
        up_at = time.time()
        log(f"soak: live system up after {up_at - started:.0f} s; the feed runs {options.duration_s:g} s from its start, "
            f"sampling every {options.interval_s:g} s")
        next_maintenance = up_at + options.maintain_every_s if options.maintain_every_s else None
        with open(samples_path, "a") as samples:
            # The feed phase lasts while the feed process lives (`--feed-for` counts from its start, before the UI
            # answered); a feed that outlives its time by far is a failure of the live system, not of the soak.
            while time.time() < up_at + options.duration_s + 300:
                _check_alive(proc, live_log)
                taken = time.time()
                now = sample(settings, phase="feed")
                if not now["rss"].get("feed"):
                    break
                samples.write(json.dumps(now) + "\n")
                samples.flush()
                if next_maintenance is not None and time.time() >= next_maintenance and not _busy(maintainer):
                    # In the background, as an operator's cron runs it: the samples show what it does to the lag.
                    maintainer = threading.Thread(
                        target=lambda: maintenance.append(_maintain(settings, options.maintain_older_than, log)), daemon=True)
                    maintainer.start()
                    next_maintenance += options.maintain_every_s
                time.sleep(max(0.0, options.interval_s - (time.time() - taken)))  # a sample every interval
            log("soak: the feed stopped; waiting for every layer to catch up")
            verification = _catch_up(settings, options, proc, live_log, samples, log)
            if maintainer is not None:
                maintainer.join()  # its outcome belongs in the report
    finally:
        ended = time.time()
        try:  # while the live system's PostgreSQL still runs
            dagster = _dagster_summary(settings, started, ended)
        except Exception as exc:  # noqa: BLE001 - the report is still written, saying so
            log(f"soak: could not read runs and checks from the Dagster instance: {exc}")
            dagster = {}
        _stop(proc, log)
        if receiver:
            receiver.close()
    records = [json.loads(line) for line in samples_path.read_text().splitlines() if line.strip()]
    # Until the soak began to stop the system: a run its own shutdown interrupts is posted as a failed run.
    alerts = [b for b in receiver.bodies if b["received_at"] <= ended] if receiver else None
    if alerts is not None:
        (options.report_dir / "alerts.jsonl").write_text("".join(json.dumps(b) + "\n" for b in alerts))
    write_report(options, records, maintenance, verification, dagster, started=started, ended=ended, alerts=alerts)
    log(f"soak: report in {options.report_dir / 'report.md'}")
    return 0 if verification.get("exact") else 1


def sample(settings: Settings, *, phase: str) -> dict:
    """One observation of the whole system, from the sources themselves."""
    now = time.time()
    lags = observe.bronze_lag(settings, now=now, first_day=live.running_first_day(settings))
    tables = observe.table_stats(settings, now=now)
    pg = observe.postgres_sizes(settings)
    layers: dict[str, dict[str, int]] = {}
    for t in tables:
        layer = layers.setdefault(t.layer, {"data_files": 0, "snapshots": 0, "metadata_bytes": 0, "rows": 0, "bytes": 0})
        for name in layer:
            layer[name] += getattr(t, name)
    tables_behind = {x.table for x in lags}
    newest = max((x.day for x in lags), default=None)
    return {
        "t": now, "phase": phase,
        "lag_s": {table: max(x.seconds_behind for x in lags if x.table == table) for table in tables_behind},
        # The newest day apart from older ones: late trades for an older day wait up to 5 minutes behind the
        # newest by design (core/sensing.py), so the worst of all days mostly measures that wait.
        "lag_newest_s": max((x.seconds_behind for x in lags if x.day == newest), default=0.0),
        "lag_older_s": max((x.seconds_behind for x in lags if x.day != newest), default=0.0),
        "rows_behind": {table: sum(x.rows_behind for x in lags if x.table == table) for table in tables_behind},
        "hot_rows": sum(sum(o + 1 for o in x.high.values()) for x in lags),
        "rss": live.process_rss(settings),
        "disk_free": {path: free for path, (free, _) in observe.disk_usage(settings).items()},
        "event_log_bytes": pg.event_log_bytes, "event_log_rows": pg.event_log_rows, "database_bytes": pg.database_bytes,
        "layers": layers,
    }


def _wait_for_ui(proc: subprocess.Popen, port: int, live_log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(proc, live_log)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"the live system did not answer on port {port} within {timeout:.0f} s; see {live_log}")


def _check_alive(proc: subprocess.Popen, live_log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"k2 live exited early (code {proc.returncode}); see {live_log}")


def _busy(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()


def _maintain(settings: Settings, older_than: str, log: Log) -> dict:
    began = time.time()
    done = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", "maintain", "--older-than", older_than],
                          capture_output=True, text=True, env={**os.environ, **settings.exports()})
    log(f"soak: k2 maintain --older-than {older_than}: exit {done.returncode} in {time.time() - began:.0f} s")
    return {"t": began, "exit": done.returncode, "duration_s": round(time.time() - began, 1), "output": done.stdout[-4000:]}


def _catch_up(settings: Settings, options: SoakOptions, proc: subprocess.Popen, live_log: Path, samples, log: Log) -> dict:
    """Until bronze holds every hot row and `verify` finds every layer exact, or `catch_up_s` passes."""
    from k2_lakehouse.core.verify import verify

    settings = dataclasses.replace(settings, first_day=live.running_first_day(settings))  # the days it offloads
    began = time.time()
    result = None
    while True:
        _check_alive(proc, live_log)
        now = sample(settings, phase="catch-up")
        samples.write(json.dumps(now) + "\n")
        samples.flush()
        if not any(now["rows_behind"].values()):
            result = verify(settings)
            if not result.mismatched:
                log(f"soak: every layer exact {time.time() - began:.0f} s after the feed stopped")
                return {"ran": True, "exact": True, "after_s": round(time.time() - began), "report": result.report()}
        if time.time() - began > options.catch_up_s:
            result = result or verify(settings)
            log(f"soak: not exact {options.catch_up_s:g} s after the feed stopped:\n{result.report()}")
            return {"ran": True, "exact": False, "after_s": round(time.time() - began), "report": result.report()}
        time.sleep(min(options.interval_s, 15.0))


def _stop(proc: subprocess.Popen, log: Log) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            log("soak: k2 live did not stop within 180 s; killing its group")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log(f"soak: k2 live exited with {proc.returncode}")


def _dagster_summary(settings: Settings, start: float, end: float) -> dict:
    """Runs and check outcomes of the soak's window, from the Dagster instance's storage."""
    from dagster import DagsterEventType, DagsterInstance, EventRecordsFilter

    from k2_lakehouse import instance_state

    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    with DagsterInstance.get() as instance:
        runs = instance_state.runs_between(instance, start, end)
        by_status: dict[str, int] = {}
        durations = []
        by_trigger: dict[str, int] = {}
        for r in runs:
            by_status[r.dagster_run.status.value] = by_status.get(r.dagster_run.status.value, 0) + 1
            trigger = r.dagster_run.tags.get("dagster/sensor_name") or r.dagster_run.tags.get("dagster/schedule_name") or "manual"
            by_trigger[trigger] = by_trigger.get(trigger, 0) + 1
            if r.start_time and r.end_time:
                durations.append(r.end_time - r.start_time)
        checks: dict[tuple[str, str], list[int]] = {}
        evaluations = instance.get_event_records(EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION,
                                                                    after_timestamp=start), limit=1_000_000)
        for e in evaluations:
            data = e.event_log_entry.dagster_event.event_specific_data
            tally = checks.setdefault((data.asset_key.to_user_string(), data.check_name), [0, 0])
            tally[0 if data.passed else 1] += 1
    return {"runs": len(runs), "by_status": by_status, "by_trigger": by_trigger, "durations": durations,
            "checks": {f"{a} {c}": v for (a, c), v in sorted(checks.items())}}


# ------------------------------------------------------------------------------------------ the report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def per_hour(records: list[dict], value) -> float:
    """Growth per hour of `value(record)` over the feed phase: a least-squares slope, so one outlier at
    either end does not decide it."""
    points = [(r["t"], value(r)) for r in records if r["phase"] == "feed"]
    if len(points) < 2:
        return 0.0
    slope = statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope
    return slope * 3600


def write_report(options: SoakOptions, records: list[dict], maintenance: list[dict], verification: dict, dagster: dict,
                 *, started: float, ended: float, alerts: list[dict] | None = None) -> Path:
    feed = [r for r in records if r["phase"] == "feed"]
    lags = [max(r["lag_s"].values(), default=0.0) for r in feed]
    by_kind = [("every day (the worst)", lags),
               *((name, [r[key] for r in feed if key in r]) for name, key in (
                   ("the newest day", "lag_newest_s"), ("older days (late trades)", "lag_older_s")) if any(key in r for r in feed))]
    processes = sorted({p for r in records for p in r["rss"]})
    first, last = (feed[0], feed[-1]) if feed else ({}, {})
    mib = 1 << 20

    def layer_total(r: dict, name: str) -> int:
        return sum(layer[name] for layer in r["layers"].values())

    _plots(options.report_dir, records, processes, maintenance)
    stamp = dt.datetime.fromtimestamp(started, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Soak report: {stamp}",
        "",
        f"`k2 soak --for {options.duration_s:g}s --interval {options.interval_s:g}s --rate {options.rate:g}` "
        f"(the feed ran {options.duration_s / 3600:.2f} h at {options.rate:g} trades/s per exchange; "
        f"{len(records)} samples; whole soak {(ended - started) / 3600:.2f} h including start-up and catch-up).",
        "",
        "## Verdict",
        "",
        f"- `k2 verify` at the end: **{'every layer exact' if verification.get('exact') else 'NOT EXACT'}**"
        + (f", {verification.get('after_s')} s after the feed stopped" if verification.get("ran") else " (never reached)"),
        f"- Runs in the window: {dagster.get('runs', 0)}, by outcome "
        + ", ".join(f"{k} {v}" for k, v in sorted(dagster.get("by_status", {}).items())),
        "",
        "## Bronze lag (age of the oldest hot row bronze does not hold yet, worst table, during the feed)",
        "",
        "| days | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
        *(f"| {name} | {percentile(v, .5):.0f} s | {percentile(v, .95):.0f} s | {percentile(v, .99):.0f} s | {max(v, default=0):.0f} s |"
          for name, v in by_kind),
        "",
        "Late trades for an older day wait up to 5 minutes behind the newest day by design (`core/sensing.py`), "
        "then take their turn; each bronze run the daemon launches starts a Python process first.",
        "",
        "![lag](lag.png)",
        "",
        "## Memory (resident, summed over each part's processes)",
        "",
        "| process | start | end | max |",
        "|---|---|---|---|",
        *(f"| {p} | {first.get('rss', {}).get(p, 0) / mib:.0f} MiB | {last.get('rss', {}).get(p, 0) / mib:.0f} MiB | "
          f"{max(r['rss'].get(p, 0) for r in records) / mib:.0f} MiB |" for p in processes),
        "",
        "`X children`: the rest of that process group (the webserver's code server; the daemon's code server and "
        "the runs in flight at that moment, so it rises and falls with them).",
        "",
        "![rss](rss.png)",
        "",
        "## Growth (least-squares slope over the feed phase)",
        "",
        "| what | start | end | per hour |",
        "|---|---|---|---|",
        *(f"| {name} | {fmt(value(first)) if first else '-'} | {fmt(value(last)) if last else '-'} | {fmt(per_hour(records, value))} |"
          for name, value, fmt in (
              ("PostgreSQL event log (bytes)", lambda r: r["event_log_bytes"], _bytes),
              ("PostgreSQL event log (rows, estimate)", lambda r: r["event_log_rows"], _count),
              ("Iceberg metadata files (bytes, all tables)", lambda r: layer_total(r, "metadata_bytes"), _bytes),
              ("Iceberg data files (all tables)", lambda r: layer_total(r, "data_files"), _count),
              ("Iceberg snapshots (all tables)", lambda r: layer_total(r, "snapshots"), _count),
              ("hot rows", lambda r: r["hot_rows"], _count),
          )),
        "",
        "![growth](growth.png)",
        "",
        "| layer | data files | snapshots | metadata | rows | data bytes |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {v['data_files']:,} | {v['snapshots']:,} | {_bytes(v['metadata_bytes'])} | {v['rows']:,} | {_bytes(v['bytes'])} |"
          for name, v in sorted((records[-1]["layers"] if records else {}).items())),
        "",
        "## Runs",
        "",
        "| launched by | runs |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in sorted(dagster.get("by_trigger", {}).items())),
        "",
        f"Run duration: p50 {percentile(dagster.get('durations', []), .5):.1f} s, p95 {percentile(dagster.get('durations', []), .95):.1f} s, "
        f"max {max(dagster.get('durations', []), default=0):.1f} s.",
        "",
        "## Check outcomes",
        "",
        "| asset and check | passed | failed |",
        "|---|---|---|",
        *(f"| {k} | {p} | {f} |" for k, (p, f) in dagster.get("checks", {}).items()),
        "",
        "## Alerts received",
        "",
        *(["- not recorded (K2_ALERT_WEBHOOK_URL pointed elsewhere)"] if alerts is None else
          [f"- {dt.datetime.fromtimestamp(b['received_at'], dt.timezone.utc):%H:%M:%S}: " + _describe_alert(b) for b in alerts]
          or ["- none: no Prometheus alert fired and no Dagster run or check failed"]),
        "",
        "## Maintenance",
        "",
        *([f"- {dt.datetime.fromtimestamp(m['t'], dt.timezone.utc):%H:%M:%S}: `k2 maintain --older-than {options.maintain_older_than}` "
           f"exit {m['exit']} in {m['duration_s']} s" for m in maintenance] or ["- none ran"]),
        "",
        "## `k2 verify` at the end",
        "",
        "```",
        verification.get("report", "(not run)").rstrip(),
        "```",
        "",
    ]
    path = options.report_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _describe_alert(body: dict) -> str:
    if "alerts" in body:  # Alertmanager
        return "; ".join(f"Alertmanager {a.get('status')} {a.get('labels', {}).get('alertname')} "
                         f"({a.get('annotations', {}).get('summary', '')})" for a in body["alerts"])
    return f"Dagster {body.get('kind')}: {body.get('asset') or body.get('job')} {body.get('check') or ''} {body.get('partition') or ''}".rstrip()


def _bytes(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _plots(directory: Path, records: list[dict], processes: list[str], maintenance: list[dict]) -> None:
    from matplotlib.figure import Figure

    if not records:
        return
    t0 = records[0]["t"]
    minutes = [(r["t"] - t0) / 60 for r in records]

    def save(fig: Figure, name: str) -> None:
        fig.tight_layout()
        fig.savefig(directory / name, dpi=80)

    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    for table in sorted({t for r in records for t in r["lag_s"]}):
        ax.plot(minutes, [r["lag_s"].get(table, 0.0) for r in records], label=table)
    for i, m in enumerate(maintenance):  # what `k2 maintain` costs the offload, where it ran
        ax.axvspan((m["t"] - t0) / 60, (m["t"] + m["duration_s"] - t0) / 60, color="tab:gray", alpha=0.2,
                   label="k2 maintain" if i == 0 else None)
    ax.set(xlabel="minutes", ylabel="seconds behind", title="bronze lag: age of the oldest row not yet in bronze")
    ax.legend(loc="upper right", fontsize="small")
    save(fig, "lag.png")

    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    for p in processes:
        ax.plot(minutes, [r["rss"].get(p, 0) / (1 << 20) for r in records], label=p)
    ax.set(xlabel="minutes", ylabel="MiB", title="resident memory of the live system")
    ax.legend(loc="upper left", fontsize="small")
    save(fig, "rss.png")

    fig = Figure(figsize=(8, 6))
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    top.plot(minutes, [r["event_log_bytes"] / (1 << 20) for r in records])
    top.set(ylabel="MiB", title="PostgreSQL event log")
    colors = {"bronze": "tab:brown", "silver": "tab:gray", "gold": "goldenrod"}
    for layer in sorted({name for r in records for name in r["layers"]}):
        color = colors.get(layer)
        middle.plot(minutes, [r["layers"].get(layer, {}).get("snapshots", 0) for r in records], color=color, label=f"{layer} snapshots")
        middle.plot(minutes, [r["layers"].get(layer, {}).get("data_files", 0) for r in records], "--", color=color,
                    label=f"{layer} data files")
        bottom.plot(minutes, [r["layers"].get(layer, {}).get("metadata_bytes", 0) / 1024 for r in records], color=color, label=layer)
    middle.set(ylabel="count", title="Iceberg snapshots and data files")
    middle.legend(loc="upper left", fontsize="x-small", ncol=3)
    bottom.set(xlabel="minutes", ylabel="KiB", title="Iceberg metadata files")
    bottom.legend(loc="upper left", fontsize="small")
    save(fig, "growth.png")
