"""Schema drift: a hot table's columns against its bronze contract and the bronze Iceberg table (issue 8).

At the start of each offload the hot table's columns are read from ClickHouse (`hot_tier.table_columns`)
and compared with the contract (`HotTable`) and the bronze table's current Iceberg schema:

- a contract column the hot table lacks (removed; a rename shows as removed + added) or holds with another
  type (retyped), or a column bronze gained earlier that the hot table lost or retyped: `SchemaDrift`,
  before any file is written. Nothing is committed; the watermark stays where it was.
- a column the contract lacks (added): copied too, as an optional bronze column, so bronze stays an exact
  copy. The Iceberg schema and its name mapping evolve in the same transaction as the data and the
  watermark (`evolve`, called by the offload's commit), so a run either adds the column and its rows or
  nothing; rows offloaded before read as null. Racing writers stay safe: the loser of the commit reloads
  and evolves against the winner's schema, which then already holds the column.

Types are compared as ClickHouse spells them for contract columns (the contract's ClickHouse binding), and
as Iceberg types for added ones (bronze holds them in the types `arrow_type` maps them to).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.table import Transaction
from pyiceberg.types import IcebergType

from k2_lakehouse.core.contracts import MICROS_UTC, Column, HotTable, validate_identifier
from k2_lakehouse.core.errors import ConfigError, SchemaDrift

ClickHouseColumn = tuple[str, str]  # (name, type as ClickHouse spells it, e.g. "Nullable(Decimal(18, 8))")

# Added columns bronze can hold, and the exact Arrow (so Iceberg) type each is copied as. Unsigned integers
# widen to the next signed type that holds every value (Iceberg has no unsigned types); a UInt8 flag is copied
# as its integer, not as a boolean, so a value above 1 stays what it was. UInt64 becomes long like the
# contract's ids: a value above 2^63 - 1 fails the copy, loudly. DateTime is an instant: microseconds, UTC.
_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "UInt8": pa.int32(), "UInt16": pa.int32(), "Int8": pa.int32(), "Int16": pa.int32(), "Int32": pa.int32(),
    "UInt32": pa.int64(), "Int64": pa.int64(), "UInt64": pa.int64(),
    "Float32": pa.float32(), "Float64": pa.float64(),
    "Date": pa.date32(),
}
_WRAPPER = re.compile(r"^(Nullable|LowCardinality)\((.*)\)$")
_DECIMAL = re.compile(r"^Decimal\((\d+),(\d+)\)$")
_AS_STRING = re.compile(r"^(FixedString\(\d+\)|Enum(8|16)\(.*\))$")  # the driver decodes both to text
_DATETIME = re.compile(r"^DateTime(\('[^']*'\))?$")
SUPPORTED = ("String, FixedString(N), Enum8/Enum16 (as text), (U)Int8/16/32/64, Float32, Float64, Decimal(P, S) "
             "with P <= 38, Date, DateTime, each optionally Nullable(...) or LowCardinality(...)")


def normalize(clickhouse_type: str) -> str:
    """One spelling per type: ClickHouse versions differ in spaces (`Decimal(18, 8)`, `Decimal(18,8)`)."""
    return re.sub(r"\s+", "", clickhouse_type)


def arrow_type(clickhouse_type: str) -> pa.DataType | None:
    """The Arrow type an added column of this ClickHouse type is copied as; None if bronze cannot hold it."""
    t = normalize(clickhouse_type)
    while m := _WRAPPER.match(t):
        t = m.group(2)
    if t in _TYPES:
        return _TYPES[t]
    if m := _DECIMAL.match(t):
        precision, scale = int(m.group(1)), int(m.group(2))
        return pa.decimal128(precision, scale) if 0 < precision <= 38 and scale <= precision else None
    if _DATETIME.match(t):
        return MICROS_UTC
    if _AS_STRING.match(t):
        return pa.string()
    return None


def iceberg_type(arrow: pa.DataType) -> IcebergType:
    """The Iceberg type pyiceberg stores for an Arrow type (as the contracts derive theirs)."""
    from pyiceberg.io.pyarrow import pyarrow_to_schema
    from pyiceberg.table.name_mapping import MappedField, NameMapping

    mapping = NameMapping([MappedField(field_id=1, names=["c"])])
    return pyarrow_to_schema(pa.schema([pa.field("c", arrow)]), name_mapping=mapping).find_field("c").field_type


def hot_shape(hot: HotTable, found: Sequence[ClickHouseColumn], bronze: Schema, database: str = "") -> HotTable:
    """`hot` with the columns the hot table gained (`extra_columns`), to copy them too; SchemaDrift if the
    hot table (`found`: its columns, in table order) or the bronze schema lost or retyped a column.

    Every drifted column is reported at once, with what was expected and what was found."""
    by_name = {name: clickhouse_type for name, clickhouse_type in found}
    contract = hot.bronze
    drifts: list[tuple[str, str, str]] = []
    for column in contract.columns:
        expected = hot.clickhouse_type(column)
        if column.name not in by_name:
            drifts.append((column.name, expected, "no such column (removed, or renamed: a rename shows as a removed "
                                                  "column and an added one)"))
        elif normalize(by_name[column.name]) != normalize(expected):
            drifts.append((column.name, expected, f"{by_name[column.name]} (retyped)"))
    contract_types = {f.name: f.field_type for f in contract.iceberg_schema.fields}
    for field in bronze.fields:  # the bronze table itself, as the contract made it and earlier runs evolved it
        if field.name in contract_types and field.field_type != contract_types[field.name]:
            drifts.append((field.name, f"{contract_types[field.name]} in {contract.qualified_name}",
                           f"{field.field_type} in {contract.qualified_name} (retyped outside K2)"))
        elif field.name not in contract_types and field.name not in by_name:
            drifts.append((field.name, f"a column, as {contract.qualified_name} holds it ({field.field_type})",
                           "no such column (removed, or renamed, after bronze had copied it)"))
    for name, iceberg in contract_types.items():
        if _find(bronze, name) is None:
            drifts.append((name, f"{iceberg} in {contract.qualified_name}", f"no such column in {contract.qualified_name}"))
    extra: list[Column] = []
    for name, clickhouse_type in found:
        if name in contract_types:
            continue
        arrow = arrow_type(clickhouse_type)
        if arrow is None:
            drifts.append((name, f"an added column of a type bronze can hold: {SUPPORTED}", f"{clickhouse_type} (unsupported)"))
            continue
        try:
            validate_identifier(name)
        except ConfigError:
            drifts.append((name, "an added column named as a plain identifier ([A-Za-z_][A-Za-z0-9_]*)", repr(name)))
            continue
        stored = _find(bronze, name)
        if stored is not None and stored.field_type != iceberg_type(arrow):
            drifts.append((name, f"{stored.field_type} (as {contract.qualified_name} holds it since it was added)",
                           f"{clickhouse_type} (retyped)"))
            continue
        extra.append(Column(name, arrow, f"added to the hot table as {clickhouse_type}; rows offloaded before "
                                         "it was added read as null", nullable=True))
    if drifts:
        table = f"{database}.{hot.name}" if database else hot.name
        raise SchemaDrift(table, drifts, _message(table, hot, drifts))
    return dataclasses.replace(hot, extra_columns=tuple(extra))


def evolve(tx: Transaction, hot: HotTable) -> tuple[str, ...]:
    """Add the hot table's extra columns that the transaction's schema lacks, as optional columns, to the
    schema and to the name mapping (bronze's files carry no field ids: columns resolve by name). Returns the
    names added; () when a racing writer (or an earlier run) already added them all."""
    schema = tx.table_metadata.schema()
    missing = [c for c in hot.extra_columns if _find(schema, c.name) is None]
    for column in hot.extra_columns:
        stored = _find(schema, column.name)
        if stored is not None and stored.field_type != iceberg_type(column.type):  # a racing writer saw another type
            table = hot.name
            drifts = [(column.name, f"{iceberg_type(column.type)}", f"{stored.field_type} (added meanwhile by another writer)")]
            raise SchemaDrift(table, drifts, _message(table, hot, drifts))
    if not missing:
        return ()
    if tx.table_metadata.name_mapping() is None:  # pyiceberg updates the mapping with the schema only if there is one
        raise RuntimeError(f"{'.'.join(hot.bronze_identifier)} has no schema.name-mapping.default; see iceberg.ensure_table")
    with tx.update_schema() as update:  # pyiceberg adds the new field ids to schema.name-mapping.default too
        for column in missing:
            update.add_column(column.name, iceberg_type(column.type), doc=column.doc, required=False)
    return tuple(c.name for c in missing)


def _find(schema: Schema, name: str):
    try:
        return schema.find_field(name, case_sensitive=True)
    except ValueError:
        return None


def _message(table: str, hot: HotTable, drifts: list[tuple[str, str, str]]) -> str:
    lines = "\n".join(f"  - column {name}: expected {expected}, found {found}" for name, expected, found in drifts)
    return (
        f"schema drift: hot table {table} no longer matches {hot.bronze.qualified_name} (its contract, "
        f"k2_lakehouse/core/contracts.py); the offload stopped before writing any file, nothing was committed and "
        f"the watermark is unchanged:\n{lines}\n"
        "Restore the column (or its type) in ClickHouse, or change the contract and migrate the bronze table deliberately. "
        "Columns added to the hot table are copied by themselves; removed, renamed and retyped ones never are."
    )
