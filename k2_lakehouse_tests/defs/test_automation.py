"""The hot-tier sensor, the fallback schedule and the automation conditions against a real ClickHouse and a
Dagster instance stored in PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    materialize,
)
from dagster._core.test_utils import create_run_for_test

from k2_lakehouse.definitions import defs
from k2_lakehouse.defs.automation import BRONZE_TAG, TRIGGER_TAG, catch_up_schedule, hot_tier_sensor
from k2_lakehouse.defs.bronze import bronze_assets
from k2_lakehouse.defs.layers import FOLLOW_UPSTREAM
from k2_lakehouse.defs.resources import RESOURCES
from k2_lakehouse_tests.support import Lake, free_ports, insert_binance

DAY, NEXT_DAY = dt.date(2026, 3, 14), dt.date(2026, 3, 15)



def _tick(instance: DagsterInstance, cursor: str | None):
    # Not as a context manager: leaving it would dispose of the caller's instance (and leave Dagster's
    # current-instance context pointing at it for every later test).
    return hot_tier_sensor(build_sensor_context(instance=instance, cursor=cursor, resources=RESOURCES))


def _requested(result) -> list[tuple[str, str, list[str]]]:
    assert isinstance(result, SensorResult), result
    return [(r.partition_key, r.run_key, sorted(k.to_user_string() for k in r.asset_selection)) for r in result.run_requests]


def test_hot_tier_sensor_requests_each_moved_day_once(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(100))
    with DagsterInstance.get() as instance:  # PostgreSQL-backed, like the daemon's
        first = _tick(instance, None)
        assert _requested(first) == [("2026-03-14", "2026-03-14/trades_binance:0:99", ["bronze/trades_binance"])]
        assert first.run_requests[0].tags[BRONZE_TAG] == "2026-03-14"

        # Same offsets, stored cursor (a restarted daemon reads it back): nothing more.
        again = _tick(instance, first.cursor)
        assert _requested(again) == [] and again.cursor == first.cursor

        # The run happens; then the cursor is lost: the recorded watermark still says nothing is missing.
        assert materialize(bronze_assets, partition_key=DAY.isoformat(), instance=instance, resources=RESOURCES).success
        assert _requested(_tick(instance, None)) == []

        # The feed moves on and a new day appears: one run per tick, the newest day first, then the other.
        insert_binance(client, DAY, 0, range(100, 130))
        insert_binance(client, NEXT_DAY, 1, range(10))
        moved = _tick(instance, again.cursor)
        assert _requested(moved) == [("2026-03-15", "2026-03-15/trades_binance:1:9", ["bronze/trades_binance"])]
        assert _requested(_tick(instance, moved.cursor)) == [("2026-03-14", "2026-03-14/trades_binance:0:129", ["bronze/trades_binance"])]

        # While a sensor-launched bronze run is in flight, nothing more is requested and nothing is lost.
        create_run_for_test(instance, job_name="__ASSET_JOB", status=DagsterRunStatus.STARTED,
                            tags={BRONZE_TAG: "2026-03-15", TRIGGER_TAG: "hot_tier_sensor"})
        waiting = _tick(instance, again.cursor)
        assert _requested(waiting) == [] and "in flight" in waiting.skip_reason.skip_message
        assert json.loads(waiting.cursor)["handled"] == json.loads(again.cursor)["handled"]
        assert set(json.loads(waiting.cursor)["waiting"]) == {"2026-03-14", "2026-03-15"}


def test_hot_tier_sensor_skips_while_clickhouse_is_unreachable(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)
    monkeypatch.setenv("K2_CLICKHOUSE_URL", f"clickhouse://default@127.0.0.1:{port}/k2")
    with DagsterInstance.get() as instance:
        result = _tick(instance, '{"trades_binance":{"2026-03-14":{"0":5}}}')
    assert isinstance(result, SkipReason) and "is unreachable" in result.skip_message


def test_catch_up_schedule_requests_the_days_behind(lake: Lake) -> None:
    insert_binance(lake.client(), DAY, 0, range(40))
    with DagsterInstance.get() as instance:
        # Entered and left: the context opens an instance of its own from the reference, which must be closed
        # (or Dagster's current-instance context points at a disposed one for every later test).
        with build_schedule_context(instance=instance, resources=RESOURCES,
                                    scheduled_execution_time=dt.datetime(2026, 3, 14, 12, 15, tzinfo=dt.timezone.utc)) as context:
            (request,) = catch_up_schedule(context)
        assert request.partition_key == "2026-03-14"


def test_silver_and_gold_follow_their_upstream() -> None:
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        condition = graph.get(key).automation_condition
        if key.path[0] in ("silver", "gold"):
            assert condition == FOLLOW_UPSTREAM, key
            assert "all_deps_blocking_checks_passed" in str(condition.get_label() or "") or condition.children
        else:  # bronze is the sensor's; the hot tables are external
            assert condition is None, key
    sensors = {s.name: s for s in defs.sensors}
    assert {"hot_tier_sensor", "lakehouse_automation", "freshness_checks_sensor"} <= set(sensors)
    assert all(s.default_status.value == "RUNNING" for s in sensors.values())
    assert all(s.default_status.value == "RUNNING" for s in defs.schedules)
