"""Gold: six OHLCV assets (1m ... 1d), computed together from one read of the silver day."""

from dagster import Definitions

from k2_lakehouse.core.audit import CONTRACT_CHECK
from k2_lakehouse.core.contracts import GOLD_TABLES, INTERVALS, SILVER_TRADES
from k2_lakehouse.core.gold import FINER_CHECK, SILVER_CHECK, build_gold_day
from k2_lakehouse.defs.layers import layer_asset
from k2_lakehouse.defs.reporting import asset_key, check_spec


def _check_specs():
    for finer, interval in zip((None, *INTERVALS), INTERVALS):
        contract = GOLD_TABLES[interval.name]
        yield check_spec(contract, CONTRACT_CHECK, "Pandera contract: types, low <= open, close, vwap <= high; one bar per window")
        yield check_spec(contract, SILVER_CHECK, "trade counts, volumes and quote volumes per exchange and symbol equal silver's")
        if finer is not None:  # each interval is rolled up from the one below it
            yield check_spec(contract, FINER_CHECK, f"each bar equals the roll-up of the {finer.name} bars")


gold_ohlcv_day = layer_asset(
    "gold_ohlcv_day", "gold", tuple(GOLD_TABLES.values()), deps=[asset_key(SILVER_TRADES)],
    check_specs=list(_check_specs()), step=build_gold_day,
)

defs = Definitions(assets=[gold_ohlcv_day])
