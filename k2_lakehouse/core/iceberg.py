"""The Iceberg side: the SQL catalog on PostgreSQL, bronze table creation, and the watermark record.

The watermark of a bronze partition lives in the table's own properties, written in the same atomic
commit as the data: the table is its own record of truth.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy.exc
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform

from k2_lakehouse.core.contracts import HotTable
from k2_lakehouse.core.hot_tier import Watermark
from k2_lakehouse.core.settings import CATALOG_NAME, Settings

WATERMARK_PREFIX = "k2.watermark."
# pyiceberg retries a commit that lost the race by re-applying it on the new snapshot: for an append that
# duplicates rows. Bronze turns it off and retries itself, knowing the watermark (DESIGN §5.3).
NO_RETRY = {"commit.retry.num-retries": "0"}
BRONZE_PROPERTIES = {
    **NO_RETRY,
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
}


def catalog(settings: Settings) -> Catalog:
    try:
        return SqlCatalog(CATALOG_NAME, uri=settings.iceberg_catalog_uri, warehouse=settings.warehouse)
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
        # Two processes created the catalog's own tables at once and this one lost: they exist now.
        return SqlCatalog(CATALOG_NAME, uri=settings.iceberg_catalog_uri, warehouse=settings.warehouse)


def bronze_table(cat: Catalog, hot: HotTable) -> Table:
    """Load the bronze table for `hot`, creating it (and its namespace) on first use."""
    namespace, _ = hot.bronze_identifier
    try:
        cat.create_namespace(namespace)
    except (NamespaceAlreadyExistsError, sqlalchemy.exc.IntegrityError):  # the latter: another process won the race
        pass
    schema = hot.iceberg_schema
    try:
        table = cat.create_table(
            hot.bronze_identifier,
            schema=schema,
            partition_spec=hot.partition_spec,
            sort_order=SortOrder(
                *(SortField(source_id=schema.find_field(n).field_id, transform=IdentityTransform()) for n in hot.sort_columns)
            ),
            properties={**BRONZE_PROPERTIES, "schema.name-mapping.default": schema.name_mapping.model_dump_json()},
        )
    except (TableAlreadyExistsError, sqlalchemy.exc.IntegrityError):
        table = cat.load_table(hot.bronze_identifier)
    if table.properties.get("commit.retry.num-retries") != "0":
        with table.transaction() as tx:  # a table made by an older version: make commits fail loudly
            tx.set_properties(NO_RETRY)
        table = cat.load_table(hot.bronze_identifier)
    return table


def watermark_key(day: dt.date) -> str:
    return f"{WATERMARK_PREFIX}{day.isoformat()}"


def read_watermark(table: Table, day: dt.date) -> Watermark:
    raw = table.properties.get(watermark_key(day))
    return decode_watermark(raw) if raw else {}


def encode_watermark(wm: Watermark) -> str:
    return json.dumps({str(p): o for p, o in sorted(wm.items())}, separators=(",", ":"))


def decode_watermark(raw: str) -> Watermark:
    return {int(p): int(o) for p, o in json.loads(raw).items()}


def watermarked_days(table: Table) -> list[dt.date]:
    """Days this bronze table has committed a watermark for."""
    return sorted(dt.date.fromisoformat(k[len(WATERMARK_PREFIX):]) for k in table.properties if k.startswith(WATERMARK_PREFIX))


def partition_batches(table: Table, day: dt.date, columns: list[str] | None = None, *, rows: int = 200_000) -> Iterator[pa.RecordBatch]:
    """The rows of one day partition, one bounded record batch at a time (pyiceberg's readers buffer whole files).

    Bronze is append-only with one day per data file, so the planned files are exactly the partition.
    """
    scan = table.scan(row_filter=EqualTo("trade_date", day.isoformat()))
    for task in scan.plan_files():
        if task.delete_files:
            raise RuntimeError(f"{task.file.file_path} has delete files; bronze tables are append-only")
        with table.io.new_input(task.file.file_path).open() as stream:
            yield from pq.ParquetFile(stream).iter_batches(batch_size=rows, columns=columns)
