"""`k2 bench`: throughput and peak memory, beside naive baselines measured in the same run.

Works on a private corner of the running local services (ClickHouse database `k2_bench`, catalog database
`iceberg_bench`, Dagster database `dagster_bench`, warehouse and DAGSTER_HOME under K2_HOME/bench), so it
never touches the real tables. Every measurement runs in a fresh child process; its wall time includes
the process start, its peak RSS is the child's own (`os.wait4` in a bare launcher process, see `_measure`).

`k2 bench offload` (the default): the bronze offload alone.
- k2: the exactly-once offload (`offload_day`): columnar numpy reads in bounded offset slices, a reader
  thread overlapping ClickHouse with sorting and zstd Parquet writing, one Iceberg commit.
- baseline: the plain way: read the day as row tuples, build a pandas DataFrame, `table.append` it.

`k2 bench day`: one simulated day, all ten assets (two bronze, two silver, six gold tables), Dagster included.
- whole day: `k2 run --partition DAY --select '*'` on an empty lake, at two sizes (memory vs size);
- split: `--select group:bronze`, then `--select 'group:silver or group:gold'`, on another empty lake;
- baseline: silver and gold the plain pandas way (`k2_lakehouse.baseline`) from the same bronze tables,
  compared table by table with what k2 wrote.

`k2 bench scale`: the nine-table day at 1x, 2x, 4x (`--factors`) the rows, on DuckDB and on Spark, without Dagster.
- per factor, one hot day seeded; per engine an empty lake built from it: bronze (both tables), silver, gold, each
  step a fresh process (`bench.py step`), its peak memory the sum of its whole process tree's RSS (driver, Spark
  JVM, Python workers; `measure_tree`), its wall time beside the step's own.

`k2 bench parallel`: two equal exchanges offloaded one at a time, then at once (two processes started together):
parallel efficiency = (t_binance + t_kraken) / (2 x t_both), on each engine, repeated.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from k2_lakehouse.core import hot_tier, iceberg, services
from k2_lakehouse.core.contracts import HOT_TABLES, hot_table, validate_identifier
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings

BENCH_DB = services.BENCH_HOT_DATABASE  # "k2_bench": the local ClickHouse reader may read it
BENCH_CATALOG_DB = "iceberg_bench"
BENCH_DAGSTER_DB = "dagster_bench"
LARGE_DAY = dt.date(2025, 6, 2)
SMALL_DAY = dt.date(2025, 6, 1)
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
MIB = 1024 * 1024


def _bench_corner(settings: Settings, bench: Settings | None = None) -> tuple[Settings, dict[str, str], Path]:
    """The bench corner's settings, the environment of its child processes and an emptied log directory."""
    bench = bench or bench_settings(settings)
    logs = settings.home / "bench" / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    return bench, {**os.environ, **bench.exports()}, logs


def bench_settings(settings: Settings) -> Settings:
    server = settings.iceberg_catalog_uri.rsplit("/", 1)[0]
    return dataclasses.replace(
        settings,
        clickhouse_url=settings.clickhouse_url.rsplit("/", 1)[0] + f"/{BENCH_DB}",
        clickhouse_writer_url=settings.exports()["K2_CLICKHOUSE_WRITER_URL"].rsplit("/", 1)[0] + f"/{BENCH_DB}",  # the feed's
        iceberg_catalog_uri=f"{server}/{BENCH_CATALOG_DB}",
        postgres_url=settings.postgres_url.rsplit("/", 1)[0] + f"/{BENCH_DAGSTER_DB}",
        warehouse=(settings.home / "bench" / "warehouse").as_uri(),
        dagster_home=settings.home / "bench" / "dagster",
        first_day=min(SMALL_DAY, LARGE_DAY),  # the bench days are Dagster partitions too
    )


# =====================================================================================================
# k2 bench offload
# =====================================================================================================

def offload(settings: Settings, *, rows: int, small_rows: int) -> int:
    from k2_lakehouse.core import feed

    bench = bench_settings(settings)
    _reset(settings, bench)
    print(f"seeding {small_rows:,} rows/exchange on {SMALL_DAY} and {rows:,} on {LARGE_DAY} ...", flush=True)
    feed.seed(bench, SMALL_DAY, small_rows, seed=1, progress=False)
    feed.seed(bench, LARGE_DAY, rows, seed=2, progress=False)
    runs = []
    for exchange in HOT_TABLES:
        for day in (SMALL_DAY, LARGE_DAY):
            runs.append(_child(bench, "k2", exchange, day))
        runs.append(_child(bench, "baseline", exchange, LARGE_DAY))
    header = ("method", "table", "day", "rows", "seconds", "rows/s", "peak RSS MiB", "bytes/row")
    print(format_table(header, [
        (r["method"], r["table"], r["day"], f"{r['rows']:,}", f"{r['seconds']:.2f}", f"{r['rows_per_s']:,.0f}",
         f"{r['peak_rss_mib']:.0f}", f"{r['bytes_per_row']:.1f}")
        for r in runs
    ]))
    for exchange in HOT_TABLES:
        k2 = next(r for r in runs if r["method"] == "k2" and r["table"].endswith(exchange) and r["day"] == str(LARGE_DAY))
        base = next(r for r in runs if r["method"] == "baseline" and r["table"].endswith(exchange))
        small = next(r for r in runs if r["method"] == "k2" and r["table"].endswith(exchange) and r["day"] == str(SMALL_DAY))
        print(
            f"{exchange}: k2 {k2['rows_per_s'] / base['rows_per_s']:.1f}x the baseline's rows/s, "
            f"{base['peak_rss_mib'] / k2['peak_rss_mib']:.1f}x less peak memory; "
            f"k2 peak RSS {small['peak_rss_mib']:.0f} MiB at {small['rows']:,} rows vs {k2['peak_rss_mib']:.0f} MiB at {k2['rows']:,}"
        )
    out = settings.home / "bench" / "results.json"
    out.write_text(json.dumps({"cpus": os.cpu_count(), "runs": runs}, indent=2))
    print(f"results written to {out}")
    return 0


main = offload  # the original name of the offload benchmark


def _reset(settings: Settings, bench: Settings) -> None:
    _reset_hot(settings)
    _recreate_databases(settings, BENCH_CATALOG_DB)
    shutil.rmtree(settings.home / "bench" / "warehouse", ignore_errors=True)


def _reset_hot(settings: Settings) -> None:
    client = hot_tier.connect(settings, database="", write=True)
    client.execute(f"DROP DATABASE IF EXISTS {validate_identifier(BENCH_DB)}")
    hot_tier.create_hot_tables(client, BENCH_DB)
    client.disconnect()


def _recreate_databases(settings: Settings, *names: str) -> None:
    """Empty bench databases, each owned by its K2 role (the catalog's, Dagster's), made through the local
    cluster's superuser socket: the roles themselves cannot create databases."""
    bench = bench_settings(settings)
    urls = {BENCH_CATALOG_DB: bench.iceberg_catalog_uri, BENCH_DAGSTER_DB: bench.postgres_url}
    for name in names:
        services.create_database(settings, urls[name], replace=True)


def _child(bench: Settings, method: str, exchange: str, day: dt.date) -> dict:
    logs = bench.home / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    m = _measure(f"offload_{method}_{exchange}_{day}", [sys.executable, "-m", "k2_lakehouse.bench", "offload-child", method,
                 exchange, day.isoformat()], {**os.environ, **bench.exports()}, logs)
    if m.returncode:
        raise RuntimeError(f"bench child {m.argv} exited {m.returncode}:\n{_tail(m.stderr)}")
    return json.loads(m.stdout.strip().splitlines()[-1])  # the child's own figures (RUSAGE_SELF, inside the timed part)


def _measure_k2(settings: Settings, exchange: str, day: dt.date) -> dict:
    from k2_lakehouse.core.offload import offload_day

    hot = hot_table(exchange)
    table = iceberg.bronze_table(iceberg.catalog(settings), hot)
    started = time.perf_counter()
    result = offload_day(table, hot_tier.connect(settings), hot, day, batch_rows=settings.batch_rows)
    return _row("k2", hot, day, result.rows, time.perf_counter() - started, result.bytes_written)


