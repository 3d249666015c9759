"""Silver: one day of both exchanges' bronze trades, normalized, de-duplicated, every rejection kept.

`build_silver_day` is the one core call of the silver step (the Dagster asset and `k2 run` both reach it):
it reads the day's bronze partitions at their current snapshots, runs the silver SQL texts on the
engine, and write-audit-publishes `silver.trades` and `silver.trades_rejected` together.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pyarrow as pa
from pyiceberg.catalog import Catalog

from k2_lakehouse.core import iceberg, publish
from k2_lakehouse.core.audit import CheckOutcome, Output, TableResult, audit_view, write_audit_publish
from k2_lakehouse.core.contracts import HOT_TABLES, SILVER_REJECTED, SILVER_TRADES, symbol_map
from k2_lakehouse.core.engine import DuckDBEngine, sql_text

ACCOUNTED_CHECK = "every_position_accounted_for"


def build_silver_day(cat: Catalog, day: dt.date, *, run_id: str = "") -> dict[str, TableResult]:
    started = time.perf_counter()
    bronze = {hot.bronze.qualified_name: (hot, iceberg.bronze_table(cat, hot)) for hot in HOT_TABLES.values()}
    upstream = {name: iceberg.snapshot_id(table) for name, (_, table) in bronze.items()}
    trades = iceberg.ensure_table(cat, SILVER_TRADES, branches=True)
    rejected = iceberg.ensure_table(cat, SILVER_REJECTED, branches=True)
    summary = lineage_summary(run_id, day, upstream)
    with DuckDBEngine() as eng:
        for name, (hot, table) in bronze.items():
            eng.register_files(hot.name, iceberg.partition_files(table, hot.bronze, day, upstream[name]), hot.arrow_schema)
        eng.register_arrow("symbol_map", symbol_map_table())
        eng.register_arrow("partition_day", partition_day(day))
        eng.define_view("silver_normalized", sql_text("silver_normalized"))
        outputs = [
            Output(table, contract, publish.write_files(table, contract, day, eng.batches(sql_text(text))))
            for table, contract, text in ((trades, SILVER_TRADES, "silver_trades"), (rejected, SILVER_REJECTED, "silver_trades_rejected"))
        ]
        return write_audit_publish(
            outputs, day, eng, _audit, summary=summary, upstream=upstream,
            data_version=data_version(upstream_versions(bronze, day)), started=started,
        )


def _audit(staged: dict[str, publish.Staged], engine: DuckDBEngine) -> dict[str, list[CheckOutcome]]:
    audit_view(engine, "silver_trades", staged[SILVER_TRADES.qualified_name])
    audit_view(engine, "silver_trades_rejected", staged[SILVER_REJECTED.qualified_name])
    per_exchange = engine.arrow(sql_text("check_silver_accounting")).to_pylist()
    accounted = accounting_outcome(per_exchange)
    return {SILVER_TRADES.qualified_name: [accounted], SILVER_REJECTED.qualified_name: [accounted]}


def accounting_outcome(per_exchange: list[dict]) -> CheckOutcome:
    """bronze rows = silver rows + replays dropped + rejected rows, and no position lost, doubled or invented."""
    total = {k: sum(int(r[k]) for r in per_exchange) for k in per_exchange[0] if k != "exchange"}
    accounted = total["silver_rows"] + total["replays_dropped"] + total["rejected_rows"]
    passed = accounted == total["bronze_rows"] and not (total["unaccounted"] or total["counted_twice"] or total["not_in_bronze"])
    details: dict = dict(total)
    for r in per_exchange:
        details[r["exchange"]] = (
            f"bronze {r['bronze_rows']:,} = silver {r['silver_rows']:,} + replays {r['replays_dropped']:,} "
            f"+ rejected {r['rejected_rows']:,}; unaccounted {r['unaccounted']}, counted twice {r['counted_twice']}, "
            f"not in bronze {r['not_in_bronze']}"
        )
    return CheckOutcome(
        ACCOUNTED_CHECK, passed, expected=total["bronze_rows"], actual=accounted, details=details,
        description="every bronze feed position of the day is in silver, rejected, or a dropped replay, exactly once",
    )


def symbol_map_table() -> pa.Table:
    rows = symbol_map()
    return pa.table({
        "exchange": [m.exchange for m in rows], "exchange_symbol": [m.exchange_symbol for m in rows],
        "symbol": [m.symbol for m in rows],
    })


def partition_day(day: dt.date) -> pa.Table:
    """The day being built, as a one-row input (SQL texts stay free of pasted values)."""
    start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    return pa.table({"day": [day], "start_us": [start], "end_us": [start + 86_400_000_000]})


def upstream_versions(bronze: dict[str, tuple], day: dt.date) -> dict[str, str]:
    """Each bronze table's version of the day: its watermark, which moves exactly when rows are added."""
    return {name: iceberg.encode_watermark(iceberg.read_watermark(table, day)) for name, (_, table) in bronze.items()}


def data_version(inputs: dict[str, str]) -> str:
    """A version that depends only on the inputs: the transforms are deterministic."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(inputs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lineage_summary(run_id: str, day: dt.date, upstream: dict[str, int | None]) -> dict[str, str]:
    return {
        "k2.dagster-run-id": run_id,
        "k2.partition": day.isoformat(),
        **{f"k2.upstream.{name}": str(sid) for name, sid in upstream.items()},
    }

