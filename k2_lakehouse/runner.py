"""`k2 run`: materialize a selection in process, one run per partition, and summarise what happened."""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass

from dagster import AssetSelection, BetaWarning, DagsterInstance, PreviewWarning, materialize

from k2_lakehouse.core import hot_tier, iceberg, offload
from k2_lakehouse.core.contracts import HOT_TABLES
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings
from k2_lakehouse.definitions import defs

# The command line is for operators: Dagster's API-stability notices are for developers.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)


@dataclass(frozen=True)
class RunRow:
    asset: str
    partition: str
    rows_appended: int
    rows_total: int
    watermark: str
    checks: str
    duration_s: float
    success: bool


def pending_partitions(settings: Settings, selection: str) -> list[str]:
    """Days on which the selected bronze tables lag the hot tier."""
    keys = _selected_keys(selection)
    client = hot_tier.connect(settings)
    cat = iceberg.catalog(settings)
    days: set[dt.date] = set()
    for hot in HOT_TABLES.values():
        if tuple(hot.asset_path) in keys:
            days.update(offload.pending_days(iceberg.bronze_table(cat, hot), client, hot))
    return [d.isoformat() for d in sorted(days)]


def run(selection: str, partitions: list[str], instance: DagsterInstance | None = None) -> list[RunRow]:
    instance = instance or DagsterInstance.get()
    assets = list(defs.assets or [])
    rows: list[RunRow] = []
    for partition in partitions:
        result = materialize(
            assets, selection=selection, partition_key=partition, instance=instance,
            resources=defs.resources, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},  # the summary says the rest
        )
        checks: dict[str, list[str]] = {}
        for evaluation in result.get_asset_check_evaluations():
            mark = "ok" if evaluation.passed else "FAILED"
            checks.setdefault(evaluation.asset_key.to_user_string(), []).append(f"{evaluation.check_name}:{mark}")
        for event in result.get_asset_materialization_events():
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            key = event.asset_key.to_user_string()
            rows.append(
                RunRow(
                    asset=key,
                    partition=partition,
                    rows_appended=int(meta.get("rows_appended", 0)),
                    rows_total=int(meta.get("dagster/row_count", 0)),
                    watermark=str(meta.get("watermark", "")),
                    checks=" ".join(checks.get(key, [])),
                    duration_s=float(meta.get("duration_s", 0.0)),
                    success=all(c.endswith(":ok") for c in checks.get(key, [])),
                )
            )
        if not result.success:
            failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
            rows.extend(RunRow(step, partition, 0, 0, "", "step failed", 0.0, False) for step in sorted(failed))
    return rows


def format_rows(rows: list[RunRow]) -> str:
    header = ("asset", "partition", "appended", "rows", "checks", "seconds", "watermark")
    body = [
        (r.asset, r.partition, f"{r.rows_appended:,}", f"{r.rows_total:,}", r.checks, f"{r.duration_s:.2f}", r.watermark)
        for r in rows
    ]
    return format_table(header, body)


def _selected_keys(selection: str) -> set[tuple[str, ...]]:
    graph = defs.resolve_asset_graph()
    return {tuple(k.path) for k in AssetSelection.from_string(selection).resolve(graph)}

