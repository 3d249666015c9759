"""The thin Dagster shell: declarations that call the core and report what it did."""