def _measure_baseline(settings: Settings, exchange: str, day: dt.date) -> dict:
    import pandas as pd
    import pyarrow as pa

    hot = hot_table(exchange)
    cat = iceberg.catalog(settings)
    try:
        cat.create_namespace("baseline")
    except Exception:  # noqa: BLE001 - already there
        pass
    identifier = ("baseline", f"trades_{exchange}_{day:%Y%m%d}")
    if cat.table_exists(identifier):
        cat.drop_table(identifier)
    table = cat.create_table(identifier, schema=hot.bronze.iceberg_schema, partition_spec=hot.bronze.partition_spec)
    started = time.perf_counter()
    client = hot_tier.connect(settings)
    rows = client.execute(
        f"SELECT {', '.join(hot.column_names)} FROM {hot.name} WHERE trade_date = %(day)s", {"day": day},
        settings={"use_numpy": False},
    )
    frame = pd.DataFrame(rows, columns=hot.column_names)
    del rows
    arrow = pa.Table.from_pandas(frame, preserve_index=False).cast(hot.arrow_schema)
    table.append(arrow)
    seconds = time.perf_counter() - started
    size = sum(f["file_size_in_bytes"] for f in table.inspect.files().to_pylist())
    return _row("baseline", hot, day, arrow.num_rows, seconds, size)


def _row(method: str, hot, day: dt.date, rows: int, seconds: float, size: int) -> dict:
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method, "table": ".".join(hot.bronze_identifier), "day": str(day), "rows": rows,
        "seconds": seconds, "rows_per_s": rows / seconds if seconds else 0.0,
        "peak_rss_mib": peak_kib / 1024, "bytes_per_row": size / rows if rows else 0.0,
    }


# =====================================================================================================
# k2 bench day
# =====================================================================================================

WHOLE_DAY = "*"  # every asset: 2 bronze, silver trades + rejected, 6 gold
BRONZE = "group:bronze"
SILVER_GOLD = "group:silver or group:gold"
TARGET_SECONDS = 60  # the targets, reported, never asserted
TARGET_RSS_MIB = 2048


@dataclasses.dataclass
class Measured:
    """One child process: what it was, how long it took from spawn to exit, its own peak RSS."""

    name: str
    argv: list[str]
    seconds: float
    cpu_seconds: float  # user + system CPU of the child: wall time above it means waiting, below it parallelism
    peak_rss_mib: float
    returncode: int
    load_before: float  # 1-minute load average when the child started: other work on the machine skews wall times
    stdout: str
    stderr: str

    def summary(self) -> dict:
        return {"name": self.name, "argv": self.argv, "seconds": self.seconds, "cpu_seconds": self.cpu_seconds,
                "peak_rss_mib": self.peak_rss_mib, "returncode": self.returncode, "load_before": self.load_before}


def day(settings: Settings, *, rows: int, small_rows: int) -> int:
    from k2_lakehouse.core import feed

    bench, env, logs = _bench_corner(settings)

    _reset_hot(settings)
    print(f"seeding {small_rows:,} trades/exchange on {SMALL_DAY} and {rows:,} on {LARGE_DAY} into {BENCH_DB} ...", flush=True)
    seeded = {}
    for the_day, n, seed in ((SMALL_DAY, small_rows, 1), (LARGE_DAY, rows, 2)):
        report = feed.seed(bench, the_day, n, seed=seed, progress=False)
        seeded[the_day.isoformat()] = {"rows": n, "seconds": report.seconds, "summary": report.summary()}
        print(f"  {the_day}: {report.seconds:.1f} s", flush=True)
    settled = _wait_for_merges(bench)
    print(f"  hot tier merges settled after {settled:.1f} s", flush=True)

    def k2_run(name: str, the_day: dt.date, selection: str) -> dict:
        print(f"measuring: {name} ...", flush=True)
        m = _measure(name, [sys.executable, "-m", "k2_lakehouse.cli", "run", "--partition", the_day.isoformat(), "--select", selection],
                     env, logs)
        assets = parse_run_table(m.stdout)
        run = _dagster_run_stats(env, logs, name)
        ok = m.returncode == 0
        if not ok:
            print(f"  k2 run exited {m.returncode}; stderr tail (full log {logs / name}.err):\n{_tail(m.stderr)}", flush=True)
        return {**m.summary(), "day": the_day.isoformat(), "selection": selection, "ok": ok, "assets": assets, "dagster": run}

    # What starting `k2 run` costs before any work: the interpreter, Dagster and the Definitions.
    print("measuring: process start ...", flush=True)
    startup = _measure("startup", [sys.executable, "-c", "import k2_lakehouse.cli, k2_lakehouse.runner"], env, logs)

    _reset_lake(settings, bench, env, logs)
    whole_small = k2_run("whole_day_small", SMALL_DAY, WHOLE_DAY)
    _reset_lake(settings, bench, env, logs)
    whole_large = k2_run("whole_day_large", LARGE_DAY, WHOLE_DAY)
    _reset_lake(settings, bench, env, logs)
    bronze_large = k2_run("bronze_large", LARGE_DAY, BRONZE)
    silver_gold_large = k2_run("silver_gold_large", LARGE_DAY, SILVER_GOLD)

    print("measuring: pandas baseline (silver + gold) ...", flush=True)
    base_m = _measure("baseline_large", [sys.executable, "-m", "k2_lakehouse.baseline", "run", LARGE_DAY.isoformat()], env, logs)
    base = {**base_m.summary(), **(_last_json(base_m.stdout) or {})}
    if base_m.returncode:
        print(f"  baseline exited {base_m.returncode}:\n{_tail(base_m.stderr)}", flush=True)
    comparison: dict = {}
    if base_m.returncode == 0 and silver_gold_large["ok"]:
        cmp_m = _measure("compare_large", [sys.executable, "-m", "k2_lakehouse.baseline", "compare", LARGE_DAY.isoformat()], env, logs)
        comparison = _last_json(cmp_m.stdout) or {"error": _tail(cmp_m.stderr)}

    results = {
        "cpus": os.cpu_count(), "rows_per_exchange": {"small": small_rows, "large": rows},
        "days": {"small": SMALL_DAY.isoformat(), "large": LARGE_DAY.isoformat()}, "seeded": seeded,
        "startup": startup.summary(),
        "whole_day_small": whole_small, "whole_day_large": whole_large,
        "bronze_large": bronze_large, "silver_gold_large": silver_gold_large,
        "baseline_large": base, "comparison": comparison,
    }
    print()
    print(report_day(results))
    out = settings.home / "bench" / "day_results.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out}; child logs in {logs}")
    return 0 if all(r["ok"] for r in (whole_small, whole_large, bronze_large, silver_gold_large)) and base_m.returncode == 0 else 1


INCREMENT_ROWS = 5_000  # new trades per exchange between two sensor-triggered runs, about a minute of a busy feed
INCREMENT_TARGET_S = 2.0  # the target for the bronze step of an incremental run, reported, never asserted


def incremental(settings: Settings, *, rows: int, small_rows: int) -> int:
    """Sensor-sized bronze runs on a day already holding `rows` trades per exchange, checked incrementally,
    beside the same runs checked over the whole partition (the Dagster instance emptied, so no run can
    know what earlier checks covered): the baseline of the same run."""
    from k2_lakehouse.core import feed

    bench, env, logs = _bench_corner(settings)
    _reset_hot(settings)
    _reset_lake(settings, bench, env, logs)
    print(f"seeding {rows:,} trades/exchange on {LARGE_DAY} into {BENCH_DB} ...", flush=True)
    feed.seed(bench, LARGE_DAY, rows, seed=2, progress=False)
    _wait_for_merges(bench)
    argv = [sys.executable, "-m", "k2_lakehouse.cli", "run", "--partition", LARGE_DAY.isoformat(), "--select", BRONZE]

    seeds = itertools.count(10)  # every appended batch its own trades

    def bronze_run(name: str, append: int) -> dict:
        if append:
            feed.seed(bench, LARGE_DAY, append, seed=next(seeds), progress=False)
        m = _measure(name, argv, env, logs)
        stats = _dagster_run_stats(env, logs, name)
        steps = {s["step"]: s["seconds"] for s in stats.get("steps", []) if s["seconds"] is not None}
        assets = parse_run_table(m.stdout)
        print(f"  {name}: {m.seconds:.2f} s wall, bronze steps {', '.join(f'{v:.2f} s' for v in steps.values())}", flush=True)
        return {**m.summary(), "ok": m.returncode == 0, "appended": append, "steps": steps, "assets": assets,
                "run_seconds": stats.get("run_seconds")}

    print("initial load (whole day) ...", flush=True)
    runs = [bronze_run("initial_load", 0)]
    for i in range(3):
        runs.append(bronze_run(f"incremental_{i + 1}", INCREMENT_ROWS))
    runs.append(bronze_run("nothing_to_append", 0))
    for i in range(2):  # the baseline: the same kind of run, every partition checked whole
        _reset_lake_dagster(settings, bench, env, logs)
        runs.append(bronze_run(f"whole_partition_checks_{i + 1}", INCREMENT_ROWS))
    startup = _measure("startup", [sys.executable, "-c", "import k2_lakehouse.cli, k2_lakehouse.runner"], env, logs)

    rows_out = []
    for r in runs:
        bronze_steps = [v for k, v in r["steps"].items() if k.startswith("bronze__")]
        rows_out.append((r["name"], f"{r['appended']:,}", f"{max(bronze_steps or [0]):.2f}", f"{r['seconds']:.2f}",
                         f"{r['peak_rss_mib']:.0f}", "ok" if r["ok"] else "FAILED"))
    print()
    print(format_table(("run", "appended/exchange", "slowest bronze step s", "whole run s", "peak MiB", "status"), rows_out))
    incremental_steps = [max(v for k, v in r["steps"].items() if k.startswith("bronze__")) for r in runs if r["name"].startswith("incremental_")]
    full_steps = [max(v for k, v in r["steps"].items() if k.startswith("bronze__")) for r in runs if r["name"].startswith("whole_partition")]
    if incremental_steps and full_steps:
        worst, base = max(incremental_steps), min(full_steps)
        print(f"\nbronze step of an incremental run: worst {worst:.2f} s vs {INCREMENT_TARGET_S:.0f} s target "
              f"({'met' if worst <= INCREMENT_TARGET_S else 'NOT met'}); whole-partition checks {base:.2f} s (x{base / worst:.1f}); "
              f"process start alone {startup.seconds:.2f} s")
    out = settings.home / "bench" / "incremental_results.json"
    out.write_text(json.dumps({"rows_per_exchange": rows, "increment_rows": INCREMENT_ROWS, "runs": runs,
                               "startup": startup.summary()}, indent=2, default=str))
    print(f"results written to {out}; child logs in {logs}")
    return 0 if all(r["ok"] for r in runs) else 1


