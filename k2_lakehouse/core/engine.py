"""The single-node engine: DuckDB in process, over the Parquet files of Iceberg partitions.

Transforms and checks are SQL texts (`core/sql/*.sql`, DuckDB's dialect, kept to a subset that sqlglot
transpiles for Spark). An engine binds named inputs (a partition's files, a small Arrow table) as
views, runs a text, and hands back Arrow: whole for small results, as a stream of record batches for
large ones, so memory holds a batch and DuckDB's own (bounded, spilling) operator state.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from typing import Protocol
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from k2_lakehouse.core import publish
from k2_lakehouse.core.contracts import TableContract, validate_identifier
from k2_lakehouse.core.iceberg import WrittenFiles

THREADS = 2  # this machine's cores; DuckDB would take them all anyway
MEMORY_LIMIT = "640MB"  # DuckDB spills sorts and hash tables to disk past this: memory does not grow with the day


@cache
def sql_text(name: str) -> str:
    """The SQL text `core/sql/<name>.sql`."""
    return resources.files("k2_lakehouse.core").joinpath("sql", f"{validate_identifier(name)}.sql").read_text()


def local_path(uri: str) -> str:
    """A warehouse file location as DuckDB reads it (file:// URIs become paths; others pass through)."""
    parts = urlsplit(uri)
    return parts.path if parts.scheme == "file" else uri


def is_local(uri: str) -> bool:
    """A file on this machine's disk (a file:// URI or a bare path), which DuckDB reads itself."""
    return urlsplit(uri).scheme in ("", "file")


def arrow_dataset(paths: list[str], schema: pa.Schema, io: FileIO) -> ds.Dataset:
    """Parquet files of any storage (S3, ...) as one Arrow dataset, read through the table's own file IO's
    filesystem (DuckDB's httpfs extension would have to be downloaded). Nothing is read until scanned.

    `schema` is the view's: files whose physical types differ (large_string, say) are cast to it."""
    if not isinstance(io, PyArrowFileIO):  # iceberg.catalog() always sets it (py-io-impl)
        raise TypeError(f"reading {paths[0]} needs pyiceberg's PyArrowFileIO, got {type(io).__name__}")
    located = [PyArrowFileIO.parse_location(p, io.properties) for p in paths]
    stores = {(scheme, netloc) for scheme, netloc, _ in located}
    if len(stores) > 1:
        raise ValueError(f"the files of one input span several buckets or filesystems: {sorted(stores)}")
    (scheme, netloc), = stores
    filesystem = io.fs_by_scheme(scheme, netloc)  # the table's own S3 client (endpoint, credentials, region)
    return ds.dataset([path for _, _, path in located], schema=schema, format="parquet", filesystem=filesystem)


def day_input(day: dt.date) -> pa.Table:
    """The day being built, as a one-row input `partition_day` (SQL texts stay free of pasted values)."""
    start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    return pa.table({"day": [day], "start_us": [start], "end_us": [start + 86_400_000_000]})


class DuckDBEngine:
    """One DuckDB connection per layer step; a context manager so its temp files go with it."""

    name = "duckdb"

    def __init__(self, *, threads: int = THREADS, memory_limit: str = MEMORY_LIMIT) -> None:
        self._spill = tempfile.TemporaryDirectory(prefix="k2-duckdb-")
        self.con = duckdb.connect(config={
            "threads": threads, "memory_limit": memory_limit, "temp_directory": self._spill.name,
            "preserve_insertion_order": False,  # every text that needs an order says ORDER BY
        })
        # Timestamps with time zone are UTC on every layer (ICU is built in, but only loads after connect).
        self.con.execute("SET TimeZone = 'UTC'")

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        self._spill.cleanup()

    def register_files(self, name: str, paths: list[str], schema: pa.Schema, io: FileIO) -> None:
        """Bind Parquet files as view `name`; no files gives an empty view of `schema`.

        `io` is the table's file IO (`table.io`): local files DuckDB reads itself (`read_parquet`, the fast
        path); files in object storage are scanned through `io`'s Arrow filesystem, lazily, with DuckDB's
        projection and filter pushdown, a few record batches in memory at a time.
        """
        if not paths:
            self.register_arrow(name, schema.empty_table())
            return
        self._forget(name)
        if all(is_local(p) for p in paths):
            self.con.read_parquet([local_path(p) for p in paths]).create_view(name, replace=True)
        else:
            self.con.register(name, arrow_dataset(paths, schema, io))

    def register_arrow(self, name: str, table: pa.Table) -> None:
        self._forget(name)
        self.con.register(name, table)

    def _forget(self, name: str) -> None:
        # A registered Arrow table shadows a view of the same name: rebinding a name must drop both.
        self.con.unregister(validate_identifier(name))
        self.con.execute(f"DROP VIEW IF EXISTS {name}")

    def materialize(self, name: str, sql: str) -> None:
        """Compute `sql` once into a temporary table (DuckDB keeps it compressed and spills past its limit)."""
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {validate_identifier(name)} AS {sql}")

    def drop(self, name: str) -> None:
        """Free a materialized table as soon as nothing needs it (its memory, or its spill files)."""
        self.con.execute(f"DROP TABLE IF EXISTS {validate_identifier(name)}")

    def arrow(self, sql: str) -> pa.Table:
        return self.con.execute(sql).to_arrow_table()

    def batches(self, sql: str, rows: int = 500_000) -> Iterator[pa.RecordBatch]:
        """A large result as a stream: DuckDB produces the next batch while the caller writes this one."""
        yield from self.con.execute(sql).fetch_record_batch(rows)

    def write(self, table: Table, contract: TableContract, day: dt.date, sql: str) -> WrittenFiles:
        """The rows of `sql` as Parquet files of `day`, streamed: memory holds a batch or two."""
        return publish.write_files(table, contract, day, self.batches(sql))


class Engine(Protocol):
    """What a layer step needs of an engine: DuckDBEngine here, SparkEngine in `core/spark.py`.

    Inputs are bound as named views; the SQL texts of `core/sql` (DuckDB's dialect) run on either.
    """

    name: str

    def __enter__(self) -> Engine: ...
    def __exit__(self, *exc: object) -> None: ...
    def register_files(self, name: str, paths: list[str], schema: pa.Schema, io: FileIO) -> None: ...
    def register_arrow(self, name: str, table: pa.Table) -> None: ...
    def materialize(self, name: str, sql: str) -> None: ...
    def drop(self, name: str) -> None: ...
    def arrow(self, sql: str) -> pa.Table: ...
    def write(self, table: Table, contract: TableContract, day: dt.date, sql: str) -> WrittenFiles: ...


EngineFactory = Callable[[], Engine]  # a fresh engine per layer step (DuckDBEngine, or a SparkEngine on a session)

