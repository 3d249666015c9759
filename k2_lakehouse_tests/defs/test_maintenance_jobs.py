"""The maintenance and retention jobs through Dagster, on a PostgreSQL-backed instance: each table's asset
observes what was done to it."""

from __future__ import annotations

import datetime as dt

import pytest
from dagster import DagsterInstance

from k2_lakehouse.core import iceberg, offload
from k2_lakehouse.core.contracts import BINANCE, TABLES
from k2_lakehouse.defs.maintenance import hot_retention, table_maintenance
from k2_lakehouse.defs.reporting import asset_key
from k2_lakehouse.defs.resources import RESOURCES
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 2, 3)


def _observations(instance: DagsterInstance, contract) -> list[dict]:
    records = instance.fetch_observations(asset_key(contract), limit=10).records
    return [r.asset_observation.metadata for r in records]


def test_maintenance_job_observes_every_table(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = iceberg.catalog(lake.settings)
    table = iceberg.bronze_table(cat, BINANCE)
    client = lake.client()
    for run in range(4):
        insert_binance(client, DAY, 0, range(run * 100, run * 100 + 100))
        offload.offload_day(table, client, BINANCE, DAY)
    monkeypatch.setenv("K2_MAINTAIN_OLDER_THAN", "0s")
    with DagsterInstance.get() as instance:
        result = table_maintenance.execute_in_process(instance=instance, resources=RESOURCES)
        assert result.success
        for contract in TABLES:
            (metadata,) = _observations(instance, contract)
            assert "maintenance/snapshots_expired" in metadata, contract.qualified_name
        bronze = _observations(instance, BINANCE.bronze)[0]
        assert bronze["maintenance/files_compacted"].value == 4
        assert bronze["maintenance/files_written"].value == 1
        assert bronze["maintenance/snapshots_expired"].value == 4
    assert len(iceberg.partition_files(table.refresh(), BINANCE.bronze, DAY)) == 1


def test_retention_job_retires_what_bronze_holds(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = iceberg.catalog(lake.settings)
    table = iceberg.bronze_table(cat, BINANCE)
    client = lake.client()
    old = dt.date.today() - dt.timedelta(days=10)
    insert_binance(client, old, 0, range(50))
    offload.offload_day(table, client, BINANCE, old)
    insert_binance(client, old, 1, range(20))  # not offloaded yet: the day lags and stays
    monkeypatch.setenv("K2_HOT_RETENTION_DAYS", "2")
    with DagsterInstance.get() as instance:
        assert hot_retention.execute_in_process(instance=instance, resources=RESOURCES).success
        observed = _observations(instance, BINANCE.bronze)[0]
        assert (observed["retention/days_retired"].value, observed["retention/days_kept"].value) == (0, 1)
        offload.offload_day(table.refresh(), client, BINANCE, old)
        assert hot_retention.execute_in_process(instance=instance, resources=RESOURCES).success
        observed = _observations(instance, BINANCE.bronze)[0]
        assert (observed["retention/days_retired"].value, observed["retention/rows_deleted"].value) == (1, 70)
    (left,), = client.execute(f"SELECT count() FROM {BINANCE.name} WHERE trade_date = %(d)s", {"d": old})
    assert left == 0
