"""From core results to what Dagster records: check results with their numbers, materialization metadata,
column schemas and column lineage derived from the table contracts, gold's chart."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Iterator

import pyarrow as pa

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    BetaWarning,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    PreviewWarning,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
)
from dagster_pandera import pandera_schema_to_dagster_type
from pyiceberg.catalog import Catalog

from k2_lakehouse.core import charts, iceberg
from k2_lakehouse.core.audit import CheckOutcome, TableResult, failed_checks
from k2_lakehouse.core.contracts import GOLD_TABLES, ColumnSource, HotTable, TableContract, lineage
from k2_lakehouse.defs.partitions import daily_partitions

# Who answers for every asset (shown in the UI, used by alerting): one team, in one place.
OWNERS = ["team:data-platform"]


def asset_key(contract: TableContract) -> AssetKey:
    return AssetKey(contract.asset_path)


def column_schema(contract: TableContract) -> TableSchema:
    """The table's column schema for the UI, derived from its Pandera contract (types, checks, docs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BetaWarning)  # a stable enough conversion for the UI's column view
        derived = pandera_schema_to_dagster_type(contract.pandera_schema()).metadata["schema"].schema
    iceberg_types = {f.name: str(f.field_type) for f in contract.iceberg_schema.fields}  # not pandas' dtypes
    return TableSchema(
        columns=[
            TableColumn(c.name, iceberg_types[c.name], description=c.description, constraints=c.constraints)
            for c in derived.columns
        ],
        constraints=derived.constraints,
    )


def table_metadata(contract: TableContract) -> dict:
    metadata = {"dagster/column_schema": column_schema(contract), "dagster/table_name": contract.qualified_name}
    if lineage(contract):
        metadata["dagster/column_lineage"] = column_lineage(contract)
    return metadata


def source_key(table: TableContract | HotTable) -> AssetKey:
    return AssetKey(table.hot_asset_path) if isinstance(table, HotTable) else asset_key(table)


def column_lineage(contract: TableContract) -> TableColumnLineage:
    """The contract's declared column lineage (`contracts.lineage`) as Dagster shows it."""
    def deps(sources: tuple[ColumnSource, ...]) -> list[TableColumnDep]:
        return [TableColumnDep(asset_key=source_key(s.table), column_name=s.column) for s in sources]

    return TableColumnLineage(deps_by_column={column: deps(sources) for column, sources in lineage(contract).items()})


def check_spec(contract: TableContract, name: str, description: str) -> AssetCheckSpec:
    # Partitioned like the table: each day has its own check result, and automation gates on that day's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)  # partitioned checks: preview in Dagster 1.13, and what we need
        return AssetCheckSpec(name, asset=asset_key(contract), blocking=True, description=description, partitions_def=daily_partitions)


def check_result(contract: TableContract, outcome: CheckOutcome) -> AssetCheckResult:
    return AssetCheckResult(
        asset_key=asset_key(contract),
        check_name=outcome.name,
        passed=outcome.passed,
        severity=AssetCheckSeverity.ERROR,
        description=outcome.description or None,
        metadata={
            "expected": outcome.expected, "actual": outcome.actual, "difference": outcome.difference,
            **{k: MetadataValue.md(v) if k == "examples" else v for k, v in outcome.details.items()},
        },
    )


def report(results: dict[str, TableResult], catalog: Catalog | None = None) -> Iterator[MaterializeResult | AssetCheckResult]:
    """Materializations when the audit passed and `main` moved; otherwise the failing checks, then a failed step.

    A failed audit left `main` as it was, so nothing was materialized: the step fails with the check's
    numbers, and Dagster skips everything downstream.
    """
    if all(r.published for r in results.values()):
        for r in results.values():
            yield MaterializeResult(
                asset_key=asset_key(r.contract),
                metadata={**materialization_metadata(r), **(gold_chart(catalog, r) if catalog is not None else {})},
                check_results=[check_result(r.contract, c) for c in r.checks],
                data_version=DataVersion(r.data_version),
            )
        return
    for r in results.values():
        yield from (check_result(r.contract, c) for c in r.checks)
    failures = failed_checks(results)
    raise Failure(
        description="Audit failed; main left unchanged: " + "; ".join(failures),
        metadata={"failed_checks": MetadataValue.md("\n".join(f"- {f}" for f in failures))},
        allow_retries=False,
    )


def materialization_metadata(r: TableResult) -> dict:
    return {
        "dagster/row_count": r.rows,
        "rows": r.rows,
        "snapshot_id": MetadataValue.text(str(r.snapshot_id)),
        "upstream_snapshot_ids": MetadataValue.json({k: str(v) for k, v in r.upstream.items()}),
        "files_written": r.files,
        "bytes_written": r.bytes_written,
        "bytes_per_row": round(r.bytes_per_row, 2),
        "rows_per_s": round(r.rows_per_s),
        "duration_s": round(r.duration_s, 3),
        "publish_attempts": r.publish_attempts,
        "engine": r.engine,
    }


_GOLD = {c.qualified_name for c in GOLD_TABLES.values()}
_CHART_COLUMNS = ["exchange", "symbol", "window_start", "open", "close", "quote_volume"]


def gold_chart(catalog: Catalog, r: TableResult) -> dict:
    """A gold table's materialization carries a picture of its own bars of the day, as published.

    Drawn after the publish: a chart that cannot be drawn says why instead of failing a step whose tables
    are already on `main` (Dagster would then not record what Iceberg holds).
    """
    if r.contract.qualified_name not in _GOLD or r.snapshot_id is None:
        return {}
    try:
        table = catalog.load_table(r.contract.identifier)
        schema = r.contract.arrow_schema
        bars = pa.Table.from_batches(
            list(iceberg.partition_batches(table, r.contract, r.day, _CHART_COLUMNS, snapshot_id=r.snapshot_id)),
            schema=pa.schema([schema.field(c) for c in _CHART_COLUMNS]),
        )
        png = charts.bars_chart_png(bars, f"{r.contract.qualified_name} {r.day}: close of the busiest series")
    except Exception as exc:  # noqa: BLE001 - cosmetic: never fail a published step
        return {"bars_chart": MetadataValue.text(f"chart not drawn: {type(exc).__name__}: {exc}")}
    if png is None:
        return {}
    return {"bars_chart": MetadataValue.md(f"![bars of the day](data:image/png;base64,{base64.b64encode(png).decode()})")}
