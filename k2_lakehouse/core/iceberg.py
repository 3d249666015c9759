"""The Iceberg side: the SQL catalog on PostgreSQL, bronze table creation, and the watermark record.

The watermark of a bronze partition lives in the table's own properties, written in the same atomic
commit as the data: the table is its own record of truth.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy.exc
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.manifest import DataFile
from pyiceberg.exceptions import (
    CommitFailedException, NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError,
)
from pyiceberg.expressions import And, BooleanExpression, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.io import (
    PY_IO_IMPL, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_FORCE_VIRTUAL_ADDRESSING, S3_REGION, S3_SECRET_ACCESS_KEY,
)
from pyiceberg.table import Table

from k2_lakehouse.core.contracts import HotTable, TableContract
from k2_lakehouse.core.hot_tier import Watermark
from k2_lakehouse.core.objectstore import aws_checksums_when_required, is_object_store
from k2_lakehouse.core.settings import CATALOG_NAME, Settings

WATERMARK_PREFIX = "k2.watermark."
# pyiceberg retries a commit that lost the race by re-applying it on the new snapshot: for an append that
# duplicates rows, for a publish it could move `main` over another writer's. Every K2 table turns it off
# and retries itself: bronze knowing the watermark (DESIGN §5.3), silver and gold by re-staging.
NO_RETRY = {"commit.retry.num-retries": "0"}
# Every commit rewrites the metadata file with one more entry in its logs (about 1.1 KB each): keep the
# last few metadata files only (snapshot expiry, core/maintenance.py, trims the snapshots themselves).
METADATA_CLEANUP = {
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
}
MANAGED_PROPERTIES = {**NO_RETRY, **METADATA_CLEANUP}  # brought up to date on tables made by older versions
TABLE_PROPERTIES = {
    **MANAGED_PROPERTIES,
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
}
DATA_VERSION_PREFIX = "k2.data-version."


def catalog(settings: Settings) -> Catalog:
    properties = {"uri": settings.iceberg_catalog_uri, "warehouse": settings.warehouse, **s3_properties(settings)}
    try:
        return SqlCatalog(CATALOG_NAME, **properties)
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
        # Two processes created the catalog's own tables at once and this one lost: they exist now.
        return SqlCatalog(CATALOG_NAME, **properties)


def s3_properties(settings: Settings) -> dict[str, str]:
    """pyiceberg's FileIO properties for an s3:// warehouse ({} for a local one); every table's `io` inherits them.

    The file IO is pyarrow's S3FileSystem (C++; the fastest pyiceberg has), with path-style addressing, as
    S3-compatible servers (MinIO, the JuiceFS gateway) expect. An engine other than pyiceberg (Spark) maps
    these to its own names. They hold the secret key: never log them.
    """
    if not is_object_store(settings.warehouse):
        return {}
    aws_checksums_when_required()  # before pyiceberg creates its S3 client (at a table's first file)
    properties = {
        PY_IO_IMPL: "pyiceberg.io.pyarrow.PyArrowFileIO",
        S3_REGION: settings.s3_region,
        S3_FORCE_VIRTUAL_ADDRESSING: "false",  # path-style: http://endpoint/bucket/key
    }
    if settings.s3_endpoint:  # unset: AWS itself
        properties[S3_ENDPOINT] = settings.s3_endpoint
    if settings.s3_access_key_id:  # unset: the AWS default chain (profile, instance role)
        properties[S3_ACCESS_KEY_ID] = settings.s3_access_key_id
        properties[S3_SECRET_ACCESS_KEY] = settings.s3_secret_access_key
    return properties


def ensure_table(cat: Catalog, contract: TableContract, *, branches: bool = False) -> Table:
    """Load the Iceberg table of `contract`, creating it (and its namespace) on first use.

    `branches`: the table is written through audit branches (write-audit-publish); a branch needs a parent
    snapshot, so a new table gets an empty first snapshot.
    """
    try:  # load first: a create that finds the table has already written a metadata file nobody references
        table = cat.load_table(contract.identifier)
    except NoSuchTableError:
        table = _create_table(cat, contract)
    if any(table.properties.get(k) != v for k, v in MANAGED_PROPERTIES.items()):
        with table.transaction() as tx:  # a table made by an older version: commits fail loudly, old metadata goes
            tx.set_properties(MANAGED_PROPERTIES)
        table = cat.load_table(contract.identifier)
    if branches and table.current_snapshot() is None:
        try:
            table.append(contract.arrow_schema.empty_table(), snapshot_properties={"k2.operation": "create"})
        except CommitFailedException:  # another process made the first snapshot
            pass
        table = cat.load_table(contract.identifier)
    return table


def _create_table(cat: Catalog, contract: TableContract) -> Table:
    try:
        cat.create_namespace(contract.namespace)
    except (NamespaceAlreadyExistsError, sqlalchemy.exc.IntegrityError):  # the latter: another process won the race
        pass
    schema = contract.iceberg_schema
    try:
        return cat.create_table(
            contract.identifier,
            schema=schema,
            partition_spec=contract.partition_spec,
            sort_order=contract.sort_order,
            properties={
                **TABLE_PROPERTIES, **contract.properties,
                # Parquet files written by the engines carry no field ids: columns are matched by name.
                "schema.name-mapping.default": schema.name_mapping.model_dump_json(),
            },
        )
    except (TableAlreadyExistsError, sqlalchemy.exc.IntegrityError):  # another process created it first
        return cat.load_table(contract.identifier)


def bronze_table(cat: Catalog, hot: HotTable) -> Table:
    return ensure_table(cat, hot.bronze)


def watermark_key(day: dt.date) -> str:
    return f"{WATERMARK_PREFIX}{day.isoformat()}"


def read_watermark(table: Table, day: dt.date) -> Watermark:
    raw = table.properties.get(watermark_key(day))
    return decode_watermark(raw) if raw else {}


def encode_watermark(wm: Watermark) -> str:
    return json.dumps({str(p): o for p, o in sorted(wm.items())}, separators=(",", ":"))


def decode_watermark(raw: str) -> Watermark:
    return {int(p): int(o) for p, o in json.loads(raw).items()}


RETIRED_PREFIX = "k2.retired."


@dataclass(frozen=True)
class Retired:
    """What hot-tier retention removed from ClickHouse for one bronze day (DESIGN §5.6, core/retention.py):
    the feed positions at or below `watermark`, `positions` of them, summed into `checksum` as reconcile.py
    sums them. Checks take those positions from here, not from a hot tier that no longer has them."""

    watermark: Watermark
    positions: int
    checksum: int


def retired_key(day: dt.date) -> str:
    return f"{RETIRED_PREFIX}{day.isoformat()}"


def read_retired(table: Table, day: dt.date) -> Retired | None:
    raw = table.properties.get(retired_key(day))
    if not raw:
        return None
    record = json.loads(raw)
    return Retired({int(p): int(o) for p, o in record["watermark"].items()}, int(record["positions"]), int(record["checksum"]))


def encode_retired(record: Retired) -> str:
    return json.dumps(
        {"watermark": {str(p): o for p, o in sorted(record.watermark.items())}, "positions": record.positions,
         "checksum": record.checksum},
        separators=(",", ":"),
    )


def watermarked_days(table: Table) -> list[dt.date]:
    """Days this bronze table has committed a watermark for."""
    return sorted(dt.date.fromisoformat(k[len(WATERMARK_PREFIX):]) for k in table.properties if k.startswith(WATERMARK_PREFIX))


def day_filter(contract: TableContract, day: dt.date) -> BooleanExpression:
    """The rows of one day partition (the partition transform is day(day_column))."""
    column = contract.column(contract.day_column)
    if pa.types.is_date(column.type):
        return EqualTo(column.name, day.isoformat())
    start, end = contract.day_bounds(day)
    return And(GreaterThanOrEqual(column.name, start.isoformat()), LessThan(column.name, end.isoformat()))


def partition_files(table: Table, contract: TableContract, day: dt.date, snapshot_id: int | None = None) -> list[str]:
    """The data files of one day partition at a snapshot (default: main's current one).

    K2 writes one day per data file and never writes delete files, so the planned files are exactly the partition.
    """
    return [f.file_path for f in _partition_data_files(table, contract, day, snapshot_id)]


def partition_rows(table: Table, contract: TableContract, day: dt.date, snapshot_id: int | None = None) -> int:
    """Rows of one day partition at a snapshot, from the manifests' record counts: no data file is read."""
    return sum(f.record_count for f in _partition_data_files(table, contract, day, snapshot_id))


def _partition_data_files(table: Table, contract: TableContract, day: dt.date, snapshot_id: int | None) -> list[DataFile]:
    files = []
    for task in table.scan(row_filter=day_filter(contract, day), snapshot_id=snapshot_id).plan_files():
        if task.delete_files:
            raise RuntimeError(f"{task.file.file_path} has delete files; K2 tables are written whole-file only")
        files.append(task.file)
    return files


def partition_batches(
    table: Table, contract: TableContract, day: dt.date, columns: list[str] | None = None, *,
    rows: int = 200_000, snapshot_id: int | None = None,
) -> Iterator[pa.RecordBatch]:
    """The rows of one day partition, one bounded record batch at a time (pyiceberg's readers buffer whole files)."""
    return read_files(table, partition_files(table, contract, day, snapshot_id), columns, rows=rows)


def read_files(table: Table, paths: list[str], columns: list[str] | None = None, *, rows: int = 200_000) -> Iterator[pa.RecordBatch]:
    for path in paths:
        with table.io.new_input(path).open() as stream:
            yield from pq.ParquetFile(stream).iter_batches(batch_size=rows, columns=columns)


@dataclass
class WrittenFiles:
    """Data files a run wrote for one commit: until committed, its own to delete."""

    paths: list[str] = field(default_factory=list)
    rows: int = 0
    bytes: int = 0

    def delete(self, table: Table) -> None:
        for path in self.paths:
            table.io.delete(path)


def data_directory(table: Table, day: dt.date) -> str:
    return f"{table.location()}/data/trade_day={day.isoformat()}"


@dataclass(frozen=True)
class PartitionRef:
    """One day partition of a table as of one snapshot: what an audit or a verification reads."""

    table: Table
    contract: TableContract
    day: dt.date
    snapshot_id: int | None

    def files(self) -> list[str]:
        return partition_files(self.table, self.contract, self.day, self.snapshot_id)


def partition_summary(table: Table, day: dt.date, snapshot_id: int | None = None) -> dict[str, str]:
    """The snapshot summary of the last commit that wrote day `day` ({} if none did), on `main` or, given
    `snapshot_id`, in that snapshot's ancestry.

    Every K2 commit records its partition (and bronze its watermark, silver and gold their inputs and data
    version) in the summary; walking the ancestry (metadata already in memory) finds the one that made
    the day what it is.
    """
    snapshot = table.current_snapshot() if snapshot_id is None else table.snapshot_by_id(snapshot_id)
    while snapshot is not None:
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if summary.get("k2.partition") == day.isoformat():
            return dict(summary)
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return {}


def data_version_key(day: dt.date) -> str:
    return f"{DATA_VERSION_PREFIX}{day.isoformat()}"


def day_data_version(table: Table, day: dt.date) -> str | None:
    """The data version `main` holds for day `day` of a silver or gold table: recorded in the table's
    properties by the commit that published it, so it outlives the snapshot (snapshots expire). Tables
    published before that record existed fall back to the snapshot summaries."""
    return table.properties.get(data_version_key(day)) or partition_summary(table, day).get("k2.data-version")


def snapshot_id(table: Table) -> int | None:
    """Main's current snapshot id; None while the table has none."""
    snapshot = table.current_snapshot()
    return snapshot.snapshot_id if snapshot else None
