"""`k2 live`: the whole system running from one command that owns every process it starts.

It brings the services up, seeds a few days of history once, then runs the live feed, the Dagster
webserver and the Dagster daemon, each in its own session (so its own process group), logging to
`$K2_HOME/live/*.log` and recording the groups in `$K2_HOME/live/pids.json`. On Ctrl-C, SIGTERM,
SIGHUP or the end of `--for` it stops every group it started and checks that none of their processes
is left: the Dagster processes may ignore SIGTERM (ENVIRONMENT.md) and spawn children (code servers,
run workers), so the whole group is signalled and then SIGKILLed. The services are stopped too when
this command started them. `k2 services down` stops a running live system first (`stop`).

Every child carries `K2_LIVE_ID=<token>` in its environment, so another process (`k2 services down`,
possibly long after a crashed `k2 live`) only ever signals processes this live system started, never
an unrelated process that reused a pid. Stdlib only: no Dagster import here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from k2_lakehouse.core import services
from k2_lakehouse.core.errors import ConfigError, ServiceError
from k2_lakehouse.core.monitoring import Monitoring
from k2_lakehouse.core.settings import Settings, parse_duration as settings_duration

Log = Callable[[str], None]

PROJECT_DIR = Path(__file__).resolve().parents[1]
WORKSPACE = PROJECT_DIR / "workspace.yaml"
TOKEN_VAR = "K2_LIVE_ID"
_GRACE_S = 20.0  # after SIGTERM/SIGINT, before SIGKILL: an interrupted Dagster run needs 10-20 s to record its failure
_KILL_WAIT_S = 10.0  # after SIGKILL, before giving up
_READY_TIMEOUT_S = 180.0  # webserver start: process start, imports, loading the definitions
_SUPERVISOR_STOP_S = 60.0  # `services down` waits this long for a running `k2 live` to stop itself


@dataclass(frozen=True)
class LiveOptions:
    port: int = 3000
    rate: float = 100.0  # trades per second per exchange
    history_days: int = 3
    history_rows: int = 200_000  # per day per exchange
    duration: float | None = None  # seconds after the system is up; None: until a signal
    feed_duration: float | None = None  # the feed stops by itself after this long (the rest keeps running)
    keep_services: bool = False
    # The metrics exporter, Prometheus and Alertmanager (ports, intervals); None runs none of the three.
    monitoring: Monitoring | None = field(default_factory=Monitoring)


def live_dir(settings: Settings) -> Path:
    return settings.home / "live"


def pid_file(settings: Settings) -> Path:
    return live_dir(settings) / "pids.json"


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `1.5h`, `1d` -> seconds (for `--for`)."""
    return settings_duration(text).total_seconds()


# ------------------------------------------------------------------------------------------ history


def seed_history(
    settings: Settings, days: int, rows: int, *, today: dt.date | None = None, progress: bool = False, log: Log = print
) -> list[dt.date]:
    """Seed about `rows` trades per exchange for each of the `days` days before today (UTC) not seeded yet.

    A day counts as seeded when an exchange already holds at least half of `rows` for it, so re-running
    `k2 live` does not double the data. A day below that (the late trades a live feed writes into earlier
    days, or a seed cut short by Ctrl-C) is topped up to `rows`. Returns the days seeded.
    """
    from k2_lakehouse.core import feed, hot_tier
    from k2_lakehouse.core.contracts import HOT_TABLES

    if days <= 0 or rows <= 0:
        return []
    today = today or dt.datetime.now(dt.timezone.utc).date()
    wanted = [today - dt.timedelta(days=n) for n in range(days, 0, -1)]
    with hot_tier.hot_tier_errors(settings):
        client = hot_tier.connect(settings)
        try:
            held: dict[dt.date, int] = {}
            for hot in HOT_TABLES.values():
                for day, count in client.execute(
                    f"SELECT trade_date, count() FROM {hot.name} WHERE trade_date >= %(lo)s GROUP BY trade_date",
                    {"lo": wanted[0]},
                    settings={"use_numpy": False},
                ):
                    held[day] = max(held.get(day, 0), int(count))
        finally:
            client.disconnect()
    seeded = []
    for day in wanted:
        if held.get(day, 0) >= rows // 2:
            log(f"history: {day} already holds {held[day]:,} trades per exchange; not seeding it again")
            continue
        report = feed.seed(settings, day, rows - held.get(day, 0), seed=day.toordinal() % 1000, progress=progress)
        seeded.append(day)
        if report.interrupted:
            log(f"history: seeding {day} interrupted after {report.rows:,} messages")
            break
        log(f"history: seeded {day}: {report.rows:,} messages")
    return seeded


