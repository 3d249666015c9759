"""Silver and gold on real services: a hand-built day whose every expected row is written out below."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest

from k2_lakehouse.core import iceberg, offload
from k2_lakehouse.core.contracts import BINANCE, GOLD_TABLES, HOT_TABLES, KRAKEN, SILVER_REJECTED, SILVER_TRADES
from k2_lakehouse.core.gold import build_gold_day
from k2_lakehouse.core.silver import build_silver_day
from k2_lakehouse_tests.support import Lake, insert_rows

DAY = dt.date(2026, 5, 6)
UTC = dt.timezone.utc


def at(h: int, m: int, s: int, us: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, h, m, s, us, tzinfo=UTC)


def ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def binance(partition: int, offset: int, symbol: str, trade_id: int, price: str, qty: str, t: dt.datetime, *,
            maker: bool = False, event_type: str = "trade", day: dt.date = DAY) -> dict:
    return dict(event_type=event_type, event_time=ms(t) + 1, symbol=symbol, trade_id=trade_id, price=price, quantity=qty,
                trade_time=ms(t), is_buyer_maker=maker, is_best_match=True, trade_date=day,
                kafka_partition=partition, kafka_offset=offset, kafka_timestamp=ms(t) + 5)


def kraken(partition: int, offset: int, pair: str, trade_id: int, price: str, volume: str, time: str, side: str,
           *, day: dt.date = DAY) -> dict:
    return dict(channel_id=119930881, pair=pair, price=price, volume=volume, time=time, side=side, order_type="l",
                misc="", trade_id=trade_id, trade_date=day, kafka_partition=partition, kafka_offset=offset,
                kafka_timestamp=ms(at(12, 0, 0)))


def kraken_time(t: dt.datetime) -> str:
    return f"{int(t.timestamp())}.{t.microsecond:06d}"


# Two Binance trades at the same millisecond (ids 100 and 101: the id orders them), one replayed
# (101 again under a new offset), one single-trade window (ETH at 00:05), and one rejected row per reason.
BINANCE_ROWS = [
    binance(0, 0, "BTCUSDT", 100, "67000.10000000", "0.50000000", at(0, 0, 10)),
    binance(0, 1, "BTCUSDT", 101, "67000.30000000", "0.25000000", at(0, 0, 10)),
    binance(0, 2, "BTCUSDT", 102, "66990.00000000", "1.00000000", at(0, 0, 40), maker=True),
    binance(0, 3, "BTCUSDT", 101, "67000.30000000", "0.25000000", at(0, 0, 10)),  # exchange replay
    binance(1, 0, "ETHUSDT", 200, "3480.50000000", "2.00000000", at(0, 5, 0)),
    binance(1, 1, "ETHUSDT", 201, "abc", "1.00000000", at(0, 6, 0)),
    binance(1, 2, "ETHUSDT", 202, "3480.00000000", "0.00000000", at(0, 6, 1)),
    binance(1, 3, "ETHUSDT", 203, "-1.00000000", "1.00000000", at(0, 6, 2)),
    binance(1, 4, "FOOUSDT", 204, "1.00000000", "1.00000000", at(0, 6, 3)),
    binance(1, 5, "ETHUSDT", 205, "3480.00000000", "1.00000000", at(0, 6, 4), event_type="trad"),
    binance(1, 6, "ETHUSDT", 206, "3480.00000000", "1.00000000", at(23, 59, 59, day=DAY - dt.timedelta(days=1))),
    binance(1, 7, "ETHUSDT", 207, "3480.00000000", "", at(0, 6, 5)),
]
KRAKEN_ROWS = [
    kraken(0, 0, "XBT/USD", 900, "67010.10000", "0.10000000", kraken_time(at(0, 0, 20, 123456)), "b"),
    kraken(0, 1, "XBT/USD", 901, "67011.00000", "0.20000000", kraken_time(at(0, 1, 5, 1)), "s"),
    kraken(0, 2, "XBT/USD", 902, "67011.00000", "0.20000000", "garbage", "s"),
    kraken(0, 3, "XBT/USD", 903, "67011.00000", "0.20000000", "", "s"),
    kraken(0, 4, "XBT/USD", 904, "67011.00000", "0.20000000", kraken_time(at(0, 1, 6)), "x"),
]

# (exchange, symbol, exchange_symbol, trade_id, price, quantity, quote_volume, side, trade_ts, partition, offset)
EXPECTED_SILVER = [
    ("binance", "BTC/USDT", "BTCUSDT", 100, D("67000.10"), D("0.5"), D("33500.05"), "buy", at(0, 0, 10), 0, 0),
    ("binance", "BTC/USDT", "BTCUSDT", 101, D("67000.30"), D("0.25"), D("16750.075"), "buy", at(0, 0, 10), 0, 1),
    ("binance", "BTC/USDT", "BTCUSDT", 102, D("66990"), D("1"), D("66990"), "sell", at(0, 0, 40), 0, 2),
    ("binance", "ETH/USDT", "ETHUSDT", 200, D("3480.5"), D("2"), D("6961"), "buy", at(0, 5, 0), 1, 0),
    ("kraken", "BTC/USD", "XBT/USD", 900, D("67010.1"), D("0.1"), D("6701.01"), "buy", at(0, 0, 20, 123456), 0, 0),
    ("kraken", "BTC/USD", "XBT/USD", 901, D("67011"), D("0.2"), D("13402.2"), "sell", at(0, 1, 5, 1), 0, 1),
]
# (exchange, partition, offset, reason)
EXPECTED_REJECTED = [
    ("binance", 1, 1, "non_numeric_price"),
    ("binance", 1, 2, "non_positive_quantity"),
    ("binance", 1, 3, "non_positive_price"),
    ("binance", 1, 4, "unknown_symbol"),
    ("binance", 1, 5, "malformed_message"),
    ("binance", 1, 6, "trade_time_outside_day"),
    ("binance", 1, 7, "non_numeric_quantity"),
    ("kraken", 0, 2, "unparseable_trade_time"),
    ("kraken", 0, 3, "missing_trade_time"),
    ("kraken", 0, 4, "malformed_message"),
]
# (exchange, symbol, window_start, open, high, low, close, volume, quote_volume, vwap, trade_count)
EXPECTED_1M = [
    ("binance", "BTC/USDT", at(0, 0, 0), D("67000.1"), D("67000.3"), D("66990"), D("66990"), D("1.75"), D("117240.125"),
     D("66994.35714286"), 3),
    ("binance", "ETH/USDT", at(0, 5, 0), D("3480.5"), D("3480.5"), D("3480.5"), D("3480.5"), D("2"), D("6961"), D("3480.5"), 1),
    ("kraken", "BTC/USD", at(0, 0, 0), D("67010.1"), D("67010.1"), D("67010.1"), D("67010.1"), D("0.1"), D("6701.01"), D("67010.1"), 1),
    ("kraken", "BTC/USD", at(0, 1, 0), D("67011"), D("67011"), D("67011"), D("67011"), D("0.2"), D("13402.2"), D("67011"), 1),
]
EXPECTED_1D = [
    ("binance", "BTC/USDT", at(0, 0, 0), D("67000.1"), D("67000.3"), D("66990"), D("66990"), D("1.75"), D("117240.125"),
     D("66994.35714286"), 3),
    ("binance", "ETH/USDT", at(0, 0, 0), D("3480.5"), D("3480.5"), D("3480.5"), D("3480.5"), D("2"), D("6961"), D("3480.5"), 1),
    # kraken: (6701.01 + 13402.2) / 0.3 = 67010.7 exactly
    ("kraken", "BTC/USD", at(0, 0, 0), D("67010.1"), D("67011"), D("67010.1"), D("67011"), D("0.3"), D("20103.21"), D("67010.7"), 2),
]


def _offload_and_build(lake: Lake, day: dt.date = DAY) -> tuple[dict, dict]:
    cat = iceberg.catalog(lake.settings)
    for hot in HOT_TABLES.values():
        offload.offload_day(iceberg.bronze_table(cat, hot), lake.client(), hot, day)
    return build_silver_day(cat, day, run_id="test"), build_gold_day(cat, day, run_id="test")


def _rows(lake: Lake, contract, columns=None) -> list[tuple]:
    table = iceberg.catalog(lake.settings).load_table(contract.identifier)
    data = table.scan(selected_fields=tuple(columns or contract.column_names)).to_arrow().sort_by(
        [(c, "ascending") for c in contract.sort_columns])
    return [tuple(r.values()) for r in data.to_pylist()]


@pytest.fixture
def built(lake: Lake):
    client = lake.client()
    insert_rows(client, BINANCE, BINANCE_ROWS)
    insert_rows(client, KRAKEN, KRAKEN_ROWS)
    silver, gold = _offload_and_build(lake)
    return lake, silver, gold


def test_hand_built_day_gives_the_expected_rows(built) -> None:
    lake, silver, gold = built
    assert all(r.published and r.passed for r in (*silver.values(), *gold.values()))
    assert _rows(lake, SILVER_TRADES) == EXPECTED_SILVER
    assert _rows(lake, SILVER_REJECTED, ["exchange", "kafka_partition", "kafka_offset", "reason"]) == EXPECTED_REJECTED
    assert _rows(lake, GOLD_TABLES["1m"]) == EXPECTED_1M
    assert _rows(lake, GOLD_TABLES["1d"]) == EXPECTED_1D
    # 5m..1h hold the same bars as 1d here except ETH's window and Kraken's two minutes merge per interval
    assert [r[:3] for r in _rows(lake, GOLD_TABLES["5m"])] == [
        ("binance", "BTC/USDT", at(0, 0, 0)), ("binance", "ETH/USDT", at(0, 5, 0)), ("kraken", "BTC/USD", at(0, 0, 0))]

    accounted = {c.name: c for c in silver["silver.trades"].checks}["every_position_accounted_for"]
    assert accounted.details["bronze_rows"] == 17
    assert (accounted.details["silver_rows"], accounted.details["replays_dropped"], accounted.details["rejected_rows"]) == (6, 1, 10)


def test_rejected_rows_keep_their_raw_values(built) -> None:
    lake, _, _ = built
    rows = {(r[0], r[1], r[2]): r for r in _rows(lake, SILVER_REJECTED)}
    names = SILVER_REJECTED.column_names
    garbage = dict(zip(names, rows[("kraken", 0, 2)]))
    assert garbage == {
        "exchange": "kraken", "kafka_partition": 0, "kafka_offset": 2, "trade_date": DAY, "reason": "unparseable_trade_time",
        "raw_symbol": "XBT/USD", "raw_trade_id": "902", "raw_price": "67011.00000", "raw_quantity": "0.20000000",
        "raw_time": "garbage", "raw_side": "s",
    }
    assert dict(zip(names, rows[("binance", 1, 1)]))["raw_price"] == "abc"


def test_rerun_is_idempotent(built) -> None:
    lake, silver, gold = built
    before = {c.qualified_name: _rows(lake, c) for c in (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values())}
    cat = iceberg.catalog(lake.settings)
    again_silver, again_gold = build_silver_day(cat, DAY), build_gold_day(cat, DAY)
    assert all(r.published for r in (*again_silver.values(), *again_gold.values()))
    after = {c.qualified_name: _rows(lake, c) for c in (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values())}
    assert after == before
    # the day was replaced, not appended to: one data file per table for the day
    table = cat.load_table(SILVER_TRADES.identifier)
    assert len(iceberg.partition_files(table, SILVER_TRADES, DAY)) == 1


def test_late_trade_reaches_the_bars(built) -> None:
    lake, silver, _ = built
    bronze_before = silver["silver.trades"].upstream
    insert_rows(lake.client(), BINANCE, [binance(0, 4, "BTCUSDT", 103, "67100.00000000", "0.10000000", at(0, 0, 50))])
    silver2, gold2 = _offload_and_build(lake)
    assert silver2["silver.trades"].upstream != bronze_before  # computed from the new bronze snapshot
    assert silver2["silver.trades"].data_version != silver["silver.trades"].data_version
    bar = _rows(lake, GOLD_TABLES["1m"])[0]
    assert bar[3:] == (D("67000.1"), D("67100"), D("66990"), D("67100"), D("1.85"), D("123950.125"), D("67000.06756757"), 4)
    assert gold2["gold.ohlcv_1m"].upstream == {"silver.trades": silver2["silver.trades"].snapshot_id}


def test_publishing_a_day_keeps_every_other_day(built) -> None:
    """Each audit branch forks from main: publishing day D+1 leaves day D exactly as it was."""
    lake, silver, gold = built
    next_day = DAY + dt.timedelta(days=1)
    insert_rows(lake.client(), BINANCE, [binance(5, 0, "BTCUSDT", 900, "1.00000000", "2.00000000", at(3, 0, 0, day=next_day), day=next_day)])
    before = {c.qualified_name: _rows(lake, c) for c in (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values())}
    _offload_and_build(lake, next_day)
    cat = iceberg.catalog(lake.settings)
    for contract in (SILVER_TRADES, SILVER_REJECTED, *GOLD_TABLES.values()):
        rows = _rows(lake, contract)
        assert [r for r in rows if r in before[contract.qualified_name]] == before[contract.qualified_name]
        table = cat.load_table(contract.identifier)
        assert iceberg.partition_summary(table, DAY)["k2.partition"] == DAY.isoformat()  # the day's commit is in main's history
    assert len(_rows(lake, SILVER_TRADES)) == len(EXPECTED_SILVER) + 1
    from k2_lakehouse.core import gold as gold_layer, silver as silver_layer
    assert silver_layer.is_current(cat, DAY) and gold_layer.is_current(cat, DAY)
    assert silver_layer.is_current(cat, next_day) and gold_layer.is_current(cat, next_day)
