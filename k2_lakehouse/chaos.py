"""`k2 chaos`: randomized fault trials across all layers; after each one, ordinary runs must recover and a full
verification must show 0 duplicates and 0 losses on every layer.

Everything happens on a private lake: `k2 chaos` starts its own ClickHouse and PostgreSQL on free loopback
ports with their data, the warehouse and the Dagster home under a temporary directory, and removes them at
the end (`--keep` leaves them for a post-mortem). The configured services and tables are never touched:
the faults kill and restart servers.

A trial:
1. fresh feed data (`feed.seed`, small blocks so it carries redeliveries and replays) for one of two days,
   so every fault meets work in flight;
2. one fault, of a kind drawn at random (`KINDS`):
   - `kill`: SIGKILL a `k2 run` at a named failpoint (`K2_FAILPOINT`), once a chosen layer's step started,
     or after a random delay;
   - `clickhouse_restart` / `postgres_restart`: stop the server (SIGTERM, SIGKILL; PostgreSQL: immediate
     or fast shutdown, or one backend SIGKILLed as by the OOM killer, which ends every session) while a run
     reads or commits, and restart it on the same ports and data after a random pause;
   - `concurrent_runs`: 2-3 `k2 run` at once (sometimes one of them killed);
   - `redelivery_storm`: already-offloaded rows written again under their own feed positions, many
     times, and exchange replays (the same trades under new offsets), while a run is in flight;
   - `late_data`: trades for the earlier day with higher offsets, arriving while a run is in flight;
   - `metadata_loss`: the bronze materialization events wiped, or an older one (with an older watermark)
     reported as the latest, through the Dagster instance API (bronze must trust Iceberg, DESIGN §5.1);
   - `maintenance`: table maintenance (`core/maintenance.py`) while a run writes;
3. recovery: ordinary `k2 run` (no fault) until it succeeds, at most `MAX_RECOVERY_RUNS` times, then the
   full verification of `k2 verify` (in this process). The trial recovered when every layer is in sync:
   bronze has every hot feed position exactly once, every silver and gold check passes and each was built
   from its current upstream.

Runs are processes: forked from a warm server that has already imported what a run imports (the first,
cold `k2 run` of the lake reports its modules), so a run costs its work, not ~8 s of interpreter and
Dagster start; `--exec-runs` starts each in a new interpreter instead. Every process has a timeout, is
killed with its process group if it outlives it, and every server is brought back up after each trial
whatever happened. A trial fails when recovery does not reach "in sync" within its runs, when verification
finds a duplicate or a loss, when a run of the fault hangs, or when the fault could not be applied;
`anomalies` lists processes that failed where nothing should have (maintenance next to runs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import importlib.util
import json
import logging
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from k2_lakehouse.core import feed, hot_tier, services
from k2_lakehouse.core.contracts import HOT_TABLES, HotTable
from k2_lakehouse.core.errors import K2Error
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings

KINDS = (
    "kill", "clickhouse_restart", "postgres_restart", "concurrent_runs", "redelivery_storm", "late_data",
    "metadata_loss", "maintenance",
)
FAILPOINTS = ("mid_read", "mid_write", "after_iceberg_commit", "before_publish")  # core/failpoints.py users
LAYERS = ("bronze", "silver", "gold")  # Dagster step keys start with the layer's name
DAYS = (dt.date(2026, 3, 2), dt.date(2026, 3, 3))  # the earlier one receives late data
SEED_ROWS = 2_000  # per exchange, the earlier day, before the first trial
RUN_TIMEOUT_S = 300.0  # a `k2 run` of a few thousand trades takes seconds: beyond this it hangs
MAX_RECOVERY_RUNS = 3
MAINTAIN_OLDER_THAN_S = (15, 30, 60)  # the age margin that protects files a run has written but not committed
_DEFAULT_RUN_S = 10.0  # the first estimate of a run's duration (random kill delays), refined as runs finish

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ results


@dataclass
class LayerCounts:
    duplicates: int = 0
    losses: int = 0
    other: int = 0  # failed checks that are neither (contract violations, stale derived tables)


@dataclass
class Trial:
    number: int
    kind: str
    detail: str = ""
    recovered: bool = False
    reason: str = ""
    recovery_s: float = 0.0
    recovery_runs: int = 0
    trial_s: float = 0.0
    fault_s: float = 0.0
    verify_s: float = 0.0
    hung: bool = False  # a run of the fault outlived RUN_TIMEOUT_S: a failure even if recovery worked
    harness_error: str = ""  # the fault itself could not be applied: the trial proves nothing
    anomalies: list[str] = field(default_factory=list)  # failed where nothing should (maintenance next to runs)
    counts: dict[str, LayerCounts] = field(default_factory=lambda: {layer: LayerCounts() for layer in LAYERS})

    @property
    def duplicates(self) -> int:
        return sum(c.duplicates for c in self.counts.values())

    @property
    def losses(self) -> int:
        return sum(c.losses for c in self.counts.values())

    @property
    def ok(self) -> bool:
        return self.recovered and not self.hung and not self.harness_error and not self.duplicates and not self.losses


@dataclass
class ChaosResult:
    trials: list[Trial]
    seed: int
    kinds: tuple[str, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # kind -> why it could not run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.trials) and all(t.ok for t in self.trials)

    def rows(self) -> list[tuple]:
        rows = []
        for kind in (*self.kinds, "all"):
            trials = [t for t in self.trials if kind in ("all", t.kind)]
            if not trials:
                continue
            recovery = [t.recovery_s for t in trials if t.recovered]
            rows.append((
                kind, len(trials), sum(t.recovered for t in trials), sum(not t.ok for t in trials),
                "/".join(str(sum(t.counts[layer].duplicates for t in trials)) for layer in LAYERS),
                "/".join(str(sum(t.counts[layer].losses for t in trials)) for layer in LAYERS),
                f"{statistics.mean(recovery):.1f}" if recovery else "-",
                f"{max(recovery):.1f}" if recovery else "-",
                f"{statistics.mean(t.recovery_runs for t in trials):.1f}",
                sum(len(t.anomalies) for t in trials),
            ))
        return rows

    HEADER = ("fault kind", "trials", "recovered", "FAILED", "duplicates b/s/g", "losses b/s/g",
              "mean recovery s", "max recovery s", "recovery runs", "anomalies")

    def table(self) -> str:
        return format_table(self.HEADER, self.rows())

    def failures(self) -> list[str]:
        return [f"trial {t.number} ({t.kind}): {t.reason or 'duplicates or losses'}; fault: {t.detail}"
                for t in self.trials if not t.ok]

    def anomalies(self) -> list[str]:
        """Processes that failed where they should not have, in trials that still recovered: worth a look."""
        return [f"trial {t.number} ({t.kind}): {a}" for t in self.trials for a in t.anomalies]

    def summary(self) -> str:
        verdict = "PASSED" if self.ok else "FAILED"
        dups, losses = sum(t.duplicates for t in self.trials), sum(t.losses for t in self.trials)
        return (f"chaos {verdict}: {len(self.trials)} trials (seed {self.seed}) in {self.seconds:.0f} s, "
                f"{sum(t.recovered for t in self.trials)} recovered, {dups} duplicates, {losses} losses")

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in self.rows()]
        lines += ["", self.summary(), ""]
        lines += [f"- {kind}: skipped ({why})" for kind, why in self.skipped.items()]
        lines += [f"- anomaly: {a}" for a in self.anomalies()]
        lines += ["", "| trial | kind | fault | outcome | recovery s | runs |", "|---|---|---|---|---|---|"]
        lines += [f"| {t.number} | {t.kind} | {t.detail} | {'recovered' if t.ok else 'FAILED: ' + t.reason} | "
                  f"{t.recovery_s:.1f} | {t.recovery_runs} |" for t in self.trials]
        return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- entry point


def available_kinds() -> dict[str, str]:
    """Kinds that cannot run here, with the reason (maintenance needs core/maintenance.py)."""
    if importlib.util.find_spec("k2_lakehouse.core.maintenance") is None:
        return {"maintenance": "k2_lakehouse/core/maintenance.py does not exist yet"}
    return {}


def run(
    trials: int, *, seed: int | None = None, kinds: Sequence[str] = KINDS, report: Path | None = None, keep: bool = False,
    exec_runs: bool = False, log: Log = print,
) -> ChaosResult:
    """`trials` random fault trials on a private lake; the result holds each trial's outcome."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    seed = random.randrange(1_000_000) if seed is None else seed
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; choose among {', '.join(KINDS)}")
    skipped = {k: why for k, why in available_kinds().items() if k in kinds}
    for kind, why in skipped.items():
        log(f"chaos: kind {kind} skipped: {why}")
    usable = tuple(k for k in kinds if k not in skipped)
    if not usable:
        raise ValueError("no fault kind left to run")
    rng = random.Random(seed)
    # Every usable kind at least once (in random order), then random kinds.
    plan = rng.sample(usable, len(usable))[:trials] + [rng.choice(usable) for _ in range(trials - len(usable))]
    result = ChaosResult([], seed, usable, skipped)
    started = time.perf_counter()
    log(f"chaos: {trials} trials, seed {seed}, kinds {', '.join(usable)}")
    with _terminate_as_interrupt(), private_lab(keep=keep, exec_runs=exec_runs, log=log) as lab:
        for number, kind in enumerate(plan, 1):
            trial = run_trial(lab, number, kind, random.Random(rng.randrange(2**32)))
            result.trials.append(trial)
            lab.failed |= not trial.ok or bool(trial.anomalies)
            outcome = "recovered" if trial.ok else f"FAILED: {trial.reason or 'duplicates or losses'}"
            log(f"trial {number:>3}/{trials} {kind:<18} {outcome} in {trial.recovery_s:.1f} s "
                f"({trial.recovery_runs} run{'s' if trial.recovery_runs != 1 else ''}, verify {trial.verify_s:.1f} s; "
                f"fault {trial.fault_s:.0f} s): {trial.detail}")
    result.seconds = time.perf_counter() - started
    log("")
    log(result.table())
    log(result.summary())
    for line in result.failures():
        log(f"  {line}")
    for line in result.anomalies():
        log(f"  anomaly: {line}")
    if report is not None:
        report.write_text(result.markdown())
        log(f"report written to {report}")
    return result


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a long run like Ctrl-C does: every process and server it started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------ the lab


