"""Contract validation: a bronze partition against its Pandera schema, streamed batch by batch."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pandera.errors
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import HotTable

VALIDATE_ROWS = 200_000  # rows per pandas frame: bounds memory whatever the partition's size


@dataclass(frozen=True)
class ContractResult:
    rows_checked: int
    failure_cases: int
    examples: list[str] = field(default_factory=list)  # a few failure cases, for the UI

    @property
    def passed(self) -> bool:
        return self.failure_cases == 0


def validate_bronze(table: Table, hot: HotTable, day: dt.date, *, max_examples: int = 5) -> ContractResult:
    schema = hot.pandera_schema(day)
    rows = failures = 0
    examples: list[str] = []
    stored = [f.name for f in table.schema().fields]
    if stored != hot.column_names:
        return ContractResult(0, 1, [f"columns {stored} differ from the contract {hot.column_names}"])
    for batch in iceberg.partition_batches(table, day, rows=VALIDATE_ROWS):
        frame = batch.to_pandas()
        rows += len(frame)
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            failures += len(cases)
            for case in cases.head(max_examples - len(examples)).itertuples():
                examples.append(f"{case.column}: {case.check} failed for {case.failure_case!r}")
    return ContractResult(rows, failures, examples)