def _reset_lake_dagster(settings: Settings, bench: Settings, env: dict[str, str], logs: Path) -> None:
    """An empty Dagster instance over the same tables: no run knows what earlier checks covered."""
    _recreate_databases(settings, BENCH_DAGSTER_DB)
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; DagsterInstance.get().get_runs(limit=1)"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=(logs / "dagster_init.err").open("a"))


FRESHNESS_TARGETS_S = {"bronze": 60, "gold": 90}  # the targets, reported, never asserted


def freshness(settings: Settings, *, duration_s: float, rate: float = 100.0) -> int:
    """The live system (`k2 live`: feed, webserver, daemon with the sensor and automation on) on the bench
    corner; once gold holds today, sample for `duration_s` how long new trades take to reach bronze and gold."""
    import signal
    import threading

    from k2_lakehouse.core import freshness as lag
    from k2_lakehouse.core.contracts import HOT_TABLES
    from k2_lakehouse.core.freshness import gold_watermark

    bench, env, logs = _bench_corner(
        settings, dataclasses.replace(bench_settings(settings), first_day=dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=2)),
    )
    _reset_hot(settings)
    _reset_lake(settings, bench, env, logs)
    (port,) = services.free_ports(1)
    argv = [sys.executable, "-m", "k2_lakehouse.cli", "live", "--port", str(port), "--rate", f"{rate:g}",
            "--history-days", "1", "--history-rows", "20000", "--keep-services"]
    print(f"starting the live system on the bench corner (UI on 127.0.0.1:{port}), feed {rate:g} trades/s per exchange ...", flush=True)
    started = time.monotonic()
    with open(logs / "live.log", "wb") as out:
        live = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        today = dt.datetime.now(dt.timezone.utc).date()
        cat = iceberg.catalog(bench)
        warm = None
        while live.poll() is None and time.monotonic() - started < 600:
            try:
                if all(gold_watermark(cat, hot, today) for hot in HOT_TABLES.values()):
                    warm = time.monotonic() - started
                    break
            except Exception:  # tables not created yet
                pass
            time.sleep(2)
        if warm is None:
            print(f"gold never showed today's trades (live exited {live.poll()}); see {logs / 'live.log'}")
            return 1
        print(f"  gold holds today's trades {warm:.0f} s after start; sampling for {duration_s:.0f} s ...", flush=True)
        reports: dict[str, lag.LagReport] = {}
        threads = [threading.Thread(target=lambda h=hot: reports.__setitem__(h.exchange, lag.measure(bench, h, duration_s)))
                   for hot in HOT_TABLES.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        live.send_signal(signal.SIGINT)
        try:
            live.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(live.pid, signal.SIGKILL)
    rows = []
    for exchange, report in reports.items():
        summary = report.summary()
        for layer in lag.LAYERS:
            r = summary[layer]
            rows.append((report.table, layer, summary["samples"], r["visible"], r["never_visible"], r.get("p50_s", "-"),
                         r.get("p95_s", "-"), r.get("max_s", "-"), f"<= {FRESHNESS_TARGETS_S[layer]}"))
    print()
    print(format_table(("table", "layer", "samples", "visible", "never", "p50 s", "p95 s", "max s", "target s"), rows))
    worst = {layer: max((r.summary()[layer].get("p95_s", float("inf")) for r in reports.values()), default=float("inf"))
             for layer in lag.LAYERS}
    print("\n" + "; ".join(f"{layer} p95 {worst[layer]} s vs {FRESHNESS_TARGETS_S[layer]} s "
                            f"({'met' if worst[layer] <= FRESHNESS_TARGETS_S[layer] else 'NOT met'})" for layer in lag.LAYERS))
    out = settings.home / "bench" / "freshness_results.json"
    out.write_text(json.dumps({"rate_per_exchange": rate, "duration_s": duration_s, "warm_up_s": warm,
                               "tables": [r.summary() for r in reports.values()]}, indent=2))
    print(f"results written to {out}; live system log in {logs / 'live.log'}")
    return 0 if all(r.summary()[layer]["never_visible"] == 0 for r in reports.values() for layer in lag.LAYERS) else 1


# =====================================================================================================
# k2 bench scale and k2 bench parallel
# =====================================================================================================

SCALE_DAY = LARGE_DAY
SCALE_STEPS = ("bronze", "silver", "gold")
SCALE_ENGINES = ("duckdb", "spark")
PARALLEL_TARGET = 0.85  # the target for two equal exchanges offloaded at once, reported, never asserted
SAMPLE_INTERVAL_S = 0.1  # how often the tree launcher sums the RSS of every process of a measured tree


@dataclasses.dataclass
class TreeChild:
    """One measured child of a tree measurement: wall time from spawn to exit, its whole process tree's
    memory (sum of every descendant's RSS, sampled), and what the child said about its own step."""

    name: str
    argv: list[str]
    seconds: float
    spawned: float  # epoch seconds
    ended: float
    cpu_seconds: float  # user + system of the child and the descendants it reaped (the Spark JVM is reaped: `_stop_spark`)
    peak_rss_mib: float  # largest sampled sum over the tree, never below the largest single process (ru_maxrss)
    max_process_rss_mib: float  # ru_maxrss: the largest single process of the tree that was reaped
    max_processes: int  # most processes seen in the tree at once (1 on DuckDB; driver, JVM and Python workers on Spark)
    returncode: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict:
        """The step's own figures: the JSON line the child printed last."""
        return _last_json(self.stdout) or {}

    def summary(self) -> dict:
        return {"name": self.name, "argv": self.argv, "seconds": self.seconds, "spawned": self.spawned, "ended": self.ended,
                "cpu_seconds": self.cpu_seconds, "peak_rss_mib": self.peak_rss_mib,
                "max_process_rss_mib": self.max_process_rss_mib, "max_processes": self.max_processes,
                "returncode": self.returncode, "result": self.result}


@dataclasses.dataclass
class TreeMeasured:
    """Children started together: the wall time until the last exits and the peak of their summed trees."""

    children: list[TreeChild]
    seconds: float
    peak_rss_mib: float
    samples: int
    load_before: float
    cpu_clickhouse_s: float | None  # CPU the ClickHouse server spent meanwhile (serving these children, mostly)
    cpu_machine_s: float  # CPU the whole machine spent meanwhile: ours, ClickHouse's and any other work's

    @property
    def cores_ours(self) -> float:
        """Cores kept busy on average by the children and the ClickHouse server."""
        ours = sum(c.cpu_seconds for c in self.children) + (self.cpu_clickhouse_s or 0.0)
        return ours / self.seconds if self.seconds else 0.0

    @property
    def cores_other(self) -> float:
        """Cores kept busy on average by other work on the machine (noise)."""
        return max(0.0, self.cpu_machine_s / self.seconds - self.cores_ours) if self.seconds else 0.0

    def summary(self) -> dict:
        return {"seconds": self.seconds, "peak_rss_mib": self.peak_rss_mib, "samples": self.samples,
                "load_before": self.load_before, "cpu_clickhouse_s": self.cpu_clickhouse_s,
                "cpu_machine_s": self.cpu_machine_s, "cores_ours": self.cores_ours, "cores_other": self.cores_other,
                "children": [c.summary() for c in self.children]}


# The tree launcher: a bare interpreter (plus psutil, a few MiB) starts every child at once, reaps each with
# os.wait4 (its exit time, CPU and ru_maxrss) and meanwhile, every `interval` seconds, sums the RSS of each
# child's whole process tree: on Spark the driver, its JVM and the JVM's Python workers, which ru_maxrss
# (the largest single process) does not add up. A sum of RSS counts pages shared between processes (a
# forked Python worker and its daemon) more than once: an upper bound, which is what a machine must have.
_TREE_LAUNCHER = r"""
import json, os, subprocess, sys, threading, time
import psutil

spec = json.loads(sys.argv[1])
kids = []
for c in spec["children"]:
    with open(c["out"], "w") as out, open(c["err"], "w") as err:
        popen = subprocess.Popen(c["argv"], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    kids.append({"pid": popen.pid, "popen": popen, "spawned": time.time(), "peak": 0, "procs": 0, "root": None})
started = min(k["spawned"] for k in kids)
state = {"peak": 0, "samples": 0}
done = threading.Event()

def tree(kid):
    try:
        if kid["root"] is None:
            kid["root"] = psutil.Process(kid["pid"])
        return [kid["root"], *kid["root"].children(recursive=True)]
    except psutil.Error:
        return []

def sample():
    while not done.is_set():
        total = 0
        for kid in kids:
            if "ended" in kid:
                continue
            rss, procs = 0, 0
            for proc in tree(kid):
                try:
                    rss += proc.memory_info().rss
                    procs += 1
                except psutil.Error:
                    pass
            kid["peak"] = max(kid["peak"], rss)
            kid["procs"] = max(kid["procs"], procs)
            total += rss
        state["peak"] = max(state["peak"], total)
        state["samples"] += 1
        done.wait(spec["interval"])

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
waiting = {k["pid"]: k for k in kids}
while waiting:
    pid, status, usage = os.wait4(-1, 0)
    kid = waiting.pop(pid, None)
    if kid is not None:
        kid.update(ended=time.time(), status=status, usage=usage)
done.set()
sampler.join()
print(json.dumps({
    "seconds": max(k["ended"] for k in kids) - started, "peak_bytes": state["peak"], "samples": state["samples"],
    "children": [{"spawned": k["spawned"], "ended": k["ended"], "returncode": os.waitstatus_to_exitcode(k["status"]),
                  "maxrss_kib": k["usage"].ru_maxrss, "cpu_seconds": k["usage"].ru_utime + k["usage"].ru_stime,
                  "peak_bytes": k["peak"], "max_processes": k["procs"]} for k in kids],
}))
"""


def measure_tree(children: list[tuple[str, list[str]]], env: dict[str, str], logs: Path,
                 interval: float = SAMPLE_INTERVAL_S, clickhouse_pid: int | None = None) -> TreeMeasured:
    """Start every (name, argv) at once, each a fresh process; wall time until the last exits, and each
    one's (and all together) peak memory as the sum of its process tree's RSS, sampled every `interval` s.
    Beside it, the CPU the ClickHouse server (`clickhouse_pid`) and the whole machine spent meanwhile."""
    import psutil

    spec = {"interval": interval, "children": [
        {"argv": argv, "out": str(logs / f"{name}.out"), "err": str(logs / f"{name}.err")} for name, argv in children
    ]}
    load = os.getloadavg()[0]
    server = _process(clickhouse_pid)
    server_before, machine_before = _cpu_of(server), _busy_cpu(psutil.cpu_times())
    launcher = subprocess.run([sys.executable, "-c", _TREE_LAUNCHER, json.dumps(spec)], env=env, capture_output=True,
                              text=True, check=True)
    server_after, machine_after = _cpu_of(server), _busy_cpu(psutil.cpu_times())
    cpu_server = server_after - server_before if server_before is not None and server_after is not None else None
    m = json.loads(launcher.stdout)
    measured = []
    for (name, argv), c in zip(children, m["children"]):
        largest = c["maxrss_kib"] / 1024
        measured.append(TreeChild(
            name, argv, c["ended"] - c["spawned"], c["spawned"], c["ended"], c["cpu_seconds"],
            max(c["peak_bytes"] / MIB, largest), largest, c["max_processes"], c["returncode"],
            (logs / f"{name}.out").read_text(), (logs / f"{name}.err").read_text(),
        ))
    peak = max(m["peak_bytes"] / MIB, max(c.max_process_rss_mib for c in measured))
    return TreeMeasured(measured, m["seconds"], peak, m["samples"], load, cpu_server, machine_after - machine_before)


def _process(pid: int | None):
    import psutil

    try:
        return psutil.Process(pid) if pid else None
    except psutil.Error:
        return None


def _cpu_of(proc) -> float | None:
    import psutil

    if proc is None:
        return None
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system + t.children_user + t.children_system


def _busy_cpu(times) -> float:
    """CPU seconds the machine spent on anything but idling (iowait counts as idle)."""
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)  # guest time is in user too


