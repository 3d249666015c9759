"""Bronze assets: one factory over the exchanges; each asset offloads one day exactly once."""

import datetime as dt

from dagster import (
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DataVersion,
    Definitions,
    MaterializeResult,
    MetadataValue,
    asset,
)

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.audit import CONTRACT_CHECK
from k2_lakehouse.core.bronze import EXACTLY_ONCE_CHECK, build_bronze_day
from k2_lakehouse.core.contracts import HOT_TABLES, HotTable
from k2_lakehouse.core.hot_tier import Watermark
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import check_result, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource


def build_bronze_asset(hot: HotTable) -> AssetsDefinition:
    key = AssetKey(hot.asset_path)

    @asset(
        key=key,
        group_name="bronze",
        partitions_def=daily_partitions,
        kinds={"iceberg", "clickhouse"},
        description=f"Exact copy of ClickHouse k2.{hot.name} in Iceberg, one row per feed position, "
        "offloaded incrementally and exactly once.",
        metadata=table_metadata(hot.bronze),
        check_specs=[
            AssetCheckSpec(CONTRACT_CHECK, asset=key, blocking=True,
                           description="Pandera table contract; (kafka_partition, kafka_offset) unique over the day"),
            AssetCheckSpec(EXACTLY_ONCE_CHECK, asset=key, blocking=True,
                           description="bronze rows = distinct feed positions = hot positions up to the watermark"),
        ],
        # One writer per table at a time keeps commit races rare; the offload survives them anyway.
        pool=f"iceberg_{hot.name}",
    )
    def bronze_trades(context: AssetExecutionContext, lakehouse: LakehouseResource) -> MaterializeResult:
        recorded = _dagster_watermark(context, key)
        built = build_bronze_day(lakehouse.settings(), hot, dt.date.fromisoformat(context.partition_key), run_id=context.run_id)
        result = built.offload
        if recorded != result.watermark_before:
            context.log.warning(
                f"Dagster recorded watermark {recorded} but Iceberg holds {result.watermark_before} (a run died "
                "after its Iceberg commit): Iceberg wins."
            )
        context.log.info(
            f"{hot.name} {result.day}: {result.rows:,} rows appended in {result.duration_s:.2f}s "
            f"({result.rows_per_s:,.0f} rows/s); watermark {result.watermark_before} -> {result.watermark_after}"
        )
        return MaterializeResult(
            metadata={
                "rows_appended": result.rows,
                "dagster/row_count": built.reconciliation.actual,
                "watermark_before": MetadataValue.json({str(p): o for p, o in result.watermark_before.items()}),
                "watermark": MetadataValue.json({str(p): o for p, o in result.watermark_after.items()}),
                "watermark_recovered_from_iceberg": recorded != result.watermark_before,
                "snapshot_id": MetadataValue.text(str(result.snapshot_id)),
                "files_written": result.files,
                "bytes_written": result.bytes_written,
                "bytes_per_row": round(result.bytes_per_row, 2),
                "rows_per_s": round(result.rows_per_s),
                "duration_s": round(result.duration_s, 3),
                "commit_attempts": result.attempts,
            },
            check_results=[check_result(hot.bronze, c) for c in built.checks],
            # The watermark moves exactly when rows are added to the day: silver and gold of the day go stale.
            data_version=DataVersion(iceberg.encode_watermark(result.watermark_after)),
        )

    return bronze_trades


def _dagster_watermark(context: AssetExecutionContext, key: AssetKey) -> Watermark:
    """The watermark the last materialization of this partition recorded in Dagster ({} if none)."""
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1
    ).records
    entry = records[0].asset_materialization.metadata.get("watermark") if records else None
    return {int(p): int(o) for p, o in entry.value.items()} if entry is not None else {}


bronze_assets = [build_bronze_asset(hot) for hot in HOT_TABLES.values()]
defs = Definitions(assets=bronze_assets)
