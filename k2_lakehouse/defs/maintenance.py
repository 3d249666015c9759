"""Long-run operations on schedules: table maintenance of every Iceberg table, each table's asset observing
what was done to it, and the hot tier's retention (only for days bronze holds, DESIGN §5.6)."""

from dagster import (
    AssetObservation,
    DefaultScheduleStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    ScheduleDefinition,
    job,
    op,
)

from k2_lakehouse.core import maintenance, retention
from k2_lakehouse.core.contracts import HOT_TABLES, TABLES, HotTable
from k2_lakehouse.defs.reporting import asset_key
from k2_lakehouse.defs.resources import LakehouseResource


@op(description="Compacts small files per day, drops abandoned audit branches, expires snapshots and removes "
    "unreferenced files older than K2_MAINTAIN_OLDER_THAN, on every Iceberg table; each table's asset "
    "records what was done to it as an observation.")
def maintain_tables(context: OpExecutionContext, lakehouse: LakehouseResource) -> None:
    report = maintenance.maintain(lakehouse.settings())
    context.log.info(report.report())
    for result, contract in zip(report.tables, TABLES):
        if result.error:
            continue
        context.log_event(AssetObservation(asset_key=asset_key(contract), metadata={
            f"maintenance/{k}": (MetadataValue.float(v) if isinstance(v, float) else MetadataValue.int(v))
            for k, v in result.metadata().items()
        }))
    if report.failed:
        raise Failure(f"maintenance failed on {', '.join(t.table for t in report.failed)}; the other tables were maintained",
                      metadata={"report": MetadataValue.md(f"```\n{report.report()}\n```")})


@job(description="Table maintenance of every Iceberg table (`k2 maintain` runs the same at once).")
def table_maintenance():
    maintain_tables()


table_maintenance_schedule = ScheduleDefinition(
    job=table_maintenance, cron_schedule="0 2 * * *", execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Daily, after the full verification: a day's small files are merged once it has stopped moving.",
)

def retention_op(hot: HotTable):
    @op(
        name=f"retire_{hot.name}",
        description=f"Deletes {hot.name}'s hot days older than K2_HOT_RETENTION_DAYS that bronze holds exactly once "
        "(a retirement record first, then only the rows at or below the watermark); keeps and reports the others.",
        pool=f"iceberg_{hot.name}",  # the bronze table's pool: never beside an offload of the same table
    )
    def retire_hot_days(context: OpExecutionContext, lakehouse: LakehouseResource) -> None:
        report = retention.retire(lakehouse.settings(), tables=[hot])
        context.log.info(report.report())
        context.log_event(AssetObservation(asset_key=asset_key(hot.bronze), metadata={
            **{f"retention/{k}": MetadataValue.int(v) for k, v in report.metadata().items()},
            "retention/report": MetadataValue.md(f"```\n{report.report()}\n```"),
        }))

    return retire_hot_days


@job(description="Hot-tier retention (DESIGN §5.6): only days bronze holds leave ClickHouse.")
def hot_retention():
    for hot in HOT_TABLES.values():
        retention_op(hot)()


hot_retention_schedule = ScheduleDefinition(
    job=hot_retention, cron_schedule="0 3 * * *", execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Daily; does nothing while K2_HOT_RETENTION_DAYS is 0 (the default).",
)

defs = Definitions(jobs=[table_maintenance, hot_retention], schedules=[table_maintenance_schedule, hot_retention_schedule])