def _clickhouse_pid(settings: Settings) -> int | None:
    """The local ClickHouse server `k2 services up` started, if any (its CPU is part of an offload's cost)."""
    from k2_lakehouse.core import services

    try:
        return services._clickhouse_pid(services._Paths.of(settings))
    except Exception:  # noqa: BLE001 - a ClickHouse elsewhere: not measured
        return None


def parallel_efficiency(alone_a: float, alone_b: float, together: float) -> float:
    """Two jobs run one after the other vs at once: (t_a + t_b) / (2 * t_both). 1.0: running both at once
    took as long as one alone (perfect use of twice the resources); 0.5: no faster than one after the other."""
    return (alone_a + alone_b) / (2 * together) if together > 0 else 0.0


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope of ys over xs (a fixed cost and a cost per unit)."""
    n = len(xs)
    if n == 0:
        raise ValueError("no points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def crossover(fixed_a: float, per_row_a: float, fixed_b: float, per_row_b: float) -> float | None:
    """The size beyond which b (a larger fixed cost, say) takes less time than a: 0.0 if b is never slower,
    None if it never catches up (its cost per row is not lower)."""
    if fixed_b <= fixed_a and per_row_b <= per_row_a:
        return 0.0
    if per_row_b >= per_row_a:
        return None
    return (fixed_b - fixed_a) / (per_row_a - per_row_b)


def _step_argv(step: str, day: dt.date, exchanges: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "k2_lakehouse.bench", "step", step, day.isoformat(), *exchanges]


def _engine_env(env: dict[str, str], engine: str) -> dict[str, str]:
    return {**env, "K2_ENGINE": engine}


def _reset_catalog(settings: Settings, bench: Settings) -> None:
    """An empty catalog and warehouse with the two (empty) bronze tables created: no measured process pays
    for creating the catalog, and processes started together cannot race to create it."""
    _recreate_databases(settings, BENCH_CATALOG_DB)
    shutil.rmtree(settings.home / "bench" / "warehouse", ignore_errors=True)
    cat = iceberg.catalog(bench)
    for hot in HOT_TABLES.values():
        iceberg.bronze_table(cat, hot)


def _seed_day(settings: Settings, bench: Settings, rows: int, seed: int) -> dict:
    from k2_lakehouse.core import feed

    _reset_hot(settings)
    print(f"seeding {rows:,} trades/exchange on {SCALE_DAY} into {BENCH_DB} ...", flush=True)
    report = feed.seed(bench, SCALE_DAY, rows, seed=seed, progress=False)
    settled = _wait_for_merges(bench)
    print(f"  seeded in {report.seconds:.1f} s, merges settled after {settled:.1f} s", flush=True)
    return {"rows_per_exchange": rows, "seconds": report.seconds, "summary": report.summary()}


def _check_child(c: TreeChild, logs: Path) -> bool:
    ok = c.returncode == 0 and bool(c.result.get("ok"))
    if not ok:
        print(f"  {c.name} FAILED (exit {c.returncode}); stderr tail (full log {logs / c.name}.err):\n{_tail(c.stderr)}",
              flush=True)
    return ok


def scale(settings: Settings, *, rows: int, factors: list[int], engines: list[str]) -> int:
    """The nine-table day at factors x `rows` trades per exchange, on each engine: bronze (both tables),
    silver, gold, each step a fresh process like `k2 run` would start (without Dagster), every engine's
    build on an empty lake from the same hot day."""
    bench, env, logs = _bench_corner(settings)
    server = _clickhouse_pid(settings)
    results: dict = {"cpus": os.cpu_count(), "rows": rows, "factors": factors, "engines": engines,
                     "spark_master": settings.spark_master, "batch_rows": settings.batch_rows,
                     "sample_interval_s": SAMPLE_INTERVAL_S, "seeded": {}, "runs": []}
    ok = True
    for factor in factors:
        results["seeded"][str(factor)] = _seed_day(settings, bench, factor * rows, seed=2)
        for engine in engines:
            _reset_catalog(settings, bench)
            bronze_rows = 0
            for step in SCALE_STEPS:
                name = f"scale_{factor}x_{engine}_{step}"
                print(f"measuring: {factor}x {engine} {step} ...", flush=True)
                m = measure_tree([(name, _step_argv(step, SCALE_DAY))], _engine_env(env, engine), logs, clickhouse_pid=server)
                c = m.children[0]
                ok &= _check_child(c, logs)
                r = c.result
                if step == "bronze":
                    bronze_rows = r.get("rows_out", 0)
                run = {"factor": factor, "engine": engine, "step": step, "rows": bronze_rows,
                       "rows_out": r.get("rows_out", 0), "wall_s": c.seconds,
                       "start_s": (r["step_started"] - c.spawned) if "step_started" in r else None,
                       "step_s": r.get("step_s"), "result_s": r.get("result_s"), "session_s": r.get("session_s"),
                       "peak_rss_mib": c.peak_rss_mib, "max_process_rss_mib": c.max_process_rss_mib,
                       "max_processes": c.max_processes, "cpu_seconds": c.cpu_seconds, "load_before": m.load_before,
                       "cpu_clickhouse_s": m.cpu_clickhouse_s, "cores_ours": m.cores_ours, "cores_other": m.cores_other,
                       "ok": c.returncode == 0 and bool(r.get("ok")), "child": c.summary()}
                results["runs"].append(run)
                print(f"  {c.seconds:.2f} s wall, step {run['step_s'] or 0:.2f} s, peak RSS {c.peak_rss_mib:.0f} MiB "
                      f"over {c.max_processes} process(es)", flush=True)
    results["analysis"] = analyse_scale(results["runs"])
    return _finish(settings, "scale", results, report_scale(results), logs, ok)


def analyse_scale(runs: list[dict]) -> dict:
    """Per engine and step (and the day: the three steps summed), a fixed cost and a cost per row fitted
    over the factors, and where Spark's line crosses DuckDB's."""
    fits: dict = {}
    for engine in sorted({r["engine"] for r in runs}):
        for step in (*SCALE_STEPS, "day"):
            if step == "day":
                points = {}
                for r in runs:
                    if r["engine"] == engine and r["ok"]:
                        points.setdefault(r["factor"], []).append(r)
                pts = [(rs[0]["rows"], sum(x["wall_s"] for x in rs)) for rs in points.values() if len(rs) == len(SCALE_STEPS)]
            else:
                pts = [(r["rows"], r["wall_s"]) for r in runs if r["engine"] == engine and r["step"] == step and r["ok"]]
            if len(pts) >= 2:
                fixed, per_row = linear_fit([p[0] for p in pts], [p[1] for p in pts])
                fits.setdefault(engine, {})[step] = {"fixed_s": fixed, "s_per_million_rows": per_row * 1e6}
    crossovers = {}
    if "duckdb" in fits and "spark" in fits:
        for step in (*SCALE_STEPS, "day"):
            d, s = fits["duckdb"].get(step), fits["spark"].get(step)
            if d and s:
                x = crossover(d["fixed_s"], d["s_per_million_rows"] / 1e6, s["fixed_s"], s["s_per_million_rows"] / 1e6)
                crossovers[step] = x
    return {"fits": fits, "crossover_rows": crossovers}


def report_scale(r: dict) -> str:
    def f(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None else format(x, fmt)

    body = []
    for run in r["runs"]:
        body.append((f"{run['factor']}x", run["engine"], run["step"], f"{run['rows']:,}", f"{run['rows_out']:,}",
                     f(run["wall_s"]), f(run["start_s"]), f(run["step_s"]), f(run["result_s"]), f"{run['peak_rss_mib']:.0f}",
                     str(run["max_processes"]), f"{run['rows'] / run['step_s']:,.0f}" if run["step_s"] else "-",
                     f"{run['rows'] / run['wall_s']:,.0f}" if run["wall_s"] else "-", f"{run['cores_ours']:.1f}",
                     f"{run['cores_other']:.1f}", "ok" if run["ok"] else "FAILED"))
    days = {}
    for run in r["runs"]:
        days.setdefault((run["factor"], run["engine"]), []).append(run)
    for (factor, engine), rs in days.items():
        wall = sum(x["wall_s"] for x in rs)
        step = sum(x["step_s"] or 0 for x in rs)
        body.append((f"{factor}x", engine, "day (3 processes)", f"{rs[0]['rows']:,}", "", f(wall), "", f(step), "",
                     f"{max(x['peak_rss_mib'] for x in rs):.0f}", "", f"{rs[0]['rows'] / step:,.0f}" if step else "-",
                     f"{rs[0]['rows'] / wall:,.0f}" if wall else "-", "", "", "ok" if all(x["ok"] for x in rs) else "FAILED"))
    lines = [
        f"k2 bench scale: {r['rows']:,} trades/exchange x {', '.join(map(str, r['factors']))}; {r['cpus']} CPUs; "
        f"Spark {r['spark_master']}; every step a fresh process (no Dagster)",
        "",
        format_table(("factor", "engine", "step", "rows", "rows out", "wall s", "start s", "step s", "result s",
                      "peak RSS MiB", "procs", "rows/s step", "rows/s wall", "cores", "other", "status"), body),
        "rows = the day's bronze rows, both exchanges; wall = spawn to exit; start = spawn to the core call (interpreter, "
        "imports, Spark session);",
        "step = the core call (build_bronze_day x2 / build_silver_day / build_gold_day); result = the duration the step "
        "reports (bronze: the copies only, OffloadResult.duration_s; silver, gold: TableResult.duration_s);",
        f"peak RSS = largest sum of RSS over the step's process tree (driver, JVM, Python workers), sampled every "
        f"{r['sample_interval_s']} s; procs = processes in that tree;",
        "cores = CPU seconds of the tree and the ClickHouse server / wall s; other = cores busy with other work on the "
        "machine meanwhile (noise).",
    ]
    a = r.get("analysis") or {}
    if a.get("fits"):
        lines += ["", "fitted wall time = fixed + per-row cost (least squares over the factors):"]
        lines.append(format_table(("engine", "step", "fixed s", "s per M rows"), [
            (engine, step, f"{v['fixed_s']:.2f}", f"{v['s_per_million_rows']:.2f}")
            for engine, steps in a["fits"].items() for step, v in steps.items()
        ]))
    for step, x in (a.get("crossover_rows") or {}).items():
        if any(a["fits"][engine][step]["s_per_million_rows"] <= 0 for engine in ("duckdb", "spark")):
            lines.append(f"crossover, {step}: not measurable (a fitted cost per row is not positive: at these sizes the "
                         "fixed costs and the noise dominate; measure larger factors)")
        elif x is None:
            lines.append(f"crossover, {step}: none on this machine (Spark's cost per row is not lower than DuckDB's)")
        elif x == 0:
            lines.append(f"crossover, {step}: Spark is not slower at any measured size")
        else:
            lines.append(f"crossover, {step}: Spark would be faster beyond ~{x:,.0f} bronze rows (extrapolated)")
    return "\n".join(lines)


def parallel(settings: Settings, *, rows: int, repeats: int, engines: list[str]) -> int:
    """Two equal exchanges offloaded one at a time, then at once (two processes started together), each
    time on an empty lake; parallel efficiency = (t_binance + t_kraken) / (2 * t_both)."""
    bench, env, logs = _bench_corner(settings)
    seeded = _seed_day(settings, bench, rows, seed=3)
    server = _clickhouse_pid(settings)
    exchanges = tuple(HOT_TABLES)
    results: dict = {"cpus": os.cpu_count(), "rows_per_exchange": rows, "repeats": repeats, "engines": engines,
                     "spark_master": settings.spark_master, "seeded": seeded, "target": PARALLEL_TARGET, "runs": []}
    ok = True
    for engine in engines:
        eenv = _engine_env(env, engine)
        for i in range(1, repeats + 1):
            run: dict = {"engine": engine, "repeat": i}
            for exchange in exchanges:
                _reset_catalog(settings, bench)
                name = f"parallel_{engine}_{i}_{exchange}_alone"
                print(f"measuring: {engine} #{i} {exchange} alone ...", flush=True)
                alone = measure_tree([(name, _step_argv("bronze", SCALE_DAY, (exchange,)))], eenv, logs, clickhouse_pid=server)
                c = alone.children[0]
                ok &= _check_child(c, logs)
                run[exchange] = {**c.summary(), "cores_ours": alone.cores_ours, "cores_other": alone.cores_other,
                                 "cpu_clickhouse_s": alone.cpu_clickhouse_s}
            _reset_catalog(settings, bench)
            print(f"measuring: {engine} #{i} {' + '.join(exchanges)} at once ...", flush=True)
            both = measure_tree([(f"parallel_{engine}_{i}_{exchange}_together", _step_argv("bronze", SCALE_DAY, (exchange,)))
                                 for exchange in exchanges], eenv, logs, clickhouse_pid=server)
            for c in both.children:
                ok &= _check_child(c, logs)
            run["together"] = both.summary()
            run.update(parallel_figures(run, exchanges))
            run["bound"] = efficiency_bound(os.cpu_count() or 1, [run[e]["cores_ours"] for e in exchanges])
            results["runs"].append(run)
            print(f"  efficiency (wall) {run['efficiency_wall']:.0%}, (step) {run['efficiency_step']:.0%}, "
                  f"(copy) {run['efficiency_copy']:.0%}", flush=True)
    results["medians"] = {engine: {key: statistics.median(r[key] for r in results["runs"] if r["engine"] == engine)
                                   for key in ("efficiency_wall", "efficiency_step", "efficiency_copy", "alone_wall_s",
                                               "together_wall_s", "bound")}
                          for engine in engines}
    return _finish(settings, "parallel", results, report_parallel(results), logs, ok)


def _finish(settings: Settings, name: str, results: dict, report: str, logs: Path, ok: bool) -> int:
    """Print the report, keep the figures as JSON beside the child logs; exit 1 if any step failed."""
    print()
    print(report)
    out = settings.home / "bench" / f"{name}_results.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults written to {out}; child logs in {logs}")
    return 0 if ok else 1


def efficiency_bound(cpus: int, cores_alone: list[float]) -> float:
    """The best parallel efficiency the cores allow: jobs that alone keep `cores_alone` cores busy (their own
    and the ClickHouse server's CPU over their wall time) cannot, all at once, finish faster than the machine
    can supply that CPU. No job is sped up by running beside another, so the bound is at most 1."""
    need = sum(cores_alone)
    return min(1.0, cpus / need) if need > 0 else 1.0


def parallel_figures(run: dict, exchanges: tuple[str, ...]) -> dict:
    """A parallel run's efficiencies from its children: by wall time (process start included), by the
    bronze step (the core call: copy and checks) and by the copy alone (OffloadResult.duration_s). Together,
    a step's time is the window from the first child's start of it to the last one's end."""
    a, b = (run[e] for e in exchanges)
    kids = run["together"]["children"]

    def window(start: str, end: str) -> float:
        return max(k["result"][end] for k in kids) - min(k["result"][start] for k in kids)

    alone_step = a["result"]["step_s"] + b["result"]["step_s"]
    alone_copy = a["result"]["result_s"] + b["result"]["result_s"]
    return {
        "alone_wall_s": a["seconds"] + b["seconds"], "together_wall_s": run["together"]["seconds"],
        "efficiency_wall": parallel_efficiency(a["seconds"], b["seconds"], run["together"]["seconds"]),
        "efficiency_step": alone_step / (2 * window("step_started", "step_ended")),
        # The copies inside the steps: each child's own copy time, both starting within the step window.
        "efficiency_copy": alone_copy / (2 * max(k["result"]["result_s"] for k in kids)),
    }


def report_parallel(r: dict) -> str:
    body = []
    for run in r["runs"]:
        exchanges = [k for k in run if k in HOT_TABLES]
        together = run["together"]
        body.append((
            run["engine"], str(run["repeat"]),
            *(f"{run[e]['seconds']:.2f} / {run[e]['result']['step_s']:.2f}" for e in exchanges),
            f"{together['seconds']:.2f} / " + " ".join(f"{c['result']['step_s']:.2f}" for c in together["children"]),
            f"{run['efficiency_wall']:.0%}", f"{run['efficiency_step']:.0%}", f"{run['efficiency_copy']:.0%}",
            f"{max(run[e]['peak_rss_mib'] for e in exchanges):.0f} / {together['peak_rss_mib']:.0f}",
            " ".join(f"{run[e]['cores_ours']:.1f}" for e in exchanges) + f" / {together['cores_ours']:.1f}",
            f"{run['bound']:.0%}", f"{together['cores_other']:.1f}",
        ))
    for engine, m in r["medians"].items():
        body.append((engine, "median", "", "", f"{m['together_wall_s']:.2f}", f"{m['efficiency_wall']:.0%}",
                     f"{m['efficiency_step']:.0%}", f"{m['efficiency_copy']:.0%}", "", "", f"{m['bound']:.0%}", ""))
    ex = list(HOT_TABLES)
    lines = [
        f"k2 bench parallel: {r['rows_per_exchange']:,} trades on each exchange; {r['cpus']} CPUs; bronze step only, "
        "a fresh process per table, an empty lake each time",
        "",
        format_table(("engine", "run", *(f"{e} alone wall/step s" for e in ex), "both at once wall / steps s",
                      "eff. wall", "eff. step", "eff. copy", "peak RSS MiB alone/both", "cores alone / both",
                      "bound", "other"), body),
        "efficiency = (t_binance + t_kraken) / (2 x t_both): wall = spawn to exit (process start included); step = the "
        "bronze core call (copy + checks; together: first start to last end);",
        "copy = OffloadResult.duration_s (together: the slower of the two). 100 %: both at once take as long as one "
        "alone; 50 %: no gain over one after the other.",
        "cores = CPU seconds of the processes and the ClickHouse server / wall s; bound = the best efficiency the "
        f"{r['cpus']} cores allow for jobs that alone keep that many busy: cpus / (cores_binance + cores_kraken);",
        "other = cores busy with other work on the machine while both ran (noise).",
    ]
    for engine, m in r["medians"].items():
        wall = m["efficiency_wall"]
        lines.append(f"{engine}: median parallel efficiency {wall:.0%} (wall; step {m['efficiency_step']:.0%}, copy "
                     f"{m['efficiency_copy']:.0%}) vs the {r['target']:.0%} target ({'met' if wall >= r['target'] else 'NOT met'}); "
                     f"the cores allowed at most {m['bound']:.0%}")
    return "\n".join(lines)


def _stop_spark(spark) -> None:
    """Stop the session and wait for its JVM to exit (it does once its stdin closes), so the JVM's
    shutdown is inside the measured wall time and the JVM is reaped by this process (its ru_maxrss counts)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    spark.stop()
    if proc is not None:
        try:
            gateway.shutdown()
        except Exception:  # noqa: BLE001 - the JVM may already be going
            pass
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_step(settings: Settings, step: str, day_: dt.date, exchanges: list[str]) -> dict:
    """One step of the day in this (fresh) process, on K2_ENGINE: what `k2 run` would call, without Dagster.
    Times are epoch seconds, so the parent can line up processes started together."""
    spark = None
    session_s = 0.0
    if settings.engine == "spark":
        from k2_lakehouse.core import spark as k2spark

        t = time.perf_counter()
        spark = k2spark.session(settings)
        session_s = time.perf_counter() - t
    try:
        if step == "bronze":
            from k2_lakehouse.core.bronze import build_bronze_day

            writer = None
            if spark is not None:
                writer = k2spark.offload_writer(spark, settings)
            started = time.time()
            built = [build_bronze_day(settings, hot_table(e), day_, write=writer) for e in exchanges or HOT_TABLES]
            ended = time.time()
            out = {"rows_out": sum(b.offload.rows for b in built), "result_s": sum(b.offload.duration_s for b in built),
                   "ok": all(c.passed for b in built for c in b.checks),
                   "tables": {b.offload.table: {"rows": b.offload.rows, "files": b.offload.files,
                                                "copy_s": b.offload.duration_s} for b in built}}
        else:
            from k2_lakehouse.core.gold import build_gold_day
            from k2_lakehouse.core.silver import build_silver_day

            engine = None
            if spark is not None:
                engine = lambda: k2spark.SparkEngine(spark)  # noqa: E731
            build = build_silver_day if step == "silver" else build_gold_day
            cat = iceberg.catalog(settings)
            started = time.time()
            tables = build(cat, day_, **({"engine": engine} if engine else {}))
            ended = time.time()
            out = {"rows_out": sum(t.rows for t in tables.values()), "result_s": max(t.duration_s for t in tables.values()),
                   "ok": all(t.published and t.passed for t in tables.values()),
                   "tables": {name: {"rows": t.rows, "files": t.files, "engine": t.engine} for name, t in tables.items()}}
    finally:
        if spark is not None:
            _stop_spark(spark)
    return {"step": step, "engine": settings.engine, "day": day_.isoformat(), "session_s": session_s,
            "step_started": started, "step_ended": ended, "step_s": ended - started, **out}


# A minimal parent for each measured child. Linux carries the peak RSS of the address space a process
# replaces at exec into its ru_maxrss, and a child starts from a copy of (or, spawned by vfork, from) its
# parent's: spawned straight from this process, which holds the seeded days, every child would report at
# least this process's peak. The launcher is a bare interpreter (~11 MiB), so its child's figure is its own.
_LAUNCHER = """
import json, os, subprocess, sys, time
with open(sys.argv[1], "w") as out, open(sys.argv[2], "w") as err:
    started = time.perf_counter()
    child = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"seconds": seconds, "returncode": child.returncode, "maxrss_kib": usage.ru_maxrss,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime}))
