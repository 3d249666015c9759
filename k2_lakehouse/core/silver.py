"""Silver: one day of both exchanges' bronze trades, normalized, de-duplicated, every rejection kept.

`build_silver_day` is the one core call of the silver step (the Dagster asset and `k2 run` both reach it):
it reads the day's bronze partitions at their current snapshots, runs the silver SQL texts on the
engine, and write-audit-publishes `silver.trades` and `silver.trades_rejected` together.
"""

from __future__ import annotations

import datetime as dt
import time

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg, publish
from k2_lakehouse.core.audit import CheckOutcome, Output, TableResult, audit_view, data_version, write_audit_publish
from k2_lakehouse.core.contracts import HOT_TABLES, SILVER_REJECTED, SILVER_TRADES, symbol_map
from k2_lakehouse.core.engine import DuckDBEngine, day_input, sql_text

ACCOUNTED_CHECK = "every_position_accounted_for"


def build_silver_day(cat: Catalog, day: dt.date, *, run_id: str = "") -> dict[str, TableResult]:
    started = time.perf_counter()
    bronze = {hot.bronze.qualified_name: (hot, iceberg.bronze_table(cat, hot)) for hot in HOT_TABLES.values()}
    upstream = {name: iceberg.snapshot_id(table) for name, (_, table) in bronze.items()}
    trades = iceberg.ensure_table(cat, SILVER_TRADES, branches=True)
    rejected = iceberg.ensure_table(cat, SILVER_REJECTED, branches=True)
    with DuckDBEngine() as eng:
        for name, (hot, table) in bronze.items():
            eng.register_files(hot.name, iceberg.partition_files(table, hot.bronze, day, upstream[name]), hot.arrow_schema)
        eng.register_arrow("symbol_map", symbol_map_table())
        eng.register_arrow("partition_day", day_input(day))
        eng.define_view("silver_normalized", sql_text("silver_normalized"))
        outputs = [
            Output(table, contract, publish.write_files(table, contract, day, eng.batches(sql_text(text))))
            for table, contract, text in ((trades, SILVER_TRADES, "silver_trades"), (rejected, SILVER_REJECTED, "silver_trades_rejected"))
        ]
        return write_audit_publish(
            outputs, day, eng, _audit, upstream=upstream, run_id=run_id, started=started,
            data_version=_version({name: table for name, (_, table) in bronze.items()}, day),
        )


def _audit(refs: dict[str, iceberg.PartitionRef], engine: DuckDBEngine) -> dict[str, list[CheckOutcome]]:
    audit_view(engine, "silver_trades", refs[SILVER_TRADES.qualified_name])
    audit_view(engine, "silver_trades_rejected", refs[SILVER_REJECTED.qualified_name])
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


def _version(bronze: dict[str, Table], day: dt.date) -> str:
    """Silver's data version for `day`: a function of each bronze table's watermark for the day, which
    moves exactly when rows are added to it."""
    return data_version({name: iceberg.encode_watermark(iceberg.read_watermark(t, day)) for name, t in bronze.items()})


def is_current(cat: Catalog, day: dt.date) -> bool:
    """Silver of `day` was built from the bronze rows the day holds now."""
    bronze = {hot.bronze.qualified_name: iceberg.bronze_table(cat, hot) for hot in HOT_TABLES.values()}
    summary = iceberg.partition_summary(iceberg.ensure_table(cat, SILVER_TRADES, branches=True), day)
    return summary.get("k2.data-version") == _version(bronze, day)
