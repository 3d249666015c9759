"""Bronze: the one core call of the bronze step. Offload one hot day exactly once, then check it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from k2_lakehouse.core import hot_tier, iceberg, quality, reconcile
from k2_lakehouse.core.audit import CheckOutcome, contract_outcome
from k2_lakehouse.core.contracts import HotTable
from k2_lakehouse.core.offload import OffloadResult, RangeWriter, offload_day
from k2_lakehouse.core.settings import Settings

EXACTLY_ONCE_CHECK = "exactly_once"


@dataclass(frozen=True)
class BronzeDay:
    offload: OffloadResult
    reconciliation: reconcile.Reconciliation
    checks: list[CheckOutcome]


def build_bronze_day(
    settings: Settings, hot: HotTable, day: dt.date, *, run_id: str = "", verified: reconcile.Verified | None = None,
    write: RangeWriter | None = None,
) -> BronzeDay:
    """Offload the day, then check it: only what this run added when the last passing check (`verified`)
    covered the watermark this run started from; else, or when unknown, the whole partition. `write`
    copies the missing ranges (default: in this process; `spark.offload_writer` fans them out)."""
    with hot_tier.hot_tier_errors(settings):
        client = hot_tier.connect(settings)
        try:
            table = iceberg.bronze_table(iceberg.catalog(settings), hot)
            result = offload_day(table, client, hot, day, batch_rows=settings.batch_rows, run_id=run_id, write=write)
            incremental = verified is not None and verified.watermark == result.watermark_before
            if incremental:  # rows beyond the verified ones plus this run's came from elsewhere: check everything
                rows = iceberg.partition_rows(table, hot.bronze, day, result.snapshot_id)  # manifests only: no data read
                incremental = rows == verified.rows + result.rows
            if incremental:  # a few thousand new rows cost a few thousand rows of checking, however big the day
                recon = reconcile.reconcile_increment(
                    table, client, hot, day, verified, result.watermark_after, result.paths, rows,
                )
            else:
                recon = reconcile.reconcile(table, client, hot, day, result.watermark_after)
        finally:
            client.disconnect()
    if incremental:
        contract = quality.validate_files(table, hot.bronze, day, list(result.paths))
    else:
        contract = quality.validate_partition(table, hot.bronze, day, snapshot_id=result.snapshot_id)
    return BronzeDay(result, recon, [contract_outcome(contract, hot.bronze), exactly_once_outcome(recon)])


def exactly_once_outcome(recon: reconcile.Reconciliation) -> CheckOutcome:
    return CheckOutcome(
        EXACTLY_ONCE_CHECK, recon.exactly_once, expected=recon.expected, actual=recon.actual,
        details={
            "distinct_positions": recon.distinct,
            "duplicates": recon.duplicates,
            "missing": recon.missing,
            "checksum_match": recon.checksum_match,
            "not_yet_offloaded": recon.not_yet_offloaded,
            "retired_positions": recon.retired,  # expected positions vouched for by the retirement record, not the hot tier
            "scope": recon.scope,
        },
        description="bronze rows = distinct feed positions = hot positions up to the watermark",
    )
