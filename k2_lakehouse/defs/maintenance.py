"""Long-run operations on a schedule: table maintenance of every Iceberg table, each table's asset
observing what was done to it, and the hot tier's retention (only for days bronze holds, DESIGN §5.6)."""

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

from k2_lakehouse.core import maintenance
from k2_lakehouse.core.contracts import TABLES
from k2_lakehouse.defs.reporting import asset_key
from k2_lakehouse.defs.resources import LakehouseResource


@op(description="Compacts small files per day, drops abandoned audit branches, expires snapshots and removes "
    "unreferenced files older than K2_MAINTAIN_OLDER_THAN, on every Iceberg table; each table's asset "
    "records what was done to it as an observation.")
def maintain_tables(context: OpExecutionContext, lakehouse: LakehouseResource) -> None:
    settings = lakehouse.settings()
    failed = []
    for contract in TABLES:
        try:  # one table's failure must not starve the others of maintenance
            result = maintenance.maintain(settings, tables=[contract]).tables[0]
        except Exception as exc:  # reported below, the run fails
            context.log.error(f"{contract.qualified_name}: maintenance failed: {exc!r}")
            failed.append(contract.qualified_name)
            continue
        context.log_event(AssetObservation(asset_key=asset_key(contract), metadata={
            f"maintenance/{k}": (MetadataValue.float(v) if isinstance(v, float) else MetadataValue.int(v))
            for k, v in result.metadata().items()
        }))
    if failed:
        raise Failure(f"maintenance failed on {', '.join(failed)}; the other tables were maintained")


@job(description="Table maintenance of every Iceberg table (`k2 maintain` runs the same at once).")
def table_maintenance():
    maintain_tables()


table_maintenance_schedule = ScheduleDefinition(
    job=table_maintenance, cron_schedule="0 2 * * *", execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Daily, after the full verification: a day's small files are merged once it has stopped moving.",
)

defs = Definitions(jobs=[table_maintenance], schedules=[table_maintenance_schedule])
