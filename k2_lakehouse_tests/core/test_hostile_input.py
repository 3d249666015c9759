"""Hostile input on real services: one message of every bad class a real feed delivers, per exchange, among
ordinary traffic, through the hot tier, bronze, silver and gold. Bronze keeps each byte for byte, silver
rejects each with its reason, nothing crashes and no feed position disappears."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest

from k2_lakehouse.cli import main
from k2_lakehouse.core import bronze, feed, hot_tier, iceberg
from k2_lakehouse.core.contracts import (
    GOLD_TABLES, HOT_TABLES, MAX_MESSAGE_TEXT, REJECT_REASONS, SILVER_REJECTED, SILVER_TRADES, UNDECODABLE_PREFIX,
    text_bytes, text_value,
)
from k2_lakehouse.core.engine import sql_text
from k2_lakehouse.core.gold import build_gold_day
from k2_lakehouse.core.silver import ACCOUNTED_CHECK, build_silver_day
from k2_lakehouse_tests.support import Lake

DAY = dt.date(2026, 5, 6)

# Where each hostile class ends: "silver" (kept), "replay" (a repeat of a kept trade: dropped, counted as a
# replay) or the reason silver.trades_rejected gives. Both exchanges, each in its own message shape.
EXPECTED = {
    "valid": "silver",
    "exact_replay": "replay",
    "conflicting_duplicate": "conflicting_duplicate",  # same trade id, other price: the first position wins
    "price_empty": "non_numeric_price",
    "price_nan": "non_numeric_price",
    "price_infinite": "non_numeric_price",
    "price_negative": "non_positive_price",
    "price_zero": "non_positive_price",
    "price_overflow": "price_out_of_range",
    "price_too_precise": "price_out_of_range",
    "price_line_break": "non_numeric_price",
    "quantity_empty": "non_numeric_quantity",
    "quantity_nan": "non_numeric_quantity",
    "quantity_infinite": "non_numeric_quantity",
    "quantity_negative": "non_positive_quantity",
    "quantity_zero": "non_positive_quantity",
    "quantity_overflow": "quantity_out_of_range",
    "quantity_too_precise": "quantity_out_of_range",
    "symbol_unknown": "unknown_symbol",
    "symbol_lowercase": "unknown_symbol",  # symbols match exactly: btcusdt is not BTCUSDT
    "symbol_invalid_utf8": "invalid_utf8",
    "symbol_control_chars": "unknown_symbol",
    "symbol_sql": "unknown_symbol",
    "trade_time_1970": "implausible_trade_time",  # dated by its record timestamp, rejected in that day
    "trade_time_far_future": "implausible_trade_time",
    "oversized": "oversized_message",
    "event_type_invalid": "malformed_message",
    "side_invalid": "malformed_message",
    "time_garbage": "unparseable_trade_time",
    "time_empty": "missing_trade_time",
    "time_scientific": "unparseable_trade_time",
}


def test_every_class_has_an_expected_outcome() -> None:
    for exchange in HOT_TABLES:
        kinds = feed.hostile_kinds(exchange)
        assert len(kinds) == len(set(kinds))
        assert set(kinds) <= set(EXPECTED), f"{exchange}: no expected outcome for {set(kinds) - set(EXPECTED)}"
    assert {v for v in EXPECTED.values() if v not in ("silver", "replay")} <= set(REJECT_REASONS)


def test_hostile_messages_are_deterministic_and_in_each_exchanges_shape() -> None:
    for exchange, hot in HOT_TABLES.items():
        once = feed.hostile_messages(exchange, DAY, salt=7, next_offsets={0: 5})
        assert once == feed.hostile_messages(exchange, DAY, salt=7, next_offsets={0: 5})
        for m in once:
            assert set(m.row) == set(hot.column_names) - {"ingested_at"}
            assert m.row["trade_date"] == DAY, f"{m.kind}: every hostile message is dated to the day it was produced"
        positions = [(m.row["kafka_partition"], m.row["kafka_offset"]) for m in once]
        assert len(set(positions)) == len(positions) and min(o for p, o in positions if p == 0) == 5


def test_text_values_round_trip_every_byte_string() -> None:
    for raw in (b"", b"BTCUSDT", b"\x00\x1b\r\n", b"\xff", b"XBT/\xc3\x28USD", "é€😀".encode(),
                UNDECODABLE_PREFIX.encode() + b"41", b"x" * 1000):
        value = text_value(raw)
        assert text_bytes(value) == raw
        value.encode("utf-8")  # always valid UTF-8
    assert text_value(b"BTCUSDT") == "BTCUSDT"  # UTF-8 values are copied unchanged
    assert text_value(b"\xff") == UNDECODABLE_PREFIX + "ff"
    for name in ("silver_normalized",):  # the SQL recognises exactly the contract's prefix
        assert f"LIKE '{UNDECODABLE_PREFIX}%'" in sql_text(name)


def _bronze_rows(lake: Lake, hot) -> dict[tuple[int, int], dict]:
    table = iceberg.catalog(lake.settings).load_table(hot.bronze.identifier)
    rows = table.scan(row_filter=iceberg.day_filter(hot.bronze, DAY)).to_arrow().to_pylist()
    return {(r["kafka_partition"], r["kafka_offset"]): r for r in rows}


def _hot_bytes(lake: Lake, hot) -> dict[tuple[int, int], dict]:
    client = hot_tier.connect(lake.settings)
    try:
        names = [n for n in hot.column_names if n != "ingested_at"]
        rows = client.execute(f"SELECT {', '.join(names)} FROM {hot.name}",
                              settings={"use_numpy": False, "strings_as_bytes": True})
    finally:
        client.disconnect()
    return {(r["kafka_partition"], r["kafka_offset"]): r for r in (dict(zip(names, row)) for row in rows)}


def _table_rows(lake: Lake, contract) -> list[dict]:
    table = iceberg.catalog(lake.settings).load_table(contract.identifier)
    return table.scan(row_filter=iceberg.day_filter(contract, DAY)).to_arrow().to_pylist()


def test_every_hostile_class_is_kept_in_bronze_and_quarantined_in_silver(lake: Lake) -> None:
    feed.seed(lake.settings, DAY, 2_000, seed=5, progress=False)  # ordinary traffic around the hostile messages
    report, written = feed.hostile(lake.settings, DAY, seed=5)
    assert {c.exchange: c.messages for c in report.exchanges} == {ex: len(feed.hostile_kinds(ex)) for ex in HOT_TABLES}
    assert report.days == (DAY,)

    # Bronze: every run passes its checks, and holds every hostile message byte for byte.
    for exchange, hot in HOT_TABLES.items():
        client = lake.client()
        assert list(hot_tier.high_offsets_by_day(client, hot)) == [DAY], "no message was dated to 1970 or 9999"
        client.disconnect()
        result = bronze.build_bronze_day(lake.settings, hot, DAY)
        assert all(c.passed for c in result.checks), [c.summary() for c in result.checks]
        held, in_hot = _bronze_rows(lake, hot), _hot_bytes(lake, hot)
        assert len(held) == len(in_hot)
        for m in written[exchange]:
            position = (m.row["kafka_partition"], m.row["kafka_offset"])
            assert in_hot[position] == m.row, f"{exchange} {m.kind}: the hot tier holds it as sent"
            kept = held[position]
            for column, sent in m.row.items():
                value = kept[column]
                got = text_bytes(value) if isinstance(sent, bytes) else value
                assert got == sent, f"{exchange} {m.kind}: bronze.{column} is not what was sent"

    # Silver and gold: built, every check passed.
    cat = iceberg.catalog(lake.settings)
    silver = build_silver_day(cat, DAY, run_id="hostile")
    gold = build_gold_day(cat, DAY, run_id="hostile")
    assert all(r.published and r.passed for r in (*silver.values(), *gold.values())), [
        c.summary() for r in (*silver.values(), *gold.values()) for c in r.checks if not c.passed]
    accounted = {c.name: c for c in silver[SILVER_TRADES.qualified_name].checks}[ACCOUNTED_CHECK]
    assert accounted.passed and accounted.details["unaccounted"] == 0 and accounted.details["extra_positions"] == 0
    assert accounted.details["replays_dropped"] >= len(HOT_TABLES)  # at least each exchange's exact replay

    kept = {(r["exchange"], r["kafka_partition"], r["kafka_offset"]): r for r in _table_rows(lake, SILVER_TRADES)}
    rejected = {(r["exchange"], r["kafka_partition"], r["kafka_offset"]): r for r in _table_rows(lake, SILVER_REJECTED)}
    outcomes = {}
    for exchange, messages in written.items():
        for m in messages:
            position = (exchange, m.row["kafka_partition"], m.row["kafka_offset"])
            outcomes[(exchange, m.kind)] = (
                "silver" if position in kept else rejected[position]["reason"] if position in rejected else "replay"
            )
    assert outcomes == {(ex, m.kind): EXPECTED[m.kind] for ex, ms in written.items() for m in ms}

    # The first delivery of a duplicated trade id wins; the conflicting one keeps its own raw values.
    for exchange, messages in written.items():
        by_kind = {m.kind: m for m in messages}
        first = kept[(exchange, by_kind["valid"].row["kafka_partition"], by_kind["valid"].row["kafka_offset"])]
        assert first["price"] == D(by_kind["valid"].row["price"].decode())
        clash = by_kind["conflicting_duplicate"].row
        raw = rejected[(exchange, clash["kafka_partition"], clash["kafka_offset"])]
        assert raw["raw_price"] == clash["price"].decode() and raw["raw_trade_id"] == str(first["trade_id"])
        # Rejected rows carry the raw values as bronze holds them: exact bytes back, 1 MiB included.
        bad = by_kind["symbol_invalid_utf8"].row
        raw = rejected[(exchange, bad["kafka_partition"], bad["kafka_offset"])]
        assert text_bytes(raw["raw_symbol"]) == bad[HOT_TABLES[exchange].symbol_column]
        big = by_kind["oversized"].row
        raw = rejected[(exchange, big["kafka_partition"], big["kafka_offset"])]
        assert raw["raw_symbol"].encode() == big[HOT_TABLES[exchange].symbol_column]
        assert max(len(v) for v in big.values() if isinstance(v, bytes)) == feed.MIB > MAX_MESSAGE_TEXT

    # Gold holds the kept trades only: its bars add up to silver (checked above) and nothing priced by a reject.
    bars = _table_rows(lake, GOLD_TABLES["1d"])
    assert bars and all(b["high"] < D("10000000000") for b in bars)


def test_k2_feed_seed_hostile(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["feed", "seed", "--date", DAY.isoformat(), "--rows", "100", "--hostile", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "feed seed (seed 0)" in out and "feed hostile (seed 0)" in out
    for exchange, hot in HOT_TABLES.items():
        sent = {m.row[hot.symbol_column] for m in feed.hostile_messages(exchange, DAY)}
        held = {r[hot.symbol_column] for r in _hot_bytes(lake, hot).values()}
        assert sent <= held, f"{exchange}: every hostile symbol reached the hot tier as sent"
