"""Gold: OHLCV bars of one day at six intervals, from one read of the silver day.

`build_gold_day` is the one core call of the gold step: the finest bars come from the silver trades,
each coarser interval from the one below it (they divide each other), so silver is scanned once; the
six tables are write-audit-published together.
"""

from __future__ import annotations

import datetime as dt
import decimal
import time

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.audit import (
    CheckOutcome, Output, TableResult, audit, audit_view, current_outcome, data_version, scalars, write_audit_publish,
)
from k2_lakehouse.core.contracts import GOLD_TABLES, INTERVALS, PRICE, SILVER_TRADES, Interval
from k2_lakehouse.core.engine import DuckDBEngine, Engine, EngineFactory, sql_text

SILVER_CHECK = "matches_silver"
FINER_CHECK = "agrees_with_finer"
_VWAP = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
_EIGHT_PLACES = decimal.Decimal("1e-8")


def build_gold_day(
    cat: Catalog, day: dt.date, *, run_id: str = "", engine: EngineFactory = DuckDBEngine,
) -> dict[str, TableResult]:
    started = time.perf_counter()
    silver = iceberg.ensure_table(cat, SILVER_TRADES, branches=True)
    upstream = {SILVER_TRADES.qualified_name: iceberg.snapshot_id(silver)}
    tables = _gold_tables(cat)
    with engine() as eng:
        audit_view(eng, "silver_trades", iceberg.PartitionRef(silver, SILVER_TRADES, day, upstream[SILVER_TRADES.qualified_name]))
        bars = compute_bars(eng)
        outputs = [
            Output(tables[c.qualified_name], c, bars[i.name])
            for i, c in zip(INTERVALS, GOLD_TABLES.values())
        ]
        return write_audit_publish(
            outputs, day, eng, _audit, upstream=upstream, data_version=_version(silver, day), run_id=run_id, started=started,
        )


def verify_day(cat: Catalog, day: dt.date) -> dict[str, list[CheckOutcome]]:
    """The gold checks against `main` as it is now, and whether gold holds the silver day of today."""
    silver = iceberg.ensure_table(cat, SILVER_TRADES, branches=True)
    refs = {c.qualified_name: iceberg.PartitionRef(t, c, day, iceberg.snapshot_id(t))
            for c, t in zip(GOLD_TABLES.values(), _gold_tables(cat).values())}
    with DuckDBEngine() as eng:
        audit_view(eng, "silver_trades", iceberg.PartitionRef(silver, SILVER_TRADES, day, iceberg.snapshot_id(silver)))
        checks = audit(refs, eng, _audit)
    expected = _version(silver, day)
    return {
        name: [*outcomes, current_outcome(expected, iceberg.day_data_version(refs[name].table, day) or "never built")]
        for name, outcomes in checks.items()
    }


def _gold_tables(cat: Catalog) -> dict[str, Table]:
    return {c.qualified_name: iceberg.ensure_table(cat, c, branches=True) for c in GOLD_TABLES.values()}


def _version(silver: Table, day: dt.date) -> str:
    """Gold's data version for `day`: a function of the silver day's version."""
    return data_version({SILVER_TRADES.qualified_name: iceberg.day_data_version(silver, day) or ""})


def is_current(cat: Catalog, day: dt.date) -> bool:
    """Every gold table of `day` was built from the silver day as it is now."""
    version = _version(iceberg.ensure_table(cat, SILVER_TRADES, branches=True), day)
    return all(iceberg.day_data_version(t, day) == version for t in _gold_tables(cat).values())


def compute_bars(engine: Engine) -> dict[str, pa.Table]:
    """Bars of every interval from the `silver_trades` view, finest first, in their contracts' types."""
    finest = INTERVALS[0]
    engine.register_arrow("bar_interval", pa.table({"micros": [finest.micros]}))
    bars = {finest.name: _typed(engine.arrow(sql_text("gold_bars_from_trades")), finest)}
    for finer, coarser in zip(INTERVALS, INTERVALS[1:]):
        bars[coarser.name] = rollup(engine, bars[finer.name], coarser)
    return bars


def rollup(engine: Engine, finer: pa.Table, coarser: Interval) -> pa.Table:
    engine.register_arrow("finer_bars", finer)
    engine.register_arrow("bar_interval", pa.table({"micros": [coarser.micros]}))
    return _typed(engine.arrow(sql_text("gold_bars_from_bars")), coarser)


def _typed(bars: pa.Table, interval: Interval) -> pa.Table:
    # The SQL works in UTC; the contract's types give window_start its zone.
    return with_vwap(bars).cast(GOLD_TABLES[interval.name].arrow_schema)


def with_vwap(bars: pa.Table) -> pa.Table:
    """Add `vwap` = quote_volume / volume, rounded half-even to 8 decimals, in exact decimal arithmetic.

    Neither DuckDB (which divides decimals as doubles) nor Spark (which trims the scale of wide decimal
    quotients) divides exactly, and bars are few (one per symbol and window), so Python's decimal does it.
    """
    quotes, volumes = bars.column("quote_volume").to_pylist(), bars.column("volume").to_pylist()
    vwap = [_VWAP.divide(q, v).quantize(_EIGHT_PLACES, context=_VWAP) for q, v in zip(quotes, volumes)]
    at = bars.schema.get_field_index("trade_count")
    return bars.add_column(at, pa.field("vwap", PRICE, nullable=False), pa.array(vwap, PRICE))


def _audit(refs: dict[str, iceberg.PartitionRef], engine: Engine) -> dict[str, list[CheckOutcome]]:
    checks: dict[str, list[CheckOutcome]] = {}
    names = {r.contract.name.removeprefix("ohlcv_"): name for name, r in refs.items()}
    engine.materialize("silver_totals", sql_text("silver_totals"))  # one scan of the silver day for every table
    for interval in INTERVALS:
        if interval.name not in names:
            continue
        name = names[interval.name]
        audit_view(engine, "gold_bars", refs[name])
        row = scalars(engine.arrow(sql_text("check_gold_against_silver")).to_pylist()[0])
        checks[name] = [CheckOutcome(
            SILVER_CHECK, row["mismatched_groups"] == 0, expected=row["silver_trades"], actual=row["gold_trades"],
            details={**row, "interval": interval.name},
            description="trade counts, volumes and quote volumes per exchange and symbol equal silver's",
        )]
    for finer, coarser in zip(INTERVALS, INTERVALS[1:]):
        if finer.name in names and coarser.name in names:
            checks[names[coarser.name]].append(_agrees(engine, refs[names[finer.name]], refs[names[coarser.name]], coarser))
    return checks


def _agrees(engine: Engine, finer: iceberg.PartitionRef, coarser: iceberg.PartitionRef, interval: Interval) -> CheckOutcome:
    """The coarser table as written against the finer table as written, rolled up."""
    audit_view(engine, "fine_written", finer)
    expected = rollup(engine, engine.arrow("SELECT * FROM fine_written"), interval)
    engine.register_arrow("expected_bars", expected)
    audit_view(engine, "actual_bars", coarser)
    row = scalars(engine.arrow(sql_text("check_bars_equal")).to_pylist()[0])
    return CheckOutcome(
        FINER_CHECK, row["mismatched_windows"] == 0, expected=row["expected_windows"], actual=row["actual_windows"],
        details={**row, "finer": finer.contract.qualified_name},
        description=f"every {interval.name} bar equals the roll-up of the finer bars of {finer.contract.qualified_name}",
    )