# ------------------------------------------------------------------------------------- the supervisor


def first_day(settings: Settings, history_days: int) -> dt.date:
    """The first daily partition the webserver, daemon and runs agree on: the earliest day of the hot tier
    (or of the history about to be seeded), never before `settings.first_day` (K2_FIRST_DAY), so a stray
    message dated 1970 does not stretch the UI over half a century."""
    from k2_lakehouse.core import hot_tier
    from k2_lakehouse.core.contracts import HOT_TABLES

    today = dt.datetime.now(dt.timezone.utc).date()
    client = hot_tier.connect(settings)
    try:
        days = {day for hot in HOT_TABLES.values() for day in hot_tier.high_offsets_by_day(client, hot)}
    finally:
        client.disconnect()
    return max(settings.first_day, min(days | {today - dt.timedelta(days=history_days)}))


class _Interrupted(KeyboardInterrupt):
    """A stop signal arrived during a start-up step (a KeyboardInterrupt, so `feed.seed` finishes its blocks)."""


def run(settings: Settings, options: LiveOptions, *, log: Log = print) -> int:
    """Run the live system until a signal or `options.duration`; 0 after a requested stop, 1 if a part failed."""
    if not 1 <= options.port <= 65535:
        raise ConfigError(f"port must be within 1..65535, got {options.port}")
    if options.rate <= 0:
        raise ConfigError(f"rate must be > 0 trades per second, got {options.rate}")
    _refuse_if_running(settings)
    for port, flag in _ports(options):
        if not _port_free(port):
            raise ServiceError(f"port {port} on 127.0.0.1 is taken by another process; choose another with {flag}")
    programs = _programs(settings, options)
    log = _never_failing(log)

    stop = threading.Event()
    blocking = [True]  # while True, a stop signal interrupts the start-up step in progress

    def on_signal(signum: int, frame) -> None:  # noqa: ARG001
        if stop.is_set():
            log(f"live: still stopping (up to {_GRACE_S + _KILL_WAIT_S:.0f} s for the processes, then the services)")
        else:
            log(f"live: {signal.Signals(signum).name} received, stopping")
        stop.set()
        if blocking[0]:
            blocking[0] = False
            raise _Interrupted

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started_services = False
    token = secrets.token_hex(12)
    children: dict[str, subprocess.Popen] = {}
    code = 0
    try:
        try:
            started_services = not any(s.running for s in services.status(settings))
            services.up(settings, log=log)  # installs Debian's prometheus and prometheus-alertmanager too
            os.environ.update(settings.exports())  # the same instance, lake and hot tier for every child
            if options.monitoring:
                programs.update(_monitoring_programs(settings, options.monitoring))
            seed_history(settings, options.history_days, options.history_rows, progress=sys.stderr.isatty(), log=log)
            settings = dataclasses.replace(settings, first_day=first_day(settings, options.history_days))
            os.environ.update(settings.exports())  # K2_FIRST_DAY: the partitions start where the data does
            blocking[0] = False
            if stop.is_set():
                return 0
            directory = live_dir(settings)
            directory.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, TOKEN_VAR: token, "PYTHONUNBUFFERED": "1"}
            for name, argv in programs.items():
                children[name] = _spawn(argv, directory / f"{name}.log", env)
                _write_record(settings, token, options.port, children, started_services)
            log(f"live: started {', '.join(f'{n} (pid {p.pid})' for n, p in children.items())}")
            code = _wait_until_ready(options.port, children, stop, directory, log)
            if code == 0 and not stop.is_set():
                _announce(settings, options, directory, log)
                code = _supervise(children, stop, options.duration, directory, log)
        except _Interrupted:
            pass
        blocking[0] = False
        stop.set()
        return code
    finally:
        blocking[0] = False
        try:
            if children:
                log("live: stopping " + ", ".join(children))
                left = _stop_groups({n: p.pid for n, p in children.items()}, token, trusted=True, log=log)
                if left:  # (uninterruptible sleep): keep the pid file, so `k2 services down` can try again
                    raise ServiceError(f"processes {left} of the live system survived SIGKILL")
                for p in children.values():
                    p.wait(timeout=_KILL_WAIT_S)  # reap our own children (already dead)
                log(f"live: {', '.join(children)} stopped; no process of theirs is left")
            _remove_record(settings, token)
            if started_services and not options.keep_services:
                log("live: stopping the services this command started")
                services.down(settings, log=log)
            elif started_services:
                log("live: services left running (--keep-services); stop them with `k2 services down`")
            else:
                log("live: services were already running before `k2 live`; left running (`k2 services down` stops them)")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _never_failing(log: Log) -> Log:
    """After SIGHUP the terminal may be gone: a failed print must not stop the clean-up."""

    def safe(text: str) -> None:
        try:
            log(text)
        except OSError:
            pass

    return safe


