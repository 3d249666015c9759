"""Property-based tests of the silver normalizer: the silver SQL texts on DuckDB over generated bronze days of
both exchanges, good and hostile values mixed, checked against a plain-Python statement of the rules.

Pure: no services. Deterministic (derandomized, no example database), and modest: the machine is shared.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pyarrow as pa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from k2_lakehouse.core.contracts import (
    BINANCE, KRAKEN, MAX_MESSAGE_TEXT, REJECT_REASONS, TRADE_TIME_MAX_AHEAD_US, TRADE_TIME_MAX_LATE_US,
    UNDECODABLE_PREFIX, canonical_symbols, symbol_map,
)
from k2_lakehouse.core.engine import DuckDBEngine, sql_text
from k2_lakehouse.core.silver import accounting_outcome, partition_day, symbol_map_table

DAY = dt.date(2026, 5, 6)
DAY_US = 86_400_000_000
START_US = (DAY - dt.date(1970, 1, 1)).days * DAY_US
SYMBOLS = {(m.exchange, m.exchange_symbol): m.symbol for m in symbol_map()}
PROFILE = settings(max_examples=60, derandomize=True, database=None, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- generated values: mostly what exchanges send, often what hostile feeds send -------------------------

HOSTILE_TEXT = st.sampled_from([
    "", "NaN", "nan", "inf", "-inf", "Infinity", "1e5", "0x10", "1_000", " 1.5", "1.5 ", "1.5\n", "+1.5", "1,5",
    "１.５", ".5", "5.", "--1", "0", "-0", "0.00000000", "12345678901", "1.123456789", "99999999999.99999999",
    "\x00", "BTC\x00USDT", "'; DROP TABLE x; --", UNDECODABLE_PREFIX + "ff", "9" * (MAX_MESSAGE_TEXT + 1),
])


def decimal_text(max_int_digits: int = 12, max_decimals: int = 10) -> st.SearchStrategy[str]:
    """Plain decimal strings as exchanges send them, sometimes beyond decimal(18,8) or signed."""
    return st.builds(
        lambda sign, whole, frac: f"{sign}{whole}{'.' + frac if frac else ''}",
        st.sampled_from(["", "", "", "-"]),
        st.from_regex(rf"\A[0-9]{{1,{max_int_digits}}}\Z", fullmatch=True),
        st.one_of(st.just(""), st.from_regex(rf"\A[0-9]{{1,{max_decimals}}}\Z", fullmatch=True)),
    )


# a positive decimal(18,8) as exchanges write it: 2 to 8 decimals, at most 10 integer digits
GOOD_NUMBER = st.builds(lambda units, scale: f"{units // 10**scale}.{units % 10**scale:0{scale}d}",
                        st.integers(1, 10**12), st.integers(2, 8))
NUMBER = st.one_of(decimal_text(), decimal_text(10, 8), HOSTILE_TEXT, st.text(max_size=8))


def symbol(exchange: str) -> st.SearchStrategy[str]:
    known = sorted(s for ex, s in SYMBOLS if ex == exchange)
    other = sorted(s for ex, s in SYMBOLS if ex != exchange)
    return st.one_of(
        st.sampled_from(known).map(str.lower), st.sampled_from(other), HOSTILE_TEXT, st.text(max_size=10),
    )


def trade_us() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(START_US - 2 * DAY_US, START_US + 2 * DAY_US),  # around the day
        st.integers(0, 2**62),  # anywhere, 1970 to far beyond 9999
    )


def record_ms(trade: int) -> st.SearchStrategy[int]:
    """The feed record's timestamp: mostly just after the trade, sometimes days or years away."""
    near = max(trade // 1000, 0)
    return st.one_of(st.integers(near, near + 3 * 86_400_000), st.integers(START_US // 1000, (START_US + DAY_US) // 1000))


@st.composite
def message(draw, exchange: str) -> dict:
    """A good message of `exchange`, then none, one or a few of its fields replaced by what hostile feeds send."""
    binance = exchange == "binance"
    trade = draw(st.integers(START_US, START_US + DAY_US - 1))
    sym, qty = ("symbol", "quantity") if binance else ("pair", "volume")
    good = {
        sym: draw(st.sampled_from(sorted(s for ex, s in SYMBOLS if ex == exchange))),
        "price": draw(GOOD_NUMBER), qty: draw(GOOD_NUMBER), "trade_id": draw(st.integers(0, 4)),
        "trade_us": trade, "kafka_timestamp": trade // 1000 + draw(st.integers(0, 5_000)),
    }
    faults = {
        sym: symbol(exchange), "price": NUMBER, qty: NUMBER, "trade_us": trade_us(),
        "kafka_timestamp": st.integers(0, 2**53),
    }
    if binance:
        good |= {"event_type": "trade", "is_buyer_maker": draw(st.booleans())}
        faults |= {"event_type": st.sampled_from(["aggTrade", "", "TRADE", UNDECODABLE_PREFIX + "ff"]),
                   "trade_time": st.integers(0, 2**63 - 1)}
    else:
        good |= {"side": draw(st.sampled_from(["b", "s"])), "order_type": draw(st.sampled_from(["l", "m"])), "misc": ""}
        faults |= {
            "side": st.sampled_from(["x", "", "B", "buy"]), "order_type": st.sampled_from(["", UNDECODABLE_PREFIX + "00"]),
            "misc": st.one_of(st.text(max_size=5), st.just("x" * MAX_MESSAGE_TEXT)),
            "time": st.one_of(st.just(""), HOSTILE_TEXT, st.text(max_size=20), st.from_regex(r"\A[0-9e+\-. ]{1,20}\Z", fullmatch=True),
                              st.just(f"{trade / 1e6:.3f}")),
        }
    chosen = draw(st.one_of(st.just([]), st.lists(st.sampled_from(sorted(faults)), min_size=1, max_size=2, unique=True)))
    m = good | {name: draw(faults[name]) for name in chosen}
    if "kafka_timestamp" not in chosen and "trade_us" in chosen:  # a record produced when that trade was
        m["kafka_timestamp"] = draw(record_ms(m["trade_us"]))
    t = m.pop("trade_us")
    if binance:
        m.setdefault("trade_time", t // 1000)
        return m | {"event_time": m["trade_time"], "is_best_match": True}
    m.setdefault("time", f"{t // 1_000_000}.{t % 1_000_000:06d}")
    return m | {"channel_id": 119930881}


@st.composite
def bronze_day(draw, hot) -> pa.Table:
    """A bronze day partition: messages, plus replays (a message again under a later position) and
    conflicting repeats (the same trade id with another price), at distinct feed positions."""
    messages = draw(st.lists(message(hot.exchange), max_size=25))
    for i in draw(st.lists(st.integers(0, max(len(messages) - 1, 0)), max_size=6)) if messages else []:
        again = dict(messages[i])
        if draw(st.booleans()):
            again["price"] = draw(NUMBER)
        messages.append(again)
    rows = []
    for offset, m in enumerate(messages):
        rows.append({**m, "trade_date": DAY, "kafka_partition": offset % 2, "kafka_offset": offset,
                     "ingested_at": dt.datetime(2026, 5, 6, tzinfo=dt.timezone.utc)})
    return pa.Table.from_pylist(rows, schema=hot.arrow_schema)


# --- the rules, stated once more in Python ---------------------------------------------------------------

EXACT = re.compile(r"-?[0-9]{1,10}(\.[0-9]{1,8})?")
NUMERIC = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def expected_reason(exchange: str, r: dict) -> tuple[str | None, tuple]:
    """The reason a row is rejected (None: valid) and, for a valid row, (symbol, price, quantity, side, µs)."""
    if exchange == "binance":
        texts = [r["event_type"], r["symbol"], r["price"], r["quantity"]]
        well_formed, raw_symbol, price, qty = r["event_type"] == "trade", r["symbol"], r["price"], r["quantity"]
        raw_time = str(r["trade_time"])
        time_us = r["trade_time"] * 1000 if r["trade_time"] <= 9223372036854775 else None
        side = "sell" if r["is_buyer_maker"] else "buy"
    else:
        texts = [r[c] for c in ("pair", "price", "volume", "time", "side", "order_type", "misc")]
        well_formed, raw_symbol, price, qty, raw_time = r["side"] in ("b", "s"), r["pair"], r["price"], r["volume"], r["time"]
        t = raw_time
        ok = t.find(".") + 1 == len(t) - 6 and len(t) <= 19 and re.sub("[0-9]", "", t) == "."
        time_us = int(t.replace(".", "")) if ok else None
        side = {"b": "buy", "s": "sell"}.get(r["side"])
    symbol_ = SYMBOLS.get((exchange, raw_symbol))
    record_us = min(r["kafka_timestamp"], 9_000_000_000_000_000) * 1000
    checks = [
        (sum(len(t) for t in texts) > MAX_MESSAGE_TEXT, "oversized_message"),
        (any(t.startswith(UNDECODABLE_PREFIX) for t in texts), "invalid_utf8"),
        (not well_formed, "malformed_message"),
        (symbol_ is None, "unknown_symbol"),
        (raw_time == "", "missing_trade_time"),
        (time_us is None, "unparseable_trade_time"),
        (lambda: not record_us - TRADE_TIME_MAX_LATE_US <= time_us <= record_us + TRADE_TIME_MAX_AHEAD_US, "implausible_trade_time"),
        (lambda: not START_US <= time_us < START_US + DAY_US, "trade_time_outside_day"),
        (not NUMERIC.fullmatch(price), "non_numeric_price"),
        (not EXACT.fullmatch(price), "price_out_of_range"),
        (not NUMERIC.fullmatch(qty), "non_numeric_quantity"),
        (not EXACT.fullmatch(qty), "quantity_out_of_range"),
        (lambda: Decimal(price) <= 0, "non_positive_price"),
        (lambda: Decimal(qty) <= 0, "non_positive_quantity"),
    ]
    for failed, reason in checks:
        if failed() if callable(failed) else failed:
            return reason, ()
    return None, (symbol_, Decimal(price), Decimal(qty), side, time_us)


def expected_outcomes(days: dict[str, pa.Table]) -> dict[tuple, str]:
    """Position -> "silver", "replay" or the reject reason: the first feed position of a trade identity is
    kept; a later one is a replay when it carries the same trade, else a conflicting duplicate."""
    outcomes, first = {}, {}
    for exchange, table in days.items():
        for r in sorted(table.to_pylist(), key=lambda r: (r["kafka_partition"], r["kafka_offset"])):
            position = (exchange, r["kafka_partition"], r["kafka_offset"])
            reason, trade = expected_reason(exchange, r)
            if reason is None:
                identity = (exchange, trade[0], r["trade_id"])
                if identity not in first:
                    first[identity], reason = trade, "silver"
                else:
                    reason = "replay" if first[identity] == trade else "conflicting_duplicate"
            outcomes[position] = reason
    return outcomes


# --- the property ---------------------------------------------------------------------------------------


def normalize(days: dict[str, pa.Table]) -> tuple[list[dict], list[dict], list[dict]]:
    """The silver texts on DuckDB, as `build_silver_day` runs them: silver rows, rejected rows, accounting."""
    with DuckDBEngine() as eng:
        eng.register_arrow("bronze_trades_binance", days["binance"])
        eng.register_arrow("bronze_trades_kraken", days["kraken"])
        eng.register_arrow("symbol_map", symbol_map_table())
        eng.register_arrow("partition_day", partition_day(DAY))
        eng.materialize("silver_normalized", sql_text("silver_normalized"))
        silver = eng.arrow(sql_text("silver_trades"))
        rejected = eng.arrow(sql_text("silver_trades_rejected"))
        eng.register_arrow("silver_trades", silver)
        eng.register_arrow("silver_trades_rejected", rejected)
        accounting = eng.arrow(sql_text("check_silver_accounting")).to_pylist()
    return silver.to_pylist(), rejected.to_pylist(), accounting


@PROFILE
@given(binance=bronze_day(BINANCE), kraken=bronze_day(KRAKEN))
def test_every_position_ends_in_exactly_one_place_by_the_rules(binance: pa.Table, kraken: pa.Table) -> None:
    days = {"binance": binance, "kraken": kraken}
    silver, rejected, accounting = normalize(days)  # never raises, whatever the input

    kept = [(r["exchange"], r["kafka_partition"], r["kafka_offset"]) for r in silver]
    refused = [(r["exchange"], r["kafka_partition"], r["kafka_offset"]) for r in rejected]
    assert len(set(kept)) == len(kept) and len(set(refused)) == len(refused) and not set(kept) & set(refused)
    actual = {p: "silver" for p in kept} | {(r["exchange"], r["kafka_partition"], r["kafka_offset"]): r["reason"] for r in rejected}
    expected = expected_outcomes(days)
    for outcome in set(expected.values()):
        event(outcome)  # `pytest --hypothesis-show-statistics` shows how often each outcome was reached
    assert set(actual) <= set(expected), "no position is invented"
    assert {p: actual.get(p, "replay") for p in expected} == expected

    # rejected rows: a known, non-empty reason and the raw values of their bronze row
    assert all(r["reason"] in REJECT_REASONS for r in rejected)
    raw = {(ex, r["kafka_partition"], r["kafka_offset"]): r for ex, t in days.items() for r in t.to_pylist()}
    for r in rejected:
        source = raw[(r["exchange"], r["kafka_partition"], r["kafka_offset"])]
        assert r["raw_price"] == source["price"] and r["raw_symbol"] == source["symbol" if r["exchange"] == "binance" else "pair"]

    # silver rows: canonical symbols, exact decimals equal to the sent strings, one row per trade identity
    assert len({(r["exchange"], r["symbol"], r["trade_id"]) for r in silver}) == len(silver)
    for r in silver:
        source = raw[(r["exchange"], r["kafka_partition"], r["kafka_offset"])]
        assert r["symbol"] in canonical_symbols() and r["symbol"] == SYMBOLS[(r["exchange"], r["exchange_symbol"])]
        assert r["price"] == Decimal(source["price"]) > 0
        assert r["quantity"] == Decimal(source["volume" if r["exchange"] == "kraken" else "quantity"]) > 0
        assert r["quote_volume"] == r["price"] * r["quantity"]
        assert r["side"] in ("buy", "sell")
        assert START_US <= int(r["trade_ts"].timestamp() * 1_000_000) < START_US + DAY_US

    # the accounting check of silver agrees: every position in silver, rejected or a dropped replay
    outcome = accounting_outcome(accounting)
    assert outcome.passed, outcome.details
    assert outcome.details["replays_dropped"] == sum(v == "replay" for v in expected.values())
