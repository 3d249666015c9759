"""What the Dagster instance (its PostgreSQL storage) says about the assets, checks and runs: read fresh on
every call, for the metrics exporter, the soak report and the alert sensors. Nothing here counts by itself,
so nothing resets when a process restarts."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dagster import AssetCheckKey, AssetKey, AssetRecordsFilter, DagsterInstance, DagsterRunStatus, RunsFilter

from k2_lakehouse.defs.automation import IN_FLIGHT

FINISHED = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
RECENT_RUNS = 500  # the newest runs read per scrape: the last hour of a busy live system, with room


def asset_label(key: AssetKey) -> str:
    return key.to_user_string()


@dataclass(frozen=True)
class AssetState:
    asset: str
    materialized_at: float | None  # the last successful materialization, any partition (epoch seconds)
    partition: str | None
    rows: int | None  # rows written by it (appended to bronze, or the day's rows in silver/gold)
    bytes: int | None
    rows_per_s: float | None
    attempts: int | None  # Iceberg commit (bronze) or publish (silver, gold) attempts: > 1 means a conflict
    recent_materializations: int = 0  # in `window_s`
    recent_rows: int = 0
    recent_conflicts: int = 0  # commit attempts beyond the first, summed over `window_s`


def _number(metadata: dict, *names: str) -> float | None:
    for name in names:
        value = metadata.get(name)
        raw = getattr(value, "value", value)
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return raw
    return None


def asset_states(instance: DagsterInstance, keys: Iterable[AssetKey], *, window_s: float = 3600.0, now: float | None = None) -> list[AssetState]:
    now = time.time() if now is None else now
    states = []
    for key in keys:
        recent = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, after_timestamp=now - window_s), limit=10_000).records
        latest = recent[:1] or instance.fetch_materializations(key, limit=1).records
        if not latest:
            states.append(AssetState(asset_label(key), None, None, None, None, None, None))
            continue
        record = latest[0]
        meta = record.asset_materialization.metadata if record.asset_materialization else {}
        conflicts = rows = 0
        for r in recent:
            m = r.asset_materialization.metadata if r.asset_materialization else {}
            rows += int(_number(m, "rows_appended", "rows") or 0)
            conflicts += max(0, int(_number(m, "commit_attempts", "publish_attempts") or 1) - 1)
        attempts = _number(meta, "commit_attempts", "publish_attempts")
        states.append(AssetState(
            asset=asset_label(key), materialized_at=record.timestamp, partition=record.partition_key,
            rows=_int_or_none(_number(meta, "rows_appended", "rows")), bytes=_int_or_none(_number(meta, "bytes_written")),
            rows_per_s=_number(meta, "rows_per_s"), attempts=_int_or_none(attempts),
            recent_materializations=len(recent), recent_rows=rows, recent_conflicts=conflicts,
        ))
    return states


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class CheckState:
    asset: str
    check: str
    status: str  # SUCCEEDED, FAILED (evaluated and did not pass, or the step failed), PLANNED (in flight)
    passed: bool | None  # the evaluation's verdict; None while planned or when the step died before evaluating
    blocking: bool
    partition: str | None
    run_id: str
    at: float


def check_states(instance: DagsterInstance, keys: Sequence[AssetCheckKey], blocking: frozenset[AssetCheckKey] = frozenset()) -> list[CheckState]:
    """The latest execution of every check (any partition)."""
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    states = []
    for key, record in sorted(latest.items(), key=lambda kv: (asset_label(kv[0].asset_key), kv[0].name)):
        evaluation = record.event.dagster_event.event_specific_data if record.event and record.event.dagster_event else None
        passed = getattr(evaluation, "passed", None)
        states.append(CheckState(
            asset=asset_label(key.asset_key), check=key.name, status=record.status.value, passed=passed,
            blocking=key in blocking, partition=record.partition, run_id=record.run_id, at=record.create_timestamp,
        ))
    return states


@dataclass
class JobRuns:
    job: str
    by_status: dict[str, int] = field(default_factory=dict)  # runs updated within the window, by status
    last_status: str | None = None  # of the newest finished run
    last_duration_s: float | None = None
    last_success_at: float | None = None
    consecutive_failures: int = 0  # newest finished runs that failed, in a row
    in_flight: int = 0


def job_runs(instance: DagsterInstance, *, window_s: float = 3600.0, now: float | None = None) -> list[JobRuns]:
    """Per job, over the newest runs: outcomes in the window, the newest finished run, failures in a row."""
    now = time.time() if now is None else now
    jobs: dict[str, JobRuns] = {}
    for record in instance.get_run_records(limit=RECENT_RUNS):  # newest first
        run = record.dagster_run
        job = jobs.setdefault(run.job_name, JobRuns(run.job_name))
        if run.status in IN_FLIGHT:
            job.in_flight += 1
        if record.update_timestamp.timestamp() >= now - window_s:
            job.by_status[run.status.value] = job.by_status.get(run.status.value, 0) + 1
        if run.status not in FINISHED:
            continue
        if job.last_status is None:
            job.last_status = run.status.value
            if record.start_time and record.end_time:
                job.last_duration_s = record.end_time - record.start_time
        if run.status == DagsterRunStatus.SUCCESS and job.last_success_at is None:
            job.last_success_at = record.end_time
        if job.last_success_at is None and run.status == DagsterRunStatus.FAILURE and job.last_status == "FAILURE":
            job.consecutive_failures += 1
    for job in jobs.values():  # a job whose newest run is older than the window still has its last success
        if job.last_success_at is None:
            ok = instance.get_run_records(RunsFilter(job_name=job.job, statuses=[DagsterRunStatus.SUCCESS]), limit=1)
            job.last_success_at = ok[0].end_time if ok else None
    return sorted(jobs.values(), key=lambda j: j.job)


def runs_between(instance: DagsterInstance, start: float, end: float | None = None) -> list:
    """Every run created in [start, end), oldest first (the soak's window)."""
    import datetime as dt

    records = instance.get_run_records(RunsFilter(created_after=dt.datetime.fromtimestamp(start, dt.timezone.utc)), ascending=True)
    return [r for r in records if end is None or r.create_timestamp.timestamp() < end]


def maintenance_at(instance: DagsterInstance, keys: Iterable[AssetKey]) -> dict[str, float]:
    """The last maintenance observation of each table's asset (recorded by the table_maintenance job)."""
    out = {}
    for key in keys:
        records = instance.fetch_observations(key, limit=20).records
        for record in records:
            meta = record.asset_observation.metadata if record.asset_observation else {}
            if any(name.startswith("maintenance/") for name in meta):
                out[asset_label(key)] = record.timestamp
                break
    return out