"""


def _measure(name: str, argv: list[str], env: dict[str, str], logs: Path) -> Measured:
    """Run `argv` in a fresh child; wall time from spawn to exit, and the child's own peak RSS.

    The launcher reaps exactly that child with `os.wait4`, whose rusage covers the child and any
    descendants it waited for: ru_maxrss is that process tree's largest RSS, not a sum.
    """
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    load = os.getloadavg()[0]
    launcher = subprocess.run([sys.executable, "-c", _LAUNCHER, str(out_path), str(err_path), *argv],
                              env=env, capture_output=True, text=True, check=True)
    m = json.loads(launcher.stdout)
    return Measured(name, argv, m["seconds"], m["cpu_seconds"], m["maxrss_kib"] / 1024, m["returncode"], load,
                    out_path.read_text(), err_path.read_text())


def _reset_lake(settings: Settings, bench: Settings, env: dict[str, str], logs: Path) -> None:
    """An empty catalog, warehouse and Dagster instance (schema created, so no run pays for it)."""
    _recreate_databases(settings, BENCH_CATALOG_DB, BENCH_DAGSTER_DB)
    shutil.rmtree(settings.home / "bench" / "warehouse", ignore_errors=True)
    shutil.rmtree(bench.dagster_home, ignore_errors=True)
    bench.dagster_home.mkdir(parents=True)
    (bench.dagster_home / "dagster.yaml").symlink_to(PROJECT_DAGSTER_YAML)
    subprocess.run([sys.executable, "-c", "from dagster import DagsterInstance; DagsterInstance.get().get_runs(limit=1)"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=(logs / "dagster_init.err").open("a"))


def _wait_for_merges(bench: Settings, timeout: float = 120.0) -> float:
    """Let ClickHouse finish merging the freshly inserted parts, so no measurement shares the cores with it."""
    client = hot_tier.connect(bench)
    started = time.perf_counter()
    quiet = 0
    while time.perf_counter() - started < timeout and quiet < 3:
        busy = client.execute("SELECT count() FROM system.merges WHERE database = %(db)s", {"db": BENCH_DB},
                              settings={"use_numpy": False})[0][0]
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(0.5)
    client.disconnect()
    return time.perf_counter() - started


def _dagster_run_stats(env: dict[str, str], logs: Path, name: str) -> dict:
    """The latest run of the bench instance: its start/end and each step's duration (not measured)."""
    out = subprocess.run([sys.executable, "-m", "k2_lakehouse.bench", "run-stats"], env=env, capture_output=True, text=True)
    (logs / f"{name}.stats.err").write_text(out.stderr)
    return _last_json(out.stdout) or {}


