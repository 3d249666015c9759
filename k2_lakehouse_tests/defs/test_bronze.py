"""Bronze assets through Dagster: a PostgreSQL-backed instance, real ClickHouse, Iceberg on disk."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pyarrow as pa
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, materialize

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.definitions import defs
from k2_lakehouse.defs.partitions import FIRST_DAY
from k2_lakehouse.defs.bronze import bronze_assets
from k2_lakehouse.defs.resources import RESOURCES
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 4, 2)
BINANCE_KEY = AssetKey(["bronze", "trades_binance"])


def _materialize(instance: DagsterInstance, **kwargs):
    return materialize(
        bronze_assets, partition_key=DAY.isoformat(), instance=instance,
        resources=RESOURCES, **kwargs,
    )


def _metadata(result, key: AssetKey = BINANCE_KEY) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _checks(result) -> dict[str, tuple[bool, dict]]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": (e.passed, {k: v.value for k, v in e.metadata.items()})
        for e in result.get_asset_check_evaluations()
    }


def test_definitions_load_and_validate() -> None:
    from dagster import Definitions

    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    bronze = {k for k in graph.get_all_asset_keys() if k.path[0] == "bronze"}
    assert {k.to_user_string() for k in bronze} == {"bronze/trades_binance", "bronze/trades_kraken"}
    for key in bronze:
        node = graph.get(key)
        assert node.group_name == "bronze"
        assert node.partitions_def is not None and node.partitions_def.get_partition_keys()[0] == FIRST_DAY.isoformat()
    schema = graph.get(BINANCE_KEY).metadata["dagster/column_schema"]
    columns = {c.name: c for c in schema.columns}
    assert list(columns) == BINANCE.column_names  # derived from the one contract
    assert columns["kafka_offset"].type == "long" and ">= 0" in columns["kafka_offset"].constraints.other
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys if c.asset_key in bronze}
    assert checks == {
        (f"bronze/trades_{exchange}", name) for exchange in ("binance", "kraken")
        for name in ("exactly_once", "pandera_contract", "freshness_check")
    }


def test_materialize_records_watermark_and_checks(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(0, 400))
    insert_binance(client, DAY, 0, range(390, 400))  # redelivered
    insert_binance(client, DAY, 3, range(0, 100))
    with DagsterInstance.get() as instance:  # PostgreSQL-backed: DAGSTER_HOME links the project's dagster.yaml
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = _materialize(instance)
        assert result.success
        meta = _metadata(result)
        assert meta["rows_appended"] == 500 and meta["dagster/row_count"] == 500
        assert meta["watermark"] == {"0": 399, "3": 99} and meta["watermark_before"] == {}
        assert meta["watermark_recovered_from_iceberg"] is False
        assert meta["bytes_written"] > 0 and meta["bytes_per_row"] > 0 and meta["rows_per_s"] > 0
        table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
        assert meta["snapshot_id"] == str(table.current_snapshot().snapshot_id)
        checks = _checks(result)
        passed, numbers = checks["bronze/trades_binance:exactly_once"]
        assert passed and (numbers["expected"], numbers["actual"], numbers["difference"]) == (500, 500, 0)
        passed, contract = checks["bronze/trades_binance:pandera_contract"]
        assert passed and contract["rows_checked"] == 500 and contract["failure_cases"] == 0
        assert checks["bronze/trades_kraken:exactly_once"][0]  # an empty day is trivially exact

        again = _materialize(instance)
        assert _metadata(again)["rows_appended"] == 0 and _metadata(again)["watermark_before"] == {"0": 399, "3": 99}
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BINANCE_KEY, asset_partitions=[DAY.isoformat()]), limit=10
        ).records
        assert len(records) == 2

        # An incremental run checks what it added on top of what the last passing checks covered.
        insert_binance(client, DAY, 3, range(100, 120))
        more = _materialize(instance)
        meta, (passed, numbers) = _metadata(more), _checks(more)["bronze/trades_binance:exactly_once"]
        assert meta["checked"] == "rows added" and meta["rows_appended"] == 20
        assert meta["verified_rows"] == 520 and meta["verified_watermark"] == {"0": 399, "3": 119}
        assert passed and (numbers["expected"], numbers["actual"], numbers["scope"]) == (520, 520, "rows added")
        assert _checks(more)["bronze/trades_binance:pandera_contract"][1]["rows_checked"] == 20


def test_checks_fail_on_a_corrupted_partition(lake: Lake) -> None:
    """The checks can fail: rows appended behind the offload's back are caught with the numbers."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(50))
    with DagsterInstance.get() as instance:
        assert _materialize(instance).success
        table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
        rows = table.scan(limit=3).to_arrow().cast(table.schema().as_arrow())
        table.append(rows)  # three feed positions now appear twice
        bad = rows.slice(0, 1).set_column(rows.schema.get_field_index("kafka_offset"), rows.schema.field("kafka_offset"), pa.array([-1], pa.int64()))
        table.append(bad)  # and one row breaks the contract (offsets are never negative)
        result = _materialize(instance, raise_on_error=False)
        passed, numbers = _checks(result)["bronze/trades_binance:exactly_once"]
        assert not passed
        assert numbers["scope"] == "whole partition"  # rows the offload did not write: check everything
        assert numbers["expected"] == 50 and numbers["actual"] == 54
        assert numbers["difference"] == 4 and numbers["duplicates"] == 3
        contract_passed, contract = _checks(result)["bronze/trades_binance:pandera_contract"]
        assert not contract_passed and contract["failure_cases"] == 1
        assert "kafka_offset" in contract["examples"]


def test_killed_between_iceberg_commit_and_dagster_event(lake: Lake) -> None:
    """Iceberg committed, Dagster never heard of it: the next run trusts Iceberg and says so."""
    client = lake.client()
    insert_binance(client, DAY, 0, range(300))
    run = [sys.executable, "-m", "k2_lakehouse.cli", "run", "--select", "key:bronze/trades_binance", "--partition", DAY.isoformat()]
    crashed = subprocess.run(run, env={**os.environ, **lake.env, "K2_FAILPOINT": "after_iceberg_commit"}, capture_output=True, text=True, timeout=180)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
    assert iceberg.read_watermark(table, DAY) == {0: 299}
    with DagsterInstance.get() as instance:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BINANCE_KEY, asset_partitions=[DAY.isoformat()]), limit=1
        ).records
        assert records == []  # the event was never written
    rerun = subprocess.run(run, env={**os.environ, **lake.env}, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    with DagsterInstance.get() as instance:
        (record,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BINANCE_KEY, asset_partitions=[DAY.isoformat()]), limit=1
        ).records
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        messages = [e.user_message for e in instance.all_logs(record.run_id)]
    assert any("Iceberg wins" in m for m in messages)
    assert meta["watermark_recovered_from_iceberg"] is True
    assert meta["rows_appended"] == 0 and meta["dagster/row_count"] == 300 and meta["watermark"] == {"0": 299}
    assert meta["checked"] == "whole partition"  # Dagster never saw the commit: its checks are re-done in full
    verify = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", "verify", "--layers", "bronze"], env={**os.environ, **lake.env}, capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout


def test_clickhouse_unreachable_fails_clearly(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    from k2_lakehouse_tests.support import free_ports

    (port,) = free_ports(1)
    monkeypatch.setenv("K2_CLICKHOUSE_URL", f"clickhouse://default@127.0.0.1:{port}/k2")
    with DagsterInstance.get() as instance:
        result = _materialize(instance, raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and "is unreachable" in failures[0].event_specific_data.error.to_string()
    table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
    assert table.current_snapshot() is None