def _ports(options: LiveOptions) -> list[tuple[int, str]]:
    m = options.monitoring
    return [(options.port, "--port"), *([(m.metrics_port, "--metrics-port"), (m.prometheus_port, "--prometheus-port"),
                                         (m.alertmanager_port, "--alertmanager-port")] if m else [])]


def _programs(settings: Settings, options: LiveOptions) -> dict[str, list[str]]:
    bindir = Path(sys.executable).parent
    tools = {}
    for tool in ("dagster-webserver", "dagster-daemon"):
        path = bindir / tool
        if not path.exists():
            raise ConfigError(f"{tool} not found beside {sys.executable}; install the project (`./dev.sh live` does)")
        tools[tool] = str(path)
    return {
        "feed": [sys.executable, "-m", "k2_lakehouse.cli", "feed", "live", "--rate", f"{options.rate:g}", "--quiet",
                 *(["--duration", f"{options.feed_duration:g}"] if options.feed_duration else [])],
        "webserver": [tools["dagster-webserver"], "-h", "127.0.0.1", "-p", str(options.port), "-w", str(WORKSPACE)],
        "daemon": [tools["dagster-daemon"], "run", "-w", str(WORKSPACE)],
    }


def _monitoring_programs(settings: Settings, m: Monitoring) -> dict[str, list[str]]:
    from k2_lakehouse.core import monitoring

    for binary in (monitoring.PROMETHEUS, monitoring.ALERTMANAGER):
        if not binary.exists():
            raise ConfigError(f"{binary} not found: install Debian's prometheus and prometheus-alertmanager "
                              "(`k2 services up` does), or run without them (--no-monitoring)")
    prom, am = monitoring.write_configs(m, settings.home)
    return {
        "metrics": [sys.executable, "-m", "k2_lakehouse.cli", "metrics", "serve", "--port", str(m.metrics_port)],
        "prometheus": monitoring.prometheus_argv(m, prom, prom.parent / "data"),
        "alertmanager": monitoring.alertmanager_argv(m, am, am.parent / "data"),
    }


