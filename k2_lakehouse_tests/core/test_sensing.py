"""The hot-tier sensor's decisions, as pure logic: what is requested, once, and what the cursor keeps."""

from __future__ import annotations

import datetime as dt

from k2_lakehouse.core.sensing import BronzeRequest, bronze_requests, decode_cursor, encode_cursor

D1, D2 = dt.date(2026, 3, 14), dt.date(2026, 3, 15)


def _never_offloaded(table: str, day: dt.date) -> dict[int, int]:
    return {}


def test_a_new_day_is_requested_once_per_set_of_offsets() -> None:
    requests, cursor = bronze_requests({"trades_binance": {D1: {0: 99}}}, {}, _never_offloaded)
    assert requests == [BronzeRequest("trades_binance", D1, {0: 99})]
    assert requests[0].run_key == "trades_binance/2026-03-14/0:99"
    again, same = bronze_requests({"trades_binance": {D1: {0: 99}}}, decode_cursor(encode_cursor(cursor)), _never_offloaded)
    assert again == [] and same == cursor  # a restarted daemon with the stored cursor requests nothing
    moved, _ = bronze_requests({"trades_binance": {D1: {0: 120}}}, cursor, _never_offloaded)
    assert [r.run_key for r in moved] == ["trades_binance/2026-03-14/0:120"]


def test_days_already_copied_are_not_requested_but_remembered() -> None:
    copied = {("trades_binance", D1): {0: 99}}
    requests, cursor = bronze_requests(
        {"trades_binance": {D1: {0: 99}, D2: {0: 5, 1: 7}}}, {}, lambda t, d: copied.get((t, d), {}),
    )
    assert [(r.day, r.high) for r in requests] == [(D2, {0: 5, 1: 7})]
    assert cursor == {"trades_binance": {"2026-03-14": {"0": 99}, "2026-03-15": {"0": 5, "1": 7}}}
    # A partition the watermark has not seen yet is work, even when the others are level.
    partial, _ = bronze_requests({"trades_binance": {D1: {0: 99, 2: 0}}}, {}, lambda t, d: copied.get((t, d), {}))
    assert [r.high for r in partial] == [{0: 99, 2: 0}]


def test_a_busy_table_waits_and_keeps_its_cursor() -> None:
    cursor = {"trades_binance": {"2026-03-14": {"0": 50}}}
    highs = {"trades_binance": {D1: {0: 99}}, "trades_kraken": {D1: {0: 9}}}
    requests, new_cursor = bronze_requests(highs, cursor, _never_offloaded, busy={"trades_binance"})
    assert [r.table for r in requests] == ["trades_kraken"]
    assert new_cursor["trades_binance"] == {"2026-03-14": {"0": 50}}  # compared again once the run is done
    later, _ = bronze_requests(highs, new_cursor, lambda t, d: {0: 50})
    assert [(r.table, r.high) for r in later] == [("trades_binance", {0: 99})]


def test_days_that_left_the_hot_tier_leave_the_cursor() -> None:
    cursor = {"trades_binance": {"2026-03-14": {"0": 99}, "2026-03-15": {"0": 3}}}
    _, new_cursor = bronze_requests({"trades_binance": {D2: {0: 3}}}, cursor, _never_offloaded)
    assert new_cursor == {"trades_binance": {"2026-03-15": {"0": 3}}}
    _, busy_cursor = bronze_requests({"trades_binance": {D2: {0: 3}}}, cursor, _never_offloaded, busy={"trades_binance"})
    assert busy_cursor == {"trades_binance": {"2026-03-15": {"0": 3}}}


def test_an_unreadable_cursor_is_empty() -> None:
    assert decode_cursor(None) == {} and decode_cursor("") == {} and decode_cursor("{not json") == {} and decode_cursor("[1]") == {}
