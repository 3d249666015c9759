from dagster import DailyPartitionsDefinition

# One UTC day of trade (event) time on every layer; end_offset=1 includes today, which the live feed fills.
daily_partitions = DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1, timezone="UTC")