def _run_stats() -> dict:
    from dagster import DagsterInstance

    instance = DagsterInstance.get()
    runs = instance.get_runs(limit=1)
    if not runs:
        return {}
    run = runs[0]
    stats = instance.get_run_stats(run.run_id)
    steps = [
        {"step": s.step_key, "status": s.status.value if s.status else None,
         "seconds": (s.end_time - s.start_time) if s.start_time and s.end_time else None}
        for s in instance.get_run_step_stats(run.run_id)
    ]
    return {
        "run_id": run.run_id, "status": run.status.value,
        "run_seconds": (stats.end_time - stats.start_time) if stats.start_time and stats.end_time else None,
        "steps": steps,
    }


def parse_run_table(stdout: str) -> list[dict]:
    """The rows of `k2 run`'s summary table (columns found from its dashed rule line)."""
    lines = stdout.splitlines()
    for i, line in enumerate(lines[1:], 1):
        if line.startswith("-") and set(line) <= {"-", " "}:
            header_line, rule = lines[i - 1], line
            break
    else:
        return []
    spans, pos = [], 0
    for dashes in rule.split("  "):
        if dashes:
            spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    spans[-1] = (spans[-1][0], None)  # the last column is not padded
    names = [header_line[a:b].strip() for a, b in spans]
    rows = []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        rows.append({n: line[a:b].strip() for n, (a, b) in zip(names, spans)})
    return rows


