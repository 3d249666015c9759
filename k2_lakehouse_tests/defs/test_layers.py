"""The nine tables through Dagster on real services: lineage, blocking write-audit-publish, staleness,
concurrency and crashes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from dagster import AssetKey, DagsterInstance, Definitions, materialize

from k2_lakehouse import runner
from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, KRAKEN, SILVER_REJECTED, SILVER_TRADES
from k2_lakehouse.core.publish import AUDIT_BRANCH_PREFIX
from k2_lakehouse.definitions import defs
from k2_lakehouse_tests.core.test_silver_gold import BINANCE_ROWS, DAY, EXPECTED_1M, EXPECTED_SILVER, KRAKEN_ROWS, at, binance
from k2_lakehouse_tests.support import Lake, insert_rows

SILVER_KEY = AssetKey(SILVER_TRADES.asset_path)
GOLD_KEYS = [AssetKey(c.asset_path) for c in GOLD_TABLES.values()]
TABLES = (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values())


def _seed(lake: Lake) -> None:
    insert_rows(lake.client(), BINANCE, BINANCE_ROWS)
    insert_rows(lake.client(), KRAKEN, KRAKEN_ROWS)


def _materialize(instance: DagsterInstance, selection: str = "*", **kwargs):
    return materialize(list(defs.assets), selection=selection, partition_key=DAY.isoformat(), instance=instance,
                       resources=defs.resources, **kwargs)


def _rows(lake: Lake, contract) -> list[tuple]:
    table = iceberg.catalog(lake.settings).load_table(contract.identifier)
    data = table.scan().to_arrow().sort_by([(c, "ascending") for c in contract.sort_columns])
    return [tuple(r.values()) for r in data.to_pylist()]


def _snapshots(lake: Lake) -> dict[str, int | None]:
    cat = iceberg.catalog(lake.settings)
    return {c.qualified_name: iceberg.snapshot_id(cat.load_table(c.identifier)) for c in TABLES}


def _stale(instance: DagsterInstance, key: AssetKey) -> str:
    """What the UI shows for the day: Dagster's own stale status of the partition."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return resolver.get_status(key, DAY.isoformat()).value


def test_lineage_groups_and_blocking_checks() -> None:
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"hot/trades_binance", "hot/trades_kraken", "bronze/trades_binance", "bronze/trades_kraken",
                    "silver/trades", "silver/trades_rejected", *(f"gold/ohlcv_{i}" for i in ("1m", "5m", "15m", "30m", "1h", "1d"))}
    for hot in (BINANCE, KRAKEN):  # the ClickHouse hot tables: external, upstream of their bronze copies
        node = graph.get(AssetKey(hot.hot_asset_path))
        assert not node.is_executable and node.group_name == "hot_tier" and node.kinds == {"clickhouse"}
        assert graph.get(AssetKey(hot.asset_path)).parent_keys == {node.key}
    assert all(graph.get(k).owners == ["team:data-platform"] for k in graph.get_all_asset_keys())
    assert {p.to_user_string() for p in graph.get(SILVER_KEY).parent_keys} == {"bronze/trades_binance", "bronze/trades_kraken"}
    for key in GOLD_KEYS:
        node = graph.get(key)
        assert node.parent_keys == {SILVER_KEY} and node.group_name == "gold"
        assert node.partitions_def == graph.get(SILVER_KEY).partitions_def  # day-to-day mapping
        assert [c.name for c in node.metadata["dagster/column_schema"].columns] == GOLD_TABLES[key.path[-1].removeprefix("ohlcv_")].column_names
        assert {d.asset_key for deps in node.metadata["dagster/column_lineage"].deps_by_column.values() for d in deps} == {SILVER_KEY}
    symbol = graph.get(SILVER_KEY).metadata["dagster/column_lineage"].deps_by_column["symbol"]
    assert {(d.asset_key.to_user_string(), d.column_name) for d in symbol} == {("bronze/trades_binance", "symbol"), ("bronze/trades_kraken", "pair")}
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert ("silver/trades", "every_position_accounted_for") in checks and ("silver/trades", "pandera_contract") in checks
    assert ("gold/ohlcv_1m", "matches_silver") in checks and ("gold/ohlcv_5m", "agrees_with_finer") in checks
    assert ("gold/ohlcv_1m", "agrees_with_finer") not in checks  # nothing finer than 1m
    # Data checks block downstream; freshness (time since the last update) only reports.
    freshness = {k for k in graph.asset_check_keys if k.name == "freshness_check"}
    assert {k.asset_key.path[0] for k in freshness} == {"bronze", "gold"} and len(freshness) == 8
    assert all(graph.get_check_spec(k).blocking for k in graph.asset_check_keys - freshness)


