"""Pure logic of the core: no services needed."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pandera.errors
import pytest
from pyiceberg.io.pyarrow import PyArrowFileIO

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import BINANCE, HOT_TABLES, KRAKEN, SILVER_TRADES, TABLES, hot_table, validate_identifier
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
    schema = BINANCE.bronze.iceberg_schema
    assert [f.name for f in schema.fields] == BINANCE.column_names
    assert all(f.required for f in schema.fields)
    assert str(BINANCE.bronze.partition_spec.fields[0].transform) == "day"


def _frame(day: dt.date, n: int = 3) -> pd.DataFrame:
    columns = {
        "event_type": ["trade"] * n, "event_time": [1] * n, "symbol": ["BTCUSDT"] * n, "trade_id": list(range(n)),
        "price": ["1.0"] * n, "quantity": ["2.0"] * n, "trade_time": [1] * n, "is_buyer_maker": [True] * n,
        "is_best_match": [True] * n, "trade_date": [day] * n, "kafka_partition": [0] * n, "kafka_offset": list(range(n)),
        "kafka_timestamp": [1] * n, "ingested_at": [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)] * n,
    }
    return pa.table(columns, schema=BINANCE.arrow_schema).to_pandas(types_mapper=pd.ArrowDtype)


def test_pandera_contract_accepts_good_rows_and_names_bad_ones() -> None:
    day = dt.date(2026, 1, 1)
    schema = BINANCE.bronze.pandera_schema(day)
    schema.validate(_frame(day))
    bad = _frame(day)
    bad.loc[1, "trade_date"] = dt.date(2026, 1, 2)  # a row outside the partition
    bad.loc[2, "kafka_offset"] = -1  # offsets are never negative
    with pytest.raises(pandera.errors.SchemaErrors) as caught:
        schema.validate(bad, lazy=True)
    assert set(caught.value.failure_cases["column"].astype(str)) == {"trade_date", "kafka_offset"}


def test_unique_key_holds_over_the_whole_partition_not_per_batch(tmp_path: Path) -> None:
    """Three positions repeated in a second file of the same day: three duplicate keys, whatever the batching."""
    from k2_lakehouse.core.quality import duplicate_keys

    day = dt.date(2026, 1, 1)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    table = pa.Table.from_pandas(_frame(day, 5), preserve_index=False).cast(BINANCE.arrow_schema)
    pq.write_table(table, first)
    pq.write_table(table.slice(0, 3), second)
    io = PyArrowFileIO()
    assert duplicate_keys([str(first)], BINANCE.bronze, io) == 0
    assert duplicate_keys([first.as_uri(), str(second)], BINANCE.bronze, io) == 3


def test_nine_tables_with_the_design_names() -> None:
    assert [c.qualified_name for c in TABLES] == [
        "bronze.trades_binance", "bronze.trades_kraken", "silver.trades", "silver.trades_rejected",
        "gold.ohlcv_1m", "gold.ohlcv_5m", "gold.ohlcv_15m", "gold.ohlcv_30m", "gold.ohlcv_1h", "gold.ohlcv_1d",
    ]
    assert SILVER_TRADES.column_names[:11] == [
        "exchange", "symbol", "exchange_symbol", "trade_id", "price", "quantity", "quote_volume", "side", "trade_ts",
        "kafka_partition", "kafka_offset",
    ]
    for contract in TABLES:
        assert set(contract.unique) <= set(contract.column_names) and set(contract.sort_columns) <= set(contract.column_names)
        for column in contract.columns:  # exact decimals all the way: no binary floats anywhere
            assert not pa.types.is_floating(column.type), (contract.qualified_name, column.name)


def test_symbol_map_is_data_and_covers_the_feed() -> None:
    from k2_lakehouse.core.contracts import symbol_map
    from k2_lakehouse.core.feed import SPECS

    mapping = {(m.exchange, m.exchange_symbol): m.symbol for m in symbol_map()}
    assert mapping[("kraken", "XBT/USD")] == "BTC/USD" and mapping[("binance", "BTCUSDT")] == "BTC/USDT"
    for spec in SPECS.values():
        for market in spec.markets:  # every market the simulator trades maps to its base asset
            assert mapping[(spec.name, market.symbol)].split("/")[0] == market.asset
        for unknown in spec.unknown_symbols:
            assert (spec.name, unknown) not in mapping


def test_vwap_is_exact_and_rounds_half_even() -> None:
    from decimal import Decimal as D

    from k2_lakehouse.core.contracts import PRICE, QUOTE, VOLUME
    from k2_lakehouse.core.gold import with_vwap

    bars = pa.table({
        "quote_volume": pa.array([D("117240.125"), D("0.000000025"), D("0.000000035")], QUOTE),
        "volume": pa.array([D("1.75"), D("1"), D("1")], VOLUME),
        "trade_count": pa.array([3, 1, 1], pa.int64()),
    })
    vwap = with_vwap(bars).column("vwap")
    assert vwap.type == PRICE
    assert vwap.to_pylist() == [D("66994.35714286"), D("0.00000002"), D("0.00000004")]  # half-even: 2.5 -> 2, 3.5 -> 4


@pytest.mark.parametrize("name", ["silver_normalized", "silver_trades", "silver_trades_rejected", "gold_bars_from_trades",
                                  "gold_bars_from_bars", "check_silver_accounting", "silver_totals", "check_gold_against_silver",
                                  "check_bars_equal"])
def test_sql_texts_transpile_to_spark(name: str) -> None:
    """One SQL text per transform, for both engines: sqlglot must carry it to Spark without DuckDB-only constructs."""
    import sqlglot

    from k2_lakehouse.core.dialects import to_spark
    from k2_lakehouse.core.engine import sql_text

    spark = to_spark(sql_text(name))
    sqlglot.parse_one(spark, read="spark")
    for duckdb_only in ("TIME_BUCKET", "DATE_BIN", "EPOCH_US", "INT128", "HUGEINT", "STRUCT_PACK", "QUALIFY", "TIMESTAMPTZ"):
        assert duckdb_only not in spark.upper()
    if "epoch_us" in sql_text(name):
        assert "UNIX_MICROS(" in spark


def test_engine_rebinds_a_name_whatever_bound_it_before(tmp_path: Path) -> None:
    """An audit rebinds names (files, then an empty table, then files): each read sees the latest binding."""
    from k2_lakehouse.core.engine import DuckDBEngine

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    with DuckDBEngine() as engine:
        engine.register_arrow("x", pa.table({"a": [5]}))
        engine.register_files("x", [str(path)], pa.schema([("a", pa.int64())]), PyArrowFileIO())
        assert engine.arrow("SELECT a FROM x ORDER BY a").column("a").to_pylist() == [1, 2]
        engine.register_files("x", [], pa.schema([("a", pa.int64())]), PyArrowFileIO())
        assert engine.arrow("SELECT a FROM x").num_rows == 0
