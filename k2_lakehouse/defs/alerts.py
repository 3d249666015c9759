"""Alerts: failed runs and failed asset checks of this code location, posted as JSON to K2_ALERT_WEBHOOK_URL
(`core/alerting.py` builds, redacts and posts them), once per failure.

Without K2_ALERT_WEBHOOK_URL both sensors skip and still move past what they see: alerting is off, and turning
it on later must not flood the webhook with failures from before (it alerts from then on).
"""

import os
import warnings

from dagster import (
    AssetCheckSeverity,
    DagsterError,
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    Definitions,
    EventRecordsFilter,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from k2_lakehouse.core import alerting
from k2_lakehouse.core.alerting import AlertDeliveryError

RUN_FAILURE_SENSOR = "run_failure_alert_sensor"
CHECK_FAILURE_SENSOR = "check_failure_alert_sensor"
ALERT_INTERVAL_S = 15
CHECK_EVENTS_PER_TICK = 200


class AlertNotDelivered(DagsterError):
    """A DagsterError on purpose. Dagster's run-failure sensor catches any other exception of its function,
    records a failed tick and still moves its cursor past the run (it assumes side effects must not repeat):
    the alert would be lost. A DagsterError passes through its error boundary, so the whole tick fails, the
    daemon keeps the previous cursor and the next tick posts the same failure again."""


def _webhook() -> str:
    return os.environ.get(alerting.WEBHOOK_VARIABLE, "").strip()


def _dagster_url() -> str:
    return os.environ.get(alerting.DAGSTER_URL_VARIABLE, "").strip() or alerting.DEFAULT_DAGSTER_URL


def _send(url: str, message: dict) -> None:
    alerting.send(url, message, alerting.secrets_from_env(os.environ))


@run_failure_sensor(
    name=RUN_FAILURE_SENSOR,
    description="Posts every failed run of this instance to K2_ALERT_WEBHOOK_URL (job, partition, assets, "
    "error, link), once; a post that fails fails the tick and is retried on the next.",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    # Every run of the instance, not only this code location's: `k2 run` materializes in process, and
    # its runs have no code location to match.
    monitor_all_code_locations=True,
    default_status=DefaultSensorStatus.RUNNING,
)
def run_failure_alert_sensor(context: RunFailureSensorContext):
    run = context.dagster_run
    url = _webhook()
    if not url:
        return SkipReason(f"{alerting.WEBHOOK_VARIABLE} is not set: no alert for the failure of run {run.run_id}")
    record = context.instance.get_run_record_by_id(run.run_id)
    message = alerting.run_failure_message(
        job=run.job_name, run_id=run.run_id, partition=_partition(run.tags), assets=_assets(context),
        error=_error_text(context), dagster_url=_dagster_url(), at=record.end_time if record else None,
    )
    try:
        _send(url, message)
    except AlertDeliveryError as exc:
        raise AlertNotDelivered(f"run_failure alert of run {run.run_id} not delivered: {exc}") from None
    # Not None: Dagster then moves the cursor past this run and ends the tick, one failure per tick. With
    # None it would go on to the next failed run in the same tick, and a post failing there would make the
    # daemon keep the old cursor and post this one a second time.
    return SkipReason(f"posted the run_failure alert of run {run.run_id}")


def _partition(tags) -> str | None:
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return tags.get("dagster/partition") or (f"{start}...{end}" if start and end else None)


def _assets(context: RunFailureSensorContext) -> list[str]:
    """The run's asset selection; for a run of a whole asset job (no selection), the assets it planned."""
    selection = context.dagster_run.asset_selection
    if not selection:
        planned = context.instance.get_records_for_run(
            context.dagster_run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        ).records
        selection = {r.event_log_entry.dagster_event.asset_key for r in planned}
    return sorted({key.to_user_string() for key in selection if key is not None})


def _error_text(context: RunFailureSensorContext) -> str:
    """The run's failure message, then each failed step's error and its causes (messages, no stack)."""
    lines = [context.failure_event.message or "run failed"]
    steps = [f"{e.step_key}: {_messages(e.step_failure_data.error)}" for e in context.get_step_failure_events()]
    run_error = getattr(context.failure_event.event_specific_data, "error", None)
    if not steps and run_error is not None:  # failed outside any step (the run worker, a resource); else the same
        lines.append(_messages(run_error))
    return "\n".join(line for line in [*lines, *steps] if line)


def _messages(error) -> str:
    """An error and its causes, without Dagster's wrapper around user code ("Error occurred while executing op")."""
    while error is not None and error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    found = []
    while error is not None and len(found) < 5:
        found.append(error.message.strip())
        error = error.cause
    return " <- ".join(found)


@sensor(
    name=CHECK_FAILURE_SENSOR,
    description="Posts every ERROR-severity asset check evaluation that did not pass to K2_ALERT_WEBHOOK_URL (asset, check, "
    "partition, severity, numbers, run link), once; the cursor moves only past what was delivered.",
    minimum_interval_seconds=ALERT_INTERVAL_S,
    default_status=DefaultSensorStatus.RUNNING,
)
def check_failure_alert_sensor(context: SensorEvaluationContext):
    instance = context.instance
    if not (context.cursor or "").isdigit():  # first start (or a cursor not ours): from now on, not the whole history
        context.update_cursor(str(_newest_check_event(instance)))
        return SkipReason("started: alerting on check evaluations from now on")
    after = int(context.cursor)
    url = _webhook()
    if not url:
        context.update_cursor(str(max(after, _newest_check_event(instance))))
        return SkipReason(f"{alerting.WEBHOOK_VARIABLE} is not set: check failures are not posted")
    posted = 0
    for record in _check_events(instance, after):
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        # ERROR checks only: a WARN check (the freshness checks) fails on every fresh start ("never materialized")
        # and tells of staleness, which K2NoRecentMaterialization pages for; WARN failures stay in the UI and metrics.
        if not evaluation.passed and evaluation.severity == AssetCheckSeverity.ERROR:
            try:
                _send(url, _check_message(evaluation, record))
            except AlertDeliveryError as exc:
                if not posted:
                    # Nothing gained this tick: fail it (red in the UI); the daemon keeps the cursor before
                    # this event and the next tick tries again.
                    raise
                # Keep what was delivered (a failed tick would drop the cursor and post it twice).
                context.update_cursor(str(after))
                return SkipReason(f"posted {posted} check failure alert(s), then: {exc}; the rest is retried next tick")
            posted += 1
        after = record.storage_id
    context.update_cursor(str(after))
    return SkipReason(f"posted {posted} check failure alert(s)" if posted else "no failed check")


def _check_message(evaluation, record) -> dict:
    return alerting.check_failure_message(
        asset=evaluation.asset_key.to_user_string(), check=evaluation.check_name, partition=evaluation.partition,
        severity=evaluation.severity.value, blocking=evaluation.blocking,
        metadata={k: v.value for k, v in evaluation.metadata.items()}, description=evaluation.description,
        run_id=record.run_id, dagster_url=_dagster_url(), at=record.timestamp,
    )


def _check_events(instance: DagsterInstance, after: int, limit: int = CHECK_EVENTS_PER_TICK):
    with warnings.catch_warnings():
        # Deprecated for 2.0, but the one call that reads check evaluations of every asset after a storage id.
        warnings.simplefilter("ignore", DeprecationWarning)
        return instance.get_event_records(
            EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=after), limit=limit, ascending=True
        )


def _newest_check_event(instance: DagsterInstance) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        newest = instance.get_event_records(EventRecordsFilter(DagsterEventType.ASSET_CHECK_EVALUATION), limit=1)
    return newest[0].storage_id if newest else 0


defs = Definitions(sensors=[run_failure_alert_sensor, check_failure_alert_sensor])
