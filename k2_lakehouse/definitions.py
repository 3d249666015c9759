"""The code location's Definitions (workspace.yaml loads it): each layer's own, merged, plus the triggers
and shared resources."""

from dagster import Definitions, in_process_executor

from k2_lakehouse.defs import alerts, automation, bronze, gold, hot, maintenance, silver
from k2_lakehouse.defs.resources import RESOURCES

defs = Definitions.merge(
    hot.defs,
    bronze.defs,
    silver.defs,
    gold.defs,
    automation.defs,
    maintenance.defs,
    alerts.defs,
    # Steps run in the run's own process: a process per step would load the definitions again (~7 s each).
    Definitions(resources=RESOURCES, executor=in_process_executor),
)
