"""Resources: the only bridge from Dagster to the core's settings, clients and engines."""

from __future__ import annotations

import dataclasses
from typing import Any

from dagster import ConfigurableResource
from dagster_pyspark import LazyPySparkResource
from pyiceberg.catalog import Catalog

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.engine import DuckDBEngine, EngineFactory
from k2_lakehouse.core.offload import RangeWriter
from k2_lakehouse.core.settings import Settings


class SparkResource(LazyPySparkResource):
    """dagster-pyspark's session, created on first use only (K2_ENGINE=duckdb runs never start a JVM).

    The K2 settings (master, Iceberg catalog, warehouse) come from the environment when the session
    starts, so the catalog's credentials never sit in resource config, which the UI shows; `spark_config`
    adds or overrides Spark settings (executor memory, say) for one deployment.
    """

    spark_config: dict[str, Any] = {}

    def _init_session(self) -> None:
        if self._spark_session is None:
            from k2_lakehouse.core import spark

            self._spark_session = spark.session(Settings.from_env(), extra={k: str(v) for k, v in self.spark_config.items()})


class LakehouseResource(ConfigurableResource):
    """The K2_* settings, read from the environment at run time (never at import)."""

    batch_rows: int | None = None  # override K2_BATCH_ROWS for one deployment

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.batch_rows:
            settings = dataclasses.replace(settings, batch_rows=self.batch_rows)
        return settings

    def catalog(self) -> Catalog:
        return iceberg.catalog(self.settings())

    def engine(self, spark: SparkResource) -> EngineFactory:
        """The engine K2_ENGINE names, for silver and gold: DuckDB in process, or Spark."""
        if self.settings().engine != "spark":
            return DuckDBEngine
        from k2_lakehouse.core.spark import SparkEngine

        return lambda: SparkEngine(spark.spark_session)

    def range_writer(self, spark: SparkResource) -> RangeWriter | None:
        """How bronze copies a day: in this process (None), or fanned out over Spark tasks."""
        settings = self.settings()
        if settings.engine != "spark":
            return None
        from k2_lakehouse.core.spark import offload_writer

        return offload_writer(spark.spark_session, settings)


RESOURCES = {"lakehouse": LakehouseResource(), "spark": SparkResource()}  # what every K2 asset may ask for
