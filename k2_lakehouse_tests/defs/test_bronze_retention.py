"""The bronze asset's checks on a day retention removed from the hot tier (core/retention.py)."""

from __future__ import annotations

import datetime as dt

from dagster import AssetKey, DagsterInstance, materialize

from k2_lakehouse.core import retention
from k2_lakehouse.defs.bronze import bronze_assets
from k2_lakehouse.defs.resources import RESOURCES
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 4, 2)
BINANCE_KEY = AssetKey(["bronze", "trades_binance"])


def _run(instance: DagsterInstance):
    result = materialize(bronze_assets, partition_key=DAY.isoformat(), instance=instance, resources=RESOURCES)
    assert result.success
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == BINANCE_KEY]
    (check,) = [e for e in result.get_asset_check_evaluations() if (e.asset_key, e.check_name) == (BINANCE_KEY, "exactly_once")]
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    return metadata, check.passed, {k: v.value for k, v in check.metadata.items()}


def test_bronze_checks_pass_on_a_retired_day(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(60))
    with DagsterInstance.get() as instance:
        assert _run(instance)[1]
        report = retention.retire(lake.settings, retention_days=1, today=DAY + dt.timedelta(days=2))
        assert [(d.day, d.action, d.rows_deleted) for d in report.days] == [(DAY, "retired", 60)]

        # Re-run with nothing new: no `expected=0 actual=60 missing=-60`.
        meta, passed, numbers = _run(instance)
        assert passed and meta["rows_appended"] == 0
        assert (numbers["expected"], numbers["actual"], numbers["missing"], numbers["retired_positions"]) == (60, 60, 0, 60)

        # A late trade for the retired day: offloaded, checked incrementally on top of the retired rows.
        insert_binance(client, DAY, 0, range(60, 65))
        meta, passed, numbers = _run(instance)
        assert passed and meta["rows_appended"] == 5 and meta["checked"] == "rows added"
        assert (numbers["expected"], numbers["actual"]) == (65, 65)
