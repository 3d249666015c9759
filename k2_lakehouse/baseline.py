"""A naive baseline of the silver and gold steps, for `k2 bench day`: the plain pandas way.

What a data engineer without K2 would write for one day: read both bronze partitions from Iceberg into
pandas (`table.scan(...).to_pandas()`), normalize them with pandas string ops and Python's
`decimal.Decimal` for prices and quantities, reject invalid rows with the same reasons in the same order
as `core/sql/silver_normalized.sql`, drop exchange replays with `drop_duplicates` on the trade identity
(earliest feed position kept), compute each of the six OHLCV intervals straight from the trades with a
pandas `groupby` (first/last after sorting by trade time and trade id, sums of Decimals, VWAP in Decimal),
and write the eight result tables with a plain pyiceberg `append` each (namespace `baseline`, the
contracts' schemas and partition specs): no branches, no audit, no checks, no Dagster.

`compare` then reads those tables beside the ones K2 wrote for the same day, so the benchmark can say
whether both computed the same thing.

    python -m k2_lakehouse.baseline run DAY      # prints one JSON line: rows and seconds per stage
    python -m k2_lakehouse.baseline compare DAY  # prints one JSON line: k2 vs baseline, per table
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
import time
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.contracts import (
    BINANCE, GOLD_TABLES, INTERVALS, KRAKEN, SILVER_REJECTED, SILVER_TRADES, Interval, TableContract, symbol_map,
)
from k2_lakehouse.core.settings import Settings

NAMESPACE = "baseline"
NUMBER = r"-?[0-9]{1,10}(?:\.[0-9]{1,8})?"  # what DECIMAL(18,8) holds exactly (silver_normalized.sql)
KRAKEN_TIME = r"[0-9]{1,12}\.[0-9]{6}"  # 'seconds.micros', exactly six decimals (as silver_normalized.sql)
EIGHT_PLACES = Decimal("1e-8")
IDENTITY = ["exchange", "symbol", "trade_id"]
BAR_KEY = ["exchange", "symbol", "window_start"]


def baseline_identifier(contract: TableContract) -> tuple[str, str]:
    return (NAMESPACE, f"{contract.namespace}_{contract.name}")


def run(settings: Settings, day: dt.date) -> dict:
    """Silver and gold of `day` the plain way; returns rows and seconds per stage."""
    # Price x quantity has up to 36 significant digits and day sums more: the default 28 would round.
    decimal.getcontext().prec = 60
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    cat = iceberg.catalog(settings)
    bronze = {hot.exchange: iceberg.bronze_table(cat, hot) for hot in (BINANCE, KRAKEN)}
    binance = bronze["binance"].scan(row_filter=iceberg.day_filter(BINANCE.bronze, day)).to_pandas()
    kraken = bronze["kraken"].scan(row_filter=iceberg.day_filter(KRAKEN.bronze, day)).to_pandas()
    bronze_rows = {"binance": len(binance), "kraken": len(kraken)}
    lap("read_bronze")

    normalized = pd.concat([normalize_binance(binance, day), normalize_kraken(kraken, day)], ignore_index=True)
    del binance, kraken
    lap("normalize")

    rejected = normalized[normalized["reason"].notna()].sort_values(["exchange", "kafka_partition", "kafka_offset"])
    valid = normalized[normalized["reason"].isna()]
    del normalized
    trades = silver_trades(valid)
    replays = len(valid) - len(trades)
    del valid
    lap("silver_dedupe")

    bars = {i.name: ohlcv(trades, i) for i in INTERVALS}
    lap("gold_groupby")

    outputs = [(SILVER_TRADES, trades), (SILVER_REJECTED, rejected)] + [(GOLD_TABLES[n], b) for n, b in bars.items()]
    for contract, frame in outputs:
        write(cat, contract, frame)
    lap("write_iceberg")

    return {
        "day": day.isoformat(),
        "bronze_rows": bronze_rows,
        "silver_rows": len(trades),
        "rejected_rows": len(rejected),
        "replays_dropped": replays,
        "bars": {n: len(b) for n, b in bars.items()},
        "stage_seconds": timings,
        "compute_seconds": sum(v for k, v in timings.items() if k != "write_iceberg"),
    }


# --- silver ------------------------------------------------------------------------------------------

def _symbols(exchange: str) -> dict[str, str]:
    return {m.exchange_symbol: m.symbol for m in symbol_map() if m.exchange == exchange}


def _day_bounds_us(day: dt.date) -> tuple[int, int]:
    start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
    return start, start + 86_400_000_000


def normalize_binance(df: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    out = pd.DataFrame({
        "exchange": "binance",
        "kafka_partition": df["kafka_partition"],
        "kafka_offset": df["kafka_offset"],
        "trade_date": df["trade_date"],
        "raw_symbol": df["symbol"],
        "trade_id": df["trade_id"],
        "raw_trade_id": df["trade_id"].astype(str),
        "raw_price": df["price"],
        "raw_quantity": df["quantity"],
        "raw_time": df["trade_time"].astype(str),
        "raw_side": df["is_buyer_maker"].map({True: "true", False: "false"}),
        "side": np.where(df["is_buyer_maker"], "sell", "buy"),  # the maker bought: the aggressor sold
        "time_us": df["trade_time"].astype("int64") * 1000,
    })
    return _validate(out, well_formed=df["event_type"] == "trade", time_ok=pd.Series(True, index=df.index), day=day)


def normalize_kraken(df: pd.DataFrame, day: dt.date) -> pd.DataFrame:
    time_ok = df["time"].str.fullmatch(KRAKEN_TIME).fillna(False).astype(bool)
    parts = df["time"].where(time_ok, "0.000000").str.partition(".")
    seconds, fraction = parts[0], parts[2]
    out = pd.DataFrame({
        "exchange": "kraken",
        "kafka_partition": df["kafka_partition"],
        "kafka_offset": df["kafka_offset"],
        "trade_date": df["trade_date"],
        "raw_symbol": df["pair"],
        "trade_id": df["trade_id"],
        "raw_trade_id": df["trade_id"].astype(str),
        "raw_price": df["price"],
        "raw_quantity": df["volume"],
        "raw_time": df["time"],
        "raw_side": df["side"],
        "side": df["side"].map({"b": "buy", "s": "sell"}),
        "time_us": seconds.astype("int64") * 1_000_000 + fraction.astype("int64"),
    })
    return _validate(out, well_formed=df["side"].isin(["b", "s"]), time_ok=time_ok, day=day)


def _validate(out: pd.DataFrame, *, well_formed: pd.Series, time_ok: pd.Series, day: dt.date) -> pd.DataFrame:
    """Symbol, Decimal price and quantity, and the first reason the row is invalid (None: valid)."""
    exchange = out["exchange"].iloc[0] if len(out) else ""
    out["symbol"] = out["raw_symbol"].map(_symbols(exchange))
    price_ok = out["raw_price"].str.fullmatch(NUMBER).fillna(False).astype(bool)
    quantity_ok = out["raw_quantity"].str.fullmatch(NUMBER).fillna(False).astype(bool)
    out["price"] = out["raw_price"].where(price_ok, "0").map(Decimal)
    out["quantity"] = out["raw_quantity"].where(quantity_ok, "0").map(Decimal)
    start, end = _day_bounds_us(day)
    missing_time = out["raw_time"].isna() | (out["raw_time"] == "")
    conditions = [
        ~well_formed,
        out["symbol"].isna(),
        missing_time,
        ~time_ok,
        (out["time_us"] < start) | (out["time_us"] >= end),
        ~price_ok,
        ~quantity_ok,
        out["price"] <= 0,
        out["quantity"] <= 0,
    ]
    reasons = [
        "malformed_message", "unknown_symbol", "missing_trade_time", "unparseable_trade_time",
        "trade_time_outside_day", "non_numeric_price", "non_numeric_quantity", "non_positive_price",
        "non_positive_quantity",
    ]
    out["reason"] = np.select([np.asarray(c, dtype=bool) for c in conditions], reasons, default="")
    out["reason"] = out["reason"].replace("", None)
    return out


def silver_trades(valid: pd.DataFrame) -> pd.DataFrame:
    """One row per trade identity, the earliest feed position kept; exact quote volume; sorted for bars."""
    trades = valid.sort_values(["kafka_partition", "kafka_offset"]).drop_duplicates(IDENTITY, keep="first").copy()
    trades["exchange_symbol"] = trades["raw_symbol"]
    trades["quote_volume"] = trades["price"] * trades["quantity"]  # Decimal x Decimal, exact at prec 60
    trades["trade_ts"] = pd.to_datetime(trades["time_us"], unit="us", utc=True)
    return trades.sort_values(["exchange", "symbol", "time_us", "trade_id"], ignore_index=True)


# --- gold --------------------------------------------------------------------------------------------

def ohlcv(trades: pd.DataFrame, interval: Interval) -> pd.DataFrame:
    """Bars of one interval from trades sorted by (exchange, symbol, trade time, trade id)."""
    window = trades["time_us"] // interval.micros * interval.micros
    bars = (
        trades.assign(window_us=window)
        .groupby(["exchange", "symbol", "window_us"], sort=True)
        .agg(
            open=("price", "first"), high=("price", "max"), low=("price", "min"), close=("price", "last"),
            volume=("quantity", "sum"), quote_volume=("quote_volume", "sum"), trade_count=("price", "size"),
        )
        .reset_index()
    )
    bars["vwap"] = [(q / v).quantize(EIGHT_PLACES, rounding=decimal.ROUND_HALF_EVEN) for q, v in zip(bars["quote_volume"], bars["volume"])]
    bars["window_start"] = pd.to_datetime(bars["window_us"], unit="us", utc=True)
    return bars


# --- writing -----------------------------------------------------------------------------------------

def write(cat: Catalog, contract: TableContract, frame: pd.DataFrame) -> Table:
    """A plain pyiceberg append into a fresh table of the contract's schema and partition spec."""
    try:
        cat.create_namespace(NAMESPACE)
    except Exception:  # noqa: BLE001 - already there
        pass
    identifier = baseline_identifier(contract)
    if cat.table_exists(identifier):
        cat.drop_table(identifier)
    table = cat.create_table(identifier, schema=contract.iceberg_schema, partition_spec=contract.partition_spec)
    table.append(pa.Table.from_pandas(frame[contract.column_names], schema=contract.arrow_schema, preserve_index=False))
    return table


