"""What the hot-tier sensor asks for: a bronze run for the day whose feed offsets moved past bronze's watermark.

Pure logic over four inputs, so restarts and outages are easy to reason about and to test:
- the hot tier's high offsets now, per table and day;
- the cursor: per table and day, the high offsets already handled (requested, or found already copied),
  and since when each day still waiting has been waiting;
- the watermark each bronze partition last recorded (Dagster's materialization metadata);
- whether a bronze run is queued or in flight.

A (table, day) pair is requested once per set of high offsets: the run key names them, so a restarted
daemon that re-evaluates an old cursor cannot request the same work twice, and a pair is requested again
as soon as the feed moves. One bronze run at a time, for one day and every table that moved on it: each
daemon-launched run pays a process start, and while bronze runs back to back its checks are always in
progress, which holds silver and gold back (their automation waits for passed checks). The newest day
goes first (a live feed moves it all the time); an older day (late trades) goes first once it has waited
`late_after_s`. Days not requested stay out of the cursor and are compared again next tick.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from k2_lakehouse.core import gold, hot_tier, iceberg, offload, silver
from k2_lakehouse.core.contracts import HOT_TABLES
from k2_lakehouse.core.hot_tier import Watermark, missing_ranges
from k2_lakehouse.core.settings import Settings

Cursor = dict  # {"handled": {table: {ISO day: {partition: high}}}, "waiting": {ISO day: since (s)}}
LATE_AFTER_S = 300.0  # an older day waits at most this long behind the newest one


@dataclass(frozen=True)
class BronzeRequest:
    """One bronze run: every table whose offsets moved on `day`, with the offsets it is for."""

    day: dt.date
    highs: dict[str, Watermark]  # table (e.g. trades_binance) -> the hot tier's high offsets

    @property
    def tables(self) -> list[str]:
        return sorted(self.highs)

    @property
    def run_key(self) -> str:
        return "/".join(
            [self.day.isoformat(), *(f"{t}:{','.join(f'{p}:{o}' for p, o in sorted(self.highs[t].items()))}" for t in self.tables)]
        )


def bronze_request(
    highs: Mapping[str, Mapping[dt.date, Watermark]],
    cursor: Cursor,
    recorded: Callable[[str, dt.date], Watermark],
    *,
    busy: bool = False,
    now: float = 0.0,
    late_after_s: float = LATE_AFTER_S,
) -> tuple[BronzeRequest | None, Cursor]:
    """The run to request now (none while a bronze run is queued or in flight) and the cursor to store.

    `highs`: table -> day -> the hot tier's high offsets; `recorded(table, day)`: bronze's watermark as
    last recorded; `now`: the clock, in seconds.
    """
    handled_all, waiting_all = cursor.get("handled", {}), cursor.get("waiting", {})
    new_cursor: Cursor = {"handled": {}, "waiting": {}}
    pending: dict[dt.date, dict[str, Watermark]] = {}
    for table, days in highs.items():
        seen = handled_all.get(table, {})
        handled = new_cursor["handled"][table] = {d: h for d, h in seen.items() if dt.date.fromisoformat(d) in days}
        for day, high in days.items():
            key, encoded = day.isoformat(), _encode(high)
            if seen.get(key) == encoded:
                continue
            if not busy and not missing_ranges(recorded(table, day), high):
                handled[key] = encoded  # copied already (by another run): nothing to do
                continue
            pending.setdefault(day, {})[table] = dict(high)
    waiting = new_cursor["waiting"] = {d.isoformat(): waiting_all.get(d.isoformat(), now) for d in pending}
    if busy or not pending:
        return None, new_cursor
    overdue = [d for d in pending if now - waiting[d.isoformat()] >= late_after_s]
    day = min(overdue, key=lambda d: waiting[d.isoformat()]) if overdue else max(pending)
    for table, high in pending[day].items():
        new_cursor["handled"][table][day.isoformat()] = _encode(high)
    del waiting[day.isoformat()]
    return BronzeRequest(day, pending[day]), new_cursor


def _encode(high: Watermark) -> dict[str, int]:
    return {str(p): o for p, o in sorted(high.items())}


def encode_cursor(cursor: Cursor) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def decode_cursor(raw: str | None) -> Cursor:
    """A missing or unreadable cursor is an empty one: every pair is compared with its watermark again,
    and run keys keep that from requesting anything twice."""
    try:
        cursor = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(cursor, dict) or not all(isinstance(cursor.get(k, {}), dict) for k in ("handled", "waiting")):
        return {}
    return cursor


def pending_days(settings: Settings, *, bronze: set[str], silver_wanted: bool, gold_wanted: bool) -> list[dt.date]:
    """Days on which a table is behind: a bronze table of `bronze` (hot table names) lags the hot tier, or
    silver or gold (if wanted) were not built from the rows their upstream holds now (or never built).
    What `k2 run` and the catch-up schedule run."""
    client = hot_tier.connect(settings)
    cat = iceberg.catalog(settings)
    lagging: set[dt.date] = set()
    bronze_days: set[dt.date] = set()
    try:
        for hot in HOT_TABLES.values():
            table = iceberg.bronze_table(cat, hot)
            bronze_days.update(iceberg.watermarked_days(table))
            if hot.name in bronze:
                lagging.update(offload.pending_days(table, client, hot))
    finally:
        client.disconnect()
    days = set(lagging)
    for day in sorted(bronze_days - lagging):
        if silver_wanted and not silver.is_current(cat, day):
            days.add(day)
        elif gold_wanted and not (silver.is_current(cat, day) and gold.is_current(cat, day)):
            days.add(day)
    if silver_wanted or gold_wanted:  # a day bronze is about to receive will need its silver and gold rebuilt
        days.update(lagging)
    return sorted(days)
