"""The `k2` command line: services, feed, run, verify, bench."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from k2_lakehouse.core.errors import K2Error
from k2_lakehouse.core.settings import Settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings.from_env()
    for name, value in settings.exports().items():  # Dagster's config and child processes read these
        os.environ.setdefault(name, value)
    try:
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
        services.up(settings)
    elif args.action == "down":
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
    else:
        report = feed.live(settings, args.rate, args.duration, seed=args.seed, progress=not args.quiet)
    print(report.summary())
    return 0


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import runner

    partitions = [args.partition.isoformat()] if args.partition else runner.pending_partitions(settings, args.select)
    if not partitions:
        print("Nothing to do: every selected table is up to date with the hot tier.")
        return 0
    rows = runner.run(args.select, partitions)
    print(runner.format_rows(rows))
    return 0 if rows and all(r.success for r in rows) else 1


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse.core import gold, hot_tier, iceberg, reconcile, silver
    from k2_lakehouse.core.contracts import HOT_TABLES
    from k2_lakehouse.core.report import format_table

    results = []
    bronze_days: set[dt.date] = set()
    with hot_tier.hot_tier_errors(settings):
        client = hot_tier.connect(settings)
        cat = iceberg.catalog(settings)
        for hot in HOT_TABLES.values():
            table = iceberg.bronze_table(cat, hot)
            days = set(hot_tier.high_offsets_by_day(client, hot)) | set(iceberg.watermarked_days(table))
            if args.date:
                days &= {args.date}
            bronze_days |= days
            if "bronze" in args.layers:
                results += reconcile.verify(table, client, hot, sorted(days))
    header = ("table", "day", "hot rows", "hot positions", "bronze rows", "duplicates", "missing", "checksum", "status")
    if results:
        print(format_table(header, [
            (r.table, r.day, f"{r.hot_rows:,}", f"{r.hot_positions:,}", f"{r.actual:,}", r.duplicates,
             r.missing + r.not_yet_offloaded, "match" if r.checksum_match else "DIFFERS", "ok" if r.in_sync else "MISMATCH")
            for r in results
        ]))
        print()
    layers = []  # (table, day, its check outcomes)
    for day in sorted(bronze_days):
        for layer, verify_day in (("silver", silver.verify_day), ("gold", gold.verify_day)):
            if layer in args.layers:
                layers += [(name, day, outcomes) for name, outcomes in verify_day(cat, day).items()]
    if layers:
        print(format_table(("table", "day", "checks passed", "status"), [
            (name, day, f"{sum(c.passed for c in outcomes)}/{len(outcomes)}", "ok" if all(c.passed for c in outcomes) else "MISMATCH")
            for name, day, outcomes in layers
        ]))
    failed = [(name, day, c) for name, day, outcomes in layers for c in outcomes if not c.passed]
    for name, day, c in failed:
        print(f"  {name} {day} {c.name}: expected {_short(c.expected)}, actual {_short(c.actual)}, difference {_short(c.difference)}")
    bad = len([r for r in results if not r.in_sync]) + len({(name, day) for name, day, _ in failed})
    print(f"{len(results)} bronze and {len(layers)} silver/gold table-days checked, {bad} mismatched")
    return 1 if bad else 0


def _short(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from k2_lakehouse import bench

    measure = bench.day if args.what == "day" else bench.offload
    return measure(settings, rows=args.rows, small_rows=args.small_rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k2", description="K2 Lakehouse: exactly-once ClickHouse -> Iceberg pipeline.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    s = sub.add_parser("services", help="install, start, stop and inspect the local ClickHouse and PostgreSQL")
    s.add_argument("action", choices=["up", "down", "status", "env"])
    s.set_defaults(handler=_services)

    f = sub.add_parser("feed", help="simulate the exchange feed into the hot tier")
    fsub = f.add_subparsers(dest="action", required=True)
    seed = fsub.add_parser("seed", help="write N trades per exchange for one day")
    seed.add_argument("--date", type=dt.date.fromisoformat, required=True, help="trade day, YYYY-MM-DD (UTC)")
    seed.add_argument("--rows", type=int, required=True, help="rows per exchange")
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

    b = sub.add_parser(
        "bench", help="throughput and peak memory against naive baselines, on a private bench corner",
        description="offload (default): the bronze offload per table, against row tuples + pandas + one append. "
        "day: one whole day, all tables through `k2 run` (Dagster included), at two sizes; bronze alone, then "
        "silver + gold; and silver + gold the plain pandas way (k2_lakehouse/baseline.py), compared table by table. "
        "Results in K2_HOME/bench/results.json and day_results.json.",
    )
    b.add_argument("what", nargs="?", choices=["offload", "day"], default="offload", help="what to measure (default: offload)")
    b.add_argument("--rows", type=int, default=4_000_000, help="trades per exchange for the large run")
    b.add_argument("--small-rows", type=int, default=1_000_000, help="trades per exchange for the memory comparison")
    b.set_defaults(handler=_bench)
    return p


if __name__ == "__main__":
    sys.exit(main())
