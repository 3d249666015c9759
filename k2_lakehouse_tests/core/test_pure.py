"""Pure logic of the core: no services needed."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pandas as pd
import pandera.errors
import pytest

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import BINANCE, HOT_TABLES, KRAKEN, hot_table, validate_identifier
from k2_lakehouse.core.errors import ConfigError
from k2_lakehouse.core.hot_tier import OffsetRange, missing_ranges
from k2_lakehouse.core.settings import Settings, redact

CORE = Path(__file__).resolve().parents[2] / "k2_lakehouse" / "core"


def test_core_never_imports_dagster() -> None:
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n == "dagster" or n.startswith(("dagster.", "dagster_")) for n in names), path.name


def test_missing_ranges_start_after_the_watermark() -> None:
    assert missing_ranges({}, {0: 9, 2: 4}) == [OffsetRange(0, -1, 9), OffsetRange(2, -1, 4)]
    assert missing_ranges({0: 9, 2: 1}, {0: 9, 2: 4}) == [OffsetRange(2, 1, 4)]
    assert missing_ranges({0: 9}, {0: 9}) == []


def test_offset_range_split_covers_exactly_once() -> None:
    pieces = list(OffsetRange(3, -1, 9).split(4))
    assert pieces == [OffsetRange(3, -1, 3), OffsetRange(3, 3, 7), OffsetRange(3, 7, 9)]
    covered = [o for p in pieces for o in range(p.lo + 1, p.hi + 1)]
    assert covered == list(range(0, 10))


def test_watermark_round_trip() -> None:
    wm = {3: 10, 0: 2**40}
    assert iceberg.decode_watermark(iceberg.encode_watermark(wm)) == wm
    assert iceberg.encode_watermark(wm) == '{"0":1099511627776,"3":10}'
    assert iceberg.watermark_key(dt.date(2026, 1, 2)) == "k2.watermark.2026-01-02"


@pytest.mark.parametrize("name", ["k2", "bronze_trades_binance", "_x1"])
def test_valid_identifiers(name: str) -> None:
    assert validate_identifier(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "k2; DROP TABLE x", "a.b", "a-b", "x" * 64])
def test_invalid_identifiers_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        validate_identifier(name)


def test_settings_defaults_and_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({"K2_HOME": str(tmp_path), "K2_CLICKHOUSE_PORT": "1234", "K2_POSTGRES_PORT": "5555"})
    assert s.clickhouse.port == 1234 and s.clickhouse.database == "k2"
    assert s.postgres_url.endswith("127.0.0.1:5555/dagster") and s.postgres_port == 5555
    assert s.warehouse == (tmp_path / "warehouse").as_uri()
    assert set(s.exports()) >= {"K2_CLICKHOUSE_URL", "K2_POSTGRES_URL", "K2_ICEBERG_CATALOG_URI", "K2_WAREHOUSE", "DAGSTER_HOME"}
    with pytest.raises(ConfigError):
        Settings.from_env({"K2_BATCH_ROWS": "many"})
    with pytest.raises(ConfigError):
        Settings.from_env({"K2_CLICKHOUSE_URL": "http://x"}).clickhouse


def test_passwords_are_redacted() -> None:
    assert redact("clickhouse://u:s3cret@h:9000/k2") == "clickhouse://u:***@h:9000/k2"
    assert redact("clickhouse://u@h:9000/k2") == "clickhouse://u@h:9000/k2"


def test_ddl_is_portable_and_partitioned_by_day() -> None:
    for table in HOT_TABLES.values():
        ddl = table.ddl("k2")
        assert "PARTITION BY toYYYYMMDD(trade_date)" in ddl and "ORDER BY (kafka_partition, kafka_offset)" in ddl
        for banned in ("DateTime64", "Map(", "JSON", "Bool", "CODEC"):
            assert banned not in ddl
    assert hot_table("kraken") is KRAKEN
    with pytest.raises(ConfigError):
        hot_table("ftx")
    with pytest.raises(ConfigError):
        BINANCE.ddl("k2; DROP")


def test_iceberg_schema_and_spec_follow_the_contract() -> None:
    schema = BINANCE.iceberg_schema
    assert [f.name for f in schema.fields] == BINANCE.column_names
    assert all(f.required for f in schema.fields)
    assert str(BINANCE.partition_spec.fields[0].transform) == "day"


def _frame(day: dt.date, n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "event_type": ["trade"] * n, "event_time": [1] * n, "symbol": ["BTCUSDT"] * n, "trade_id": list(range(n)),
        "price": ["1.0"] * n, "quantity": ["2.0"] * n, "trade_time": [1] * n, "is_buyer_maker": [True] * n,
        "is_best_match": [True] * n, "trade_date": [day] * n, "kafka_partition": pd.Series([0] * n, dtype="int32"),
        "kafka_offset": list(range(n)), "ingested_at": pd.Series([pd.Timestamp("2026-01-01", tz="UTC")] * n).astype("datetime64[us, UTC]"),
    })


def test_pandera_contract_accepts_good_rows_and_names_bad_ones() -> None:
    day = dt.date(2026, 1, 1)
    schema = BINANCE.pandera_schema(day)
    schema.validate(_frame(day))
    bad = _frame(day)
    bad.loc[1, "trade_date"] = dt.date(2026, 1, 2)  # a row outside the partition
    bad.loc[2, "kafka_offset"] = 1  # a feed position twice
    with pytest.raises(pandera.errors.SchemaErrors) as caught:
        schema.validate(bad, lazy=True)
    failed = set(caught.value.failure_cases["column"].astype(str))
    assert "trade_date" in failed and any("kafka" in c for c in failed)
