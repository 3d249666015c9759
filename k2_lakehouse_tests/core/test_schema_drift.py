"""Schema drift on real services (issue 8, item 5): ClickHouse 18.16's own ALTER TABLE on the hot table, bronze
through Dagster, Iceberg on disk. An added column evolves bronze; a removed, renamed or retyped one stops the run
before any file is written."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, materialize

from k2_lakehouse.core import drift, iceberg, offload, reconcile
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, SILVER_TRADES
from k2_lakehouse.core.errors import SchemaDrift
from k2_lakehouse.definitions import defs
from k2_lakehouse_tests.core.test_silver_gold import at, binance
from k2_lakehouse_tests.support import Lake, insert_binance, race, then_wait

DAY = dt.date(2026, 6, 9)
BINANCE_KEY = AssetKey(BINANCE.asset_path)
# Types of the hot table's contract columns as numpy arrays (clickhouse-driver's columnar INSERT).
_DTYPES = {"String": object, "Date": "datetime64[D]", "DateTime('UTC')": "datetime64[s]",
           "UInt64": np.uint64, "UInt32": np.uint32, "UInt8": np.uint8}
ADDED = {  # column -> (ClickHouse type, numpy dtype of its INSERT data)
    "fee": ("Decimal(18, 8)", object),
    "is_liquidation": ("UInt8", np.uint8),
    "venue": ("Nullable(String)", object),
    "mark_price": ("Float64", np.float64),
}


def _trades(offsets: range, partition: int = 0, **added) -> list[dict]:
    """Valid BTCUSDT trades of DAY at the given offsets (trade id = offset), with values of added columns."""
    rows = []
    for i, offset in enumerate(offsets):
        row = binance(partition, offset, "BTCUSDT", 5_000 + offset, "67000.10000000", "0.50000000",
                      at(1, offset // 60 % 60, offset % 60, day=DAY), day=DAY)
        rows.append({**row, **{name: values[i] for name, values in added.items()}})
    return rows


def _insert(client, rows: list[dict], added: tuple[str, ...] = ()) -> None:
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    columns = [np.array([r.get(c.name, now) for r in rows], dtype=_DTYPES[BINANCE.clickhouse_type(c)]) for c in BINANCE.columns]
    columns += [np.array([r[name] for r in rows], dtype=ADDED[name][1]) for name in added]
    names = [*BINANCE.column_names, *added]
    client.execute(f"INSERT INTO {BINANCE.name} ({', '.join(names)}) VALUES", columns, columnar=True)


def _alter(client, *clauses: str) -> None:
    for clause in clauses:  # one clause per statement: what 18.16 and current ClickHouse both take
        client.execute(f"ALTER TABLE {BINANCE.name} {clause}")


def _materialize(instance: DagsterInstance, selection: str = "bronze/trades_binance", **kwargs):
    return materialize(list(defs.assets), selection=selection, partition_key=DAY.isoformat(), instance=instance,
                       resources=defs.resources, **kwargs)


def _bronze(lake: Lake):
    return iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)


def _data_files(table) -> set[Path]:
    return set((Path(urlparse(table.location()).path) / "data").rglob("*.parquet"))


def _checks(result) -> dict[str, tuple[bool, dict]]:
    return {
        f"{e.asset_key.to_user_string()}:{e.check_name}": (e.passed, {k: v.value for k, v in e.metadata.items()})
        for e in result.get_asset_check_evaluations()
    }


def _metadata(result, key: AssetKey = BINANCE_KEY) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _failure(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run did not fail"
    return failures[0].event_specific_data.error.to_string()


def test_added_columns_evolve_bronze_and_old_rows_read_null(lake: Lake) -> None:
    client = lake.client()
    _insert(client, _trades(range(0, 100)))
    with DagsterInstance.get() as instance:
        assert _materialize(instance).success
        before = _bronze(lake)
        old_schema_id = before.schema().schema_id

        _alter(client, *(f"ADD COLUMN {name} {ch_type}" for name, (ch_type, _) in ADDED.items()))
        n = 50
        _insert(client, _trades(
            range(100, 100 + n),
            fee=[Decimal(f"0.{i:08d}") for i in range(n)],
            is_liquidation=[i % 3 for i in range(n)],  # a UInt8 is copied as the integer it is: 2 stays 2
            venue=[None if i % 2 else f"v{i}" for i in range(n)],
            mark_price=[67000.5 + i for i in range(n)],
        ), tuple(ADDED))
        _insert(client, _trades(range(100 + n, 110 + n)))  # written without the new columns: ClickHouse's defaults

        result = _materialize(instance)
        assert result.success
        meta = _metadata(result)
        assert meta["rows_appended"] == n + 10 and meta["columns_added"] == list(ADDED)
        checks = _checks(result)
        passed, contract = checks["bronze/trades_binance:pandera_contract"]
        assert passed and contract["rows_checked"] == n + 10 and contract["failure_cases"] == 0
        passed, numbers = checks["bronze/trades_binance:exactly_once"]
        assert passed and (numbers["expected"], numbers["actual"]) == (160, 160)

        table = _bronze(lake)
        assert table.schema().schema_id != old_schema_id
        assert [f.name for f in table.schema().fields] == [*BINANCE.column_names, *ADDED]
        added_fields = {f.name: f for f in table.schema().fields if f.name in ADDED}
        assert all(not f.required for f in added_fields.values())
        assert {n: str(f.field_type) for n, f in added_fields.items()} == {
            "fee": "decimal(18, 8)", "is_liquidation": "int", "venue": "string", "mark_price": "double"}
        mapped = {name for field in table.name_mapping() for name in field.names}  # files carry no field ids
        assert set(ADDED) <= mapped

        rows = {r["kafka_offset"]: r for r in table.scan().to_arrow().to_pylist()}
        assert len(rows) == 160
        assert all(rows[o][c] is None for o in range(100) for c in ADDED)  # offloaded before: null
        assert rows[103]["fee"] == Decimal("0.00000003") and rows[102]["is_liquidation"] == 2
        assert rows[102]["venue"] == "v2" and rows[103]["venue"] is None and rows[104]["mark_price"] == 67004.5
        assert (rows[155]["fee"], rows[155]["is_liquidation"], rows[155]["venue"]) == (Decimal(0), 0, None)

        again = _materialize(instance)
        assert _metadata(again)["rows_appended"] == 0 and "columns_added" not in _metadata(again)
        assert _bronze(lake).current_snapshot().snapshot_id == table.current_snapshot().snapshot_id

        # Silver and gold read bronze by the contract's columns: they build as before.
        everything = _materialize(instance, selection="*")
        assert everything.success
        assert all(passed for passed, _ in _checks(everything).values()), _checks(everything)
    cat = iceberg.catalog(lake.settings)
    silver = cat.load_table(SILVER_TRADES.identifier)
    assert [f.name for f in silver.schema().fields] == SILVER_TRADES.column_names
    assert len(silver.scan().to_arrow()) == 160
    bars = cat.load_table(GOLD_TABLES["1m"].identifier).scan().to_arrow()
    assert sum(bars.column("trade_count").to_pylist()) == 160


def _offloaded(lake: Lake) -> tuple[int, dict, set[Path], list[str]]:
    """What a failed run must leave as it was: bronze's snapshot, the day's watermark, the files on disk, the schema."""
    table = _bronze(lake)
    return (table.current_snapshot().snapshot_id, iceberg.read_watermark(table, DAY), _data_files(table),
            [f.name for f in table.schema().fields])


DRIFTS = {
    "removed": (["DROP COLUMN is_best_match"], ["column is_best_match", "expected UInt8", "no such column (removed"]),
    # 18.16 cannot RENAME COLUMN (current ClickHouse can): a rename is an added column plus a removed one
    "renamed": (["ADD COLUMN best_match UInt8", "DROP COLUMN is_best_match"], ["column is_best_match", "renamed"]),
    "retyped": (["MODIFY COLUMN quantity Float64"], ["column quantity", "expected String", "found Float64 (retyped)"]),
    # a column bronze gained earlier, whose scale changes
    "decimal scale": (["MODIFY COLUMN fee Decimal(18, 4)"], ["column fee", "decimal(18, 8)", "found Decimal(18, 4) (retyped)"]),
}


@pytest.mark.parametrize("drift_case", list(DRIFTS))
def test_removed_renamed_or_retyped_column_fails_and_commits_nothing(lake: Lake, drift_case: str) -> None:
    clauses, message = DRIFTS[drift_case]
    client = lake.client()
    if drift_case == "decimal scale":
        _alter(client, "ADD COLUMN fee Decimal(18, 8)")
        _insert(client, _trades(range(0, 50), fee=[Decimal("1.25")] * 50), ("fee",))
    else:
        _insert(client, _trades(range(0, 50)))
    with DagsterInstance.get() as instance:
        assert _materialize(instance).success
        before = _offloaded(lake)
        materializations = len(instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BINANCE_KEY, asset_partitions=[DAY.isoformat()]), limit=10).records)
        _insert(client, _trades(range(50, 80)))  # rows the run would copy, had the table not drifted
        _alter(client, *clauses)

        result = _materialize(instance, raise_on_error=False)
        assert not result.success
        error = _failure(result)
        assert "SchemaDrift" in error and "bronze_trades_binance" in error and "nothing was committed" in error
        for part in message:
            assert part in error, error
        after = _offloaded(lake)
        assert after == before  # snapshot, watermark, files on disk, schema
        assert len(instance.fetch_materializations(
            AssetRecordsFilter(asset_key=BINANCE_KEY, asset_partitions=[DAY.isoformat()]), limit=10).records) == materializations
    if drift_case == "renamed":  # the added half of a rename is not copied either: the run stopped first
        assert "best_match" not in after[3]


def test_the_error_names_every_drifted_column(lake: Lake) -> None:
    client = lake.client()
    insert_binance(client, DAY, 0, range(10))
    _alter(client, "DROP COLUMN is_best_match", "MODIFY COLUMN price Float64", "ADD COLUMN tags Array(String)")
    table = _bronze(lake)
    with pytest.raises(SchemaDrift) as raised:
        offload.offload_day(table, client, BINANCE, DAY)
    assert raised.value.table.endswith(".bronze_trades_binance")
    assert {name for name, _, _ in raised.value.drifts} == {"is_best_match", "price", "tags"}
    assert "Array(String) (unsupported)" in str(raised.value)
    assert table.refresh().current_snapshot() is None and _data_files(table) == set()


def test_two_writers_evolving_at_once_both_succeed(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two days offloaded at the same moment, both adding the column: one commit wins, the other reloads,
    finds the column there and commits its files again, in the same transaction as its watermark."""
    client = lake.client()
    other = DAY - dt.timedelta(days=1)
    _alter(client, "ADD COLUMN fee Decimal(18, 8)")
    _insert(client, _trades(range(0, 40), fee=[Decimal("0.5")] * 40), ("fee",))
    late = [{**r, "trade_date": other, "trade_time": r["trade_time"] - 86_400_000}  # late trades of the day before
            for r in _trades(range(40, 60), fee=[Decimal("0.25")] * 20)]
    _insert(client, late, ("fee",))
    barrier = threading.Barrier(2, timeout=30)
    monkeypatch.setattr(offload, "_write_files", then_wait(offload._write_files, barrier))
    results = race(*(lambda d=d: offload.offload_day(_bronze(lake), lake.client(), BINANCE, d) for d in (DAY, other)))
    monkeypatch.undo()
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(r.attempts for r in results) == [1, 2], results
    assert sorted(r.columns_added for r in results) == [(), ("fee",)]
    table = _bronze(lake)
    assert [f.name for f in table.schema().fields].count("fee") == 1
    for day, rows, fee in ((DAY, 40, Decimal("0.5")), (other, 20, Decimal("0.25"))):
        result = reconcile.reconcile(table, client, BINANCE, day, iceberg.read_watermark(table, day))
        assert result.exactly_once and result.actual == rows
        scanned = table.scan(row_filter=iceberg.day_filter(BINANCE.bronze, day), selected_fields=("fee",)).to_arrow()
        assert set(scanned.column("fee").to_pylist()) == {fee}


def test_type_mapping() -> None:
    assert drift.arrow_type("Nullable(Decimal(18, 8))") == pa.decimal128(18, 8)
    assert drift.arrow_type("Decimal(38,10)") == pa.decimal128(38, 10)
    assert drift.arrow_type("UInt8") == pa.int32() and drift.arrow_type("UInt32") == pa.int64()
    assert drift.arrow_type("LowCardinality(String)") == pa.string()
    assert drift.arrow_type("DateTime('UTC')") == pa.timestamp("us", tz="UTC")
    for unsupported in ("Array(UInt8)", "Decimal(76, 2)", "Map(String, String)", "UUID", "Tuple(UInt8, String)"):
        assert drift.arrow_type(unsupported) is None, unsupported
