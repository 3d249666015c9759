"""Bronze assets: one factory over the exchanges; each asset offloads one day exactly once."""

import datetime as dt

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetsDefinition,
    DagsterInstance,
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
from k2_lakehouse.core.reconcile import NOTHING_VERIFIED, Verified
from k2_lakehouse.defs.partitions import daily_partitions
from k2_lakehouse.defs.reporting import OWNERS, check_result, check_spec, table_metadata
from k2_lakehouse.defs.resources import LakehouseResource, SparkResource


def build_bronze_asset(hot: HotTable) -> AssetsDefinition:
    key = AssetKey(hot.asset_path)

    @asset(
        key=key,
        group_name="bronze",
        deps=[AssetKey(hot.hot_asset_path)],  # the ClickHouse hot table (defs/hot.py)
        partitions_def=daily_partitions,
        kinds={"iceberg", "clickhouse", "pandera"},
        owners=OWNERS,
        description=f"Exact copy of ClickHouse k2.{hot.name} in Iceberg, one row per feed position, "
        "offloaded incrementally and exactly once.",
        metadata=table_metadata(hot.bronze),
        check_specs=[
            check_spec(hot.bronze, CONTRACT_CHECK, "Pandera table contract; (kafka_partition, kafka_offset) unique over the day"),
            check_spec(hot.bronze, EXACTLY_ONCE_CHECK, "bronze rows = distinct feed positions = hot positions up to the watermark"),
        ],
        # One writer per table at a time keeps commit races rare; the offload survives them anyway.
        pool=f"iceberg_{hot.name}",
    )
    def bronze_trades(context: AssetExecutionContext, lakehouse: LakehouseResource, spark: SparkResource) -> MaterializeResult:
        recorded, verified = recorded_watermarks(context.instance, key, context.partition_key)
        settings = lakehouse.settings()
        built = build_bronze_day(
            settings, hot, dt.date.fromisoformat(context.partition_key), run_id=context.run_id, verified=verified,
            write=lakehouse.range_writer(spark),
        )
        result = built.offload
        checked = built.reconciliation
        now_verified = Verified(result.watermark_after, checked.actual) if all(c.passed for c in built.checks) else verified
        if recorded != result.watermark_before:
            context.log.warning(
                f"Dagster recorded watermark {recorded} but Iceberg holds {result.watermark_before} (a run died "
                "after its Iceberg commit): Iceberg wins."
            )
        if result.columns_added:
            context.log.warning(
                f"{hot.name} gained column(s) {', '.join(result.columns_added)}: added to {hot.bronze.qualified_name} "
                "as optional columns; rows offloaded before read as null"
            )
        context.log.info(
            f"{hot.name} {result.day}: {result.rows:,} rows appended in {result.duration_s:.2f}s "
            f"({result.rows_per_s:,.0f} rows/s); watermark {result.watermark_before} -> {result.watermark_after}"
        )
        return MaterializeResult(
            metadata={
                "rows_appended": result.rows,
                "dagster/row_count": checked.actual,
                "watermark_before": MetadataValue.json({str(p): o for p, o in result.watermark_before.items()}),
                "watermark": MetadataValue.json({str(p): o for p, o in result.watermark_after.items()}),
                "checked": checked.scope,
                # Checks passed up to here: the next run checks only what it adds above this.
                **({"verified_watermark": MetadataValue.json({str(p): o for p, o in now_verified.watermark.items()}),
                    "verified_rows": now_verified.rows} if now_verified else {}),
                "watermark_recovered_from_iceberg": recorded != result.watermark_before,
                "snapshot_id": MetadataValue.text(str(result.snapshot_id)),
                "files_written": result.files,
                "bytes_written": result.bytes_written,
                "bytes_per_row": round(result.bytes_per_row, 2),
                "rows_per_s": round(result.rows_per_s),
                "duration_s": round(result.duration_s, 3),
                "commit_attempts": result.attempts,
                "engine": settings.engine,
                # Schema drift: columns the hot table gained, added to bronze by this run's commit.
                **({"columns_added": MetadataValue.json(list(result.columns_added))} if result.columns_added else {}),
            },
            check_results=[check_result(hot.bronze, c) for c in built.checks],
            # The watermark moves exactly when rows are added to the day: silver and gold of the day go stale.
            data_version=DataVersion(iceberg.encode_watermark(result.watermark_after)),
        )

    return bronze_trades


def recorded_watermarks(instance: DagsterInstance, key: AssetKey, partition: str) -> tuple[Watermark, Verified | None]:
    """The watermark the last materialization of this partition recorded in Dagster ({} if none), and how
    far its checks had passed (None if unknown: the next check then reads the whole partition)."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records
    if not records:
        return {}, NOTHING_VERIFIED
    metadata = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    recorded = {int(p): int(o) for p, o in (metadata.get("watermark") or {}).items()}
    watermark, rows = metadata.get("verified_watermark"), metadata.get("verified_rows")
    if watermark is None or rows is None:
        return recorded, None
    return recorded, Verified({int(p): int(o) for p, o in watermark.items()}, int(rows))


bronze_assets = [build_bronze_asset(hot) for hot in HOT_TABLES.values()]
defs = Definitions(assets=bronze_assets)
