"""Silver: silver/trades and silver/trades_rejected, built together from both bronze tables, one day at a time."""

import datetime as dt

from dagster import AssetExecutionContext, AssetSpec, Definitions, multi_asset

from k2_lakehouse.core.audit import CONTRACT_CHECK
from k2_lakehouse.core.contracts import HOT_TABLES, SILVER_REJECTED, SILVER_TRADES
from k2_lakehouse.core.silver import ACCOUNTED_CHECK, build_silver_day
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import asset_key, check_spec, report, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource

BRONZE_KEYS = [asset_key(hot.bronze) for hot in HOT_TABLES.values()]
ACCOUNTED = "bronze rows = silver rows + replays dropped + rejected rows; no position lost, doubled or invented"


@multi_asset(
    name="silver_trades_day",
    specs=[
        AssetSpec(asset_key(c), deps=BRONZE_KEYS, group_name="silver", description=c.doc,
                  kinds={"iceberg", "duckdb", "pandera"}, metadata=table_metadata(c), partitions_def=daily_partitions)
        for c in (SILVER_TRADES, SILVER_REJECTED)
    ],
    check_specs=[
        *(check_spec(c, CONTRACT_CHECK, f"Pandera contract; {tuple(c.unique)} unique over the day") for c in (SILVER_TRADES, SILVER_REJECTED)),
        *(check_spec(c, ACCOUNTED_CHECK, ACCOUNTED) for c in (SILVER_TRADES, SILVER_REJECTED)),
    ],
    partitions_def=daily_partitions,
    # The two tables are one computation: each bronze row lands in exactly one of them.
    can_subset=False,
)
def silver_trades_day(context: AssetExecutionContext, lakehouse: LakehouseResource):
    day = dt.date.fromisoformat(context.partition_key)
    yield from report(build_silver_day(lakehouse.catalog(), day, run_id=context.run_id))


defs = Definitions(assets=[silver_trades_day])
