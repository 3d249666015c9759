"""Resources: the only bridge from Dagster to the core's settings and clients."""

from __future__ import annotations

import dataclasses

import clickhouse_driver
from dagster import ConfigurableResource
from pyiceberg.catalog import Catalog

from k2_lakehouse.core import hot_tier, iceberg
from k2_lakehouse.core.settings import Settings


class LakehouseResource(ConfigurableResource):
    """Connections to the hot tier and the Iceberg catalog, configured from the K2_* environment at run time."""

    batch_rows: int | None = None  # override K2_BATCH_ROWS for one deployment

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.batch_rows:
            settings = dataclasses.replace(settings, batch_rows=self.batch_rows)
        return settings

    def hot_client(self) -> clickhouse_driver.Client:
        return hot_tier.connect(self.settings())

    def catalog(self) -> Catalog:
        return iceberg.catalog(self.settings())
