"""Full verification of every layer, whole partitions: what `k2 verify` prints and the daily schedule runs.

Incremental runs check what they add; this reads everything again, so a fault that slipped between
two runs' checks (or a table edited by hand) cannot stay hidden.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass, field

from k2_lakehouse.core import gold, hot_tier, iceberg, reconcile, silver
from k2_lakehouse.core.audit import CheckOutcome
from k2_lakehouse.core.contracts import HOT_TABLES
from k2_lakehouse.core.report import format_table
from k2_lakehouse.core.settings import Settings

LAYERS = ("bronze", "silver", "gold")


@dataclass
class Verification:
    bronze: list[reconcile.Reconciliation] = field(default_factory=list)
    derived: list[tuple[str, dt.date, list[CheckOutcome]]] = field(default_factory=list)  # silver and gold tables

    @property
    def failed(self) -> list[tuple[str, dt.date, CheckOutcome]]:
        return [(name, day, c) for name, day, outcomes in self.derived for c in outcomes if not c.passed]

    @property
    def mismatched(self) -> int:
        return len([r for r in self.bronze if not r.in_sync]) + len({(name, day) for name, day, _ in self.failed})

    def report(self) -> str:
        parts = []
        if self.bronze:
            # hot rows: still in ClickHouse; hot positions: held there now or, retired (DESIGN §5.6), before
            # ("retired": how many of them the bronze table's retirement record vouches for).
            parts.append(format_table(
                ("table", "day", "hot rows", "hot positions", "retired", "bronze rows", "duplicates", "missing", "checksum",
                 "status"),
                [(r.table, r.day, f"{r.hot_rows:,}", f"{r.hot_positions:,}", f"{r.retired:,}" if r.retired else "-",
                  f"{r.actual:,}", r.duplicates, r.missing + r.not_yet_offloaded, "match" if r.checksum_match else "DIFFERS",
                  "ok" if r.in_sync else "MISMATCH")
                 for r in self.bronze],
            ) + "\n")
        if self.derived:
            parts.append(format_table(("table", "day", "checks passed", "status"), [
                (name, day, f"{sum(c.passed for c in outcomes)}/{len(outcomes)}", "ok" if all(c.passed for c in outcomes) else "MISMATCH")
                for name, day, outcomes in self.derived
            ]))
        parts += [
            f"  {name} {day} {c.name}: expected {_short(c.expected)}, actual {_short(c.actual)}, difference {_short(c.difference)}"
            for name, day, c in self.failed
        ]
        parts.append(f"{len(self.bronze)} bronze and {len(self.derived)} silver/gold table-days checked, {self.mismatched} mismatched")
        return "\n".join(parts)


def verify(settings: Settings, days: Collection[dt.date] | None = None, layers: Collection[str] = LAYERS) -> Verification:
    """Hot against bronze, bronze against silver, silver against gold, for `days` (default: every day from
    K2_FIRST_DAY on; the hot-tier sensor warns about hot days before it, which no run offloads)."""
    result = Verification()
    bronze_days: set[dt.date] = set()
    with hot_tier.hot_tier_errors(settings):
        client = hot_tier.connect(settings)
        cat = iceberg.catalog(settings)
        for hot in HOT_TABLES.values():
            table = iceberg.bronze_table(cat, hot)
            found = set(hot_tier.high_offsets_by_day(client, hot)) | set(iceberg.watermarked_days(table))
            found = {d for d in found if d >= settings.first_day}  # earlier days are outside every partition
            if days is not None:
                found &= set(days)
            bronze_days |= found
            if "bronze" in layers:
                result.bronze += reconcile.verify(table, client, hot, sorted(found))
    for day in sorted(bronze_days):
        for layer, verify_day in (("silver", silver.verify_day), ("gold", gold.verify_day)):
            if layer in layers:
                result.derived += [(name, day, outcomes) for name, outcomes in verify_day(cat, day).items()]
    return result


def _short(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
