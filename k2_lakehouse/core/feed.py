"""The feed simulator: a Kafka-style consumer writing exchange trade messages into the hot tier.

Each hot row is one message in its exchange's own shape (see `contracts.BINANCE` / `contracts.KRAKEN`)
plus the feed position. The simulator is a real part of the product (`k2 feed seed|live`), so it
behaves like the real thing, including its faults:

* **Markets.** 12 Binance symbols (`BTCUSDT` ...) and 13 Kraken pairs (`XBT/USD`, `XDG/USD` ...), each with
  its tick size, lot size and share of the traffic. Each base asset has a realistic starting price and
  daily volatility and follows a geometric random walk (`FairPath`) shared by both exchanges, so
  BTCUSDT and XBT/USD stay close; each exchange adds its own per-trade noise and rounds to its tick.
  Quantities come from a log-normal notional rounded to the lot.
* **Arrivals** are bursty: exponential gaps whose scale switches between calm and burst regimes
  (bursts ~20x denser), and, for `seed`, an intraday profile (busier around the European and US opens).
* **Kafka positions.** `PARTITIONS` partitions per exchange, keyed by symbol with Kafka's own default
  partitioner (murmur2 of the key), so one symbol always lands in one partition. Offsets are
  contiguous per partition and continue from the hot table's current maximum per partition (over all
  days). Messages are inserted one block at a time, in offset order within each partition.
* **At-least-once redelivery** (~`REDELIVERY_SHARE` of messages): as if the consumer restarted from its
  last committed offset, the tail of one partition's previous block is written again at the start of
  a later block: same offsets, identical content, `kafka_timestamp` and `trade_date` included (only
  `ingested_at` differs).
* **Exchange replays** (~`REPLAY_SHARE`): a trade is sent again a little later (reconnect replay): same
  trade id and content, under a new offset and with its own, later `kafka_timestamp` (a new record).
* **Malformed messages** (~`MALFORMED_SHARE`): price `""`, `"abc"`, `"NaN"`; zero or negative quantity;
  unknown symbol; for Kraken also side `"x"` and time `"garbage"`. They are stored like any other
  message (the hot tier keeps prices and quantities as strings for exactly this reason).
* **Hostile messages** (`hostile`, `k2 feed seed --hostile`): on demand, one message of every bad class a
  real feed delivers, per exchange in its own shape (`hostile_messages`, deterministic): empty, NaN,
  infinite, negative, zero and beyond-decimal(18,8) prices and quantities, unknown, lower-case, non-UTF-8,
  control-character and SQL-looking symbols, trade times in 1970 and 9999, a replay and a conflicting
  duplicate of a trade id, 1 MiB fields. Never part of `seed` or `live` on their own.
* **Record timestamps and days.** Every message carries `kafka_timestamp`, the feed record's own
  timestamp (epoch ms): its simulated arrival, when the record was produced. `trade_date` is decided
  once, from the message itself: the UTC day of its trade time or, when that is unreadable or implausible
  (not within `contracts.TRADE_TIME_MAX_LATE_US` before / `_AHEAD_US` after the record: 1970, 9999), of its
  `kafka_timestamp` (the contract's rule), never the consumer's clock. A redelivery copies both, so a
  restart after midnight cannot put one feed position into two days.
* **Late trades** (`live` only): a `late_share` of the messages carry a trade time exactly 1 day
  (mostly), 2 or 3 days before their arrival, so they land in earlier, possibly already offloaded, days.

Trade ids (unique per exchange and symbol for distinct trades):
``trade_id = trade_time_us * 1000 + salt``. Within one run trade times are strictly increasing per
exchange (so per symbol), so ids never repeat within a run. The ``salt`` (0..999) is chosen per run and
exchange: it starts at a hash of (seed, mode, day) and skips every salt already present in the hot
table (``trade_id % 1000`` over all its rows), so two runs never share a salt while the earlier run's
rows are in the hot tier. Different seeds, repeated seeds for the same day, and `live` runs therefore
produce disjoint ids. (If all 1000 salts are taken, or the earlier rows are gone from the hot tier,
the hashed salt is used: a collision then also needs the same microsecond for the same symbol.)
Late trades are shifted by whole days, so they could only collide within a run that lasts over a day.
The id fits UInt64 and Iceberg's signed long until the year 2262.

Reproducibility: the same seed against the same starting hot-tier state (offsets and salts) writes
the same rows, apart from `ingested_at`, the only value taken from the consumer's clock. One writer per
hot table at a time, like one consumer per partition.

Speed: columns are numpy arrays built block by block, decimal strings are formatted with integer
arithmetic into fixed-width byte arrays (no per-row Python), and inserted with clickhouse-driver's
numpy columnar insert (`strings_as_bytes`); each exchange has a generator thread and an inserter
thread so that generation overlaps the insert.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from k2_lakehouse.core import hot_tier
from k2_lakehouse.core.contracts import BINANCE, KRAKEN, TRADE_TIME_MAX_AHEAD_US, TRADE_TIME_MAX_LATE_US, HotTable
from k2_lakehouse.core.errors import ConfigError
from k2_lakehouse.core.settings import Settings

PARTITIONS = 4
REDELIVERY_SHARE = 0.005
REPLAY_SHARE = 0.002
MALFORMED_SHARE = 0.001
MAX_BLOCK_ROWS = 100_000
SALTS = 1000

DAY_US = 86_400_000_000
DAY_MS = 86_400_000


# --------------------------------------------------------------------------------------------------
# Markets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asset:
    name: str
    price: float  # typical price in USD
    daily_vol: float  # standard deviation of the daily log return


ASSETS = (
    Asset("BTC", 67050.6, 0.030),
    Asset("ETH", 3480.2, 0.040),
    Asset("SOL", 148.4, 0.060),
    Asset("XRP", 0.6021, 0.050),
    Asset("DOGE", 0.15432, 0.070),
    Asset("ADA", 0.4512, 0.050),
    Asset("AVAX", 35.12, 0.060),
    Asset("LINK", 15.23, 0.050),
    Asset("DOT", 7.123, 0.050),
    Asset("LTC", 84.56, 0.040),
    Asset("BNB", 584.3, 0.030),
    Asset("TRX", 0.1234, 0.030),
    Asset("BCH", 352.4, 0.040),
    Asset("XLM", 0.1088, 0.050),
)
_ASSET_INDEX = {a.name: i for i, a in enumerate(ASSETS)}


@dataclass(frozen=True)
class Market:
    symbol: str  # as the exchange sends it
    asset: str  # the base asset, whose price path all exchanges share
    tick: float  # price increment
    lot: float  # quantity increment
    weight: float  # relative share of the exchange's messages


@dataclass(frozen=True)
class ExchangeSpec:
    table: HotTable
    markets: tuple[Market, ...]
    unknown_symbols: tuple[str, ...]  # sent by malformed messages
    price_scale: int  # decimals of the price string
    qty_scale: int  # decimals of the quantity string
    malformations: tuple[str, ...]
    salt_key: int  # distinguishes exchanges in the hashed salt

    @property
    def name(self) -> str:
        return self.table.exchange


_COMMON_MALFORMATIONS = ("price_empty", "price_abc", "price_nan", "qty_zero", "qty_negative", "unknown_symbol")

BINANCE_SPEC = ExchangeSpec(
    table=BINANCE,
    markets=(
        Market("BTCUSDT", "BTC", 0.01, 0.00001, 0.25),
        Market("ETHUSDT", "ETH", 0.01, 0.0001, 0.17),
        Market("SOLUSDT", "SOL", 0.01, 0.001, 0.10),
        Market("XRPUSDT", "XRP", 0.0001, 0.1, 0.08),
        Market("DOGEUSDT", "DOGE", 0.00001, 1.0, 0.08),
        Market("BNBUSDT", "BNB", 0.01, 0.001, 0.06),
        Market("ADAUSDT", "ADA", 0.0001, 0.1, 0.05),
        Market("AVAXUSDT", "AVAX", 0.01, 0.01, 0.04),
        Market("LINKUSDT", "LINK", 0.001, 0.01, 0.04),
        Market("DOTUSDT", "DOT", 0.001, 0.01, 0.03),
        Market("LTCUSDT", "LTC", 0.01, 0.001, 0.03),
        Market("TRXUSDT", "TRX", 0.00001, 0.1, 0.03),
    ),
    unknown_symbols=("FOOUSDT", "XYZUSDT"),
    price_scale=8,
    qty_scale=8,
    malformations=_COMMON_MALFORMATIONS,
    salt_key=1,
)

KRAKEN_SPEC = ExchangeSpec(
    table=KRAKEN,
    markets=(
        Market("XBT/USD", "BTC", 0.1, 0.00000001, 0.28),
        Market("ETH/USD", "ETH", 0.01, 0.00000001, 0.18),
        Market("SOL/USD", "SOL", 0.01, 0.00000001, 0.09),
        Market("XRP/USD", "XRP", 0.00001, 0.00000001, 0.08),
        Market("XDG/USD", "DOGE", 0.00001, 0.00000001, 0.07),
        Market("ADA/USD", "ADA", 0.00001, 0.00000001, 0.05),
        Market("LINK/USD", "LINK", 0.001, 0.00000001, 0.05),
        Market("DOT/USD", "DOT", 0.0001, 0.00000001, 0.04),
        Market("AVAX/USD", "AVAX", 0.01, 0.00000001, 0.04),
        Market("LTC/USD", "LTC", 0.01, 0.00000001, 0.04),
        Market("BCH/USD", "BCH", 0.01, 0.00000001, 0.03),
        Market("XLM/USD", "XLM", 0.00001, 0.00000001, 0.03),
        Market("TRX/USD", "TRX", 0.00001, 0.00000001, 0.02),
    ),
    unknown_symbols=("FOO/USD", "ZZZ/EUR"),
    price_scale=5,
    qty_scale=8,
    malformations=(*_COMMON_MALFORMATIONS, "side_x", "time_garbage"),
    salt_key=2,
)

SPECS: dict[str, ExchangeSpec] = {s.name: s for s in (BINANCE_SPEC, KRAKEN_SPEC)}

_KRAKEN_CHANNEL_BASE = 119_930_881  # WebSocket v1 channel ids: one per subscribed pair


def kafka_partition(key: str | bytes, partitions: int = PARTITIONS) -> int:
    """Kafka's default partitioner for a keyed message: `toPositive(murmur2(key)) % partitions`."""
    data = key if isinstance(key, bytes) else key.encode()
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail, rest = length & ~3, length % 4
    if rest >= 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeCounts:
    """What one run wrote into one hot table."""

    exchange: str
    rows: int  # rows inserted, including redelivered duplicates (= messages + redelivered)
    messages: int  # new feed positions (offsets), replays and malformed messages included
    redelivered: int  # rows written a second time under an offset already written
    replayed: int  # messages repeating an earlier trade (same trade id) under a new offset
    malformed: int  # messages with a malformed field (new offsets only)
    late: int  # messages dated to a day before their arrival (live only)
    days: tuple[dt.date, ...]  # trade days touched, sorted
    offsets: tuple[tuple[int, int, int], ...]  # (partition, first, last) offsets written by this run
    salt: int  # trade_id % 1000 of this run's trades


