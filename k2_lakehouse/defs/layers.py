"""The factory of the silver and gold steps: one multi-asset per layer step, a thin call into the core."""

import datetime as dt
from collections.abc import Callable, Sequence

from dagster import AssetCheckSpec, AssetExecutionContext, AssetKey, AssetsDefinition, AssetSpec, multi_asset
from pyiceberg.catalog import Catalog

from k2_lakehouse.core.audit import TableResult
from k2_lakehouse.core.contracts import TableContract
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import asset_key, report, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource

LayerStep = Callable[..., dict[str, TableResult]]  # (catalog, day, *, run_id) -> what it did per table


def layer_asset(
    name: str, group: str, contracts: Sequence[TableContract], deps: Sequence[AssetKey],
    check_specs: Sequence[AssetCheckSpec], step: LayerStep,
) -> AssetsDefinition:
    """The tables `contracts`, built together for one day by the core call `step`."""

    @multi_asset(
        name=name,
        specs=[
            AssetSpec(asset_key(c), deps=deps, group_name=group, description=c.doc, kinds={"iceberg", "duckdb", "pandera"},
                      metadata=table_metadata(c), partitions_def=daily_partitions)
            for c in contracts
        ],
        check_specs=check_specs,
        partitions_def=daily_partitions,
        # One computation whose tables are audited together and published only together.
        can_subset=False,
    )
    def layer_day(context: AssetExecutionContext, lakehouse: LakehouseResource):
        catalog: Catalog = lakehouse.catalog()
        yield from report(step(catalog, dt.date.fromisoformat(context.partition_key), run_id=context.run_id))

    return layer_day