@dataclass
class Lab:
    """The private services and lake, and the processes that run on them."""

    settings: Settings
    env: dict[str, str]  # every child's environment
    root: Path
    logs: Path
    spawner: _Spawner
    log: Log
    failed: bool = False  # a trial failed: its logs are kept
    anomalies: list[str] = field(default_factory=list)  # of the trial in progress
    run_s: list[float] = field(default_factory=list)  # durations of whole runs that had work (random fault delays)

    @property
    def typical_run_s(self) -> float:
        """How long a whole run with work takes here now: random delays within it hit every step."""
        recent = self.run_s[-10:]
        return max(recent) if recent else _DEFAULT_RUN_S

    def ran(self, proc: _Proc) -> None:
        if proc.code == 0 and proc.argv == ["run"] and "Nothing to do" not in proc.tail(1):
            self.run_s.append(proc.seconds)


@contextlib.contextmanager
def private_lab(*, keep: bool = False, exec_runs: bool = False, log: Log = print) -> Iterator[Lab]:
    """Private ClickHouse and PostgreSQL on free ports, their data and the lake under a new temporary
    directory, the earlier day seeded and built once; everything stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="k2-chaos-"))
    root.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, which must traverse it
    ch, http, pg = services.free_ports(3)
    settings = Settings.from_env({
        "K2_HOME": str(root / "home"), "K2_CLICKHOUSE_PORT": str(ch), "K2_CLICKHOUSE_HTTP_PORT": str(http),
        "K2_POSTGRES_PORT": str(pg), "K2_FIRST_DAY": (DAYS[0] - dt.timedelta(days=1)).isoformat(),
    })
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("K2_", "DAGSTER_"))}
    env = {**inherited, **settings.exports()}
    logs = root / "logs"
    logs.mkdir()
    spawner = _Spawner(env, logs, exec_runs=exec_runs)
    lab = Lab(settings, env, root, logs, spawner, log)
    log(f"chaos: private services and lake under {root} (ClickHouse 127.0.0.1:{ch}, PostgreSQL 127.0.0.1:{pg})")
    try:
        with _environ(env):  # this process's own Dagster instance API calls (metadata faults) use the lab too
            ensure_services(lab)
            started = time.perf_counter()
            feed.seed(settings, DAYS[0], SEED_ROWS, seed=0, progress=False, block_rows=250)
            modules = logs / "modules.json"
            first = spawner.start("initial", ["run"], cold_modules=modules)
            code = first.wait(RUN_TIMEOUT_S * 2)
            if code != 0:
                raise K2Error(f"chaos: the initial `k2 run` of the private lake exited {code}:\n{first.tail()}")
            spawner.warm(json.loads(modules.read_text()) if modules.exists() else [])
            log(f"chaos: {DAYS[0]} seeded and built in {time.perf_counter() - started:.0f} s; runs fork from a warm server"
                if not exec_runs else f"chaos: {DAYS[0]} seeded and built in {time.perf_counter() - started:.0f} s")
            yield lab
    finally:
        spawner.close()
        with contextlib.suppress(Exception):
            services.down(settings, log=lambda _: None)
        if keep:
            log(f"chaos: kept {root} (services stopped; logs in {logs})")
        elif lab.failed:
            shutil.rmtree(root / "home", ignore_errors=True)
            log(f"chaos: the logs of every run are kept in {logs}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def ensure_services(lab: Lab) -> None:
    """Both servers up (idempotent: restarts whichever a fault left down)."""
    with _fsync_off(), _quiet_driver():
        services.up(lab.settings, log=lambda _: None)


@contextlib.contextmanager
def _quiet_driver() -> Iterator[None]:
    """clickhouse-driver logs every refused connection with a traceback; a restarting server refuses a few."""
    logger = logging.getLogger("clickhouse_driver")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _service_pid(settings: Settings, name: str) -> int | None:
    # services checks the pid against its data dir's command line: only ever our own servers.
    paths = services._Paths.of(settings)  # noqa: SLF001 - the lab owns these servers
    return services._clickhouse_pid(paths) if name == "clickhouse" else services._postgres_pid(paths)  # noqa: SLF001


def _wait_gone(settings: Settings, name: str, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _service_pid(settings, name) is None:
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def _fsync_off() -> Iterator[None]:
    """The lab's PostgreSQL runs without fsync (disposable data; a killed server is not a lost machine)."""
    previous = os.environ.get("K2_PG_FSYNC")
    os.environ["K2_PG_FSYNC"] = "off"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("K2_PG_FSYNC", None)
        else:
            os.environ["K2_PG_FSYNC"] = previous


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------------------------- processes


