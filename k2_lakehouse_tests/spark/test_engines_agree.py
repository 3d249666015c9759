"""The same day built on DuckDB and on Spark: silver, rejected and the six gold tables identical, row for row."""

from __future__ import annotations

import pyarrow as pa

from k2_lakehouse.core import bronze, feed, iceberg
from k2_lakehouse.core.audit import TableResult
from k2_lakehouse.core.engine import DuckDBEngine
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, HOT_TABLES, KRAKEN, SILVER_REJECTED, SILVER_TRADES
from k2_lakehouse.core.gold import build_gold_day
from k2_lakehouse.core.silver import build_silver_day
from k2_lakehouse.core.spark import SparkEngine
from k2_lakehouse_tests.core.test_silver_gold import BINANCE_ROWS, DAY, KRAKEN_ROWS
from k2_lakehouse_tests.support import Lake, insert_rows

TABLES = (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values())


def _contents(lake: Lake) -> dict[str, pa.Table]:
    cat = iceberg.catalog(lake.settings)
    out = {}
    for c in TABLES:
        table = cat.load_table(c.identifier)
        rows = table.scan(row_filter=iceberg.day_filter(c, DAY)).to_arrow()
        out[c.qualified_name] = rows.sort_by([(name, "ascending") for name in c.column_names])
    return out


def _build(lake: Lake, engine) -> dict[str, TableResult]:
    cat = iceberg.catalog(lake.settings)
    results = build_silver_day(cat, DAY, engine=engine)
    results.update(build_gold_day(cat, DAY, engine=engine))
    return results


def test_duckdb_and_spark_build_identical_tables(lake: Lake, spark) -> None:
    # Every rejection reason and replay of the hand-built day, plus a generated day with redeliveries.
    insert_rows(lake.client(), BINANCE, BINANCE_ROWS)
    insert_rows(lake.client(), KRAKEN, KRAKEN_ROWS)
    feed.seed(lake.settings, DAY, 20_000, seed=11, progress=False)
    feed.hostile(lake.settings, DAY, seed=11)  # every hostile class: the engines must reject each alike
    for hot in HOT_TABLES.values():
        assert all(c.passed for c in bronze.build_bronze_day(lake.settings, hot, DAY).checks)

    on_duckdb = _build(lake, engine=DuckDBEngine)
    assert all(r.published and r.passed for r in on_duckdb.values()), [c.summary() for r in on_duckdb.values() for c in r.checks]
    duckdb_tables = _contents(lake)

    on_spark = _build(lake, engine=lambda: SparkEngine(spark))
    failed = [f"{r.contract.qualified_name}: {c.summary()}" for r in on_spark.values() for c in r.checks if not c.passed]
    assert not failed
    assert all(r.published for r in on_spark.values())
    spark_tables = _contents(lake)

    assert set(spark_tables) == {c.qualified_name for c in TABLES}
    for name, expected in duckdb_tables.items():
        actual = spark_tables[name]
        assert actual.schema == expected.schema, name
        assert actual.num_rows == expected.num_rows, name
        assert actual.equals(expected), f"{name}: the engines disagree"
    assert duckdb_tables[SILVER_TRADES.qualified_name].num_rows > 20_000
    assert duckdb_tables[SILVER_REJECTED.qualified_name].num_rows > 0
    # Spark really wrote the second build: new files, one per task, committed by the same publish step.
    assert {r.snapshot_id for r in on_spark.values()}.isdisjoint({r.snapshot_id for r in on_duckdb.values()})
