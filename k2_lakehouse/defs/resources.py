"""Resources: the only bridge from Dagster to the core's settings and clients."""

from __future__ import annotations

import dataclasses

from dagster import ConfigurableResource
from pyiceberg.catalog import Catalog

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.settings import Settings


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
