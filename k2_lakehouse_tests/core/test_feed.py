"""The feed simulator against a real ClickHouse (the Debian 18.16 server, started privately per module)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from k2_lakehouse.core import feed, hot_tier
from k2_lakehouse.core.contracts import BINANCE, KRAKEN
from k2_lakehouse.core.settings import Settings

DAY = dt.date(2026, 2, 11)
ROWS = 20_000


@pytest.fixture(scope="module")
def clickhouse(shared_services: Settings) -> Settings:
    return shared_services


def settings_for(services: Settings, database: str) -> Settings:
    """Settings pointing at `database` on the shared server, with fresh hot tables."""
    settings = dataclasses.replace(services, clickhouse_url=services.clickhouse_url.rsplit("/", 1)[0] + f"/{database}")
    client = hot_tier.connect(settings, database="", write=True)
    client.execute(f"DROP DATABASE IF EXISTS {database}")
    hot_tier.create_hot_tables(client, database)
    client.disconnect()
    return settings


def fetch(settings: Settings, table) -> list[dict]:
    client = hot_tier.connect(settings)
    try:
        rows = client.execute(
            f"SELECT {', '.join(table.column_names)} FROM {table.name} ORDER BY kafka_partition, kafka_offset",
            settings={"use_numpy": False},
        )
    finally:
        client.disconnect()
    return [dict(zip(table.column_names, r)) for r in rows]


def content(row: dict) -> tuple:
    """A message without the consumer's write time."""
    return tuple(v for k, v in row.items() if k != "ingested_at")


def record_day(row: dict) -> dt.date:
    """UTC day of the feed record's own timestamp."""
    return dt.datetime.fromtimestamp(row["kafka_timestamp"] / 1000, dt.timezone.utc).date()


def assert_one_day_per_position(settings: Settings, table) -> int:
    """Every feed position lies in exactly one day, and its copies differ in nothing but `ingested_at`.
    Returns the number of redelivered copies."""
    client = hot_tier.connect(settings)
    try:
        split = client.execute(
            f"SELECT kafka_partition, kafka_offset FROM {table.name} GROUP BY kafka_partition, kafka_offset "
            "HAVING uniqExact(trade_date) > 1",
            settings={"use_numpy": False},
        )
    finally:
        client.disconnect()
    assert split == [], f"{table.name}: feed positions filed under two days"
    rows = fetch(settings, table)
    copies = defaultdict(set)
    for r in rows:
        copies[(r["kafka_partition"], r["kafka_offset"])].add(content(r))
    assert all(len(c) == 1 for c in copies.values()), f"{table.name}: redelivered copies differ"
    return len(rows) - len(copies)


# --------------------------------------------------------------------------------------------------
# Message shapes and malformed messages
# --------------------------------------------------------------------------------------------------

KNOWN = {
    "binance": {m.symbol for m in feed.BINANCE_SPEC.markets},
    "kraken": {m.symbol for m in feed.KRAKEN_SPEC.markets},
}
DEC8 = re.compile(r"^[0-9]+\.[0-9]{8}$")
DEC5 = re.compile(r"^[0-9]+\.[0-9]{5}$")
KRAKEN_TIME = re.compile(r"^[0-9]{10}\.[0-9]{6}$")


def is_malformed(exchange: str, row: dict) -> bool:
    if exchange == "binance":
        price, qty, symbol = row["price"], row["quantity"], row["symbol"]
        price_ok = bool(DEC8.match(price))
    else:
        price, qty, symbol = row["price"], row["volume"], row["pair"]
        price_ok = bool(DEC5.match(price))
        if row["side"] not in ("b", "s") or not KRAKEN_TIME.match(row["time"]):
            return True
    qty_ok = bool(DEC8.match(qty)) and float(qty) > 0
    return not (price_ok and qty_ok and float(price) > 0 and symbol in KNOWN[exchange])


# --------------------------------------------------------------------------------------------------
# Pure parts
# --------------------------------------------------------------------------------------------------


