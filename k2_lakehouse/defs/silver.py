"""Silver: silver/trades and silver/trades_rejected, built together from both bronze tables, one day at a time."""

from dagster import Definitions

from k2_lakehouse.core.audit import CONTRACT_CHECK
from k2_lakehouse.core.contracts import HOT_TABLES, SILVER_REJECTED, SILVER_TRADES
from k2_lakehouse.core.silver import ACCOUNTED_CHECK, build_silver_day
from k2_lakehouse.defs.layers import layer_asset
from k2_lakehouse.defs.reporting import asset_key, check_spec

TABLES = (SILVER_TRADES, SILVER_REJECTED)  # each bronze row lands in exactly one of them
ACCOUNTED = "bronze rows = silver rows + replays dropped + rejected rows; no position lost, doubled or invented"

silver_trades_day = layer_asset(
    "silver_trades_day", "silver", TABLES, deps=[asset_key(hot.bronze) for hot in HOT_TABLES.values()],
    check_specs=[
        *(check_spec(c, CONTRACT_CHECK, f"Pandera contract; {tuple(c.unique)} unique over the day") for c in TABLES),
        *(check_spec(c, ACCOUNTED_CHECK, ACCOUNTED) for c in TABLES),
    ],
    step=build_silver_day,
)

defs = Definitions(assets=[silver_trades_day])
