"""The hot-tier sensor's decisions, as pure logic: what is requested, once, and what the cursor keeps."""

from __future__ import annotations

import datetime as dt

from k2_lakehouse.core.sensing import LATE_AFTER_S, BronzeRequest, bronze_request, decode_cursor, encode_cursor

D1, D2 = dt.date(2026, 3, 14), dt.date(2026, 3, 15)


def _never_offloaded(table: str, day: dt.date) -> dict[int, int]:
    return {}


def test_a_new_day_is_requested_once_per_set_of_offsets() -> None:
    request, cursor = bronze_request({"trades_binance": {D1: {0: 99}}, "trades_kraken": {D1: {1: 5}}}, {}, _never_offloaded)
    assert request == BronzeRequest(D1, {"trades_binance": {0: 99}, "trades_kraken": {1: 5}})  # both tables, one run
    assert request.run_key == "2026-03-14/trades_binance:0:99/trades_kraken:1:5"
    again, same = bronze_request(
        {"trades_binance": {D1: {0: 99}}, "trades_kraken": {D1: {1: 5}}}, decode_cursor(encode_cursor(cursor)), _never_offloaded,
    )
    assert again is None and same == cursor  # a restarted daemon with the stored cursor requests nothing
    moved, _ = bronze_request({"trades_binance": {D1: {0: 120}}, "trades_kraken": {D1: {1: 5}}}, cursor, _never_offloaded)
    assert moved.run_key == "2026-03-14/trades_binance:0:120"  # only the table that moved


def test_days_already_copied_are_not_requested_but_remembered() -> None:
    copied = {("trades_binance", D2): {0: 5, 1: 7}}
    request, cursor = bronze_request(
        {"trades_binance": {D1: {0: 99}, D2: {0: 5, 1: 7}}}, {}, lambda t, d: copied.get((t, d), {}),
    )
    assert request == BronzeRequest(D1, {"trades_binance": {0: 99}})
    assert cursor["handled"] == {"trades_binance": {"2026-03-14": {"0": 99}, "2026-03-15": {"0": 5, "1": 7}}}
    # A partition the watermark has not seen yet is work, even when the others are level.
    partial, _ = bronze_request({"trades_binance": {D2: {0: 5, 1: 7, 2: 0}}}, {}, lambda t, d: copied.get((t, d), {}))
    assert partial.highs == {"trades_binance": {0: 5, 1: 7, 2: 0}}


def test_the_newest_day_first_an_older_one_once_overdue() -> None:
    highs = {"trades_binance": {D1: {0: 10}, D2: {0: 20}}, "trades_kraken": {D1: {0: 3}}}
    first, cursor = bronze_request(highs, {}, _never_offloaded, now=1000.0)
    assert first == BronzeRequest(D2, {"trades_binance": {0: 20}})
    assert cursor["waiting"] == {"2026-03-14": 1000.0}  # not requested: not handled either
    moving = {"trades_binance": {D1: {0: 11}, D2: {0: 25}}, "trades_kraken": {D1: {0: 3}}}
    soon, cursor = bronze_request(moving, cursor, _never_offloaded, now=1000.0 + LATE_AFTER_S / 2)
    assert soon.day == D2 and cursor["waiting"] == {"2026-03-14": 1000.0}  # the live day keeps its turn
    late, cursor = bronze_request(
        {"trades_binance": {D1: {0: 12}, D2: {0: 30}}, "trades_kraken": {D1: {0: 3}}}, cursor, _never_offloaded,
        now=1000.0 + LATE_AFTER_S,
    )
    assert late == BronzeRequest(D1, {"trades_binance": {0: 12}, "trades_kraken": {0: 3}})  # overdue: it goes first
    assert cursor["waiting"] == {"2026-03-15": 1000.0 + LATE_AFTER_S}


def test_nothing_is_requested_while_a_bronze_run_is_in_flight() -> None:
    cursor = {"handled": {"trades_binance": {"2026-03-14": {"0": 50}}}}
    highs = {"trades_binance": {D1: {0: 99}}}
    request, new_cursor = bronze_request(highs, cursor, _never_offloaded, busy=True, now=5.0)
    assert request is None
    assert new_cursor == {"handled": {"trades_binance": {"2026-03-14": {"0": 50}}}, "waiting": {"2026-03-14": 5.0}}
    later, _ = bronze_request(highs, new_cursor, lambda t, d: {0: 50}, now=6.0)
    assert later == BronzeRequest(D1, {"trades_binance": {0: 99}})


def test_days_that_left_the_hot_tier_leave_the_cursor() -> None:
    cursor = {"handled": {"trades_binance": {"2026-03-14": {"0": 99}, "2026-03-15": {"0": 3}}}, "waiting": {"2026-03-13": 1.0}}
    _, new_cursor = bronze_request({"trades_binance": {D2: {0: 3}}}, cursor, _never_offloaded)
    assert new_cursor == {"handled": {"trades_binance": {"2026-03-15": {"0": 3}}}, "waiting": {}}


def test_an_unreadable_cursor_is_empty() -> None:
    for raw in (None, "", "{not json", "[1]", '{"handled": [1]}'):
        assert decode_cursor(raw) == {}
