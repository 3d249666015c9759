"""The ClickHouse hot tables as external assets: the upstream of bronze in the lineage graph.

Dagster does not write them (the feed consumer does), so they are declared, not materialized: their
schema is the ClickHouse binding of the bronze contract (contracts.HotTable), one row per delivery.
"""

from dagster import AssetKey, AssetsDefinition, AssetSpec, Definitions, TableColumn, TableSchema

from k2_lakehouse.core.contracts import HOT_TABLES, HotTable
from k2_lakehouse.core.settings import Settings
from k2_lakehouse.defs.reporting import OWNERS


def column_schema(hot: HotTable) -> TableSchema:
    """The hot table's columns with their ClickHouse types (the bronze copy shows the Iceberg ones)."""
    return TableSchema(columns=[TableColumn(c.name, hot.clickhouse_type(c), description=c.doc) for c in hot.columns])


def hot_spec(hot: HotTable, database: str) -> AssetSpec:
    return AssetSpec(
        AssetKey(hot.hot_asset_path),
        group_name="hot_tier",
        kinds={"clickhouse"},
        owners=OWNERS,
        description=f"ClickHouse hot table {hot.name}: {hot.exchange.capitalize()} trades as the feed consumer wrote "
        f"them, one row per delivery (redeliveries included), partitioned by trade_date, ordered by feed position. "
        f"Offloaded exactly once into {hot.bronze.qualified_name}.",
        metadata={
            "dagster/column_schema": column_schema(hot),
            "dagster/table_name": f"{database}.{hot.name}",  # the database of K2_CLICKHOUSE_URL
            "symbol_column": hot.symbol_column,
        },
    )


# AssetsDefinitions (not bare specs), so code that walks `defs.assets` finds `.keys` on every entry.
_database = Settings.from_env().clickhouse.database  # read once, when the definitions load
hot_assets = [AssetsDefinition(specs=[hot_spec(hot, _database)]) for hot in HOT_TABLES.values()]
defs = Definitions(assets=hot_assets)