# --- comparison with what K2 wrote -------------------------------------------------------------------

def _row_count(table: Table, contract: TableContract, day: dt.date) -> int:
    """Rows of the day partition from the manifests (both writers put one day per file)."""
    return sum(task.file.record_count for task in table.scan(row_filter=iceberg.day_filter(contract, day)).plan_files())


def _read(table: Table, contract: TableContract, day: dt.date, columns: list[str]) -> pa.Table:
    return table.scan(row_filter=iceberg.day_filter(contract, day), selected_fields=tuple(columns)).to_arrow()


def compare(settings: Settings, day: dt.date) -> dict:
    """K2's silver and gold tables of `day` against the baseline's: row counts, reasons, every bar."""
    cat = iceberg.catalog(settings)
    tables: dict[str, dict] = {}
    for contract in (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values()):
        k2 = cat.load_table(contract.identifier)
        base = cat.load_table(baseline_identifier(contract))
        entry = {"k2_rows": _row_count(k2, contract, day), "baseline_rows": _row_count(base, contract, day)}
        entry["rows_match"] = entry["k2_rows"] == entry["baseline_rows"]
        if contract is SILVER_REJECTED:
            counts = [
                dict(sorted(pd.Series(_read(t, contract, day, ["reason"]).column("reason").to_pylist()).value_counts().items()))
                for t in (k2, base)
            ]
            entry["reasons_match"] = counts[0] == counts[1]
            entry["reasons"] = {"k2": counts[0], "baseline": counts[1]}
        elif contract in GOLD_TABLES.values():
            a, b = (_read(t, contract, day, contract.column_names).sort_by([(c, "ascending") for c in BAR_KEY]) for t in (k2, base))
            differing = _differing_rows(a, b)
            entry["bars_differing"] = differing
            entry["identical"] = differing == 0 and entry["rows_match"]
        tables[contract.qualified_name] = entry
    everything = all(e["rows_match"] and e.get("identical", True) and e.get("reasons_match", True) for e in tables.values())
    return {"day": day.isoformat(), "tables": tables, "all_match": everything}


def _differing_rows(a: pa.Table, b: pa.Table) -> int:
    """Bars present in only one table or with any differing value."""
    left, right = a.to_pandas(), b.to_pandas()
    merged = left.merge(right, on=BAR_KEY, how="outer", suffixes=("_k2", "_base"), indicator=True)
    differs = merged["_merge"] != "both"
    for column in (c for c in a.column_names if c not in BAR_KEY):
        differs |= merged[f"{column}_k2"].astype(str) != merged[f"{column}_base"].astype(str)
    return int(differs.sum())


if __name__ == "__main__":
    action, day_arg = sys.argv[1], dt.date.fromisoformat(sys.argv[2])
    result = run(Settings.from_env(), day_arg) if action == "run" else compare(Settings.from_env(), day_arg)
    print(json.dumps(result))