class _Proc:
    """One `k2` command in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, handle) -> None:
        self.name, self.argv, self.log_path, self.handle = name, argv, log_path, handle
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.code: int | None = None

    @property
    def pid(self) -> int:
        return self.handle.pid

    def poll(self) -> int | None:
        if self.code is None:
            if isinstance(self.handle, subprocess.Popen):
                self.code = self.handle.poll()
            elif not self.handle.is_alive():
                self.handle.join()
                self.code = self.handle.exitcode
            if self.code is not None:
                self.ended = time.perf_counter()
                with contextlib.suppress(ProcessLookupError, PermissionError):  # what it left running (a crash point
                    os.killpg(self.pid, signal.SIGKILL)  # kills only the run itself): its session is its own
        return self.code

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: killed by that signal), or None if it was still running at `timeout`
        and so was killed."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                self.kill()
                return None
            time.sleep(0.05)
        return self.code

    def kill(self) -> None:
        """SIGKILL to its process group (it called setsid) and to itself, then reap it."""
        for kill in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill()
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


class _Spawner:
    """Starts `k2` commands: forked from a warm forkserver (default) or exec'd (`exec_runs`)."""

    def __init__(self, env: dict[str, str], logs: Path, *, exec_runs: bool) -> None:
        self.env, self.logs, self.exec_runs = env, logs, exec_runs
        self.ctx = None
        self.procs: list[_Proc] = []
        self.count = 0

    def warm(self, modules: list[str]) -> None:
        """Fork runs from a server that has imported `modules` (what a cold run imported)."""
        if self.exec_runs:
            return
        # The forkserver gives up on anything but ImportError: keep only modules this process imports cleanly.
        preload = []
        for name in modules:
            if name in ("__main__", "__mp_main__") or name.startswith(("_pytest", "pytest", "matplotlib.pyplot", "pylab")):
                continue
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a module that cannot be imported by name is just not preloaded
                continue
            preload.append(name)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["k2_lakehouse.chaos", *preload])

    def start(self, name: str, argv: list[str], *, extra_env: dict[str, str] | None = None,
              cold_modules: Path | None = None) -> _Proc:
        self.count += 1
        log_path = self.logs / f"{self.count:04d}_{name}.log"
        env = {**self.env, **(extra_env or {})}
        if self.ctx is None or cold_modules is not None:
            command = [sys.executable, "-m", "k2_lakehouse.chaos", "child",
                       *(["--modules", str(cold_modules)] if cold_modules else []), "--", *argv]
            with open(log_path, "ab") as out:
                handle = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        else:
            handle = self.ctx.Process(target=_forked_main, args=(argv, env, str(log_path)), name=f"k2-chaos-{name}")
            handle.start()
        proc = _Proc(name, argv, log_path, handle)
        self.procs.append(proc)
        return proc

    def running(self) -> list[_Proc]:
        return [p for p in self.procs if p.poll() is None]

    def kill_all(self) -> list[_Proc]:
        """Kill every process still running (leftovers of a trial); returns them."""
        left = self.running()
        for proc in left:
            proc.kill()
        self.procs = [p for p in self.procs if p.poll() is None]
        return left

    def close(self) -> None:
        self.kill_all()
        if self.ctx is not None:  # stop the forkserver (it would otherwise live as long as this process)
            from multiprocessing import forkserver

            with contextlib.suppress(Exception):
                forkserver._forkserver._stop()  # noqa: SLF001


