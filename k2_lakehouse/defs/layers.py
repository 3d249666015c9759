"""The factory of the silver and gold steps: one multi-asset per layer step, a thin call into the core."""

import datetime as dt
from collections.abc import Callable, Sequence

from dagster import AssetCheckSpec, AutomationCondition, AssetExecutionContext, AssetKey, AssetsDefinition, AssetSpec, multi_asset
from pyiceberg.catalog import Catalog

from k2_lakehouse.core.audit import TableResult
from k2_lakehouse.core.contracts import TableContract
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import OWNERS, asset_key, report, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource, SparkResource

# Rebuild a day once any upstream day changed and every blocking check upstream passed: any day, not only
# the latest (late trades reach yesterday's bronze), without eager()'s wait for missing upstream days (an
# exchange with no trades on a day never materializes that day's bronze) and without its wait while an
# upstream run is in progress: under a live feed one of the two bronze tables nearly always is, so today
# would never be rebuilt. A day built while bronze moves reads bronze's last snapshot (Iceberg isolates it)
# and is rebuilt once more when that run lands.
FOLLOW_UPSTREAM = (
    AutomationCondition.any_deps_updated().since_last_handled()
    & AutomationCondition.all_deps_blocking_checks_passed()
    & ~AutomationCondition.in_progress()
).with_label("follows upstream once its blocking checks pass")

LayerStep = Callable[..., dict[str, TableResult]]  # (catalog, day, *, run_id, engine) -> what it did per table


def layer_asset(
    name: str, group: str, contracts: Sequence[TableContract], deps: Sequence[AssetKey],
    check_specs: Sequence[AssetCheckSpec], step: LayerStep,
) -> AssetsDefinition:
    """The tables `contracts`, built together for one day by the core call `step`."""

    @multi_asset(
        name=name,
        specs=[
            AssetSpec(asset_key(c), deps=deps, group_name=group, description=c.doc, kinds={"iceberg", "duckdb", "spark"},
                      owners=OWNERS, metadata=table_metadata(c), partitions_def=daily_partitions,
                      automation_condition=FOLLOW_UPSTREAM)
            for c in contracts
        ],
        check_specs=check_specs,
        partitions_def=daily_partitions,
        # One computation whose tables are audited together and published only together.
        can_subset=False,
        pool=f"iceberg_{name}",  # one run per step at a time: its tables' days are replaced, not appended
    )
    def layer_day(context: AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource):
        catalog: Catalog = lakehouse.catalog()
        day = dt.date.fromisoformat(context.partition_key)
        yield from report(step(catalog, day, run_id=context.run_id, engine=lakehouse.engine(spark)), catalog)

    return layer_day
