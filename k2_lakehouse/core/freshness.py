"""How long a trade takes from the hot tier to bronze and to gold, measured from outside the pipeline.

A poller reads, once per interval, the hot tier's high offsets of today and what each layer shows:
- bronze: the day's watermark in the Iceberg table's properties;
- gold: the bronze watermark that gold's current day was built from, followed through the snapshot
  summaries (gold's commit names the silver snapshot it read, silver's names the bronze snapshots, and
  the bronze commit of the day in that snapshot's ancestry names its watermark).
An offset is "inserted" when the poller first sees it (so lags are under-stated by at most one
interval) and "visible" in a layer when that layer's watermark reaches it.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from dataclasses import dataclass, field

from pyiceberg.catalog import Catalog

from k2_lakehouse.core import hot_tier, iceberg
from k2_lakehouse.core.contracts import GOLD_TABLES, SILVER_TRADES, HotTable
from k2_lakehouse.core.hot_tier import Watermark
from k2_lakehouse.core.settings import Settings

LAYERS = ("bronze", "gold")


@dataclass
class Sample:
    partition: int
    offset: int
    seen_at: float  # monotonic seconds when the poller first saw the offset in ClickHouse
    visible_at: dict[str, float] = field(default_factory=dict)  # layer -> when it reached the offset


@dataclass
class LagReport:
    table: str
    interval_s: float
    samples: list[Sample]

    def lags(self, layer: str) -> list[float]:
        return [s.visible_at[layer] - s.seen_at for s in self.samples if layer in s.visible_at]

    def pending(self, layer: str) -> int:
        return sum(layer not in s.visible_at for s in self.samples)

    def summary(self) -> dict:
        out: dict = {"table": self.table, "samples": len(self.samples), "poll_interval_s": self.interval_s}
        for layer in LAYERS:
            lags = sorted(self.lags(layer))
            out[layer] = {
                "visible": len(lags), "never_visible": self.pending(layer),
                **({"p50_s": round(statistics.median(lags), 1), "p95_s": round(_percentile(lags, 0.95), 1),
                    "max_s": round(lags[-1], 1)} if lags else {}),
            }
        return out


def gold_watermark(cat: Catalog, hot: HotTable, day: dt.date) -> Watermark:
    """The bronze watermark of `day` that gold's current `day` was built from ({} if none)."""
    gold = cat.load_table(GOLD_TABLES["1m"].identifier)  # the six gold tables are published together
    silver_id = iceberg.partition_summary(gold, day).get(f"k2.upstream.{SILVER_TRADES.qualified_name}")
    if not silver_id:
        return {}
    silver = cat.load_table(SILVER_TRADES.identifier)
    bronze_id = iceberg.partition_summary(silver, day, int(silver_id)).get(f"k2.upstream.{hot.bronze.qualified_name}")
    if not bronze_id or bronze_id == "None":
        return {}
    bronze = cat.load_table(hot.bronze_identifier)
    raw = iceberg.partition_summary(bronze, day, int(bronze_id)).get("k2.watermark")
    return iceberg.decode_watermark(raw) if raw else {}


def measure(settings: Settings, hot: HotTable, duration_s: float, *, interval_s: float = 1.0, drain_s: float = 180.0) -> LagReport:
    """Poll for `duration_s`, sampling new offsets; then keep polling (up to `drain_s`) until the samples
    are visible in every layer."""
    client = hot_tier.connect(settings)
    cat = iceberg.catalog(settings)
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        while True:
            now = time.monotonic()
            day = dt.datetime.now(dt.timezone.utc).date()
            sampling = now - started < duration_s
            if sampling:
                for p, o in hot_tier.high_offsets(client, hot, day).items():
                    if not any(s.partition == p and s.offset >= o for s in samples):
                        samples.append(Sample(p, o, now))
            shown = {"bronze": iceberg.read_watermark(cat.load_table(hot.bronze_identifier), day),
                     "gold": gold_watermark(cat, hot, day)}
            seen = time.monotonic()
            for s in samples:
                for layer, wm in shown.items():
                    if layer not in s.visible_at and wm.get(s.partition, -1) >= s.offset:
                        s.visible_at[layer] = seen
            if not sampling and (all(len(s.visible_at) == len(LAYERS) for s in samples) or now - started > duration_s + drain_s):
                break
            time.sleep(max(0.0, interval_s - (time.monotonic() - now)))
    finally:
        client.disconnect()
    return LagReport(".".join(hot.bronze_identifier), interval_s, samples)


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]