def _spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """One child in its own session: signals to our terminal's group do not reach it, and its group is its own."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(
            argv, cwd=PROJECT_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_until_ready(port: int, children: dict[str, subprocess.Popen], stop: threading.Event, directory: Path, log: Log) -> int:
    url = f"http://127.0.0.1:{port}/server_info"
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while not stop.is_set():
        dead = _dead(children)
        if dead:
            _report_dead(dead, directory, log)
            return 1
        if _answers(url):
            return 0
        if time.monotonic() > deadline:
            log(f"live: the webserver did not answer {url} within {_READY_TIMEOUT_S:.0f} s; its log:\n"
                + _tail(directory / "webserver.log"))
            return 1
        stop.wait(0.5)
    return 0


def _supervise(children: dict[str, subprocess.Popen], stop: threading.Event, duration: float | None, directory: Path, log: Log) -> int:
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        dead = _dead(children)
        if dead:
            _report_dead(dead, directory, log)
            return 1
        if deadline is not None and time.monotonic() >= deadline:
            log(f"live: --for {duration:g} s elapsed, stopping")
            return 0
        stop.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
    return 0


def _announce(settings: Settings, options: LiveOptions, directory: Path, log: Log) -> None:
    lines = [
        "",
        f"K2 live system is up: Dagster UI at http://127.0.0.1:{options.port}",
        f"  feed:      {options.rate:g} trades/s per exchange into the hot tier ({settings.clickhouse.host}:{settings.clickhouse.port})",
        *([f"  metrics:   http://127.0.0.1:{m.metrics_port}/metrics (k2 metrics serve)",
           f"  alerts:    Prometheus http://127.0.0.1:{m.prometheus_port}/alerts, Alertmanager http://127.0.0.1:{m.alertmanager_port}"
           + ("" if os.environ.get("K2_ALERT_WEBHOOK_URL") else " (K2_ALERT_WEBHOOK_URL unset: delivered nowhere else)")]
          if (m := options.monitoring) else []),
        f"  logs:      {directory}/*.log",
        f"  pids:      {pid_file(settings)}",
        "  stop:      Ctrl-C here (or `k2 services down` from another shell)"
        + (f"; stops by itself after {options.duration:g} s" if options.duration is not None else ""),
        "",
    ]
    log("\n".join(lines))


def _dead(children: dict[str, subprocess.Popen]) -> dict[str, int]:
    """Children that ended, except a feed that finished its --feed-for time (exit 0)."""
    return {name: rc for name, p in children.items() if (rc := p.poll()) is not None and not (name == "feed" and rc == 0)}


def _report_dead(dead: dict[str, int], directory: Path, log: Log) -> None:
    for name, rc in dead.items():
        log(f"live: {name} exited unexpectedly (exit code {rc}); last lines of {directory / (name + '.log')}:\n"
            + _tail(directory / f"{name}.log"))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (a fixed loopback http URL)
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            return "\n".join(f.read().decode(errors="replace").strip().splitlines()[-lines:]) or "(empty)"
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------- pid record


def _write_record(settings: Settings, token: str, port: int, children: dict[str, subprocess.Popen], started_services: bool) -> None:
    """Atomically (temp file + rename), so `k2 services down` never reads half a record."""
    record = {
        "supervisor": {"pid": os.getpid(), "start": _start_ticks(os.getpid())},
        "token": token,
        "port": port,
        "groups": {name: p.pid for name, p in children.items()},  # each child leads its own group
        "started_services": started_services,
        "first_day": settings.first_day.isoformat(),  # the partitions its processes agree on (`running_first_day`)
    }
    path = pid_file(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


def _read_record(settings: Settings) -> dict | None:
    try:
        record = json.loads(pid_file(settings).read_text())
        return record if isinstance(record, dict) and isinstance(record.get("groups"), dict) else None
    except (OSError, ValueError):
        return None


def _remove_record(settings: Settings, token: str) -> None:
    record = _read_record(settings)
    if record is not None and record.get("token") == token:
        pid_file(settings).unlink(missing_ok=True)


def _supervisor_alive(record: dict) -> int | None:
    sup = record.get("supervisor") or {}
    pid, start = sup.get("pid"), sup.get("start")
    if isinstance(pid, int) and pid != os.getpid() and start is not None and _start_ticks(pid) == start:
        return pid
    return None


def _refuse_if_running(settings: Settings) -> None:
    record = _read_record(settings)
    if record is None:
        pid_file(settings).unlink(missing_ok=True)  # unreadable: nothing to go by
        return
    sup = _supervisor_alive(record)
    members = _members(_groups(record), str(record.get("token", "")), trusted=False)
    if sup is None and not members:
        pid_file(settings).unlink(missing_ok=True)  # stale: that live system is gone
        return
    pids = ", ".join(str(p) for p in ([sup] if sup else []) + members)
    raise ServiceError(
        f"a live system is already running under {settings.home} (pids {pids}; UI http://127.0.0.1:{record.get('port')}); "
        "stop it with Ctrl-C in its terminal or `k2 services down`"
    )


def _groups(record: dict) -> dict[str, int]:
    return {str(k): v for k, v in record.get("groups", {}).items() if isinstance(v, int) and v > 1}


# ------------------------------------------------------------------------------------------ memory


def running_first_day(settings: Settings) -> dt.date:
    """The first daily partition of the live system running for this K2_HOME (it may have moved K2_FIRST_DAY
    to where the data starts), else the configured one: hot days before it are outside every partition."""
    record = _read_record(settings) or {}
    try:
        return dt.date.fromisoformat(record["first_day"])
    except (KeyError, TypeError, ValueError):
        return settings.first_day


def process_rss(settings: Settings) -> dict[str, int]:
    """Resident memory (bytes) of each part of the running live system (feed, webserver, daemon, ...): the
    process itself as `name`, and the rest of its group that carries the live system's id as `name children`
    (the webserver's code server; the daemon's code server and the runs it launched). Empty when no live
    system runs for this K2_HOME."""
    record = _read_record(settings)
    if record is None:
        return {}
    token = str(record.get("token", ""))
    page = os.sysconf("SC_PAGE_SIZE")
    groups = _groups(record)
    totals = {key: 0 for name in groups for key in (name, f"{name} children")}
    by_group = {pgid: name for name, pgid in groups.items()}
    for pid, state, pgrp in _processes():
        if pgrp in by_group and state != "Z" and _carries(pid, token):
            try:
                rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
            except (OSError, IndexError, ValueError):
                continue  # ended meanwhile
            name = by_group[pgrp]
            totals[name if pid == pgrp else f"{name} children"] += rss
    return {key: rss for key, rss in totals.items() if rss or key in groups}  # no "children" entry for none


# -------------------------------------------------------------------------------------------- stop


def stop(settings: Settings, *, log: Log = print) -> bool:
    """Stop a running live system of this K2_HOME (what `k2 services down` does first); True if there was one.

    A live `k2 live` is asked to stop itself (SIGTERM), so it stops its groups and reports; whatever is
    left after that (or of a `k2 live` that was killed) is stopped here, group by group.
    """
    record = _read_record(settings)
    if record is None:
        return False
    token = str(record.get("token", ""))
    sup = _supervisor_alive(record)
    if sup is not None:
        log(f"live: asking k2 live (pid {sup}) to stop")
        try:
            os.kill(sup, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + _SUPERVISOR_STOP_S
        while _start_ticks(sup) == record["supervisor"]["start"] and time.monotonic() < deadline:
            time.sleep(0.2)
        if _start_ticks(sup) == record["supervisor"]["start"]:
            log(f"live: k2 live (pid {sup}) did not stop within {_SUPERVISOR_STOP_S:.0f} s; killing it")
            _signal_pid(sup, signal.SIGKILL)
        else:
            log(f"live: k2 live (pid {sup}) stopped")
    groups = _groups(record)
    if _members(groups, token, trusted=False):
        log("live: stopping " + ", ".join(groups))
        left = _stop_groups(groups, token, trusted=False, log=log)
        if left:
            raise ServiceError(f"processes {left} of the live system survived SIGKILL")
        log("live: no process of the live system is left")
    _remove_record(settings, token)
    return True


def _stop_groups(groups: dict[str, int], token: str, *, trusted: bool, log: Log) -> list[int]:
    """SIGINT to the feed (it finishes its block), SIGTERM to the others; SIGKILL whatever is left after the
    grace period; returns the pids still alive after that (none expected)."""
    first = {name: signal.SIGINT if name == "feed" else signal.SIGTERM for name in groups}
    targets = {name: pgid for name, pgid in groups.items() if trusted or _members({name: pgid}, token, trusted=False)}
    for name, pgid in targets.items():
        _signal_group(pgid, first[name])
    _signal_escaped(groups, token, signal.SIGTERM)
    if _wait_gone(groups, token, trusted, _GRACE_S):
        return []
    left = _members(groups, token, trusted)
    log(f"live: {len(left)} process(es) still running {_GRACE_S:.0f} s after SIGTERM (pids {left}); sending SIGKILL")
    deadline = time.monotonic() + _KILL_WAIT_S
    while time.monotonic() < deadline:
        for pgid in targets.values():
            _signal_group(pgid, signal.SIGKILL)  # again each round: a dying daemon may have just spawned a child
        _signal_escaped(groups, token, signal.SIGKILL)
        if _wait_gone(groups, token, trusted, 0.5):
            return []
    return _members(groups, token, trusted)


def _wait_gone(groups: dict[str, int], token: str, trusted: bool, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if not _members(groups, token, trusted):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_escaped(groups: dict[str, int], token: str, sig: signal.Signals) -> None:
    """A process carrying our token that left our groups (its own setsid) is ours too."""
    pgids = set(groups.values())
    for pid, _, pgrp in _processes():
        if pgrp not in pgids and pid != os.getpid() and _carries(pid, token):
            _signal_pid(pid, sig)


def _members(groups: dict[str, int], token: str, trusted: bool) -> list[int]:
    """Live (non-zombie) processes of our groups, plus any process carrying our token.

    Untrusted (another process reading the pid file): a group member counts only if it carries the token,
    so a pid reused by an unrelated process is never touched.
    """
    pgids = set(groups.values())
    me = os.getpid()
    found = []
    for pid, state, pgrp in _processes():
        if pid == me or state == "Z":
            continue
        if (pgrp in pgids and (trusted or _carries(pid, token))) or _carries(pid, token):
            found.append(pid)
    return sorted(found)


def _processes() -> Iterable[tuple[int, str, int]]:
    """(pid, state, process group) of every process, from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            rest = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry.name), rest[0], int(rest[2])


def _carries(pid: int, token: str) -> bool:
    if not token:
        return False
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{TOKEN_VAR}={token}".encode() in env.split(b"\0")


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, identifies one process for good."""
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if rest[0] == "Z" else int(rest[19])