def test_format_fixed_is_plain_notation_with_all_decimals():
    values = np.array([6_705_061_000_000, -51_000, 0, 1, -1, 100_000_000, 99_999_999, 123_456_789_012_345_678])
    assert feed.format_fixed(values, 8).tolist() == [
        b"67050.61000000",
        b"-0.00051000",
        b"0.00000000",
        b"0.00000001",
        b"-0.00000001",
        b"1.00000000",
        b"0.99999999",
        b"1234567890.12345678",
    ]
    assert feed.format_fixed(np.array([1_770_813_970_869_180, 5]), 6).tolist() == [b"1770813970.869180", b"0.000005"]
    assert feed.format_fixed(np.array([6_705_060_000]), 5).tolist() == [b"67050.60000"]
    assert feed.format_fixed(np.array([], dtype=np.int64), 8).tolist() == []


def test_partitioner_is_kafkas_murmur2():
    # Kafka's own test vector: murmur2("21") == -973932308, toPositive -> 1173551340.
    assert feed.kafka_partition("21", 2**31) == 1_173_551_340
    for spec in feed.SPECS.values():
        used = {feed.kafka_partition(m.symbol) for m in spec.markets}
        assert used == set(range(feed.PARTITIONS)), f"{spec.name}: every partition carries some symbol"


def test_markets_are_realistic():
    for spec in feed.SPECS.values():
        assert len(spec.markets) >= 10
    kraken = {m.symbol for m in feed.KRAKEN_SPEC.markets}
    assert {"XBT/USD", "XDG/USD"} <= kraken
    assert {"BTCUSDT", "ETHUSDT", "DOGEUSDT"} <= {m.symbol for m in feed.BINANCE_SPEC.markets}


# Kraken messages with an unreadable trade time around the midnight that ends DAY.
MIDNIGHT_US = (DAY + dt.timedelta(days=1) - dt.date(1970, 1, 1)).days * feed.DAY_US
MIDNIGHT_S = MIDNIGHT_US // 1_000_000


@pytest.fixture
def unreadable_times(monkeypatch: pytest.MonkeyPatch) -> feed.ExchangeSpec:
    """A Kraken feed whose every message has an unreadable time, with a consumer restart at every block."""
    monkeypatch.setattr(feed, "MALFORMED_SHARE", 1.0)
    monkeypatch.setattr(feed, "REDELIVERY_SHARE", 0.5)
    return dataclasses.replace(feed.KRAKEN_SPEC, malformations=("time_garbage",))


def around_midnight(spec: feed.ExchangeSpec, first_ingest_s: int, second_ingest_s: int) -> tuple:
    """Two blocks: 200 messages produced in DAY's last second, then 200 produced just after midnight,
    whose insert redelivers the tail of the first (the consumer restarted)."""
    path = feed.FairPath(0, MIDNIGHT_US - feed.DAY_US, 9)
    gen = feed._ExchangeFeed(spec, np.random.default_rng(1), path, salt=5, next_offsets={})
    first = gen.block(MIDNIGHT_US - 1_000_000 + np.arange(200) * 1_000, None, first_ingest_s)
    second = gen.block(MIDNIGHT_US + np.arange(200) * 1_000, None, second_ingest_s)
    return first, second


