"""What the hot-tier sensor asks for: the (table, day) pairs whose feed offsets moved past bronze's watermark.

Pure logic over three inputs, so restarts and outages are easy to reason about and to test:
- the hot tier's high offsets now, per table and day;
- the cursor: per table and day, the high offsets already handled (requested, or found already copied);
- the watermark each bronze partition last recorded (Dagster's materialization metadata).

A pair is requested once per set of high offsets: its run key names them, so a restarted daemon that
re-evaluates an old cursor cannot request the same work twice, and a pair is re-requested as soon as
the feed moves again. A table with a run queued or in flight is left for the next tick (and out of the
new cursor), so runs never pile up behind the one-run-per-table limit and nothing is missed meanwhile.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from k2_lakehouse.core.hot_tier import Watermark, missing_ranges

Cursor = dict[str, dict[str, dict[str, int]]]  # table -> ISO day -> {partition: high offset handled}


@dataclass(frozen=True)
class BronzeRequest:
    table: str  # the hot table's name, e.g. trades_binance
    day: dt.date
    high: Watermark  # the hot tier's high offsets this request is for

    @property
    def run_key(self) -> str:
        offsets = ",".join(f"{p}:{o}" for p, o in sorted(self.high.items()))
        return f"{self.table}/{self.day.isoformat()}/{offsets}"


def bronze_requests(
    highs: Mapping[str, Mapping[dt.date, Watermark]],
    cursor: Cursor,
    recorded: Callable[[str, dt.date], Watermark],
    busy: set[str] = frozenset(),
) -> tuple[list[BronzeRequest], Cursor]:
    """The runs to request now and the cursor to store with them.

    `highs`: table -> day -> the hot tier's high offsets; `recorded(table, day)`: bronze's watermark as
    last recorded; `busy`: tables with a bronze run queued or in flight (their days wait a tick).
    """
    requests: list[BronzeRequest] = []
    new_cursor: Cursor = {}
    for table, days in highs.items():
        seen = cursor.get(table, {})
        if table in busy:  # keep what was handled; compare again once the run is done
            new_cursor[table] = {day: high for day, high in seen.items() if dt.date.fromisoformat(day) in days}
            continue
        handled = new_cursor.setdefault(table, {})
        for day, high in days.items():
            key = day.isoformat()
            encoded = {str(p): o for p, o in sorted(high.items())}
            if seen.get(key) != encoded and missing_ranges(recorded(table, day), high):
                requests.append(BronzeRequest(table, day, dict(high)))
            handled[key] = encoded  # days that left the hot tier drop out of the cursor with it
    return requests, new_cursor


def encode_cursor(cursor: Cursor) -> str:
    return json.dumps(cursor, sort_keys=True, separators=(",", ":"))


def decode_cursor(raw: str | None) -> Cursor:
    """A missing or unreadable cursor is an empty one: every pair is compared with its watermark again,
    and run keys keep that from requesting anything twice."""
    try:
        cursor = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return cursor if isinstance(cursor, dict) else {}