@dataclass(frozen=True)
class FeedReport:
    mode: str  # "seed" or "live"
    seed: int
    exchanges: tuple[ExchangeCounts, ...]
    seconds: float
    interrupted: bool = False

    def __getitem__(self, exchange: str) -> ExchangeCounts:
        for counts in self.exchanges:
            if counts.exchange == exchange:
                return counts
        raise KeyError(exchange)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.exchanges)

    @property
    def days(self) -> tuple[dt.date, ...]:
        return tuple(sorted({d for c in self.exchanges for d in c.days}))

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        head = (
            f"feed {self.mode} (seed {self.seed}){' interrupted' if self.interrupted else ''}: "
            f"{self.rows:,} rows in {self.seconds:.1f} s ({rate:,.0f} rows/s)"
        )
        lines = [head]
        for c in self.exchanges:
            parts = [
                f"{c.messages:,} messages",
                f"{c.redelivered:,} redelivered",
                f"{c.replayed:,} replayed",
                f"{c.malformed:,} malformed",
            ]
            if self.mode == "live":
                parts.append(f"{c.late:,} late")
            days = ", ".join(d.isoformat() for d in c.days) or "-"
            offsets = " ".join(f"p{p}:{lo}..{hi}" for p, lo, hi in c.offsets) or "-"
            lines.append(f"  {c.exchange:<8} {c.rows:>12,} rows: {', '.join(parts)}")
            lines.append(f"  {'':<8} days {days}; offsets {offsets}; trade id salt {c.salt}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Decimal strings without per-row Python
# --------------------------------------------------------------------------------------------------

_POW10 = 10 ** np.arange(19, dtype=np.int64)


def format_fixed(unscaled: np.ndarray, scale: int) -> np.ndarray:
    """Integers `unscaled` (value * 10**scale) as fixed-point decimal strings: a numpy bytes (`S`) array.

    `format_fixed([6705061000000, -51000, 0], 8)` -> `[b"67050.61000000", b"-0.00051000", b"0.00000000"]`.
    Always plain notation with exactly `scale` decimals (Arrow's decimal-to-string switches to
    scientific notation for small values, which no exchange sends).
    """
    v = np.asarray(unscaled, dtype=np.int64)
    n = len(v)
    if n == 0:
        return np.zeros(0, dtype="S1")
    neg = v < 0
    a = np.abs(v)
    whole, frac = np.divmod(a, _POW10[scale]) if scale else (a, np.zeros_like(a))
    digits = np.maximum(np.searchsorted(_POW10, whole, side="right"), 1)  # digits of the integer part
    sign = neg.astype(np.int64)
    point = sign + digits  # column of the decimal point
    width = int(point.max()) + (1 + scale if scale else 0)
    out = np.zeros((n, width), dtype=np.uint8)
    flat = out.reshape(-1)
    row0 = np.arange(n, dtype=np.int64) * width
    flat[row0[neg]] = ord("-")
    rest = whole.copy()
    for r in range(int(digits.max())):  # integer digits, from the units leftwards
        has = digits > r
        pos = row0 + point - 1 - r
        flat[pos[has]] = (rest[has] % 10 + 48).astype(np.uint8)
        rest //= 10
    if scale:
        flat[row0 + point] = ord(".")
        rest = frac.copy()
        for r in range(scale):  # decimals, from the last leftwards
            flat[row0 + point + scale - r] = (rest % 10 + 48).astype(np.uint8)
            rest //= 10
    return out.view(f"S{width}").reshape(n)


def _bytes(values: tuple[str, ...] | list[str]) -> np.ndarray:
    return np.array([v.encode() for v in values], dtype=np.bytes_)


class FairPath:
    """The market's price of every asset over time, shared by all exchanges: a geometric random walk on a
    one-second grid, generated hour by hour from the seed alone (so each exchange, in its own thread,
    computes the very same path), linearly interpolated between seconds."""

    CHUNK_S = 3600

    def __init__(self, seed: int, origin_us: int, *keys: int):
        self.seed, self.keys = seed, keys
        self.origin_us = origin_us
        start = _rng(seed, 2, *keys)
        self.start_log = np.log([a.price for a in ASSETS]) + start.normal(0.0, 0.03, len(ASSETS))
        self.sigma_s = np.array([a.daily_vol for a in ASSETS]) / math.sqrt(86_400)
        self.chunks: dict[int, np.ndarray] = {}  # chunk -> (assets, CHUNK_S + 1) log prices
        self.made = -1  # last chunk generated
        self.end_log = self.start_log

    def _chunk(self, k: int) -> np.ndarray:
        while self.made < k:
            self.made += 1
            rng = _rng(self.seed, 3, *self.keys, self.made)
            steps = rng.standard_normal((len(ASSETS), self.CHUNK_S)) * self.sigma_s[:, None]
            levels = np.empty((len(ASSETS), self.CHUNK_S + 1))
            levels[:, 0] = self.end_log
            levels[:, 1:] = self.end_log[:, None] + np.cumsum(steps, axis=1)
            self.end_log = levels[:, -1].copy()
            self.chunks[self.made] = levels
            self.chunks.pop(self.made - 3, None)  # arrivals only move forward
        return self.chunks[k]

    def log_price(self, asset: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        sec = np.maximum(t_us - self.origin_us, 0) / 1e6
        whole = np.floor(sec).astype(np.int64)
        frac = sec - whole
        chunk, at = np.divmod(whole, self.CHUNK_S)
        out = np.empty(len(t_us))
        for k in np.unique(chunk):
            levels = self._chunk(int(k))
            mine = chunk == k
            a, i, f = asset[mine], at[mine], frac[mine]
            out[mine] = levels[a, i] * (1 - f) + levels[a, i + 1] * f
        return out


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """One insert: columns in the table's order plus the bookkeeping the report needs."""

    columns: dict[str, np.ndarray]
    partition: np.ndarray  # int64, per row
    fresh: np.ndarray  # bool, per row: a new offset (not a redelivery)
    redelivered: int
    replayed: int
    malformed: int
    late: int

    def __len__(self) -> int:
        return len(self.partition)


class _ExchangeFeed:
    """All state of one exchange's simulated topic: markets, offsets, the last block (for redelivery)."""

    def __init__(
        self, spec: ExchangeSpec, rng: np.random.Generator, path: FairPath, *, salt: int, next_offsets: dict[int, int]
    ):
        self.spec = spec
        self.rng = rng
        self.salt = salt
        self.next_offset = np.array([next_offsets.get(p, 0) for p in range(PARTITIONS)], dtype=np.int64)
        self.first_offset = self.next_offset.copy()
        markets = spec.markets
        self.n_markets = len(markets)
        weights = np.array([m.weight for m in markets])
        self.weights_cdf = np.cumsum(weights / weights.sum())
        self.path = path
        self.asset = np.array([_ASSET_INDEX[m.asset] for m in markets], dtype=np.int64)
        scale = 10**spec.price_scale
        self.tick_units = np.array([round(m.tick * scale) for m in markets], dtype=np.int64)
        self.lot_units = np.array([round(m.lot * 10**spec.qty_scale) for m in markets], dtype=np.int64)
        if (self.tick_units <= 0).any() or (self.lot_units <= 0).any():
            raise ConfigError(f"{spec.name}: a tick or lot is finer than the message's decimals")
        symbols = [m.symbol for m in markets] + list(spec.unknown_symbols)
        self.symbols = _bytes(symbols)
        self.partition_of = np.array([kafka_partition(s) for s in symbols], dtype=np.int64)
        self.previous: _Block | None = None

    # -- the walk --------------------------------------------------------------------------------

    def _prices(self, code: np.ndarray, t_us: np.ndarray) -> np.ndarray:
        """Tick-rounded prices (in 10**-price_scale units): the shared path plus this exchange's own noise
        (~1.5 bp per trade: spread, bid/ask bounce)."""
        log_price = self.path.log_price(self.asset[code], t_us) + self.rng.normal(0.0, 1.5e-4, len(code))
        units = np.exp(log_price) * 10**self.spec.price_scale
        ticks = np.maximum(np.rint(units / self.tick_units[code]), 1).astype(np.int64)
        return ticks * self.tick_units[code]

    def _quantities(self, code: np.ndarray, price_units: np.ndarray) -> np.ndarray:
        n = len(code)
        notional = np.minimum(np.exp(self.rng.normal(math.log(150.0), 1.6, n)), 2_000_000.0)
        price = price_units / 10**self.spec.price_scale
        lots = np.maximum(np.rint(notional / price / (self.lot_units[code] / 10**self.spec.qty_scale)), 1)
        return lots.astype(np.int64) * self.lot_units[code]

    # -- one block -------------------------------------------------------------------------------

    def block(self, arrival_us: np.ndarray, late_days: np.ndarray | None, ingest_s: int) -> _Block:
        """The next insert: fresh messages arriving at `arrival_us` (strictly increasing), their replays,
        and possibly a redelivery of the previous block's tail. `late_days` shifts trade times back.

        Arrival is when the feed record was produced (its `kafka_timestamp`); `ingest_s`, the consumer's
        clock, only sets `ingested_at`."""
        rng, spec = self.rng, self.spec
        n = len(arrival_us)
        if n == 0:
            return _Block({}, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), 0, 0, 0, 0)
        code = np.searchsorted(self.weights_cdf, rng.random(n), side="right").clip(0, self.n_markets - 1)
        price = self._prices(code, arrival_us)
        qty = self._quantities(code, price)
        trade_us = arrival_us - (late_days.astype(np.int64) * DAY_US if late_days is not None else 0)
        aggressor_sells = rng.random(n) < 0.5
        trade_id = (trade_us * SALTS + self.salt).astype(np.uint64)

        # Malformed messages: numeric faults before formatting, textual ones after.
        bad = np.flatnonzero(rng.random(n) < MALFORMED_SHARE)
        kinds = np.array(spec.malformations)[rng.integers(0, len(spec.malformations), len(bad))]
        qty[bad[kinds == "qty_zero"]] = 0
        qty[bad[kinds == "qty_negative"]] *= -1
        unknown = bad[kinds == "unknown_symbol"]
        code[unknown] = self.n_markets + rng.integers(0, len(spec.unknown_symbols), len(unknown))
        price_s = format_fixed(price, spec.price_scale)  # >= 7 wide: room for the bad texts
        for kind, text in (("price_empty", b""), ("price_abc", b"abc"), ("price_nan", b"NaN")):
            price_s[bad[kinds == kind]] = text
        qty_s = format_fixed(qty, spec.qty_scale)
        trade_date = (trade_us // DAY_US).astype("datetime64[D]")
        unreadable = np.zeros(n, dtype=bool)  # trade time cannot be read: dated below, after the replays

        if spec.table is KRAKEN:
            time_s = format_fixed(trade_us, 6)
            time_s[bad[kinds == "time_garbage"]] = b"garbage"
            unreadable[bad[kinds == "time_garbage"]] = True
            side = np.where(aggressor_sells, b"s", b"b").astype("S1")
            side[bad[kinds == "side_x"]] = b"x"
            columns = {
                "channel_id": (_KRAKEN_CHANNEL_BASE + np.minimum(code, self.n_markets)).astype(np.uint64),
                "pair": self.symbols[code],
                "price": price_s,
                "volume": qty_s,
                "time": time_s,
                "side": side,
                "order_type": np.where(rng.random(n) < 0.35, b"m", b"l").astype("S1"),
                "misc": np.zeros(n, dtype="S1"),
                "trade_id": trade_id,
            }
        else:
            trade_ms = trade_us // 1000
            columns = {
                "event_type": np.full(n, b"trade", dtype="S5"),
                "event_time": (trade_ms + rng.geometric(0.5, n) - 1).astype(np.uint64),
                "symbol": self.symbols[code],
                "trade_id": trade_id,
                "price": price_s,
                "quantity": qty_s,
                "trade_time": trade_ms.astype(np.uint64),
                "is_buyer_maker": aggressor_sells.astype(np.uint8),
                "is_best_match": np.ones(n, dtype=np.uint8),
            }
        columns["trade_date"] = trade_date

        # Exchange replays: now and then the message in a slot is not a new trade but an earlier trade
        # of this block sent again (a reconnect replay): same trade id and content, new offset.
        replay_slot = np.flatnonzero(rng.random(n) < REPLAY_SHARE)
        replay_slot = replay_slot[replay_slot > 0]
        replayed = len(replay_slot)
        src = np.arange(n)
        if replayed:
            lag = rng.geometric(1 / 30, replayed)
            src[replay_slot] = np.maximum(replay_slot - lag, 0)
            while True:  # a replay of a replay is a replay of the original
                resolved = src[src]
                if np.array_equal(resolved, src):
                    break
                src = resolved
            columns = {k: v[src] for k, v in columns.items()}
            code = code[src]
        is_bad = np.zeros(n, dtype=bool)
        is_bad[bad] = True
        malformed = int(np.count_nonzero(is_bad[src]))

        # The record's own timestamp: when its slot arrived (a replay is a new record, so its own slot's
        # time). A message whose trade time is unreadable is dated by it, never by the consumer's clock:
        # a redelivery copies the row, so one feed position stays in one day.
        kafka_ms = arrival_us // 1000
        unreadable = unreadable[src] | ~_plausible(trade_us[src], kafka_ms)  # 1970, 9999: dated like unreadable
        columns["trade_date"][unreadable] = (kafka_ms[unreadable] // DAY_MS).astype("datetime64[D]")
        columns["kafka_timestamp"] = kafka_ms.astype(np.uint64)
        # Late: dated to an earlier day than its arrival, which an unreadable time is not.
        late = int(np.count_nonzero((late_days[src] > 0) & ~unreadable)) if late_days is not None else 0

        # Feed positions: keyed by symbol, offsets contiguous per partition, in stream order.
        partition = self.partition_of[code]
        offsets = np.empty(len(partition), dtype=np.int64)
        for p in range(PARTITIONS):
            mine = np.flatnonzero(partition == p)
            offsets[mine] = self.next_offset[p] + np.arange(len(mine))
            self.next_offset[p] += len(mine)
        columns["kafka_partition"] = partition.astype(np.uint32)
        columns["kafka_offset"] = offsets.astype(np.uint64)
        columns["ingested_at"] = np.full(len(partition), ingest_s, dtype=np.uint32)
        fresh = _Block(columns, partition, np.ones(len(partition), dtype=bool), 0, replayed, malformed, late)

        block = self._with_redelivery(fresh, ingest_s)
        self.previous = fresh  # what a restarted consumer would read again
        return block

    def _with_redelivery(self, fresh: _Block, ingest_s: int) -> _Block:
        """Prepend, now and then, the tail of one partition of the previous block (same offsets, same content):
        the consumer restarted from its last committed offset."""
        prev = self.previous
        if prev is None or len(prev) == 0 or len(fresh) == 0:
            return fresh
        mean_run = float(np.clip(len(prev) / 100, 1, 500))
        events = self.rng.poisson(REDELIVERY_SHARE * len(fresh) / mean_run) if len(fresh) else 0
        picks: list[np.ndarray] = []
        for _ in range(events):
            p = int(self.rng.choice(np.unique(prev.partition)))
            rows = np.flatnonzero(prev.partition == p)
            run = min(len(rows), int(self.rng.geometric(1 / mean_run)))
            picks.append(rows[len(rows) - run :])
        if not picks:
            return fresh
        again = np.unique(np.concatenate(picks))  # previous-block order = offset order per partition
        columns = {k: np.concatenate((v[again], fresh.columns[k])) for k, v in prev.columns.items()}
        columns["ingested_at"][: len(again)] = ingest_s
        partition = np.concatenate((prev.partition[again], fresh.partition))
        is_fresh = np.concatenate((np.zeros(len(again), dtype=bool), fresh.fresh))
        return _Block(columns, partition, is_fresh, len(again), fresh.replayed, fresh.malformed, fresh.late)


# --------------------------------------------------------------------------------------------------
# Arrival times
# --------------------------------------------------------------------------------------------------


def _burst_scale(rng: np.random.Generator, n: int) -> np.ndarray:
    """Per-message gap scale switching between calm runs and ~20x denser bursts (mean ~1)."""
    mean_calm, mean_burst, burst = 400.0, 80.0, 0.05
    pieces, total = [], 0
    while total < n:
        k = max(16, int(2 * (n - total) / (mean_calm + mean_burst)) + 16)
        runs = np.empty(2 * k, dtype=np.int64)
        runs[0::2] = rng.geometric(1 / mean_calm, k)
        runs[1::2] = rng.geometric(1 / mean_burst, k)
        pieces.append(np.repeat(np.tile([1.0, burst], k), runs))
        total += int(runs.sum())
    return np.concatenate(pieces)[:n]


def _intraday_cdf() -> tuple[np.ndarray, np.ndarray]:
    """Share of a day's trades before each minute: busier at the European (08h) and US (14:30) opens."""
    hours = np.arange(1441) / 60.0
    intensity = 1 + 0.35 * np.exp(-(((hours - 8.0) / 2.5) ** 2)) + 0.7 * np.exp(-(((hours - 14.5) / 3.0) ** 2))
    cdf = np.concatenate(([0.0], np.cumsum((intensity[1:] + intensity[:-1]) / 2)))
    return cdf / cdf[-1], np.linspace(0.0, 1.0, 1441)


def _seed_arrivals(rng: np.random.Generator, day: dt.date, n: int) -> np.ndarray:
    """`n` strictly increasing arrival times (epoch µs) within `day`, bursty and with an intraday profile."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n > DAY_US // 2:
        raise ConfigError(f"at most {DAY_US // 2:,} messages fit in one day's microseconds")
    gaps = rng.standard_exponential(n + 1) * _burst_scale(rng, n + 1)
    pos = np.cumsum(gaps)[:-1] / gaps.sum()  # in (0, 1), non-decreasing
    cdf, grid = _intraday_cdf()
    warped = np.interp(pos, cdf, grid)
    start = (day - dt.date(1970, 1, 1)).days * DAY_US
    # + arange makes them strictly increasing and still inside the day.
    return start + np.floor(warped * (DAY_US - n)).astype(np.int64) + np.arange(n, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# The hot tier side
# --------------------------------------------------------------------------------------------------


def _hot_state(client, table: HotTable) -> tuple[dict[int, int], set[int]]:
    """Next offset per partition (over all days) and the trade-id salts already used in the table."""
    rows = client.execute(
        f"SELECT kafka_partition, max(kafka_offset) FROM {table.name} GROUP BY kafka_partition",
        settings={"use_numpy": False},
    )
    next_offsets = {int(p): int(o) + 1 for p, o in rows}
    salts = client.execute(
        f"SELECT DISTINCT trade_id % {SALTS} FROM {table.name}", settings={"use_numpy": False}
    )
    return next_offsets, {int(s) for (s,) in salts}


def _pick_salt(seed: int, mode: str, day: dt.date | None, spec: ExchangeSpec, used: set[int]) -> int:
    digest = hashlib.sha256(f"{seed}/{mode}/{day}/{spec.salt_key}".encode()).digest()
    start = int.from_bytes(digest[:8], "little") % SALTS
    for i in range(SALTS):
        salt = (start + i) % SALTS
        if salt not in used:
            return salt
    return start


def _rng(seed: int, *keys: int) -> np.random.Generator:
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _insert(client, table: HotTable, block: _Block) -> None:
    names = table.column_names
    client.execute(
        f"INSERT INTO {table.name} ({', '.join(names)}) VALUES",
        [block.columns[c] for c in names],
        columnar=True,
        settings={"strings_as_bytes": True},
    )


@dataclass
class _Tally:
    exchange: str
    salt: int
    feed: _ExchangeFeed | None = None
    rows: int = 0
    messages: int = 0
    redelivered: int = 0
    replayed: int = 0
    malformed: int = 0
    late: int = 0
    days: set = field(default_factory=set)

    def add(self, block: _Block) -> None:
        self.rows += len(block)
        self.messages += int(np.count_nonzero(block.fresh))
        self.redelivered += block.redelivered
        self.replayed += block.replayed
        self.malformed += block.malformed
        self.late += block.late
        self.days.update(np.unique(block.columns["trade_date"]).astype(object).tolist())

    def counts(self) -> ExchangeCounts:
        offsets = ()
        if self.feed is not None:
            first, nxt = self.feed.first_offset, self.feed.next_offset
            offsets = tuple((p, int(lo), int(hi) - 1) for p, (lo, hi) in enumerate(zip(first, nxt)) if hi > lo)
        return ExchangeCounts(
            exchange=self.exchange,
            rows=self.rows,
            messages=self.messages,
            redelivered=self.redelivered,
            replayed=self.replayed,
            malformed=self.malformed,
            late=self.late,
            days=tuple(sorted(self.days)),
            offsets=offsets,
            salt=self.salt,
        )


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="msg", unit_scale=True, disable=not enabled, dynamic_ncols=True)


def _now_s() -> int:
    return int(time.time())


# --------------------------------------------------------------------------------------------------
# seed
# --------------------------------------------------------------------------------------------------


def seed(
    settings: Settings,
    day: dt.date,
    rows: int,
    *,
    seed: int = 0,
    progress: bool = True,
    block_rows: int | None = None,
) -> FeedReport:
    """Write `rows` new messages per exchange whose trade times fall on `day` (UTC).

    Redeliveries come on top (`rows` counts feed positions, so `report[ex].rows = rows + redelivered`).
    Blocks hold `block_rows` new messages (default: `rows / 20`, between 1,000 and 100,000). Both
    exchanges are written concurrently, each overlapping generation with its inserts.
    """
    if rows < 0:
        raise ConfigError(f"rows must be >= 0, got {rows}")
    if isinstance(day, dt.datetime) or not isinstance(day, dt.date):
        raise ConfigError(f"day must be a datetime.date, got {day!r}")
    block = block_rows or int(np.clip(rows // 20, 1_000, MAX_BLOCK_ROWS))
    started = time.perf_counter()
    stop = threading.Event()
    tallies: dict[str, _Tally] = {}
    errors: list[BaseException] = []
    bar = _progress(rows * len(SPECS), f"seed {day}", progress)
    bar_lock = threading.Lock()

    def advance(n: int) -> None:
        with bar_lock:
            bar.update(n)

    finished = {name: threading.Event() for name in SPECS}

    def run(spec: ExchangeSpec, index: int) -> None:
        try:
            with hot_tier.hot_tier_errors(settings):
                _seed_exchange(settings, spec, index, day, rows, seed, block, tallies, stop, advance)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)
            stop.set()
        finally:
            finished[spec.name].set()

    def wait_all() -> None:
        # Events, not Thread.join: a join interrupted by Ctrl-C can report a running thread as finished.
        for event in finished.values():
            while not event.wait(0.2):
                pass

    interrupted = False
    try:
        for i, spec in enumerate(SPECS.values()):
            threading.Thread(target=run, args=(spec, i), name=f"feed-{spec.name}", daemon=True).start()
        wait_all()
    except KeyboardInterrupt:  # finish the blocks being inserted, then report what was written
        interrupted = True
        stop.set()
        wait_all()
    finally:
        bar.close()
    if errors:
        raise errors[0]
    return FeedReport(
        mode="seed",
        seed=seed,
        exchanges=tuple(tallies[s].counts() for s in SPECS if s in tallies),
        seconds=time.perf_counter() - started,
        interrupted=interrupted,
    )


def _seed_exchange(
    settings: Settings,
    spec: ExchangeSpec,
    index: int,
    day: dt.date,
    rows: int,
    seed_: int,
    block_rows: int,
    tallies: dict[str, _Tally],
    stop: threading.Event,
    advance: Callable[[int], None],
) -> None:
    client = hot_tier.connect(settings, write=True)
    try:
        next_offsets, used = _hot_state(client, spec.table)
        salt = _pick_salt(seed_, "seed", day, spec, used)
        rng = _rng(seed_, 0, index, day.toordinal())
        path = FairPath(seed_, (day - dt.date(1970, 1, 1)).days * DAY_US, 0, day.toordinal())
        feed = _ExchangeFeed(spec, rng, path, salt=salt, next_offsets=next_offsets)
        tally = tallies[spec.name] = _Tally(spec.name, salt, feed)
        arrivals = _seed_arrivals(rng, day, rows)

        def blocks() -> Iterator[_Block]:
            for lo in range(0, rows, block_rows):
                if stop.is_set():
                    return
                yield feed.block(arrivals[lo : lo + block_rows], None, _now_s())

        inserted = feed.first_offset.copy()
        for blk in _overlapped(blocks(), stop):
            _insert(client, spec.table, blk)
            tally.add(blk)
            inserted = np.maximum(inserted, _next_after(blk))
            advance(int(np.count_nonzero(blk.fresh)))
        feed.next_offset = inserted  # only what reached the table (an interrupt may drop prepared blocks)
    finally:
        client.disconnect()


def _next_after(block: _Block) -> np.ndarray:
    nxt = np.zeros(PARTITIONS, dtype=np.int64)
    offs = block.columns["kafka_offset"].astype(np.int64)
    np.maximum.at(nxt, block.partition, offs + 1)
    return nxt


def _overlapped(blocks: Iterator[_Block], stop: threading.Event, depth: int = 2) -> Iterator[_Block]:
    """Run the generator in a helper thread, up to `depth` blocks ahead of the consumer (the inserts)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    halt = threading.Event()  # the consumer is gone (finished, failed or interrupted)
    done = object()

    def put(item) -> bool:
        while not (halt.is_set() or stop.is_set()):
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in blocks:
                if not put(b):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    worker = threading.Thread(target=produce, daemon=True, name=f"{threading.current_thread().name}-gen")
    worker.start()
    try:
        while True:
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                if not worker.is_alive() and q.empty():
                    return
                continue
            if item is done or stop.is_set():
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()
        worker.join()


# --------------------------------------------------------------------------------------------------
# live
# --------------------------------------------------------------------------------------------------

_LATE_DAYS = np.array([1, 2, 3])
_LATE_DAYS_P = np.array([0.85, 0.1, 0.05])
_TICK_S = 0.5


def live(
    settings: Settings,
    rate: float,
    duration: float | None,
    *,
    seed: int = 0,
    progress: bool = True,
    late_share: float = 0.01,
) -> FeedReport:
    """Write about `rate` messages per second per exchange with trade time ~ now, for `duration` seconds
    (None: until Ctrl-C, which finishes the current block and returns the report).

    A `late_share` of the messages are late trades of earlier days (1 day back mostly, up to 3).
    """
    if rate <= 0:
        raise ConfigError(f"rate must be > 0 messages per second, got {rate}")
    if duration is not None and duration < 0:
        raise ConfigError(f"duration must be >= 0 seconds, got {duration}")
    if not 0 <= late_share <= 1:
        raise ConfigError(f"late_share must be within [0, 1], got {late_share}")
    started = time.perf_counter()
    total = int(rate * duration) * len(SPECS) if duration is not None else None
    bar = _progress(total, "live", progress)
    stop = threading.Event()
    with hot_tier.hot_tier_errors(settings), _stop_on_sigint(stop):
        client = hot_tier.connect(settings, write=True)
        try:
            last_us = int(time.time() * 1e6)
            path = FairPath(seed, last_us, 1)
            feeds: dict[str, tuple[_ExchangeFeed, _Tally, np.random.Generator]] = {}
            for index, spec in enumerate(SPECS.values()):
                next_offsets, used = _hot_state(client, spec.table)
                salt = _pick_salt(seed, "live", None, spec, used)
                rng = _rng(seed, 1, index)
                feed = _ExchangeFeed(spec, rng, path, salt=salt, next_offsets=next_offsets)
                feeds[spec.name] = (feed, _Tally(spec.name, salt, feed), rng)
            burst = {name: False for name in feeds}
            deadline = None if duration is None else started + duration
            while True:
                remaining = _TICK_S if deadline is None else deadline - time.perf_counter()
                stop.wait(max(min(_TICK_S, remaining), 0.0))
                now_us = max(int(time.time() * 1e6), last_us + 1)
                span = now_us - last_us
                for name, (feed, tally, rng) in feeds.items():
                    # Bursty: each tick's intensity is calm (0.8x) or a burst (3x, ~9% of ticks); mean 1x.
                    burst[name] = rng.random() < (0.6 if burst[name] else 0.04)
                    factor = 3.0 if burst[name] else 0.8
                    n = min(int(rng.poisson(rate * factor * span / 1e6)), span)
                    u = np.sort(rng.random(n))
                    arrivals = last_us + 1 + np.floor(u * (span - n)).astype(np.int64) + np.arange(n, dtype=np.int64)
                    late_draw = rng.random(n) < late_share
                    late = np.where(late_draw, rng.choice(_LATE_DAYS, n, p=_LATE_DAYS_P), 0).astype(np.int64)
                    blk = feed.block(arrivals, late, _now_s())
                    if len(blk):
                        _insert(client, feed.spec.table, blk)
                        tally.add(blk)
                        bar.update(int(np.count_nonzero(blk.fresh)))
                last_us = now_us
                if stop.is_set() or (deadline is not None and time.perf_counter() >= deadline):
                    break
        finally:
            client.disconnect()
            bar.close()
    return FeedReport(
        mode="live",
        seed=seed,
        exchanges=tuple(t.counts() for _, t, _ in feeds.values()),
        seconds=time.perf_counter() - started,
        interrupted=stop.is_set(),
    )


@contextmanager
def _stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C: finish the current block and stop. A second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------------------------------
# hostile: one message of every bad class a real feed delivers
# --------------------------------------------------------------------------------------------------

MIB = 1 << 20


@dataclass(frozen=True)
class HostileMessage:
    """One hostile message as the consumer wrote it: the hot row, with the bytes of every String column."""

    kind: str  # the bad class, e.g. "price_nan" (`hostile_kinds`)
    row: dict  # column -> value exactly as inserted (bytes for String columns), `ingested_at` aside


def _hostile_kinds(exchange: str) -> list[tuple[str, dict]]:
    """(kind, what differs from a good message): `symbol`, `price` and `qty` as sent, `trade_us` (the trade
    time), `time` (Kraken's raw time text) or any column by name; `same_trade`: the trade id and time of `valid`."""
    binance = exchange == BINANCE.exchange
    price = b"67050.61000000" if binance else b"67050.60000"
    return [
        ("valid", {}),  # a good trade: silver keeps it (and the duplicates below are of it)
        ("exact_replay", {"same_trade": True}),  # the same trade again under a new offset: a replay
        ("conflicting_duplicate", {"same_trade": True, "price": price.replace(b"67050", b"67150")}),
        ("price_empty", {"price": b""}),
        ("price_nan", {"price": b"NaN" if binance else b"nan"}),
        ("price_infinite", {"price": b"Infinity" if binance else b"inf"}),
        ("price_negative", {"price": b"-" + price}),
        ("price_zero", {"price": b"0.00000000" if binance else b"0.00000"}),
        ("price_overflow", {"price": b"67050610000000" + price[5:]}),  # 14 integer digits: beyond decimal(18,8)
        ("price_too_precise", {"price": b"67050.610000001"}),  # 9 decimals
        ("price_line_break", {"price": price + b"\n"}),
        ("quantity_empty", {"qty": b""}),
        ("quantity_nan", {"qty": b"NaN" if binance else b"nan"}),
        ("quantity_infinite", {"qty": b"Infinity" if binance else b"inf"}),
        ("quantity_negative", {"qty": b"-0.00051000"}),
        ("quantity_zero", {"qty": b"0.00000000"}),
        ("quantity_overflow", {"qty": b"51000000000.00000000"}),  # 11 integer digits
        ("quantity_too_precise", {"qty": b"0.000510001"}),
        ("symbol_unknown", {"symbol": b"FOOUSDT" if binance else b"FOO/USD"}),
        ("symbol_lowercase", {"symbol": b"btcusdt" if binance else b"xbt/usd"}),
        ("symbol_invalid_utf8", {"symbol": b"BTC\xffUSDT" if binance else b"XBT/\xc3\x28USD"}),
        ("symbol_control_chars", {"symbol": (b"BTC\x00USDT" if binance else b"XBT/\x00USD") + b"\x1b[2J\r\n\x7f"}),
        ("symbol_sql", {"symbol": b"BTCUSDT'; DROP TABLE k2.bronze_trades_binance; --" if binance
                        else b"XBT/USD\"); DELETE FROM silver.trades WHERE (\"1\"=\"1"}),
        ("trade_time_1970", {"trade_us": 1_000_000}),  # 1970-01-01 00:00:01
        ("trade_time_far_future", {"trade_us": 253_402_300_799_999_000}),  # 9999-12-31 23:59:59.999
        # 1 MiB in one field: Binance's symbol, Kraken's free-text misc (the trade itself is good)
        ("oversized", {"symbol": b"BTCUSDT" + b"X" * (MIB - 7)} if binance else {"misc": b"x" * MIB}),
        *([("event_type_invalid", {"event_type": b"aggTrade"})] if binance else [
            ("side_invalid", {"side": b"x"}),
            ("time_garbage", {"time": b"garbage"}),
            ("time_empty", {"time": b""}),
            ("time_scientific", {"time": b"17e8.000000"}),
        ]),
    ]


def hostile_kinds(exchange: str) -> tuple[str, ...]:
    """The hostile classes `hostile_messages` emits for `exchange`, in feed order."""
    return tuple(kind for kind, _ in _hostile_kinds(exchange))


def _plausible(trade_us: np.ndarray, record_ms: np.ndarray) -> np.ndarray:
    """The trade time can date the message (contracts.TRADE_TIME_MAX_LATE_US / _AHEAD_US)."""
    record_us = record_ms.astype(np.int64) * 1000
    return (trade_us >= record_us - TRADE_TIME_MAX_LATE_US) & (trade_us <= record_us + TRADE_TIME_MAX_AHEAD_US)


def hostile_messages(
    exchange: str, day: dt.date, *, salt: int = 0, next_offsets: dict[int, int] | None = None,
) -> list[HostileMessage]:
    """One message per hostile class (`hostile_kinds(exchange)`), in the exchange's own shape, produced a
    second apart from noon of `day`, at the feed positions that follow `next_offsets`. Deterministic."""
    spec = SPECS[exchange]
    offsets = dict(next_offsets or {})
    day_us = (day - dt.date(1970, 1, 1)).days * DAY_US
    messages = []
    first_trade_us = None
    for i, (kind, change) in enumerate(_hostile_kinds(exchange)):
        arrival_us = day_us + DAY_US // 2 + i * 1_000_000
        trade_us = arrival_us - 500_000
        trade_id = trade_us * SALTS + salt
        if change.get("same_trade"):
            trade_us, trade_id = first_trade_us, first_trade_us * SALTS + salt
        first_trade_us = first_trade_us or trade_us
        trade_us = change.get("trade_us", trade_us)
        symbol = change.get("symbol", spec.markets[0].symbol.encode())
        price = change.get("price", b"67050.61000000" if spec.table is BINANCE else b"67050.60000")
        qty = change.get("qty", b"0.00051000")
        record_ms = arrival_us // 1000
        readable = True
        if spec.table is BINANCE:
            row = {
                "event_type": b"trade", "event_time": trade_us // 1000 + 1, "symbol": symbol, "trade_id": trade_id,
                "price": price, "quantity": qty, "trade_time": trade_us // 1000, "is_buyer_maker": 1, "is_best_match": 1,
            }
        else:
            time_text = change.get("time", f"{trade_us // 1_000_000}.{trade_us % 1_000_000:06d}".encode())
            readable = "time" not in change
            row = {
                "channel_id": _KRAKEN_CHANNEL_BASE, "pair": symbol, "price": price, "volume": qty, "time": time_text,
                "side": b"s", "order_type": b"l", "misc": b"", "trade_id": trade_id,
            }
        row.update({k: v for k, v in change.items() if k in row})  # event_type, side, time, misc
        readable = readable and bool(_plausible(np.array([trade_us]), np.array([record_ms]))[0])
        dated_us = trade_us if readable else record_ms * 1000
        partition = kafka_partition(symbol)
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        row.update({
            "trade_date": dt.date(1970, 1, 1) + dt.timedelta(days=dated_us // DAY_US),
            "kafka_partition": partition, "kafka_offset": offset, "kafka_timestamp": record_ms,
        })
        messages.append(HostileMessage(kind, row))
    return messages


def _hostile_block(table: HotTable, messages: list[HostileMessage], ingest_s: int) -> _Block:
    columns = {}
    for c in table.columns:
        if c.name == "ingested_at":
            columns[c.name] = np.full(len(messages), ingest_s, dtype=np.uint32)
        elif pa.types.is_string(c.type):  # bytes as they are: NULs, invalid UTF-8 and all
            columns[c.name] = np.array([m.row[c.name] for m in messages], dtype=object)
        elif c.name == "trade_date":
            columns[c.name] = np.array([m.row[c.name] for m in messages], dtype="datetime64[D]")
        else:
            columns[c.name] = np.array([m.row[c.name] for m in messages], dtype=np.uint64)
    columns["kafka_partition"] = columns["kafka_partition"].astype(np.uint32)
    partition = columns["kafka_partition"].astype(np.int64)
    kinds = [m.kind for m in messages]
    bad = sum(k not in ("valid", "exact_replay") for k in kinds)
    return _Block(columns, partition, np.ones(len(messages), dtype=bool), 0, kinds.count("exact_replay"), bad, 0)


def hostile(settings: Settings, day: dt.date, *, seed: int = 0) -> tuple[FeedReport, dict[str, list[HostileMessage]]]:
    """Write one message of every hostile class per exchange (`hostile_messages`) into the hot tier, after
    its current offsets, with trade ids of their own salt; returns the report and the messages written."""
    started = time.perf_counter()
    written: dict[str, list[HostileMessage]] = {}
    tallies = []
    with hot_tier.hot_tier_errors(settings):
        client = hot_tier.connect(settings, write=True)
        try:
            for spec in SPECS.values():
                next_offsets, used = _hot_state(client, spec.table)
                salt = _pick_salt(seed, "hostile", day, spec, used)
                messages = hostile_messages(spec.name, day, salt=salt, next_offsets=next_offsets)
                block = _hostile_block(spec.table, messages, _now_s())
                _insert(client, spec.table, block)
                tally = _Tally(spec.name, salt)
                tally.add(block)
                tallies.append(tally)
                written[spec.name] = messages
        finally:
            client.disconnect()
    report = FeedReport(mode="hostile", seed=seed, exchanges=tuple(t.counts() for t in tallies),
                        seconds=time.perf_counter() - started)
    return report, written
