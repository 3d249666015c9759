"""`k2 bench`: bronze offload throughput and peak memory, beside a naive baseline measured in the same run.

Works on a private corner of the running local services (ClickHouse database `k2_bench`, catalog database
`iceberg_bench`, warehouse under K2_HOME/bench), so it never touches the real tables. Every measurement runs
in a fresh child process, whose peak RSS (ru_maxrss) is what the report shows.

- k2: the exactly-once offload (`offload_day`): columnar numpy reads in bounded offset slices, a reader
  thread overlapping ClickHouse with sorting and zstd Parquet writing, one Iceberg commit.
- baseline: the plain way: read the day as row tuples, build a pandas DataFrame, `table.append` it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time

from k2_lakehouse.core import hot_tier, iceberg
from k2_lakehouse.core.contracts import HOT_TABLES, hot_table
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings

BENCH_DB = "k2_bench"
BENCH_CATALOG_DB = "iceberg_bench"
LARGE_DAY = dt.date(2025, 6, 2)
SMALL_DAY = dt.date(2025, 6, 1)


def bench_settings(settings: Settings) -> Settings:
    server = settings.iceberg_catalog_uri.rsplit("/", 1)[0]
    return dataclasses.replace(
        settings,
        clickhouse_url=settings.clickhouse_url.rsplit("/", 1)[0] + f"/{BENCH_DB}",
        iceberg_catalog_uri=f"{server}/{BENCH_CATALOG_DB}",
        warehouse=(settings.home / "bench" / "warehouse").as_uri(),
    )


def main(settings: Settings, *, rows: int, small_rows: int) -> int:
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


def _reset(settings: Settings, bench: Settings) -> None:
    import shutil

    import psycopg2

    client = hot_tier.connect(settings, database="")
    client.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
    hot_tier.create_hot_tables(client, BENCH_DB)
    url = settings.iceberg_catalog_uri
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)[0] + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {BENCH_CATALOG_DB}")
        cur.execute(f"CREATE DATABASE {BENCH_CATALOG_DB}")
    conn.close()
    shutil.rmtree(settings.home / "bench" / "warehouse", ignore_errors=True)


def _child(bench: Settings, method: str, exchange: str, day: dt.date) -> dict:
    env = {**os.environ, **bench.exports()}
    out = subprocess.run(
        [sys.executable, "-m", "k2_lakehouse.bench", method, exchange, day.isoformat()],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    table = cat.create_table(identifier, schema=hot.iceberg_schema, partition_spec=hot.partition_spec)
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


if __name__ == "__main__":  # a child measurement: bench.py METHOD EXCHANGE DAY
    method, exchange, day = sys.argv[1], sys.argv[2], dt.date.fromisoformat(sys.argv[3])
    measure = _measure_k2 if method == "k2" else _measure_baseline
    print(json.dumps(measure(Settings.from_env(), exchange, day)))
