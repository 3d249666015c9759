"""The `k2` command line: services, feed, run, verify, bench."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from k2_lakehouse.core.errors import K2Error
from k2_lakehouse.core.settings import Settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()  # a bad setting (say a hostile database name) is a one-line error too
        for name, value in settings.exports().items():  # Dagster's config and child processes read these
            os.environ.setdefault(name, value)
        return args.handler(settings, args) or 0
    except K2Error as exc:
        print(f"k2: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("k2: interrupted", file=sys.stderr)
        return 130


def _services(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse.core import services

    if args.action == "up":
        services.up(settings, s3=args.s3)
    elif args.action == "down":
        from k2_lakehouse import live

        live.stop(settings)  # a running `k2 live` uses the services: stop it first
        services.down(settings)
    elif args.action == "env":
        print("\n".join(services.env_lines(settings)))
    else:
        statuses = services.status(settings)
        print(services.format_status(statuses))
        return 0 if all(s.healthy for s in statuses) else 1
    return 0


def _feed(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse.core import feed

    if args.action == "seed":
        report = feed.seed(settings, args.date, args.rows, seed=args.seed, progress=not args.quiet)
        if args.hostile:
            print(report.summary())
            report, _ = feed.hostile(settings, args.date, seed=args.seed)
    else:
        report = feed.live(settings, args.rate, args.duration, seed=args.seed, progress=not args.quiet)
    print(report.summary())
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import runner

    if args.partition:
        partitions = [args.partition.isoformat()]
    else:
        pending = runner.pending_partitions(settings, args.select)
        first = settings.first_day.isoformat()
        partitions = [p for p in pending if p >= first]
        if skipped := [p for p in pending if p < first]:  # not partitions: Dagster would refuse the whole run
            print(f"warning: {len(skipped)} day(s) before K2_FIRST_DAY={settings.first_day} hold data but are not "
                  f"partitions, so they are not built: {', '.join(skipped)}", file=sys.stderr)
    if not partitions:
        print("Nothing to do: every selected table is up to date with the hot tier.")
        return 0
    rows = runner.run(args.select, partitions)
    print(runner.format_rows(rows))
    return 0 if rows and all(r.success for r in rows) else 1


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse.core.verify import verify

    result = verify(settings, [args.date] if args.date else None, args.layers)
    print(result.report())
    return 1 if result.mismatched else 0


def _maintain(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse.core import maintenance, retention

    print(retention.retire(settings, retention_days=args.hot_retention_days).report())
    report = maintenance.maintain(settings, older_than=args.older_than)
    print(report.report())
    return 1 if report.failed else 0


def _live(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import live

    from k2_lakehouse.core.monitoring import Monitoring

    monitoring = None if args.no_monitoring else Monitoring(
        metrics_port=args.metrics_port, prometheus_port=args.prometheus_port, alertmanager_port=args.alertmanager_port)
    options = live.LiveOptions(
        port=args.port, rate=args.rate, history_days=args.history_days, history_rows=args.history_rows,
        duration=args.duration, feed_duration=args.feed_duration, keep_services=args.keep_services, monitoring=monitoring,
    )
    return live.run(settings, options, log=lambda line: print(line, flush=True))


def _duration(text: str) -> float:
    from k2_lakehouse.live import parse_duration

    try:
        return parse_duration(text)
    except K2Error as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import bench

    if args.what == "freshness":
        return bench.freshness(settings, duration_s=args.duration)
    if args.what == "scale":
        return bench.scale(settings, rows=args.rows or 1_000_000, factors=args.factors, engines=args.engines)
    if args.what == "compaction":
        return bench.compaction(settings, rows=args.rows or 1_000_000, increments=args.increments, repeats=args.repeats)
    if args.what == "parallel":
        return bench.parallel(settings, rows=args.rows or 1_000_000, repeats=args.repeats, engines=args.engines)
    measure = {"day": bench.day, "incremental": bench.incremental}.get(args.what, bench.offload)
    return measure(settings, rows=args.rows or 4_000_000, small_rows=args.small_rows)


def _chaos(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import chaos

    try:
        result = chaos.run(args.trials, seed=args.seed, kinds=args.kinds or chaos.KINDS, report=args.report, keep=args.keep,
                           exec_runs=args.exec_runs, log=lambda line: print(line, flush=True))
    except ValueError as exc:
        raise K2Error(str(exc)) from None
    return 0 if result.ok else 1


def _metrics(settings: Settings, args: argparse.Namespace) -> int:
    import logging

    from k2_lakehouse import metrics

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"k2 metrics: serving http://{args.host}:{args.port}/metrics", flush=True)
    try:
        metrics.serve(settings, args.port, host=args.host, refresh_s=args.refresh)
    except KeyboardInterrupt:
        pass
    return 0


def _soak(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import soak

    options = soak.SoakOptions(
        duration_s=_duration(args.duration), report_dir=args.report, interval_s=_duration(args.interval), rate=args.rate,
        history_days=args.history_days, history_rows=args.history_rows, catch_up_s=_duration(args.catch_up),
        maintain_every_s=_duration(args.maintain_every) or None, maintain_older_than=args.maintain_older_than, port=args.port,
        live_args=tuple(args.live_arg),
    )
    return soak.run(settings, options, log=lambda line: print(line, flush=True))


def _kind_list(text: str) -> list[str]:
    from k2_lakehouse.chaos import KINDS

    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or any(v not in KINDS for v in values):
        raise argparse.ArgumentTypeError(f"kinds must be among {', '.join(KINDS)}, got {text!r}")
    return values


def _timedelta(text: str) -> dt.timedelta:
    return dt.timedelta(seconds=_duration(text))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _engine_list(text: str) -> list[str]:
    from k2_lakehouse.core.settings import ENGINES

    values = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [v for v in values if v not in ENGINES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"engines must be among {', '.join(ENGINES)}, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k2", description="K2 Lakehouse: exactly-once ClickHouse -> Iceberg pipeline.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    s = sub.add_parser("services", help="install, start, stop and inspect the local ClickHouse and PostgreSQL")
    s.add_argument("action", choices=["up", "down", "status", "env"])
    s.add_argument("--s3", action="store_true", help="up: also a local S3 server (juicefs gateway) for an s3:// "
                   "K2_WAREHOUSE, on the port of K2_S3_ENDPOINT=http://127.0.0.1:<port>, with the AWS_* credentials")
    s.set_defaults(handler=_services)

    f = sub.add_parser("feed", help="simulate the exchange feed into the hot tier")
    fsub = f.add_subparsers(dest="action", required=True)
    seed = fsub.add_parser("seed", help="write N trades per exchange for one day")
    seed.add_argument("--date", type=dt.date.fromisoformat, required=True, help="trade day, YYYY-MM-DD (UTC)")
    seed.add_argument("--rows", type=int, required=True, help="rows per exchange")
    seed.add_argument("--hostile", action="store_true", help="then one message of every bad class a real feed "
                      "delivers, per exchange (bad numbers, symbols, bytes and times, conflicting duplicates, 1 MiB fields)")
    live = fsub.add_parser("live", help="write trades in real time")
    live.add_argument("--rate", type=float, required=True, help="trades per second per exchange")
    live.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    for cmd in (seed, live):
        cmd.add_argument("--seed", type=int, default=0, help="random seed (reproducible output)")
        cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(handler=_feed)

    r = sub.add_parser("run", help="materialize assets in process and print a summary")
    r.add_argument("--select", default="*", help="Dagster asset selection, e.g. group:gold (default: all nine tables)")
    r.add_argument("--partition", type=dt.date.fromisoformat, help="day YYYY-MM-DD (default: every day with new hot data)")
    r.set_defaults(handler=_run)

    v = sub.add_parser("verify", help="reconcile hot tier against bronze, bronze against silver, silver against gold; "
                       "non-zero exit on any mismatch")
    v.add_argument("--date", type=dt.date.fromisoformat, help="only this day")
    v.add_argument("--layers", type=lambda s: set(s.split(",")), default={"bronze", "silver", "gold"},
                   help="comma-separated layers to verify (default: bronze,silver,gold)")
    v.set_defaults(handler=_verify)

    m = sub.add_parser("maintain", help="long-run operations now: hot-tier retention (gated on the offload), then "
                       "table maintenance: compact small files, drop abandoned audit branches, expire snapshots and "
                       "remove unreferenced files, on every Iceberg table")
    m.add_argument("--older-than", type=_timedelta, default=None, metavar="DURATION",
                   help="keep snapshots, audit branches and unreferenced files younger than this, e.g. 30m, 24h, 7d "
                   "(default: K2_MAINTAIN_OLDER_THAN, 24h)")
    m.add_argument("--hot-retention-days", type=int, default=None, metavar="N",
                   help="first delete hot days older than N days that bronze holds exactly once; 0 keeps every day "
                   "(default: K2_HOT_RETENTION_DAYS, 0)")
    m.set_defaults(handler=_maintain)

    lv = sub.add_parser(
        "live", help="run the whole system: services, history, live feed, Dagster webserver and daemon, until Ctrl-C",
        description="Brings the services up, seeds --history-days days of history once, then runs the live feed, "
        "the Dagster webserver (127.0.0.1 only) and the Dagster daemon, logging to K2_HOME/live/. Ctrl-C, SIGTERM, "
        "--for or `k2 services down` stops every process it started, and the services if it started them.",
    )
    lv.add_argument("--port", type=int, default=3000, help="Dagster UI port on 127.0.0.1 (default: 3000)")
    lv.add_argument("--rate", type=float, default=100.0, help="live trades per second per exchange (default: 100)")
    lv.add_argument("--history-days", type=int, default=3, help="days before today (UTC) to seed once (default: 3)")
    lv.add_argument("--history-rows", type=int, default=200_000, help="trades per history day per exchange (default: 200000)")
    lv.add_argument("--for", dest="duration", type=_duration, default=None, metavar="DURATION",
                    help="stop after this long once up, e.g. 90s, 10m, 1h (default: until Ctrl-C)")
    lv.add_argument("--keep-services", action="store_true",
                    help="leave ClickHouse and PostgreSQL running on exit even if this command started them")
    lv.add_argument("--feed-for", dest="feed_duration", type=_duration, default=None, metavar="DURATION",
                    help="the feed stops after this long while the rest keeps running (default: it runs until the end)")
    lv.add_argument("--metrics-port", type=int, default=9464, help="the metrics exporter's port on 127.0.0.1 (default: 9464)")
    lv.add_argument("--prometheus-port", type=int, default=9090, help="Prometheus on 127.0.0.1 (default: 9090)")
    lv.add_argument("--alertmanager-port", type=int, default=9093, help="Alertmanager on 127.0.0.1 (default: 9093)")
    lv.add_argument("--no-monitoring", action="store_true", help="run neither the exporter nor Prometheus nor Alertmanager")
    lv.set_defaults(handler=_live)

    mt = sub.add_parser(
        "metrics", help="serve the lake's metrics in the Prometheus format (hot-tier lag, assets, checks, runs, tables)",
        description="`k2 metrics serve`: every scrape reads the hot tier, the Iceberg catalog, PostgreSQL, the Dagster "
        "instance and the live system's processes again. Alert thresholds come from K2_ALERT_LAG, K2_ALERT_STALE and "
        "K2_ALERT_MAINTENANCE (durations) and are served as k2_alert_threshold_seconds.",
    )
    mt.add_argument("action", choices=["serve"])
    mt.add_argument("--port", type=int, default=9464, help="port (default: 9464)")
    mt.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 only inside a container)")
    mt.add_argument("--refresh", type=_duration, default=os.environ.get("K2_METRICS_REFRESH") or "10s",
                    help="how often the sources are read; scrapes get the latest reading (default: K2_METRICS_REFRESH or 10s)")
    mt.set_defaults(handler=_metrics)

    b = sub.add_parser(
        "bench", help="throughput and peak memory against naive baselines, on a private bench corner",
        description="offload (default): the bronze offload per table, against row tuples + pandas + one append. "
        "day: one whole day, all tables through `k2 run` (Dagster included), at two sizes; bronze alone, then "
        "silver + gold; and silver + gold the plain pandas way (k2_lakehouse/baseline.py), compared table by table. "
        "incremental: sensor-sized bronze runs (5,000 new trades per exchange) on a day of --rows trades, "
        "checked incrementally, beside the same runs checked over the whole partition. "
        "freshness: `k2 live` on the bench corner; seconds from a trade's insert into ClickHouse to bronze and to gold. "
        "scale: the nine-table day at --factors x --rows trades per exchange on each of --engines, bronze (both "
        "tables), silver and gold each in a fresh process (wall time, step time, peak RSS of the whole process tree). "
        "parallel: both exchanges with --rows trades each, offloaded one at a time, then at once (two processes), "
        "--repeats times: parallel efficiency. "
        "compaction: a bronze day of --rows trades grown by --increments sensor-sized offloads, read before and after "
        "`k2 maintain` (files, manifests, plan, read and query time). "
        "Results in K2_HOME/bench/*results.json.",
    )
    b.add_argument("what", nargs="?", choices=["offload", "day", "incremental", "freshness", "scale", "parallel", "compaction"],
                   default="offload", help="what to measure (default: offload)")
    b.add_argument("--rows", type=int, default=None,
                   help="trades per exchange for the large run (default: 4000000; scale, parallel, compaction: 1000000)")
    b.add_argument("--small-rows", type=int, default=1_000_000, help="trades per exchange for the memory comparison")
    b.add_argument("--duration", type=float, default=300.0, help="freshness: seconds of sampling (default: 300)")
    b.add_argument("--factors", type=_int_list, default=[1, 2, 4], help="scale: multiples of --rows (default: 1,2,4)")
    b.add_argument("--engines", type=_engine_list, default=["duckdb", "spark"],
                   help="scale, parallel: engines to measure (default: duckdb,spark)")
    b.add_argument("--repeats", type=int, default=3, help="parallel: repetitions; compaction: reads timed (default: 3)")
    b.add_argument("--increments", type=int, default=200, help="compaction: small offloads after the load (default: 200)")
    b.set_defaults(handler=_bench)

    c = sub.add_parser(
        "chaos", help="randomized fault trials on a private lake: every layer must recover with 0 duplicates, 0 losses",
        description="Starts private ClickHouse and PostgreSQL on free ports with a lake under a temporary directory "
        "(the configured services and tables are never touched), then runs N trials: fresh feed data, one random fault "
        "(kill, clickhouse_restart, postgres_restart, concurrent_runs, redelivery_storm, late_data, metadata_loss, "
        "maintenance), ordinary `k2 run`s until they succeed, and the full verification of `k2 verify`. Prints trials "
        "by fault kind and outcome; exit 1 if any trial did not recover or found a duplicate or a loss.",
    )
    c.add_argument("--trials", type=int, default=20, help="number of trials (default: 20)")
    c.add_argument("--seed", type=int, default=None, help="random seed: the same seed draws the same faults (default: random)")
    c.add_argument("--kinds", type=_kind_list, default=None, help="comma-separated fault kinds (default: all)")
    c.add_argument("--report", type=Path, default=None, help="also write the table and every trial as Markdown to FILE")
    c.add_argument("--keep", action="store_true", help="keep the private lake, its service data and logs (stopped)")
    c.add_argument("--exec-runs", action="store_true",
                   help="start every k2 run as a new interpreter instead of forking it from a warm server (slower)")
    c.set_defaults(handler=_chaos)

    s = sub.add_parser(
        "soak", help="run the live system with its feed for a long while, then write a report (Markdown + PNG plots)",
        description="Runs `k2 live` (services, history, feed, Dagster webserver and daemon with sensors on) for --for, "
        "samples bronze lag, process memory, the PostgreSQL event log and Iceberg file/snapshot/metadata counts every "
        "--interval, runs `k2 maintain` every --maintain-every, then stops the feed, waits for every layer to catch up "
        "and runs `k2 verify`. Writes report.md, lag.png, rss.png, growth.png and samples.jsonl to --report; exit 1 "
        "unless every layer verified exact.",
    )
    s.add_argument("--for", dest="duration", required=True, help="how long the feed runs: 5m, 2h, ...")
    s.add_argument("--report", type=Path, required=True, help="directory for the report, e.g. docs/soak/2026-11-27")
    s.add_argument("--interval", default="30s", help="sampling interval (default: 30s)")
    s.add_argument("--rate", type=float, default=100.0, help="trades per second per exchange (default: 100)")
    s.add_argument("--history-days", type=int, default=1, help="days of history seeded first (default: 1)")
    s.add_argument("--history-rows", type=int, default=100_000, help="trades per exchange per history day (default: 100000)")
    s.add_argument("--catch-up", default="10m", help="after the feed stops, how long every layer may take to be exact (default: 10m)")
    s.add_argument("--maintain-every", default="30m", help="run `k2 maintain` this often; 0 never (default: 30m)")
    s.add_argument("--maintain-older-than", default="15m", help="its --older-than (default: 15m)")
    s.add_argument("--port", type=int, default=3000, help="the Dagster UI's port (default: 3000)")
    s.add_argument("--live-arg", action="append", default=[], help="one more argument for `k2 live` (repeatable), "
                   "e.g. --live-arg=--metrics-port=9465")
    s.set_defaults(handler=_soak)
    return p


if __name__ == "__main__":
    sys.exit(main())