def test_k2_run_builds_every_table_and_verify_agrees(lake: Lake) -> None:
    _seed(lake)
    assert runner.pending_partitions(lake.settings, runner.ALL) == [DAY.isoformat()]
    with DagsterInstance.get() as instance:
        rows = runner.run(runner.ALL, [DAY.isoformat()], instance)
    by_asset = {r.asset: r for r in rows}
    assert len(rows) == 10 and all(r.success for r in rows), runner.format_rows(rows)
    assert by_asset["silver/trades"].rows_total == 6 and by_asset["silver/trades_rejected"].rows_total == 10
    assert by_asset["gold/ohlcv_1m"].rows_total == 4 and by_asset["gold/ohlcv_1m"].bytes_written > 0
    assert "every_position_accounted_for:ok" in by_asset["silver/trades"].checks
    assert _rows(lake, SILVER_TRADES) == EXPECTED_SILVER and _rows(lake, GOLD_TABLES["1m"]) == EXPECTED_1M
    assert runner.pending_partitions(lake.settings, runner.ALL) == []  # nothing left to do
    verify = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", "verify"], env={**os.environ, **lake.env},
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr[-2000:]
    assert "silver.trades" in verify.stdout and "gold.ohlcv_1d" in verify.stdout and "checked, 0 mismatched" in verify.stdout


def test_late_trade_makes_silver_and_gold_stale_until_rerun(lake: Lake) -> None:
    _seed(lake)
    with DagsterInstance.get() as instance:
        assert _materialize(instance).success
        assert _stale(instance, SILVER_KEY) == "FRESH" and _stale(instance, GOLD_KEYS[0]) == "FRESH"
        insert_rows(lake.client(), BINANCE, [binance(0, 4, "BTCUSDT", 103, "67100.00000000", "0.10000000", at(0, 0, 50))])
        assert _materialize(instance, "group:bronze").success
        assert _stale(instance, SILVER_KEY) == "STALE"
        assert runner.pending_partitions(lake.settings, "group:silver") == [DAY.isoformat()]
        verify = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", "verify"], env={**os.environ, **lake.env},
                                capture_output=True, text=True, timeout=300)
        assert verify.returncode == 1 and "built_from_current_upstream" in verify.stdout  # stale is a mismatch
        assert _materialize(instance, "group:silver").success
        assert _stale(instance, SILVER_KEY) == "FRESH" and _stale(instance, GOLD_KEYS[0]) == "STALE"
        assert _materialize(instance, "group:gold").success
        assert _stale(instance, GOLD_KEYS[0]) == "FRESH"
    assert _rows(lake, GOLD_TABLES["1m"])[0][-1] == 4  # the late trade is in the bar


def test_failed_audit_leaves_main_untouched_and_blocks_gold(lake: Lake) -> None:
    _seed(lake)
    with DagsterInstance.get() as instance:
        assert _materialize(instance).success
        before, content = _snapshots(lake), _rows(lake, SILVER_TRADES)
        table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
        table.append(table.scan(limit=3).to_arrow().cast(table.schema().as_arrow()))  # behind the offload's back
        result = _materialize(instance, "group:silver or group:gold", raise_on_error=False)
    assert not result.success
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    accounted = checks[("silver/trades", "every_position_accounted_for")]
    numbers = {k: v.value for k, v in accounted.metadata.items()}
    # 17 positions, 3 of them now twice: bronze holds 20 rows that silver, replays and rejections cannot all explain
    assert not accounted.passed and numbers["expected"] == 20 and numbers["actual"] < 20
    assert numbers["difference"] == numbers["actual"] - 20
    assert result.get_asset_materialization_events() == []  # neither silver nor gold materialized
    assert not any(k[0].startswith("gold/") for k in checks)  # gold never ran: blocked downstream
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"every_position_accounted_for: expected=20 actual={numbers['actual']}" in failure.event_specific_data.error.to_string()
    assert _snapshots(lake) == before and _rows(lake, SILVER_TRADES) == content  # main exactly as it was
    silver = iceberg.catalog(lake.settings).load_table(SILVER_TRADES.identifier)
    assert [r for r in silver.metadata.refs if r.startswith(AUDIT_BRANCH_PREFIX)] == []  # the audit branch is gone


