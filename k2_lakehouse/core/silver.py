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

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.audit import (
    CheckOutcome, Output, TableResult, audit, audit_view, current_outcome, data_version, scalars, write_audit_publish,
)
from k2_lakehouse.core.contracts import (
    HOT_TABLES, MAX_MESSAGE_TEXT, SILVER_REJECTED, SILVER_TRADES, TRADE_TIME_MAX_AHEAD_US, TRADE_TIME_MAX_LATE_US, HotTable,
    symbol_map,
)
from k2_lakehouse.core.engine import DuckDBEngine, Engine, EngineFactory, day_input, sql_text

ACCOUNTED_CHECK = "every_position_accounted_for"


def build_silver_day(
    cat: Catalog, day: dt.date, *, run_id: str = "", engine: EngineFactory = DuckDBEngine,
) -> dict[str, TableResult]:
    started = time.perf_counter()
    bronze = _bronze_tables(cat)
    upstream = {name: iceberg.snapshot_id(table) for name, (_, table) in bronze.items()}
    tables = _silver_tables(cat)
    with engine() as eng:
        _bind_inputs(eng, bronze, day)
        # Parsing every bronze row is the costly part, and both tables need it: do it once.
        eng.materialize("silver_normalized", sql_text("silver_normalized"))
        outputs = [
            Output(tables[c.qualified_name], c, sql_text(text))
            for c, text in ((SILVER_TRADES, "silver_trades"), (SILVER_REJECTED, "silver_trades_rejected"))
        ]
        return write_audit_publish(
            outputs, day, eng, _audit, upstream=upstream, run_id=run_id, started=started, data_version=_version(bronze, day),
            written_all=lambda: eng.drop("silver_normalized"),
        )


def verify_day(cat: Catalog, day: dt.date) -> dict[str, list[CheckOutcome]]:
    """The silver checks against `main` as it is now, and whether silver holds the bronze rows of today."""
    bronze = _bronze_tables(cat)
    tables = _silver_tables(cat)
    refs = {c.qualified_name: iceberg.PartitionRef(tables[c.qualified_name], c, day, iceberg.snapshot_id(tables[c.qualified_name]))
            for c in (SILVER_TRADES, SILVER_REJECTED)}
    with DuckDBEngine() as eng:
        _bind_inputs(eng, bronze, day)
        checks = audit(refs, eng, _audit)
    expected = _version(bronze, day)
    return {
        name: [*outcomes, current_outcome(expected, iceberg.day_data_version(tables[name], day) or "never built")]
        for name, outcomes in checks.items()
    }


def is_current(cat: Catalog, day: dt.date) -> bool:
    """Both silver tables of `day` were built from the bronze rows the day holds now (a run killed
    between publishing one and the other leaves the day not current, so the next run rebuilds it)."""
    version = _version(_bronze_tables(cat), day)
    return all(iceberg.day_data_version(t, day) == version for t in _silver_tables(cat).values())


def _bronze_tables(cat: Catalog) -> dict[str, tuple[HotTable, Table]]:
    return {hot.bronze.qualified_name: (hot, iceberg.bronze_table(cat, hot)) for hot in HOT_TABLES.values()}


def _silver_tables(cat: Catalog) -> dict[str, Table]:
    return {c.qualified_name: iceberg.ensure_table(cat, c, branches=True) for c in (SILVER_TRADES, SILVER_REJECTED)}


def _bind_inputs(engine: Engine, bronze: dict[str, tuple[HotTable, Table]], day: dt.date) -> None:
    """The day's bronze partitions at the snapshots loaded, the symbol map and the day itself."""
    for hot, table in bronze.values():
        engine.register_files(
            hot.name, iceberg.partition_files(table, hot.bronze, day, iceberg.snapshot_id(table)), hot.arrow_schema, table.io,
        )
    engine.register_arrow("symbol_map", symbol_map_table())
    engine.register_arrow("partition_day", partition_day(day))


def _version(bronze: dict[str, tuple[HotTable, Table]], day: dt.date) -> str:
    """Silver's data version for `day`: a function of each bronze table's watermark for the day, which
    moves exactly when rows are added to it."""
    return data_version({name: iceberg.encode_watermark(iceberg.read_watermark(t, day)) for name, (_, t) in bronze.items()})


def _audit(refs: dict[str, iceberg.PartitionRef], engine: Engine) -> dict[str, list[CheckOutcome]]:
    audit_view(engine, "silver_trades", refs[SILVER_TRADES.qualified_name])
    audit_view(engine, "silver_trades_rejected", refs[SILVER_REJECTED.qualified_name])
    per_exchange = engine.arrow(sql_text("check_silver_accounting")).to_pylist()
    accounted = accounting_outcome(per_exchange)
    return {SILVER_TRADES.qualified_name: [accounted], SILVER_REJECTED.qualified_name: [accounted]}


def accounting_outcome(per_exchange: list[dict]) -> CheckOutcome:
    """bronze rows = silver rows + replays dropped + rejected rows, and no position lost, doubled or invented."""
    rows = [scalars(r) for r in per_exchange]
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "exchange"}
    accounted = total["silver_rows"] + total["replays_dropped"] + total["rejected_rows"]
    passed = accounted == total["bronze_rows"] and total["unaccounted"] == 0 and total["extra_positions"] == 0
    details: dict = dict(total)
    for r in rows:
        details[r["exchange"]] = (
            f"bronze {r['bronze_rows']:,} = silver {r['silver_rows']:,} + replays {r['replays_dropped']:,} "
            f"+ rejected {r['rejected_rows']:,}; unaccounted {r['unaccounted']}, doubled or invented {r['extra_positions']}"
        )
    return CheckOutcome(
        ACCOUNTED_CHECK, passed, expected=total["bronze_rows"], actual=accounted, details=details,
        description="every bronze feed position of the day is in silver, rejected, or a dropped replay, exactly once",
    )


def partition_day(day: dt.date) -> pa.Table:
    """The `partition_day` input of the silver texts: the day's bounds and the validation limits of the contract."""
    limits = {"late_us": TRADE_TIME_MAX_LATE_US, "ahead_us": TRADE_TIME_MAX_AHEAD_US, "max_text": MAX_MESSAGE_TEXT}
    table = day_input(day)
    for name, value in limits.items():
        table = table.append_column(name, pa.array([value], pa.int64()))
    return table


def symbol_map_table() -> pa.Table:
    rows = symbol_map()
    return pa.table({
        "exchange": [m.exchange for m in rows], "exchange_symbol": [m.exchange_symbol for m in rows],
        "symbol": [m.symbol for m in rows],
    })