def _bronze_rows(run: dict) -> int:
    return sum(_int(a.get("rows")) for a in run["assets"] if a.get("asset", "").startswith("bronze/"))


def _asset_rows(run: dict, asset: str) -> int:
    return next((_int(a.get("rows")) for a in run["assets"] if a.get("asset") == asset), 0)


def _int(text: str | None) -> int:
    try:
        return int(str(text).replace(",", ""))
    except ValueError:
        return 0


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def report_day(r: dict) -> str:
    """The printed report of `k2 bench day`."""
    small, large = r["whole_day_small"], r["whole_day_large"]
    bronze, sg, base = r["bronze_large"], r["silver_gold_large"], r["baseline_large"]
    large_in = _bronze_rows(bronze) or _bronze_rows(large) or sum(base.get("bronze_rows", {}).values())
    small_in = _bronze_rows(small)

    def row(step: str, rows: int, seconds: float, rss: float, status: str, cpu: float, load: float | None) -> tuple:
        return (step, f"{rows:,}", f"{seconds:.2f}", f"{rows / seconds:,.0f}" if seconds else "-", f"{rss:.0f}",
                f"{cpu:.1f}", "" if load is None else f"{load:.1f}", status)

    def measured(step: str, rows: int, run: dict, status: str) -> tuple:
        return row(step, rows, run["seconds"], run["peak_rss_mib"], status, run["cpu_seconds"], run["load_before"])

    def status(run: dict) -> str:
        return "ok" if run["ok"] else f"FAILED (exit {run['returncode']})"

    body = [
        measured(f"k2 whole day {SMALL_DAY} (all tables, Dagster)", small_in, small, status(small)),
        measured(f"k2 whole day {LARGE_DAY} (all tables, Dagster)", large_in, large, status(large)),
        measured("k2 bronze alone (group:bronze)", large_in, bronze, status(bronze)),
        measured("k2 silver + gold ('group:silver or group:gold')", large_in, sg, status(sg)),
        row("k2 bronze, then silver + gold (2 processes)", large_in, bronze["seconds"] + sg["seconds"],
            max(bronze["peak_rss_mib"], sg["peak_rss_mib"]), "ok" if bronze["ok"] and sg["ok"] else "FAILED",
            bronze["cpu_seconds"] + sg["cpu_seconds"], None),
        measured("pandas baseline silver + gold (+ Iceberg append)", large_in, base,
                 "ok" if base["returncode"] == 0 else f"FAILED (exit {base['returncode']})"),
    ]
    lines = [
        f"k2 bench day: {r['rows_per_exchange']['large']:,} and {r['rows_per_exchange']['small']:,} simulated trades per exchange; "
        f"{r['cpus']} CPUs; every step a fresh child process",
        "",
        format_table(("step", "rows", "seconds", "rows/s", "peak RSS MiB", "CPU s", "load", "status"), body),
        "rows = the day's bronze rows, both exchanges (feed positions, redeliveries removed); seconds = spawn to exit, "
        "process start included;",
        "peak RSS = the child's own ru_maxrss (os.wait4 in a bare launcher); CPU s = its user + system time; load = the machine's 1-minute "
        f"load average at its start ({r['cpus']} CPUs:",
        "a load above that means other work shared the cores). Whole-day and bronze-alone runs start from an empty lake.",
        f"process start alone (python + import Dagster + Definitions): {r['startup']['seconds']:.2f} s, "
        f"{r['startup']['peak_rss_mib']:.0f} MiB",
    ]

    if base.get("stage_seconds"):
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in base["stage_seconds"].items())
        lines += ["", f"baseline stages: {stages} (compute without writing: {base['compute_seconds']:.2f} s)"]

    if sg["ok"] and base.get("returncode") == 0 and sg["seconds"] and base["seconds"]:
        lines += [
            "",
            f"k2 silver + gold vs pandas baseline: {sg['seconds']:.2f} s vs {base['seconds']:.2f} s "
            f"(baseline time / k2 time = {base['seconds'] / sg['seconds']:.2f}); peak RSS {sg['peak_rss_mib']:.0f} vs "
            f"{base['peak_rss_mib']:.0f} MiB (baseline / k2 = {base['peak_rss_mib'] / sg['peak_rss_mib']:.2f})",
        ]
        if base.get("compute_seconds"):
            lines.append(
                f"baseline compute alone (read bronze .. bars, no Iceberg writes, no process start): "
                f"{base['compute_seconds']:.2f} s (/ k2 time = {base['compute_seconds'] / sg['seconds']:.2f})"
            )
    cmp_ = r.get("comparison") or {}
    if cmp_.get("tables"):
        lines += ["", "baseline vs k2, day " + cmp_["day"] + ":"]
        cmp_rows = []
        for name, t in cmp_["tables"].items():
            extra = ""
            if "identical" in t:
                extra = "every bar identical" if t["identical"] else f"{t['bars_differing']:,} bars differ"
            elif "reasons_match" in t:
                extra = "same reasons" if t["reasons_match"] else f"reasons differ: {t['reasons']}"
            cmp_rows.append((name, f"{t['k2_rows']:,}", f"{t['baseline_rows']:,}", "match" if t["rows_match"] else "DIFFER", extra))
        lines.append(format_table(("table", "k2 rows", "baseline rows", "rows", "content"), cmp_rows))
        silver = cmp_["tables"].get("silver.trades", {})
        bars = cmp_["tables"].get("gold.ohlcv_1m", {})
        lines.append(
            f"silver rows {'match' if silver.get('rows_match') else 'DO NOT match'}, "
            f"1m bar count {'matches' if bars.get('rows_match') else 'DOES NOT match'}; "
            f"all tables {'match' if cmp_.get('all_match') else 'DO NOT all match'}"
        )
    elif cmp_:
        lines += ["", f"comparison failed: {cmp_}"]

    if small_in and large_in and small["ok"] and large["ok"]:
        lines += [
            "",
            f"memory vs size: whole day {small['peak_rss_mib']:.0f} MiB at {small_in:,} rows, {large['peak_rss_mib']:.0f} MiB at "
            f"{large_in:,} rows: rows x{large_in / small_in:.1f}, peak RSS x{large['peak_rss_mib'] / small['peak_rss_mib']:.2f}",
            f"issue targets (reported, not asserted): whole day {large['seconds']:.1f} s vs <= {TARGET_SECONDS} s "
            f"({'met' if large['seconds'] <= TARGET_SECONDS else 'NOT met'}); peak RSS {large['peak_rss_mib']:.0f} MiB vs "
            f"<= {TARGET_RSS_MIB} MiB ({'met' if large['peak_rss_mib'] <= TARGET_RSS_MIB else 'NOT met'})",
        ]

    if large["assets"]:
        lines += ["", f"tables of the whole day, {LARGE_DAY} (from `k2 run`'s summary):"]
        lines.append(format_table(("asset", "rows", "bytes", "seconds", "checks"), [
            (a.get("asset", ""), a.get("rows", ""), a.get("bytes", ""), a.get("seconds", ""), a.get("checks", ""))
            for a in large["assets"]
        ]))

    for run in (large, bronze, sg):
        dag = run.get("dagster") or {}
        if not dag.get("steps"):
            continue
        steps = [s for s in dag["steps"] if s["seconds"] is not None]
        in_steps = sum(s["seconds"] for s in steps)
        lines += [
            "",
            f"where the time goes, {run['name']} ({run['seconds']:.2f} s wall): Dagster run {dag['run_seconds'] or 0:.2f} s, "
            f"of which steps {in_steps:.2f} s; outside the run (process start, imports, run setup, summary) "
            f"{run['seconds'] - (dag['run_seconds'] or 0):.2f} s",
            format_table(("step", "seconds", "status"), [(s["step"], f"{s['seconds']:.2f}", s["status"]) for s in steps]),
        ]
    return "\n".join(lines)


