"""K2_ENGINE=spark through Dagster (dagster-pyspark's resource): all nine tables of a day, every check passing."""

from __future__ import annotations

from dagster import DagsterInstance, materialize

from k2_lakehouse.core import feed, iceberg, spark as k2_spark
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, KRAKEN, SILVER_TRADES
from k2_lakehouse.core.verify import verify
from k2_lakehouse.definitions import defs
from k2_lakehouse_tests.core.test_silver_gold import BINANCE_ROWS, DAY, KRAKEN_ROWS
from k2_lakehouse_tests.support import Lake, insert_rows


def test_one_day_on_spark_through_dagster(lake: Lake, spark, monkeypatch) -> None:
    monkeypatch.setenv("K2_ENGINE", "spark")
    insert_rows(lake.client(), BINANCE, BINANCE_ROWS)
    insert_rows(lake.client(), KRAKEN, KRAKEN_ROWS)
    feed.seed(lake.settings, DAY, 5_000, seed=5, progress=False)
    with DagsterInstance.get() as instance:
        result = materialize(list(defs.assets), selection="*", partition_key=DAY.isoformat(), instance=instance,
                             resources=defs.resources)
    assert result.success
    checks = result.get_asset_check_evaluations()
    # bronze: contract + exactly once, x2; silver: contract + accounting, x2; gold: contract + matches silver, x6,
    # and agrees with the finer table, x5
    assert len(checks) == 4 + 4 + 12 + 5 and all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    engines = {e.asset_key.to_user_string(): e.materialization.metadata["engine"].value
               for e in result.get_asset_materialization_events()}
    assert len(engines) == 10 and set(engines.values()) == {"spark"}, engines  # 2 bronze, 2 silver, 6 gold

    report = verify(lake.settings, [DAY], ("bronze", "silver", "gold"))
    assert not report.mismatched, report.report()

    # Spark's own Iceberg catalog (JDBC, the same PostgreSQL database, the same catalog name) reads the
    # tables pyiceberg wrote. A new session of the shared context has its own catalogs: point `k2` at this lake.
    analyst = spark.newSession()
    for key, value in k2_spark.session_config(lake.settings).items():
        if key.startswith("spark.sql.catalog."):
            analyst.conf.set(key, value)
    cat = iceberg.catalog(lake.settings)
    for contract in (SILVER_TRADES, GOLD_TABLES["1m"]):
        expected = cat.load_table(contract.identifier).scan().to_arrow().num_rows
        (rows,), = analyst.sql(f"SELECT count(*) FROM k2.{contract.qualified_name}").collect()
        assert rows == expected > 0
