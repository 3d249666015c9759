"""K2 Lakehouse: exactly-once hot-to-cold pipeline for crypto trades (ClickHouse -> Iceberg, Dagster)."""