def test_a_redelivery_after_midnight_keeps_its_day_and_timestamp(unreadable_times):
    first, second = around_midnight(unreadable_times, MIDNIGHT_S - 1, MIDNIGHT_S + 5)
    assert (first.columns["time"] == b"garbage").all() and (second.columns["time"] == b"garbage").all()
    assert (first.columns["kafka_timestamp"] == (MIDNIGHT_US - 1_000_000) // 1000 + np.arange(200)).all()
    again = np.flatnonzero(~second.fresh)
    assert len(again) == second.redelivered > 0
    where = {pos: j for j, pos in enumerate(zip(first.columns["kafka_partition"], first.columns["kafka_offset"]))}
    for i in again:
        j = where[(second.columns["kafka_partition"][i], second.columns["kafka_offset"][i])]
        for name, values in second.columns.items():
            if name != "ingested_at":
                assert values[i] == first.columns[name][j], f"{name} of a redelivered message"
    assert (second.columns["ingested_at"][again] == MIDNIGHT_S + 5).all()  # written again after midnight ...
    assert (second.columns["trade_date"][again] == np.datetime64(DAY)).all()  # ... still in the day it was produced
    assert (second.columns["trade_date"][second.fresh] == np.datetime64(DAY + dt.timedelta(days=1))).all()
    for block in (first, second):  # the day of the record timestamp, always
        stamp_day = (block.columns["kafka_timestamp"].astype(np.int64) // 86_400_000).astype("datetime64[D]")
        assert (block.columns["trade_date"] == stamp_day).all()

    # The consumer's clock plays no part: a consumer lagging past midnight writes the very same messages.
    lagging = around_midnight(unreadable_times, MIDNIGHT_S + 1, MIDNIGHT_S + 3_600)
    for ours, theirs in zip((first, second), lagging):
        assert ours.columns.keys() == theirs.columns.keys()
        for name in ours.columns.keys() - {"ingested_at"}:
            np.testing.assert_array_equal(ours.columns[name], theirs.columns[name], err_msg=name)


def test_a_restart_after_midnight_keeps_each_position_in_one_day(clickhouse, unreadable_times):
    settings = settings_for(clickhouse, "k2midnight")
    client = hot_tier.connect(settings, write=True)
    try:
        first, second = around_midnight(unreadable_times, MIDNIGHT_S - 1, MIDNIGHT_S + 5)
        for block in (first, second):
            feed._insert(client, KRAKEN, block)
    finally:
        client.disconnect()
    assert assert_one_day_per_position(settings, KRAKEN) == second.redelivered > 0
    rows = fetch(settings, KRAKEN)
    assert {r["trade_date"] for r in rows} == {DAY, DAY + dt.timedelta(days=1)}
    assert all(r["trade_date"] == record_day(r) for r in rows)


# --------------------------------------------------------------------------------------------------
# seed, twice
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(clickhouse):
    settings = settings_for(clickhouse, "k2seed")
    first = feed.seed(settings, DAY, ROWS, seed=7, progress=False)
    second = feed.seed(settings, DAY, ROWS, seed=7, progress=False)  # a repeated run of the same day and seed
    rows = {"binance": fetch(settings, BINANCE), "kraken": fetch(settings, KRAKEN)}
    return settings, (first, second), rows


def test_seed_counts(seeded):
    _, reports, rows = seeded
    for ex in feed.SPECS:
        for report in reports:
            counts = report[ex]
            assert counts.messages == ROWS
            assert counts.rows == counts.messages + counts.redelivered
        assert len(rows[ex]) == sum(r[ex].rows for r in reports)
        assert len({(r["kafka_partition"], r["kafka_offset"]) for r in rows[ex]}) == 2 * ROWS
    assert reports[0].mode == "seed" and reports[0].rows == sum(c.rows for c in reports[0].exchanges)


def test_offsets_contiguous_per_partition_and_continued_by_the_next_run(seeded):
    _, (first, second), rows = seeded
    for ex in feed.SPECS:
        offsets = defaultdict(set)
        for r in rows[ex]:
            offsets[r["kafka_partition"]].add(r["kafka_offset"])
        assert len(offsets) >= 3
        for p, seen in offsets.items():
            assert min(seen) == 0
            assert len(seen) == max(seen) - min(seen) + 1, f"{ex} partition {p} has gaps"
        first_runs = {p: (lo, hi) for p, lo, hi in first[ex].offsets}
        for p, lo, hi in second[ex].offsets:
            assert lo == first_runs[p][1] + 1, f"{ex} partition {p}: the second run continues the first"
            assert hi == max(offsets[p])


def test_blocks_are_in_offset_order_within_each_partition():
    spec = feed.BINANCE_SPEC
    start_us = (DAY - dt.date(1970, 1, 1)).days * feed.DAY_US
    path = feed.FairPath(0, start_us, 9)
    gen = feed._ExchangeFeed(spec, np.random.default_rng(0), path, salt=5, next_offsets={0: 10, 2: 7})
    arrivals = start_us + np.arange(0, 60_000) * 1_000
    expected_next = {0: 10, 1: 0, 2: 7, 3: 0}
    redelivered = 0
    for lo in range(0, len(arrivals), 5_000):
        block = gen.block(arrivals[lo : lo + 5_000], None, 1_770_000_000)
        offsets = block.columns["kafka_offset"].astype(np.int64)
        redelivered += block.redelivered
        assert not block.fresh[: block.redelivered].any() and block.fresh[block.redelivered :].all()
        for p in range(feed.PARTITIONS):
            mine = offsets[block.partition == p]
            assert (np.diff(mine) >= 0).all(), "offset order within a partition"
            new = offsets[(block.partition == p) & block.fresh]
            if len(new):
                assert new[0] == expected_next[p] and (np.diff(new) == 1).all()
                expected_next[p] = int(new[-1]) + 1
            old = offsets[(block.partition == p) & ~block.fresh]
            assert (old < new[0] if len(new) else True).all(), "redelivered offsets were written before"
    assert redelivered > 0


def test_redeliveries_repeat_an_offset_with_identical_content(seeded):
    _, reports, rows = seeded
    for ex in feed.SPECS:
        by_position = defaultdict(list)
        for r in rows[ex]:
            by_position[(r["kafka_partition"], r["kafka_offset"])].append(r)
        repeated = {pos: rs for pos, rs in by_position.items() if len(rs) > 1}
        extra = sum(len(rs) - 1 for rs in repeated.values())
        assert extra == sum(r[ex].redelivered for r in reports) > 0
        for rs in repeated.values():
            assert len({content(r) for r in rs}) == 1
        # A redelivery is a contiguous run of one partition's offsets (the tail after a restart).
        per_partition = defaultdict(list)
        for p, o in repeated:
            per_partition[p].append(o)
        runs = sum(1 + int(np.count_nonzero(np.diff(sorted(os_)) != 1)) for os_ in per_partition.values())
        assert runs < extra, "redeliveries come in runs, not as scattered single rows"


def test_replays_repeat_a_trade_under_a_new_offset(seeded):
    _, reports, rows = seeded
    for ex in feed.SPECS:
        symbol = "symbol" if ex == "binance" else "pair"
        by_trade = defaultdict(dict)
        for r in rows[ex]:
            by_trade[(r[symbol], r["trade_id"])][(r["kafka_partition"], r["kafka_offset"])] = r
        replays = {k: v for k, v in by_trade.items() if len(v) > 1}
        assert sum(len(v) - 1 for v in replays.values()) == sum(r[ex].replayed for r in reports) > 0
        for positions in replays.values():
            payload = {
                tuple(v for k, v in r.items() if k not in ("kafka_offset", "kafka_timestamp", "ingested_at"))
                for r in positions.values()
            }
            assert len(payload) == 1, "a replay carries the same trade"
            # ... in a new record: produced later, so its timestamp is not earlier than the original's
            stamps = [r["kafka_timestamp"] for _, r in sorted(positions.items())]
            assert stamps == sorted(stamps)
        # Distinct trades never share an id, also across the two runs of the same day and seed.
        assert len(by_trade) == 2 * ROWS - sum(r[ex].replayed for r in reports)
    for ex in feed.SPECS:
        assert reports[0][ex].salt != reports[1][ex].salt


def test_each_feed_position_lies_in_one_day(seeded):
    settings, reports, _ = seeded
    for table in (BINANCE, KRAKEN):
        redelivered = sum(r[table.exchange].redelivered for r in reports)
        assert assert_one_day_per_position(settings, table) == redelivered > 0


def test_record_timestamps(seeded):
    """The record timestamp is the message's arrival: its trade time, or later for a replay; rising with the offset."""
    _, reports, rows = seeded
    day_start_ms = (DAY - dt.date(1970, 1, 1)).days * 86_400_000
    for ex in feed.SPECS:
        distinct = {(r["kafka_partition"], r["kafka_offset"]): r for r in rows[ex]}
        trade_ms = {}
        for pos, r in distinct.items():
            assert day_start_ms <= r["kafka_timestamp"] < day_start_ms + 86_400_000
            if ex == "binance":
                trade_ms[pos] = r["trade_time"]
            elif KRAKEN_TIME.match(r["time"]):
                sec, micros = r["time"].split(".")
                trade_ms[pos] = int(sec) * 1000 + int(micros) // 1000
        assert all(distinct[pos]["kafka_timestamp"] >= ms for pos, ms in trade_ms.items())
        later = sum(distinct[pos]["kafka_timestamp"] > ms for pos, ms in trade_ms.items())
        assert later <= sum(r[ex].replayed for r in reports), "only a replay is produced after its trade"
        for report in reports:  # within one run, a partition's records are produced in offset order
            for p, lo, hi in report[ex].offsets:
                stamps = [distinct[(p, o)]["kafka_timestamp"] for o in range(lo, hi + 1)]
                assert stamps == sorted(stamps)


def test_trade_id_scheme(seeded):
    _, (first, second), rows = seeded
    for r in rows["kraken"]:
        if KRAKEN_TIME.match(r["time"]):
            sec, micros = r["time"].split(".")
            assert r["trade_id"] // 1000 == int(sec) * 1_000_000 + int(micros)
    assert {r["trade_id"] % 1000 for r in rows["binance"]} == {first["binance"].salt, second["binance"].salt}
    for r in rows["binance"]:
        assert r["trade_id"] // 1_000_000 == r["trade_time"]
        assert r["trade_time"] <= r["event_time"] < r["trade_time"] + 100


def test_malformed_messages_are_stored(seeded):
    _, reports, rows = seeded
    for ex in feed.SPECS:
        distinct = {(r["kafka_partition"], r["kafka_offset"]): r for r in rows[ex]}.values()
        bad = [r for r in distinct if is_malformed(ex, r)]
        assert len(bad) == sum(r[ex].malformed for r in reports)
        assert 0.0003 < len(bad) / len(distinct) < 0.003
    prices = {r["price"] for r in rows["binance"] + rows["kraken"]}
    assert prices & {"", "abc", "NaN"}


def test_message_shapes_and_trade_dates(seeded):
    _, _, rows = seeded
    day_start_ms = (DAY - dt.date(1970, 1, 1)).days * 86_400_000
    binance = rows["binance"]
    assert {r["trade_date"] for r in binance} == {DAY}
    assert all(day_start_ms <= r["trade_time"] < day_start_ms + 86_400_000 for r in binance)
    assert all(r["event_type"] == "trade" and r["is_best_match"] == 1 for r in binance)
    assert {r["is_buyer_maker"] for r in binance} == {0, 1}
    assert len({r["symbol"] for r in binance} & KNOWN["binance"]) >= 10
    good = [r for r in binance if not is_malformed("binance", r)]
    assert len(good) > 0.99 * len(binance)

    kraken = rows["kraken"]
    assert len({r["pair"] for r in kraken} & KNOWN["kraken"]) >= 10
    assert {"XBT/USD", "XDG/USD"} <= {r["pair"] for r in kraken}
    assert {r["order_type"] for r in kraken} == {"l", "m"}
    assert {r["misc"] for r in kraken} == {""}
    for r in kraken:
        if KRAKEN_TIME.match(r["time"]):
            assert r["trade_date"] == DAY
            assert dt.datetime.fromtimestamp(float(r["time"]), dt.timezone.utc).date() == DAY
        else:  # an unreadable time files the message under the day of its record timestamp
            assert r["trade_date"] == record_day(r) == DAY

    # Prices are tick-rounded and both exchanges trade bitcoin at nearly the same price.
    btc_binance = np.median([float(r["price"]) for r in good if r["symbol"] == "BTCUSDT"])
    btc_kraken = np.median(
        [float(r["price"]) for r in kraken if r["pair"] == "XBT/USD" and not is_malformed("kraken", r)]
    )
    assert 10_000 < btc_binance < 500_000
    assert abs(btc_binance / btc_kraken - 1) < 0.01
    xbt = [r["price"] for r in kraken if r["pair"] == "XBT/USD" and not is_malformed("kraken", r)]
    assert all(p.endswith("0000") for p in xbt), "XBT/USD ticks are 0.1"


def test_arrivals_are_bursty(seeded):
    _, _, rows = seeded
    per_minute = Counter(r["trade_time"] // 60_000 for r in rows["binance"])
    counts = np.array(list(per_minute.values()))
    # A Poisson process of this mean would have variance ~ mean; bursts make it far larger.
    assert counts.var() > 3 * counts.mean()


def test_report_is_frozen_and_summarised(seeded):
    _, (first, _), _ = seeded
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.seed = 1  # type: ignore[misc]
    text = first.summary()
    assert "binance" in text and "kraken" in text and "redelivered" in text and "replayed" in text
    assert f"{first['binance'].rows:,}" in text
    with pytest.raises(KeyError):
        first["coinbase"]


# --------------------------------------------------------------------------------------------------
# Reproducibility
# --------------------------------------------------------------------------------------------------


def test_same_seed_and_state_write_the_same_rows(clickhouse):
    settings = settings_for(clickhouse, "k2repro")
    client = hot_tier.connect(settings, write=True)

    def run(seed: int) -> dict[str, list[tuple]]:
        for table in (BINANCE, KRAKEN):
            client.execute(f"TRUNCATE TABLE {table.name}")
        feed.seed(settings, DAY, 5_000, seed=seed, progress=False)
        return {t.exchange: sorted(content(r) for r in fetch(settings, t)) for t in (BINANCE, KRAKEN)}

    once, again, other = run(3), run(3), run(4)
    client.disconnect()
    assert once == again
    assert once["binance"] != other["binance"] and once["kraken"] != other["kraken"]


# --------------------------------------------------------------------------------------------------
# live
# --------------------------------------------------------------------------------------------------


def test_live_writes_current_and_late_trades_after_the_seeded_offsets(clickhouse):
    settings = settings_for(clickhouse, "k2live")
    seeded = feed.seed(settings, DAY, 2_000, seed=1, progress=False)
    started = time.time()
    report = feed.live(settings, 300, 2.0, seed=1, progress=False, late_share=0.1)
    took = time.time() - started
    assert 1.5 < took < 10
    assert report.mode == "live" and not report.interrupted
    today = dt.datetime.now(dt.timezone.utc).date()
    for table in (BINANCE, KRAKEN):
        ex = table.exchange
        counts = report[ex]
        assert 100 < counts.messages < 3_000
        assert counts.late > 0
        rows = [r for r in fetch(settings, table) if r["trade_date"] != DAY]
        assert len(rows) == counts.rows
        dates = Counter(r["trade_date"] for r in rows)
        assert today in dates and set(dates) <= {today - dt.timedelta(days=d) for d in range(4)}
        assert sum(n for d, n in dates.items() if d < today) >= counts.late
        before = {p: hi for p, _, hi in seeded[ex].offsets}
        for p, lo, _ in counts.offsets:
            assert lo == before.get(p, -1) + 1
        assert counts.salt != seeded[ex].salt
    binance = [r for r in fetch(settings, BINANCE) if r["trade_date"] == today]
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < r["trade_time"] <= now_ms for r in binance)


def test_live_stops_gracefully_on_ctrl_c(clickhouse, tmp_path):
    settings = settings_for(clickhouse, "k2ctrlc")
    script = tmp_path / "live.py"
    script.write_text(
        textwrap.dedent(
            f"""\
            import sys
            from k2_lakehouse.core import feed
            from k2_lakehouse.core.settings import Settings
            settings = Settings.from_env({{"K2_CLICKHOUSE_URL": {settings.clickhouse_url!r}}})
            print("ready", flush=True)
            report = feed.live(settings, 100, None, seed=2, progress=False)
            print(report.summary(), flush=True)
            print("ROWS", report.rows, flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "interrupted" in out
    written = int(re.search(r"ROWS (\d+)", out).group(1))
    stored = sum(len(fetch(settings, t)) for t in (BINANCE, KRAKEN))
    assert 0 < written == stored
