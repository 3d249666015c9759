from dagster import DailyPartitionsDefinition

from k2_lakehouse.core.settings import Settings

# One UTC day of trade (event) time on every layer; end_offset=1 includes today, which the live feed fills.
# The range starts at K2_FIRST_DAY (default: settings.DEFAULT_FIRST_DAY, a fixed date, see there), read once
# when the definitions load: every process that loads them must see the same value, which it does when the
# value comes from the environment the process inherits (`k2 services env`, `k2 live`).
FIRST_DAY = Settings.from_env().first_day
daily_partitions = DailyPartitionsDefinition(start_date=FIRST_DAY.isoformat(), end_offset=1, timezone="UTC")
