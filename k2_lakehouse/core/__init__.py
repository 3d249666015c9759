"""The pure core: no Dagster imports here (a test keeps it that way)."""
