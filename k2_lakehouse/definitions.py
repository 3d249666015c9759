"""The one Definitions object of the code location (workspace.yaml loads it)."""

from dagster import Definitions

from k2_lakehouse.defs.bronze import bronze_assets
from k2_lakehouse.defs.resources import LakehouseResource

defs = Definitions(
    assets=bronze_assets,
    resources={"lakehouse": LakehouseResource()},
)
