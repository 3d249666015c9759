"""What the lake looks like right now, read from the real sources: the hot tier, the Iceberg catalog and
PostgreSQL. The metrics exporter and the soak report both read through here, so a value never comes from
a counter that resets with a process: every call asks the sources again.

- Bronze lag, per hot table and day: the hot tier's high offset per feed partition against the watermark
  bronze recorded in Iceberg, the rows above the watermark, and how long the oldest of them has waited
  (now minus its `ingested_at`; 0 when bronze holds every row).
- Per Iceberg table: data files, rows and bytes of `main` (the current snapshot's summary totals, so one
  metadata read however big the table), snapshots kept, the metadata file's size, and ages.
- PostgreSQL: the size of Dagster's event log and of each database.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from k2_lakehouse.core import hot_tier, iceberg
from k2_lakehouse.core.contracts import HOT_TABLES, TABLES, HotTable
from k2_lakehouse.core.hot_tier import Watermark, missing_ranges
from k2_lakehouse.core.settings import Settings


@dataclass(frozen=True)
class DayLag:
    table: str  # the hot table, e.g. bronze_trades_binance
    day: dt.date
    high: Watermark  # the hot tier's highest offset per feed partition
    watermark: Watermark  # what bronze holds, per feed partition
    rows_behind: int  # hot rows above the watermark
    seconds_behind: float  # age of the oldest of them (0 when none)


def bronze_lag(settings: Settings, *, now: float | None = None, first_day: dt.date | None = None) -> list[DayLag]:
    """Every (hot table, day) the hot tier holds from `first_day` (default K2_FIRST_DAY) on, with how far bronze
    is behind it. Earlier days are outside every Dagster partition: never offloaded (the sensor says so)."""
    now = time.time() if now is None else now
    first_day = settings.first_day if first_day is None else first_day
    cat = iceberg.catalog(settings)
    client = hot_tier.connect(settings)
    try:
        lags = []
        for hot in HOT_TABLES.values():
            table = iceberg.bronze_table(cat, hot)
            for day, high in hot_tier.high_offsets_by_day(client, hot).items():
                if day < first_day:
                    continue
                watermark = iceberg.read_watermark(table, day)
                rows, oldest = _behind(client, hot, day, watermark) if missing_ranges(watermark, high) else (0, None)
                lags.append(DayLag(hot.name, day, high, watermark, rows, max(0.0, now - oldest) if oldest else 0.0))
        return lags
    finally:
        client.disconnect()


def _behind(client, hot: HotTable, day: dt.date, watermark: Watermark) -> tuple[int, float | None]:
    """Rows of the day above the watermark and the earliest `ingested_at` among them (epoch seconds)."""
    # Partitions are ints from the watermark we wrote; they are bound as parameters all the same.
    above = " OR ".join(f"(kafka_partition = %(p{i})s AND kafka_offset > %(o{i})s)" for i in range(len(watermark)))
    known = " AND ".join(f"kafka_partition != %(p{i})s" for i in range(len(watermark)))
    where = " OR ".join(x for x in (above, f"({known})" if known else "1") if x)
    params = {"day": day, **{f"p{i}": p for i, p in enumerate(watermark)}, **{f"o{i}": o for i, o in enumerate(watermark.values())}}
    ((rows, oldest),) = client.execute(
        f"SELECT count(), toUInt32(min(ingested_at)) FROM {hot.name} WHERE trade_date = %(day)s AND ({where})",
        params, settings={"use_numpy": False},
    )
    return int(rows), (float(oldest) if rows else None)


@dataclass(frozen=True)
class TableStats:
    table: str  # ns.name
    layer: str  # bronze, silver or gold
    data_files: int
    rows: int
    bytes: int
    snapshots: int
    metadata_bytes: int
    last_commit_age_s: float | None  # None: never written
    oldest_snapshot_age_s: float | None


def table_stats(settings: Settings, *, now: float | None = None) -> list[TableStats]:
    """Every K2 Iceberg table that exists, from its metadata alone (no manifest is read)."""
    now = time.time() if now is None else now
    cat = iceberg.catalog(settings)
    stats = []
    for contract in TABLES:
        try:
            table = cat.load_table(contract.qualified_name)
        except Exception:  # noqa: BLE001 - not created yet: nothing to report
            continue
        current = table.current_snapshot()
        summary = current.summary if current is not None and current.summary is not None else {}
        snapshots = table.metadata.snapshots
        stats.append(TableStats(
            table=contract.qualified_name,
            layer=contract.qualified_name.split(".", 1)[0],
            data_files=int(summary.get("total-data-files", 0)),
            rows=int(summary.get("total-records", 0)),
            bytes=int(summary.get("total-files-size", 0)),
            snapshots=len(snapshots),
            metadata_bytes=len(table.io.new_input(table.metadata_location)),
            last_commit_age_s=now - current.timestamp_ms / 1000 if current is not None else None,
            oldest_snapshot_age_s=now - min(s.timestamp_ms for s in snapshots) / 1000 if snapshots else None,
        ))
    return stats


@dataclass(frozen=True)
class PostgresSizes:
    event_log_bytes: int  # Dagster's event_logs table with its indexes and TOAST
    event_log_rows: int  # the planner's estimate (exact counts cost a scan of the whole log)
    database_bytes: dict[str, int]  # database -> size


def postgres_sizes(settings: Settings) -> PostgresSizes:
    import psycopg2  # local: only the exporter and the soak ask

    databases = {}
    event_log = (0, 0)
    for url in (settings.postgres_url, settings.iceberg_catalog_uri):
        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        conn = psycopg2.connect(host=parts.hostname or "127.0.0.1", port=parts.port or 5432,
                                user=unquote(parts.username or ""), password=unquote(parts.password or "") or None,
                                dbname=name, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_database_size(current_database())")
                databases[name] = int(cur.fetchone()[0])
                if url == settings.postgres_url:
                    cur.execute("SELECT coalesce(pg_total_relation_size(to_regclass('event_logs')), 0), "
                                "coalesce((SELECT reltuples FROM pg_class WHERE oid = to_regclass('event_logs')), 0)")
                    size, rows = cur.fetchone()
                    event_log = (int(size), max(0, int(rows)))
        finally:
            conn.close()
    return PostgresSizes(event_log_bytes=event_log[0], event_log_rows=event_log[1], database_bytes=databases)


def disk_usage(settings: Settings) -> dict[str, tuple[int, int]]:
    """(free, size) bytes of the filesystems holding K2_HOME (service data, Dagster) and a file:// warehouse:
    a full disk stops ClickHouse, PostgreSQL and every commit at once."""
    import shutil
    from urllib.parse import urlsplit as split

    paths = {"home": settings.home}
    if settings.warehouse.startswith("file://"):
        paths["warehouse"] = Path(unquote(split(settings.warehouse).path))
    usage = {}
    for name, path in paths.items():
        while not path.exists() and path != path.parent:  # not created yet: its filesystem is the parent's
            path = path.parent
        total, _, free = shutil.disk_usage(path)
        usage[name] = (free, total)
    return usage