# =====================================================================================================
# k2 bench compaction
# =====================================================================================================

COMPACTION_DAY = LARGE_DAY


def compaction(settings: Settings, *, rows: int, increments: int, repeats: int) -> int:
    """A bronze day loaded whole, then grown by `increments` sensor-sized offloads (INCREMENT_ROWS trades
    each, one small file and one snapshot apiece, as the live system makes them); the day read before
    and after `maintenance.maintain`: the baseline is the same day, the same process, the same reads."""
    from k2_lakehouse.core import feed, maintenance
    from k2_lakehouse.core.offload import offload_day

    bench, env, logs = _bench_corner(settings)
    hot = HOT_TABLES["binance"]
    _reset_hot(settings)
    _reset_catalog(settings, bench)
    print(f"seeding {rows:,} trades on {COMPACTION_DAY}, then {increments} offloads of {INCREMENT_ROWS:,} more ...", flush=True)
    feed.seed(bench, COMPACTION_DAY, rows, seed=2, progress=False)
    table = iceberg.bronze_table(iceberg.catalog(bench), hot)
    client = hot_tier.connect(bench)
    offload_day(table, client, hot, COMPACTION_DAY, batch_rows=bench.batch_rows)
    for i in range(increments):
        feed.seed(bench, COMPACTION_DAY, INCREMENT_ROWS, seed=100 + i, progress=False)
        offload_day(table, client, hot, COMPACTION_DAY, batch_rows=bench.batch_rows)
    client.disconnect()
    before = _day_shape(bench, hot, repeats)
    started = time.perf_counter()
    report = maintenance.maintain(bench, older_than=dt.timedelta(0), tables=[hot.bronze])
    seconds = time.perf_counter() - started
    after = _day_shape(bench, hot, repeats)
    results = {"rows": rows, "increments": increments, "increment_rows": INCREMENT_ROWS, "before": before, "after": after,
               "maintenance_seconds": seconds, "maintenance": report.tables[0].metadata()}
    keys = [("data files of the day", "files", "{:,}"), ("manifests", "manifests", "{:,}"), ("snapshots", "snapshots", "{:,}"),
            ("metadata file bytes", "metadata_bytes", "{:,}"), ("rows", "rows", "{:,}"),
            ("plan the day s", "plan_s", "{:.3f}"), ("read every column s", "read_s", "{:.3f}"),
            ("DuckDB aggregate s", "query_s", "{:.3f}")]
    table_text = format_table(("", "before", "after", "after / before"), [
        (label, fmt.format(before[k]), fmt.format(after[k]), f"{after[k] / before[k]:.2f}" if before[k] else "-")
        for label, k, fmt in keys
    ])
    text = (f"{table_text}\nmaintenance took {seconds:.1f} s (median of {repeats} reads each; "
            f"{increments} offloads of {INCREMENT_ROWS:,} trades on a {rows:,}-trade day)\n\n{report.report()}")
    return _finish(settings, "compaction", results, text, logs, after["rows"] == before["rows"])


def _day_shape(settings: Settings, hot, repeats: int) -> dict:
    """The bronze day's files, manifests, snapshots and metadata size, and the median time to plan it, read
    every column of it, and run a DuckDB aggregate over it (what silver's first step does)."""
    from k2_lakehouse.core.engine import DuckDBEngine

    table = iceberg.bronze_table(iceberg.catalog(settings), hot)
    timings: dict[str, list[float]] = {"plan_s": [], "read_s": [], "query_s": []}
    rows = 0
    for _ in range(repeats + 1):  # the first round warms the page cache and is not counted
        started = time.perf_counter()
        files = iceberg.partition_files(table, hot.bronze, COMPACTION_DAY)
        planned = time.perf_counter()
        rows = sum(b.num_rows for b in iceberg.read_files(table, files))
        read = time.perf_counter()
        with DuckDBEngine() as eng:
            eng.register_files("day", files, hot.arrow_schema, table.io)
            eng.arrow("SELECT count(*), count(DISTINCT symbol), max(trade_time) FROM day")
        queried = time.perf_counter()
        for key, value in (("plan_s", planned - started), ("read_s", read - planned), ("query_s", queried - read)):
            timings[key].append(value)
    snapshot = table.current_snapshot()
    return {
        "files": len(files), "rows": rows, "snapshots": len(table.metadata.snapshots),
        "manifests": len(snapshot.manifests(table.io)) if snapshot else 0,
        "metadata_bytes": len(table.io.new_input(table.metadata_location)),
        **{key: statistics.median(values[1:]) for key, values in timings.items()},
    }


if __name__ == "__main__":
    if sys.argv[1] == "offload-child":  # bench.py offload-child METHOD EXCHANGE DAY
        method, exchange, day_ = sys.argv[2], sys.argv[3], dt.date.fromisoformat(sys.argv[4])
        measure = _measure_k2 if method == "k2" else _measure_baseline
        print(json.dumps(measure(Settings.from_env(), exchange, day_)))
    elif sys.argv[1] == "step":  # bench.py step bronze|silver|gold DAY [EXCHANGE ...], on K2_ENGINE
        print(json.dumps(_run_step(Settings.from_env(), sys.argv[2], dt.date.fromisoformat(sys.argv[3]), sys.argv[4:])))
    elif sys.argv[1] == "run-stats":  # the latest Dagster run of DAGSTER_HOME's instance
        print(json.dumps(_run_stats(), default=str))
    else:
        sys.exit(f"unknown bench child {sys.argv[1]!r}")
