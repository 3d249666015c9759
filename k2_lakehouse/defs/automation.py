"""What keeps the lakehouse current on its own, all on by default: the hot-tier sensor requests bronze runs,
automation conditions (evaluated by the daemon) rebuild silver and gold after them, a schedule catches up
whatever slipped through, freshness checks watch the result, and a daily schedule verifies whole partitions."""

import datetime as dt
import time
import warnings

from dagster import (
    AssetKey,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    Failure,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    SupersessionWarning,
    build_last_update_freshness_checks,
    build_sensor_for_freshness_checks,
    define_asset_job,
    job,
    op,
    schedule,
    sensor,
)

from k2_lakehouse.core import hot_tier, sensing
from k2_lakehouse.core.contracts import GOLD_TABLES, HOT_TABLES
from k2_lakehouse.core.errors import HotTierUnavailable
from k2_lakehouse.core.verify import verify
from k2_lakehouse.defs.bronze import recorded_watermarks
from k2_lakehouse.defs.partitions import FIRST_DAY, daily_partitions
from k2_lakehouse.defs.resources import LakehouseResource

SENSOR_INTERVAL_S = 10  # hot tier and automation conditions; 5 s measured worse for gold (bronze runs back to back)
BRONZE_TAG = "k2/bronze"  # the day, on every run the sensor requests: dagster.yaml lets one such run go at a time
TRIGGER_TAG = "k2/trigger"
SENSOR = "hot_tier_sensor"
IN_FLIGHT = [
    DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING,
]
BRONZE_KEYS = {hot.bronze.name: AssetKey(hot.asset_path) for hot in HOT_TABLES.values()}  # trades_binance, ...
GOLD_KEYS = [AssetKey(c.asset_path) for c in GOLD_TABLES.values()]
LAKEHOUSE = AssetSelection.groups("bronze", "silver", "gold")


@sensor(
    name=SENSOR,
    description="Requests a bronze run for the day whose hot-tier offsets moved past the watermark bronze last "
    "recorded, for every table that moved; one run key per set of offsets, so nothing is requested twice; one run "
    "at a time, the newest day first, an older day once it has waited 5 minutes.",
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
    target=AssetSelection.groups("bronze"),
)
def hot_tier_sensor(context: SensorEvaluationContext, lakehouse: LakehouseResource):
    settings = lakehouse.settings()
    try:
        with hot_tier.hot_tier_errors(settings):
            client = hot_tier.connect(settings)
            try:
                highs = {hot.bronze.name: hot_tier.high_offsets_by_day(client, hot) for hot in HOT_TABLES.values()}
            finally:
                client.disconnect()
    except HotTierUnavailable as exc:  # report and try again next tick; the cursor stays as it was
        return SkipReason(str(exc))
    highs = {name: _in_partition_range(context, name, days) for name, days in highs.items()}
    busy = bool(context.instance.get_run_records(RunsFilter(statuses=IN_FLIGHT, tags={TRIGGER_TAG: SENSOR}), limit=1))
    request, cursor = sensing.bronze_request(
        highs, sensing.decode_cursor(context.cursor),
        recorded=lambda name, day: recorded_watermarks(context.instance, BRONZE_KEYS[name], day.isoformat())[0],
        busy=busy, now=time.time(),
    )
    if request is None:
        return SensorResult(cursor=sensing.encode_cursor(cursor), skip_reason="waiting for the bronze run in flight" if busy
                            else "bronze is level with the hot tier")
    return SensorResult(
        run_requests=[RunRequest(
            run_key=request.run_key, partition_key=request.day.isoformat(),
            asset_selection=[BRONZE_KEYS[t] for t in request.tables], tags={BRONZE_TAG: request.day.isoformat(), TRIGGER_TAG: SENSOR},
        )],
        cursor=sensing.encode_cursor(cursor),
    )


def _in_partition_range(context: SensorEvaluationContext, name: str, days: dict[dt.date, hot_tier.Watermark]) -> dict:
    outside = sorted(day for day in days if day < FIRST_DAY)
    if outside:
        context.log.warning(f"{name}: {len(outside)} hot days before K2_FIRST_DAY={FIRST_DAY} ({outside[0]} ...) are not offloaded")
    return {day: high for day, high in days.items() if day >= FIRST_DAY}


automation_sensor = AutomationConditionSensorDefinition(
    "lakehouse_automation",
    target=AssetSelection.groups("silver", "gold"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_S,
    description="Evaluates the silver and gold automation conditions: a day is rebuilt once its upstream "
    "changed and every upstream blocking check passed.",
)

catch_up_job = define_asset_job("catch_up", selection=LAKEHOUSE, partitions_def=daily_partitions,
                                description="Every layer of one day, in dependency order.")


@schedule(
    job=catch_up_job, cron_schedule="*/15 * * * *", execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
    description="Fallback: every 15 minutes, one run per day on which a table is behind (bronze lags the hot "
    "tier, or silver or gold were not built from their upstream's current rows).",
)
def catch_up_schedule(context: ScheduleEvaluationContext, lakehouse: LakehouseResource):
    settings = lakehouse.settings()
    try:
        with hot_tier.hot_tier_errors(settings):
            behind = sensing.pending_days(settings, bronze={h.name for h in HOT_TABLES.values()}, silver_wanted=True, gold_wanted=True)
    except HotTierUnavailable as exc:
        return SkipReason(str(exc))
    days = [day.isoformat() for day in behind if day >= FIRST_DAY]  # earlier days are not partitions
    tick = context.scheduled_execution_time.isoformat()
    return [RunRequest(run_key=f"catch_up/{day}/{tick}", partition_key=day, tags={TRIGGER_TAG: "catch_up"}) for day in days] or \
        SkipReason("every table is current")


@op(description="k2 verify over the last two days: every partition read in full, every layer.")
def verify_recent_days(context: OpExecutionContext, lakehouse: LakehouseResource) -> None:
    today = dt.datetime.now(dt.timezone.utc).date()
    result = verify(lakehouse.settings(), [today - dt.timedelta(days=1), today])
    context.log.info(result.report())
    if result.mismatched:
        raise Failure(f"{result.mismatched} table-days mismatched", metadata={"report": MetadataValue.md(f"```\n{result.report()}\n```")})


@job(description="Full-partition verification, the counterpart of the incremental checks of each run.")
def full_verification():
    verify_recent_days()


full_verification_schedule = ScheduleDefinition(
    job=full_verification, cron_schedule="30 0 * * *", execution_timezone="UTC", default_status=DefaultScheduleStatus.RUNNING,
)

# Asset checks (pass/fail history per asset, visible beside the other checks). Dagster 1.13 marks these
# builders superseded by FreshnessPolicy, which records a state but no check: the checks say more here.
warnings.filterwarnings("ignore", category=SupersessionWarning, module=__name__)
freshness_checks = build_last_update_freshness_checks(
    assets=[*BRONZE_KEYS.values(), *GOLD_KEYS], lower_bound_delta=dt.timedelta(minutes=5),
)
freshness_sensor = build_sensor_for_freshness_checks(
    # Each evaluation is a run, and each run a process start: every 2 minutes is plenty for a 5-minute bound.
    freshness_checks=freshness_checks, minimum_interval_seconds=120, default_status=DefaultSensorStatus.RUNNING,
)

defs = Definitions(
    sensors=[hot_tier_sensor, automation_sensor, freshness_sensor],
    schedules=[catch_up_schedule, full_verification_schedule],
    jobs=[catch_up_job, full_verification],
    asset_checks=freshness_checks,
)
