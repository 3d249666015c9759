"""The `k2` command line, in process, against the test's private lake."""

from __future__ import annotations

import datetime as dt

import pytest

from k2_lakehouse.cli import main
from k2_lakehouse_tests.support import Lake, insert_binance

DAY = dt.date(2026, 5, 6)


def test_verify_fails_until_run_catches_up(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    insert_binance(lake.client(), DAY, 0, range(0, 120))
    insert_binance(lake.client(), DAY, 0, range(100, 120))  # redelivered
    assert main(["verify", "--layers", "bronze"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "1 mismatched" in out
    assert main(["verify"]) == 1  # and every silver and gold table of the day is missing too
    assert "9 mismatched" in capsys.readouterr().out  # 1 bronze table-day, 2 silver and 6 gold tables of the day

    assert main(["run"]) == 0  # no --partition: every day that lags the hot tier, all nine tables
    out = capsys.readouterr().out
    assert "bronze/trades_binance" in out and DAY.isoformat() in out and "exactly_once:ok" in out
    assert "gold/ohlcv_1d" in out and "every_position_accounted_for:ok" in out

    assert main(["verify", "--date", DAY.isoformat()]) == 0
    out = capsys.readouterr().out
    assert "bronze.trades_binance  2026-05-06  140" in out and "0 mismatched" in out

    assert main(["run"]) == 0
    assert "Nothing to do" in capsys.readouterr().out


def test_services_env_prints_exports(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["services", "env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = {line.split("=", 1)[0].removeprefix("export ") for line in lines}
    assert {"K2_CLICKHOUSE_URL", "K2_POSTGRES_URL", "K2_ICEBERG_CATALOG_URI", "K2_WAREHOUSE", "DAGSTER_HOME"} <= names
    assert all(line.startswith("export ") for line in lines)


def test_errors_are_one_line_not_tracebacks(lake: Lake, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("K2_CLICKHOUSE_URL", "clickhouse://default@127.0.0.1:1/k2")
    assert main(["verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("k2: error: ClickHouse at 127.0.0.1:1 is unreachable") and "Traceback" not in err
