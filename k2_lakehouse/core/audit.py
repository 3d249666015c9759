"""Checks with numbers, and the write-audit-publish of a layer step's tables.

Every check reports what it expected, what it found and the difference, not just pass/fail. A layer
step (silver or gold, one day) writes each of its tables, stages them on audit branches, runs its checks
against the branches and publishes every table only if every check passed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg, publish, quality
from k2_lakehouse.core.contracts import TableContract
from k2_lakehouse.core.engine import Engine

Scalar = int | float | str | bool

CONTRACT_CHECK = "pandera_contract"


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    expected: Scalar
    actual: Scalar
    details: dict[str, Scalar] = field(default_factory=dict)
    description: str = ""

    @property
    def difference(self) -> Scalar:
        if isinstance(self.expected, int) and isinstance(self.actual, int):
            return self.actual - self.expected
        return "" if self.passed else "differs"

    def summary(self) -> str:
        return f"{self.name}: expected={self.expected} actual={self.actual} difference={self.difference}"


def scalars(row: dict) -> dict[str, Scalar]:
    """A check query's row as metadata values: SQL sums come back as (huge) integers or decimals."""
    return {k: int(v) if isinstance(v, int | decimal.Decimal) and v == int(v) else v if isinstance(v, Scalar) else str(v)
            for k, v in row.items()}


def contract_outcome(result: quality.ContractResult, contract: TableContract) -> CheckOutcome:
    return CheckOutcome(
        CONTRACT_CHECK, result.passed, expected=0, actual=result.failure_cases + result.duplicate_keys,
        details={
            "rows_checked": result.rows_checked,
            "failure_cases": result.failure_cases,
            f"duplicate_keys {tuple(contract.unique)}": result.duplicate_keys,
            "examples": "\n".join(f"- {e}" for e in result.examples) or "none",
        },
        description=f"Pandera contract of {contract.qualified_name}; key {tuple(contract.unique)} unique over the day",
    )


@dataclass(frozen=True)
class TableResult:
    """What one layer step did to one table's day partition."""

    contract: TableContract
    day: dt.date
    rows: int
    files: int
    bytes_written: int
    published: bool
    snapshot_id: int | None  # main after the step (unchanged when the audit failed)
    upstream: dict[str, int | None]  # upstream table -> the snapshot id this partition was computed from
    data_version: str  # identifies the inputs: the same inputs give the same rows
    checks: list[CheckOutcome]
    duration_s: float
    publish_attempts: int
    engine: str = "duckdb"  # which engine computed and audited the rows

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def bytes_per_row(self) -> float:
        return self.bytes_written / self.rows if self.rows else 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class Output:
    """One table's day as a layer step produces it: a SQL text the engine runs and writes (nothing is
    computed until written), or rows already computed (small: gold's bars)."""

    table: Table
    contract: TableContract
    rows: str | pa.Table

    def write(self, engine: Engine, day: dt.date) -> iceberg.WrittenFiles:
        if isinstance(self.rows, str):
            return engine.write(self.table, self.contract, day, self.rows)
        return publish.write_files(self.table, self.contract, day, self.rows.to_batches())


# A layer's own checks over the partitions it wrote (by table name), with the engine holding its inputs.
LayerAudit = Callable[[dict[str, iceberg.PartitionRef], Engine], dict[str, list[CheckOutcome]]]


def audit(refs: dict[str, iceberg.PartitionRef], engine: Engine, layer_audit: LayerAudit) -> dict[str, list[CheckOutcome]]:
    """Every check of a layer's tables: each table's contract, then the layer's own checks."""
    checks = layer_audit(refs, engine)
    return {
        name: [contract_outcome(quality.validate_partition(r.table, r.contract, r.day, snapshot_id=r.snapshot_id), r.contract),
               *checks.get(name, [])]
        for name, r in refs.items()
    }


def write_audit_publish(
    outputs: list[Output], day: dt.date, engine: Engine, layer_audit: LayerAudit, *,
    upstream: dict[str, int | None], data_version: str, run_id: str, started: float,
    written_all: Callable[[], None] = lambda: None,
) -> dict[str, TableResult]:
    """Write and stage every output, audit them all, publish them all only if every check passed.

    Until the publish, whatever fails takes every file and branch the step made with it.
    """
    summary = lineage_summary(run_id, day, upstream, data_version)
    written: list[tuple[Output, iceberg.WrittenFiles]] = []
    staged: dict[str, publish.Staged] = {}
    try:
        for out in outputs:
            written.append((out, out.write(engine, day)))
        written_all()  # the step can free what only the writing needed before the audit reads
        for out, files in written:
            staged[out.contract.qualified_name] = publish.stage(out.table, out.contract, day, files, summary)
        checks = audit({name: s.ref for name, s in staged.items()}, engine, layer_audit)
    except BaseException:
        for out, files in written:  # a staged table's files go with its branch, the others alone
            stage = staged.get(out.contract.qualified_name)
            publish.discard(stage) if stage else files.delete(out.table)
        raise
    passed = all(c.passed for outcomes in checks.values() for c in outcomes)
    results = {}
    for name, s in staged.items():
        if passed:
            snapshot, attempts = publish.publish(s)
        else:
            publish.discard(s)
            snapshot, attempts = iceberg.snapshot_id(s.table.refresh()), 0
        results[name] = TableResult(
            s.contract, day, s.written.rows, len(s.written.paths), s.written.bytes, passed, snapshot,
            upstream, data_version, checks[name], time.perf_counter() - started, attempts, engine.name,
        )
    return results


def failed_checks(results: dict[str, TableResult]) -> list[str]:
    return [f"{r.contract.qualified_name} {r.day} {c.summary()}" for r in results.values() for c in r.checks if not c.passed]


def audit_view(engine: Engine, name: str, ref: iceberg.PartitionRef) -> None:
    """Bind the rows of a partition as written (read back from storage, at its snapshot) as a view."""
    engine.register_files(name, ref.files(), ref.contract.arrow_schema, ref.table.io)


def data_version(inputs: dict[str, str]) -> str:
    """A version that depends only on the inputs: the transforms are deterministic."""
    text = "\n".join(f"{k}={v}" for k, v in sorted(inputs.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def lineage_summary(run_id: str, day: dt.date, upstream: dict[str, int | None], version: str) -> dict[str, str]:
    """What a silver or gold commit records in its snapshot summary (see `iceberg.partition_summary`)."""
    return {
        "k2.dagster-run-id": run_id,
        "k2.partition": day.isoformat(),
        "k2.data-version": version,
        **{f"k2.upstream.{name}": str(sid) for name, sid in upstream.items()},
    }


CURRENT_CHECK = "built_from_current_upstream"


def current_outcome(expected: str, actual: str) -> CheckOutcome:
    """A verification-time check: the partition's recorded data version is the one its upstream gives now."""
    return CheckOutcome(
        CURRENT_CHECK, expected == actual, expected=expected, actual=actual,
        description="the day was built from the rows its upstream holds now (else: stale, run it again)",
    )