def _forked_main(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """A run forked from the warm server: its own session, the lab's environment, output to its log."""
    os.setsid()
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.exit(_command(argv))


def _command(argv: list[str]) -> int:
    if argv[:1] == ["maintain"]:  # the maintenance function itself: independent of the CLI's spelling
        from k2_lakehouse.core import maintenance

        older_than = dt.timedelta(seconds=float(argv[1]))
        print(maintenance.maintain(Settings.from_env(), older_than=older_than).report(), flush=True)
        return 0
    from k2_lakehouse import cli

    return cli.main(argv)


def _child_entry(args: list[str]) -> int:
    """`python -m k2_lakehouse.chaos child [--modules FILE] -- ARGV`: a `k2` command in a fresh interpreter;
    with --modules, it writes the modules it imported (what the warm server preloads)."""
    modules = None
    if args[:1] == ["--modules"]:
        modules, args = Path(args[1]), args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    code = _command(args)
    if modules is not None:
        modules.write_text(json.dumps(sorted(sys.modules)))
    return code


# ----------------------------------------------------------------------------------------- trials


def run_trial(lab: Lab, number: int, kind: str, rng: random.Random) -> Trial:
    trial = Trial(number, kind)
    started = time.perf_counter()
    try:
        # late_data: the earlier day, so a run is at work on it when its late trades arrive. A ClickHouse
        # restart gets more rows, so that the offload's read lasts long enough to be hit.
        day = DAYS[0] if kind == "late_data" else DAYS[1] if rng.random() < 0.75 else DAYS[0]
        rows = rng.randint(3_000, 8_000) if kind == "clickhouse_restart" else rng.randint(200, 1_500)
        feed.seed(lab.settings, day, rows, seed=number, progress=False, block_rows=rng.randint(40, 250))
        lab.anomalies = trial.anomalies
        notes = [f"+{rows}/exchange on {day}"]
        notes.append(FAULTS[kind](lab, rng))
        for proc in lab.spawner.kill_all():
            notes.append(f"{proc.name} still running after the fault: killed")
        trial.detail = "; ".join(n for n in notes if n)
        trial.hung = "HUNG" in trial.detail
    except Exception as exc:  # noqa: BLE001 - the harness's own failure is reported, and recovery still runs
        trial.harness_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        trial.detail = f"fault harness error {trial.harness_error}"
        lab.spawner.kill_all()
    trial.fault_s = time.perf_counter() - started
    try:
        _ensure_services_retrying(lab)
    except Exception as exc:  # noqa: BLE001
        trial.reason = f"services did not come back: {exc}"
        trial.trial_s = time.perf_counter() - started
        return trial
    recover(lab, trial)
    if trial.hung and not trial.reason:
        trial.reason = f"a run of the fault hung for {RUN_TIMEOUT_S:.0f} s"
    if trial.harness_error and not trial.reason:
        trial.reason = f"the fault could not be applied ({trial.harness_error})"
    trial.trial_s = time.perf_counter() - started
    return trial


def recover(lab: Lab, trial: Trial) -> None:
    """Ordinary `k2 run`s, then the full verification; bounded."""
    started = time.perf_counter()
    reason = ""
    for attempt in range(1, MAX_RECOVERY_RUNS + 1):
        trial.recovery_runs = attempt
        proc = lab.spawner.start(f"t{trial.number}_recover{attempt}", ["run"])
        code = proc.wait(RUN_TIMEOUT_S)
        if code is None:
            reason = f"recovery run {attempt} hung for {RUN_TIMEOUT_S:.0f} s (killed); log {proc.log_path}"
            continue
        if code != 0:
            reason = f"recovery run {attempt} exited {code}; log {proc.log_path}:\n{proc.tail(6)}"
            continue
        lab.ran(proc)
        if attempt > 1:
            trial.detail += f"; recovery needed {attempt} runs ({reason.splitlines()[0]})"
        verifying = time.perf_counter()
        try:
            verification = _verify(lab.settings)
        except Exception as exc:  # noqa: BLE001 - a verification that cannot run is a failed one
            reason = f"verify after recovery run {attempt} failed: {type(exc).__name__}: {exc}"
            continue
        trial.verify_s = time.perf_counter() - verifying
        trial.counts = {layer: LayerCounts() for layer in LAYERS}
        _count(verification, trial)
        if not verification.mismatched:
            trial.recovered = True
            trial.recovery_s = time.perf_counter() - started
            return
        reason = f"after {attempt} recovery run(s), verify: {_mismatches(verification)}"
    trial.recovery_s = time.perf_counter() - started
    trial.reason = reason
    if not reason.startswith("after"):  # the last attempt never verified: count what is there now
        with contextlib.suppress(Exception):
            trial.counts = {layer: LayerCounts() for layer in LAYERS}
            _count(_verify(lab.settings), trial)


def _verify(settings: Settings):
    from k2_lakehouse.core.verify import verify

    return verify(settings)


def _count(verification, trial: Trial) -> None:
    """Duplicates and losses per layer from a full verification."""
    for r in verification.bronze:
        trial.counts["bronze"].duplicates += r.duplicates + max(-r.missing, 0)  # a position twice, or one the hot tier lacks
        trial.counts["bronze"].losses += max(r.missing, 0) + r.not_yet_offloaded
        if r.duplicates == 0 and r.missing == 0 and r.not_yet_offloaded == 0 and not r.checksum_match:
            trial.counts["bronze"].losses += 1  # as many positions, not the same ones
    for name, _day, check in verification.failed:
        counts = trial.counts["silver" if name.startswith("silver") else "gold"]
        duplicate_keys = next((v for k, v in check.details.items() if k.startswith("duplicate_keys")), 0)
        difference = check.difference
        if isinstance(duplicate_keys, int) and duplicate_keys > 0:
            counts.duplicates += duplicate_keys
        elif isinstance(difference, int) and not isinstance(difference, bool) and difference > 0:
            counts.duplicates += difference
        elif isinstance(difference, int) and not isinstance(difference, bool) and difference < 0:
            counts.losses -= difference
        else:
            counts.other += 1


def _mismatches(verification) -> str:
    bronze = [f"{r.table} {r.day}: {r.duplicates} duplicates, {r.missing} missing, {r.not_yet_offloaded} not offloaded"
              for r in verification.bronze if not r.in_sync]
    derived = [f"{name} {day} {c.name}: expected {c.expected}, actual {c.actual}" for name, day, c in verification.failed]
    return "; ".join(bronze + derived)[:600]


# ------------------------------------------------------------------------------------------ faults


BRONZE_RUN = ("run", "--select", "group:bronze")  # faults aimed at the offload: recovery builds silver and gold


def _start_run(lab: Lab, name: str, argv: Sequence[str] = ("run",), **env: str) -> _Proc:
    return lab.spawner.start(name, list(argv), extra_env=env or None)


def _finish(lab: Lab, procs: Sequence[_Proc], timeout: float = RUN_TIMEOUT_S) -> str:
    """Wait for the fault's runs; their exit codes as a note (a hang is killed and said so)."""
    notes = []
    for proc in procs:
        code = proc.wait(max(timeout - proc.seconds, 1.0))
        if code is None:
            notes.append(f"{proc.name} HUNG > {timeout:.0f} s (killed)")
        else:
            notes.append(f"{proc.name} exit {code}")
            lab.ran(proc)
    return ", ".join(notes)


def _wait_for_step(lab: Lab, proc: _Proc, layer: str, timeout: float) -> bool:
    """Wait until the run started by `proc` begins a step of `layer` (from its Dagster events). False if the
    run ended first or the step never came."""
    from dagster import DagsterEventType, DagsterInstance

    deadline = time.monotonic() + timeout
    instance = DagsterInstance.get()
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                for record in instance.get_run_records(limit=3):
                    if record.create_timestamp.timestamp() < time.time() - proc.seconds - 1:
                        continue
                    steps = instance.get_records_for_run(record.dagster_run.run_id, of_type=DagsterEventType.STEP_START).records
                    if any((r.event_log_entry.step_key or "").startswith(layer) for r in steps):
                        return True
            except Exception:  # noqa: BLE001 - PostgreSQL may be down (a fault), keep polling
                pass
            time.sleep(0.1)
        return False
    finally:
        instance.dispose()


def fault_kill(lab: Lab, rng: random.Random) -> str:
    mode = rng.choice(("failpoint", "step", "delay"))
    if mode == "failpoint":
        point = rng.choice(FAILPOINTS)
        proc = _start_run(lab, "kill_failpoint", K2_FAILPOINT=point)
        return f"K2_FAILPOINT={point}: {_finish(lab, [proc])}"
    proc = _start_run(lab, "kill")
    if mode == "step":
        layer = rng.choice(LAYERS)
        reached = _wait_for_step(lab, proc, layer, RUN_TIMEOUT_S)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        what = f"SIGKILL {delay:.1f} s into {layer}" if reached else f"run ended before {layer}"
    else:
        delay = rng.uniform(0.3, 1.2 * lab.typical_run_s)
        time.sleep(delay)
        what = f"SIGKILL after {delay:.1f} s"
    alive = proc.poll() is None
    proc.kill()
    return f"{what}{'' if alive else ' (too late: already exited ' + str(proc.code) + ')'}"


def fault_service_restart(name: str) -> Callable[[Lab, random.Random], str]:
    def fault(lab: Lab, rng: random.Random) -> str:
        if name == "clickhouse":  # read while a run looks for work, and by the offload
            bronze_only = rng.random() < 0.5
            target = rng.choice(("start", "bronze") if bronze_only else ("start", "bronze", "any"))
            proc = _start_run(lab, f"{name}_restart", BRONZE_RUN if bronze_only else ("run",))
        else:  # catalog commits and Dagster events: every layer
            target = rng.choice((*LAYERS, "any"))
            proc = _start_run(lab, f"{name}_restart")
        if target == "start":
            time.sleep(rng.uniform(0.0, 1.0))
        elif target == "any":
            time.sleep(rng.uniform(0.2, lab.typical_run_s))
        else:
            _wait_for_step(lab, proc, target, RUN_TIMEOUT_S)
            time.sleep(rng.uniform(0.0, 1.0))
        pid = _service_pid(lab.settings, name)
        if pid is None:
            return f"{name} was not running"
        running = proc.poll() is None
        if name == "clickhouse":
            how, sig = rng.choice((("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)))
        else:  # postmaster: SIGQUIT = immediate shutdown (crash recovery at start), SIGINT = fast shutdown;
            # or a backend OOM-killed, after which the postmaster ends every session and recovers by itself
            how, sig = rng.choice((("immediate", signal.SIGQUIT), ("fast", signal.SIGINT), ("backend SIGKILL", None)))
        at = f"at {target}" if target != "any" else "at random"
        if sig is None:
            backend = _postgres_backend(pid, rng)
            if backend is None:
                how, sig = "immediate", signal.SIGQUIT
            else:
                os.kill(backend, signal.SIGKILL)
                _ensure_services_retrying(lab)
                return f"postgres {how} {at}{'' if running else ' (run already done)'}, it recovered by itself; {_finish(lab, [proc])}"
        os.kill(pid, sig)
        if not _wait_gone(lab.settings, name):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(lab.settings, name)
        pause = rng.uniform(0.2, 3.0)
        time.sleep(pause)
        _ensure_services_retrying(lab)
        return f"{name} {how} {at}{'' if running else ' (run already done)'}, restarted after {pause:.1f} s; {_finish(lab, [proc])}"

    return fault


def _ensure_services_retrying(lab: Lab, attempts: int = 5) -> None:
    """A server in crash recovery refuses connections for a moment: try again before giving up."""
    for attempt in range(1, attempts + 1):
        try:
            ensure_services(lab)
            return
        except Exception:  # noqa: BLE001
            if attempt == attempts:
                raise
            time.sleep(attempt)


def _postgres_backend(postmaster: int, rng: random.Random) -> int | None:
    """A client backend of our postmaster (a child serving a connection), or None."""
    backends = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster and "127.0.0.1(" in cmdline:
            backends.append(int(entry))
    return rng.choice(backends) if backends else None


def fault_concurrent_runs(lab: Lab, rng: random.Random) -> str:
    n = rng.choice((2, 2, 3))
    procs = []
    for i in range(n):
        argv = ["run"] if i == 0 or rng.random() < 0.7 else ["run", "--select", rng.choice(("group:bronze", "group:silver or group:gold"))]
        procs.append(_start_run(lab, f"concurrent{i + 1}", argv))
        time.sleep(rng.uniform(0.0, 1.5))
    note = ""
    if rng.random() < 0.3:
        time.sleep(rng.uniform(0.5, lab.typical_run_s))
        victim = rng.choice(procs)
        if victim.poll() is None:
            victim.kill()
            note = f"; {victim.name} SIGKILLed"
    return f"{n} runs at once ({', '.join(' '.join(p.argv) for p in procs)}){note}: {_finish(lab, procs)}"


def fault_redelivery_storm(lab: Lab, rng: random.Random) -> str:
    proc = _start_run(lab, "storm", BRONZE_RUN if rng.random() < 0.7 else ("run",))
    redelivered = replayed = 0
    rounds = rng.randint(3, 10)
    client = hot_tier.connect(lab.settings, write=True)
    try:
        for _ in range(rounds):
            hot = rng.choice(list(HOT_TABLES.values()))
            day = rng.choice(DAYS)
            if rng.random() < 0.7:
                redelivered += _redeliver(client, hot, day, rng)
            else:
                replayed += _replay(client, hot, day, rng)
            time.sleep(rng.uniform(0.0, 0.4))
    finally:
        client.disconnect()
    return f"{rounds} rounds: {redelivered} rows redelivered, {replayed} trades replayed under new offsets; {_finish(lab, [proc])}"


def _redeliver(client, hot: HotTable, day: dt.date, rng: random.Random) -> int:
    """Rows already in the hot tier written again under their own feed positions, identical but for
    `ingested_at` (a consumer restarted from an old committed offset), one to five times over."""
    spans = client.execute(
        f"SELECT kafka_partition, min(kafka_offset), max(kafka_offset) FROM {hot.name} WHERE trade_date = %(day)s "
        "GROUP BY kafka_partition", {"day": day}, settings={"use_numpy": False},
    )
    if not spans:
        return 0
    partition, lo, hi = rng.choice(spans)
    start = rng.randint(int(lo), int(hi))
    end = min(int(hi), start + rng.randint(1, 300))
    columns = ", ".join("now()" if c == "ingested_at" else c for c in hot.column_names)
    total = 0
    for _ in range(rng.randint(1, 5)):
        client.execute(
            f"INSERT INTO {hot.name} ({', '.join(hot.column_names)}) SELECT {columns} FROM {hot.name} "
            "WHERE trade_date = %(day)s AND kafka_partition = %(p)s AND kafka_offset >= %(lo)s AND kafka_offset <= %(hi)s "
            "LIMIT 1 BY kafka_partition, kafka_offset",
            {"day": day, "p": int(partition), "lo": start, "hi": end},
        )
        total += int(client.execute(
            f"SELECT uniqExact(kafka_offset) FROM {hot.name} WHERE trade_date = %(day)s AND kafka_partition = %(p)s "
            "AND kafka_offset >= %(lo)s AND kafka_offset <= %(hi)s", {"day": day, "p": int(partition), "lo": start, "hi": end},
            settings={"use_numpy": False},
        )[0][0])
    return total


def _replay(client, hot: HotTable, day: dt.date, rng: random.Random) -> int:
    """Trades of `day` sent again by the exchange (a reconnect replay): same content and trade id, new feed
    positions after the partition's last offset, a later record timestamp on the same day."""
    names = hot.column_names
    rows = client.execute(
        f"SELECT {', '.join(names)} FROM {hot.name} WHERE trade_date = %(day)s LIMIT 1 BY kafka_partition, kafka_offset "
        "LIMIT %(n)s", {"day": day, "n": rng.randint(5, 60)}, settings={"use_numpy": False},
    )
    if not rows:
        return 0
    nxt = {int(p): int(o) + 1 for p, o in client.execute(
        f"SELECT kafka_partition, max(kafka_offset) FROM {hot.name} GROUP BY kafka_partition", settings={"use_numpy": False})}
    i_part, i_off, i_ts = names.index("kafka_partition"), names.index("kafka_offset"), names.index("kafka_timestamp")
    end_of_day_ms = int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc).timestamp() * 1000) - 1
    out = []
    for row in sorted(rows, key=lambda r: (r[i_part], r[i_off])):
        row = list(row)
        partition = int(row[i_part])
        row[i_off], nxt[partition] = nxt[partition], nxt[partition] + 1
        row[i_ts] = min(int(row[i_ts]) + rng.randint(1, 5_000), end_of_day_ms)
        if "ingested_at" in names:
            row[names.index("ingested_at")] = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
        out.append(row)
    client.execute(f"INSERT INTO {hot.name} ({', '.join(names)}) VALUES", out, settings={"use_numpy": False})
    return len(out)


def fault_late_data(lab: Lab, rng: random.Random) -> str:
    proc = _start_run(lab, "late", BRONZE_RUN if rng.random() < 0.7 else ("run",))
    batches = rng.randint(1, 4)
    rows = 0
    for i in range(batches):
        time.sleep(rng.uniform(0.0, lab.typical_run_s / 2))
        n = rng.randint(20, 400)
        feed.seed(lab.settings, DAYS[0], n, seed=10_000 + rng.randrange(10**6), progress=False, block_rows=rng.randint(10, 100))
        rows += n
    return f"{rows}/exchange late trades for {DAYS[0]} in {batches} batches during a run; {_finish(lab, [proc])}"


def fault_metadata_loss(lab: Lab, rng: random.Random) -> str:
    from dagster import AssetKey, AssetMaterialization, AssetRecordsFilter, DagsterInstance

    # (Wiping single partitions, `wipe_asset_partitions`, is not supported by dagster-postgres' event log.)
    how = rng.choice(("wipe", "wipe_during_run", "regress", "regress_during_run"))
    proc = _start_run(lab, "metadata", BRONZE_RUN) if how.endswith("_during_run") else None
    if proc is not None:
        time.sleep(rng.uniform(0.5, lab.typical_run_s))
    touched = []
    instance = DagsterInstance.get()
    try:
        for hot in HOT_TABLES.values():
            key = AssetKey(hot.asset_path)
            if how.startswith("wipe"):
                instance.wipe_assets([key])
                touched.append(key.to_user_string())
                continue
            for day in DAYS:
                partition = day.isoformat()
                records = instance.fetch_materializations(
                    AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=20,
                ).records
                if len(records) < 2:
                    continue
                older = rng.choice(records[1:]).asset_materialization  # an older watermark reported as the latest
                instance.report_runless_asset_event(
                    AssetMaterialization(asset_key=key, partition=partition, metadata=dict(older.metadata)),
                )
                touched.append(f"{key.to_user_string()}[{partition}]")
    finally:
        instance.dispose()
    note = f"{how}: {', '.join(touched) or 'nothing to regress yet'}"
    if proc is None:
        return note
    return f"{note}; {_finish(lab, [proc])}"


def fault_maintenance(lab: Lab, rng: random.Random) -> str:
    older_than = rng.choice(MAINTAIN_OLDER_THAN_S)
    runs = [_start_run(lab, "maintained")]
    time.sleep(rng.uniform(0.0, lab.typical_run_s))
    maintain = lab.spawner.start("maintain", ["maintain", str(older_than)])
    if rng.random() < 0.5:
        time.sleep(rng.uniform(0.0, 2.0))
        runs.append(_start_run(lab, "maintained2"))
    note = f"maintenance (older than {older_than} s) during a run: {_finish(lab, [*runs, maintain])}"
    if maintain.code != 0:  # "safe to run at any time next to offloads and publishes" (core/maintenance.py)
        lab.anomalies.append(f"maintenance exited {maintain.code}: {maintain.tail(1)} (log {maintain.log_path})")
    return note


FAULTS: dict[str, Callable[[Lab, random.Random], str]] = {
    "kill": fault_kill,
    "clickhouse_restart": fault_service_restart("clickhouse"),
    "postgres_restart": fault_service_restart("postgres"),
    "concurrent_runs": fault_concurrent_runs,
    "redelivery_storm": fault_redelivery_storm,
    "late_data": fault_late_data,
    "metadata_loss": fault_metadata_loss,
    "maintenance": fault_maintenance,
}


if __name__ == "__main__":  # `python -m k2_lakehouse.chaos child ...`: one cold `k2` command (see _Spawner)
    if sys.argv[1:2] == ["child"]:
        sys.exit(_child_entry(sys.argv[2:]))
    sys.exit("usage: k2 chaos --trials N (this module's own entry point is for its child processes)")
