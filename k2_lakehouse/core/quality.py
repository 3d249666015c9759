"""Contract validation: one day partition of any table against its contract.

Types, nullability and value rules are checked by the contract's Pandera schema over Arrow-backed
frames, batch by batch (memory stays one batch); the unique key is checked over the whole partition
by DuckDB, which spills to disk rather than hold the day in memory.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import pandera.errors
from pyiceberg.io import FileIO
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import TableContract, validate_identifier
from k2_lakehouse.core.engine import DuckDBEngine

VALIDATE_ROWS = 500_000  # rows per frame: bounds memory whatever the partition's size
UNIQUE_MEMORY_LIMIT = "384MB"  # the uniqueness count runs beside the layer's own engine: a small share


@dataclass(frozen=True)
class ContractResult:
    rows_checked: int
    failure_cases: int  # Pandera's failure cases, over every batch
    duplicate_keys: int  # rows beyond the first for each value of the unique key, over the whole partition
    examples: list[str] = field(default_factory=list)  # a few failure cases, for the UI

    @property
    def passed(self) -> bool:
        return self.failure_cases == 0 and self.duplicate_keys == 0


def validate_partition(
    table: Table, contract: TableContract, day: dt.date, *, snapshot_id: int | None = None, max_examples: int = 5
) -> ContractResult:
    return validate_files(table, contract, day, iceberg.partition_files(table, contract, day, snapshot_id), max_examples=max_examples)


def validate_files(
    table: Table, contract: TableContract, day: dt.date, paths: list[str], *, max_examples: int = 5
) -> ContractResult:
    """The contract over some data files of one day partition: all of them, or the ones a run just added
    (the unique key is then checked among those files only; the caller proves them disjoint from the rest)."""
    stored = table.schema().fields
    names = [f.name for f in stored]
    # The contract's columns come first; a bronze table may hold more after them: optional columns its hot
    # table gained (schema drift, core/drift.py), which the contract does not govern.
    if names[:len(contract.columns)] != contract.column_names or any(f.required for f in stored[len(contract.columns):]):
        return ContractResult(0, 1, 0, [f"columns {names} differ from the contract {contract.column_names}"])
    examples: list[str] = []
    # DuckDB counts the key's duplicates on its own threads while Pandera goes through the batches.
    with ThreadPoolExecutor(1, thread_name_prefix="k2-unique") as pool:
        duplicates = pool.submit(duplicate_keys, paths, contract, table.io)
        rows, failures = _validate_batches(table, contract, day, paths, examples, max_examples)
        duplicates = duplicates.result()
    if duplicates:
        examples.append(f"{duplicates} rows repeat a key {contract.unique} already present in the partition")
    return ContractResult(rows, failures, duplicates, examples)


def _validate_batches(
    table: Table, contract: TableContract, day: dt.date, paths: list[str], examples: list[str], max_examples: int
) -> tuple[int, int]:
    schema = contract.pandera_schema(day)
    rows = failures = 0
    for batch in iceberg.read_files(table, paths, contract.column_names, rows=VALIDATE_ROWS):
        try:  # writers differ in physical Arrow types (pyiceberg writes large_string): compare logical types
            batch = batch.cast(contract.arrow_schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            failures += 1
            examples.append(f"a file of the partition cannot be read as the contract's types: {exc}")
            continue
        frame = batch.to_pandas(types_mapper=pd.ArrowDtype)
        rows += len(frame)
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            failures += len(cases)
            for case in cases.head(max_examples - len(examples)).itertuples():
                examples.append(f"{case.column}: {case.check} failed for {case.failure_case!r}")
    return rows, failures


def duplicate_keys(paths: list[str], contract: TableContract, io: FileIO) -> int:
    """Rows that repeat a value of the contract's unique key, over every file of a partition."""
    if not paths:
        return 0
    key = ", ".join(validate_identifier(c) for c in contract.unique)
    with DuckDBEngine(memory_limit=UNIQUE_MEMORY_LIMIT) as engine:
        engine.register_files("partition_rows", paths, contract.arrow_schema, io)
        (extra,), = engine.con.execute(  # grouping is cheaper than DISTINCT over several columns
            f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM partition_rows GROUP BY {key} HAVING count(*) > 1)"
        ).fetchall()
    return int(extra)
