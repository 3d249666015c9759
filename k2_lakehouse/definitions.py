"""The code location's Definitions (workspace.yaml loads it): each layer's own, merged, plus shared resources."""

from dagster import Definitions

from k2_lakehouse.defs import bronze, gold, silver
from k2_lakehouse.defs.resources import LakehouseResource

defs = Definitions.merge(
    bronze.defs,
    silver.defs,
    gold.defs,
    Definitions(resources={"lakehouse": LakehouseResource()}),
)
