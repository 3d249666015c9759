"""Gold: six OHLCV assets (1m ... 1d), one factory, computed together from one read of the silver day."""

import datetime as dt

from dagster import AssetExecutionContext, AssetSpec, Definitions, multi_asset

from k2_lakehouse.core.audit import CONTRACT_CHECK
from k2_lakehouse.core.contracts import GOLD_TABLES, INTERVALS, SILVER_TRADES
from k2_lakehouse.core.gold import FINER_CHECK, SILVER_CHECK, build_gold_day
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import asset_key, check_spec, report, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource


def _check_specs():
    for finer, interval in zip((None, *INTERVALS), INTERVALS):
        contract = GOLD_TABLES[interval.name]
        yield check_spec(contract, CONTRACT_CHECK, "Pandera contract: types, low <= open, close, vwap <= high; one bar per window")
        yield check_spec(contract, SILVER_CHECK, "trade counts, volumes and quote volumes per exchange and symbol equal silver's")
        if finer is not None:
            yield check_spec(contract, FINER_CHECK, f"each bar equals the roll-up of the {finer.name} bars")


@multi_asset(
    name="gold_ohlcv_day",
    specs=[
        AssetSpec(asset_key(c), deps=[asset_key(SILVER_TRADES)], group_name="gold", description=c.doc,
                  kinds={"iceberg", "duckdb", "pandera"}, metadata=table_metadata(c), partitions_def=daily_partitions)
        for c in GOLD_TABLES.values()
    ],
    check_specs=list(_check_specs()),
    partitions_def=daily_partitions,
    # Each interval is rolled up from the one below it, and the checks compare neighbours: one computation.
    can_subset=False,
)
def gold_ohlcv_day(context: AssetExecutionContext, lakehouse: LakehouseResource):
    day = dt.date.fromisoformat(context.partition_key)
    yield from report(build_gold_day(lakehouse.catalog(), day, run_id=context.run_id))


defs = Definitions(assets=[gold_ohlcv_day])