def _build_silver_in_a_process(lake: Lake, **env: str) -> subprocess.CompletedProcess:
    code = ("import datetime as dt\nfrom k2_lakehouse.core import iceberg, silver\nfrom k2_lakehouse.core.settings import Settings\n"
            f"r = silver.build_silver_day(iceberg.catalog(Settings.from_env()), dt.date.fromisoformat('{DAY}'))\n"
            "print({k: v.publish_attempts for k, v in r.items()})\n")
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **lake.env, **env}, capture_output=True, text=True, timeout=300)


def test_concurrent_runs_of_one_silver_day_leave_one_correct_result(lake: Lake) -> None:
    _seed(lake)
    assert _materialize(DagsterInstance.ephemeral(), "group:bronze").success
    results: list[subprocess.CompletedProcess] = []
    runs = [threading.Thread(target=lambda: results.append(_build_silver_in_a_process(lake))) for _ in range(3)]
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
    assert _rows(lake, SILVER_TRADES) == EXPECTED_SILVER
    cat = iceberg.catalog(lake.settings)
    for contract in (SILVER_TRADES, SILVER_REJECTED):
        table = cat.load_table(contract.identifier)
        assert len(iceberg.partition_files(table, contract, DAY)) == 1  # one run's file, whole
        assert [r for r in table.metadata.refs if r != "main"] == []


def test_killed_before_publish_leaves_main_untouched(lake: Lake) -> None:
    _seed(lake)
    assert _materialize(DagsterInstance.ephemeral(), "group:bronze").success
    killed = _build_silver_in_a_process(lake, K2_FAILPOINT="before_publish")
    assert killed.returncode == -9, killed.stderr[-2000:]
    cat = iceberg.catalog(lake.settings)
    table = cat.load_table(SILVER_TRADES.identifier)
    assert iceberg.partition_files(table, SILVER_TRADES, DAY) == []  # readers of main never saw the audited rows
    assert any(r.startswith(AUDIT_BRANCH_PREFIX) for r in table.metadata.refs)  # left for maintenance to drop
    assert _build_silver_in_a_process(lake).returncode == 0
    assert _rows(lake, SILVER_TRADES) == EXPECTED_SILVER


def test_empty_day_publishes_empty_tables(lake: Lake) -> None:
    """A day with bronze rows that are all rejected: silver is empty, every check still holds."""
    insert_rows(lake.client(), BINANCE, [binance(0, 0, "FOOUSDT", 1, "1.00000000", "1.00000000", at(1, 0, 0))])
    with DagsterInstance.get() as instance:
        result = _materialize(instance)
    assert result.success
    assert _rows(lake, SILVER_TRADES) == [] and len(_rows(lake, SILVER_REJECTED)) == 1
    assert all(_rows(lake, c) == [] for c in GOLD_TABLES.values())


def test_selecting_one_table_of_a_step_runs_the_whole_step() -> None:
    assert {k.to_user_string() for k in runner.whole_steps("key:gold/ohlcv_5m")} == {
        f"gold/ohlcv_{i}" for i in ("1m", "5m", "15m", "30m", "1h", "1d")}
    assert {k.to_user_string() for k in runner.whole_steps("key:silver/trades_rejected")} == {"silver/trades", "silver/trades_rejected"}
    assert [k.to_user_string() for k in runner.whole_steps("key:bronze/trades_kraken")] == ["bronze/trades_kraken"]
