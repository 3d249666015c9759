"""`k2 run`: materialize a selection in process, one run per partition, and summarise what happened."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from dagster import AssetKey, AssetSelection, BetaWarning, DagsterInstance, PreviewWarning, materialize

from k2_lakehouse.core import sensing
from k2_lakehouse.core.contracts import GOLD_TABLES, HOT_TABLES, SILVER_TRADES
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
    rows_appended: int  # bronze: rows added; silver and gold: rows of the day written (the day is replaced)
    rows_total: int
    bytes_written: int
    watermark: str
    checks: str
    duration_s: float
    success: bool


ALL = "*"  # every asset: bronze, silver and gold, in dependency order


def pending_partitions(settings: Settings, selection: str) -> list[str]:
    """Days on which a selected table is behind: bronze lags the hot tier, or silver or gold were not
    built from the rows their upstream holds now (or never built)."""
    keys = _selected_keys(selection)
    days = sensing.pending_days(
        settings,
        bronze={hot.name for hot in HOT_TABLES.values() if tuple(hot.asset_path) in keys},
        silver_wanted=tuple(SILVER_TRADES.asset_path) in keys,
        gold_wanted=any(tuple(c.asset_path) in keys for c in GOLD_TABLES.values()),
    )
    return [d.isoformat() for d in days]


def run(selection: str, partitions: list[str], instance: DagsterInstance | None = None) -> list[RunRow]:
    instance = instance or DagsterInstance.get()
    assets = list(defs.assets or [])
    rows: list[RunRow] = []
    for partition in partitions:
        result = materialize(
            assets, selection=whole_steps(selection), partition_key=partition, instance=instance,
            resources=defs.resources, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},  # the summary says the rest
        )
        checks: dict[str, list[str]] = {}
        for evaluation in result.get_asset_check_evaluations():
            mark = "ok" if evaluation.passed else "FAILED"
            checks.setdefault(evaluation.asset_key.to_user_string(), []).append(f"{evaluation.check_name}:{mark}")
        materialized = set()
        for event in result.get_asset_materialization_events():
            meta = {k: v.value for k, v in event.materialization.metadata.items()}
            key = event.asset_key.to_user_string()
            materialized.add(key)
            rows.append(
                RunRow(
                    asset=key,
                    partition=partition,
                    rows_appended=int(meta.get("rows_appended", meta.get("rows", 0))),
                    rows_total=int(meta.get("dagster/row_count", 0)),
                    bytes_written=int(meta.get("bytes_written", 0)),
                    watermark=str(meta.get("watermark", "")),
                    checks=" ".join(checks.get(key, [])),
                    duration_s=float(meta.get("duration_s", 0.0)),
                    success=all(c.endswith(":ok") for c in checks.get(key, [])),
                )
            )
        for key in sorted(set(checks) - materialized):  # a failed audit: checks ran, nothing was published
            rows.append(RunRow(key, partition, 0, 0, 0, "", " ".join(checks[key]) + " (not published)", 0.0, False))
        if not result.success:
            failed = {e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"}
            rows.extend(RunRow(step, partition, 0, 0, 0, "", "step failed", 0.0, False) for step in sorted(failed))
    return rows


def format_rows(rows: list[RunRow]) -> str:
    header = ("asset", "partition", "written", "rows", "bytes", "checks", "seconds", "watermark")
    body = [
        (r.asset, r.partition, f"{r.rows_appended:,}", f"{r.rows_total:,}", f"{r.bytes_written:,}", r.checks,
         f"{r.duration_s:.2f}", r.watermark)
        for r in rows
    ]
    return format_table(header, body)


def whole_steps(selection: str) -> list[AssetKey]:
    """The selected assets plus the other tables of their step: silver's two tables and gold's six are
    each computed, audited and published together, so selecting one of them runs the step."""
    selected = AssetSelection.from_string(selection).resolve(defs.resolve_asset_graph())
    return sorted({key for a in defs.assets or [] for key in a.keys if a.keys & selected}, key=lambda k: k.path)


def _selected_keys(selection: str) -> set[tuple[str, ...]]:
    graph = defs.resolve_asset_graph()
    return {tuple(k.path) for k in AssetSelection.from_string(selection).resolve(graph)}

