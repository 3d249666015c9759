"""Write-audit-publish of one day partition of a silver or gold table (Iceberg branches).

1. **Write** the day's rows as Parquet files into the table's data directory.
2. **Stage** them on a fresh audit branch forked from `main`: one transaction that deletes day D and
   adds the new files, so the branch holds `main` with day D replaced, and `main` does not move.
3. **Audit**: the caller's checks read the branch's snapshot.
4. **Publish**: move `main` to the audited snapshot and drop the branch, in one commit that asserts
   `main` is still where the branch forked (a compare-and-swap). If another writer moved `main`
   meanwhile, the same files are staged again on the new `main` and published; the audited rows of
   day D are exactly those files, so the audit still holds. A failed audit drops the branch and the
   files: `main` keeps its snapshot id, readers of `main` never see unchecked rows.

Re-running a day writes the same rows (the transforms are deterministic and sorted), so the content
of `main` is unchanged; two concurrent runs of a day leave one of them, whole.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table
from pyiceberg.table.update.snapshot import ManageSnapshots

from k2_lakehouse.core import iceberg
from k2_lakehouse.core.iceberg import WrittenFiles
from k2_lakehouse.core.streams import prefetch
from k2_lakehouse.core.contracts import TableContract
from k2_lakehouse.core.errors import PublishConflict
from k2_lakehouse.core.failpoints import failpoint

log = logging.getLogger(__name__)

AUDIT_BRANCH_PREFIX = "k2-audit-"
MAX_ATTEMPTS = 8
FILE_ROWS = 8_000_000  # roll to a new Parquet file past this many rows
ROW_GROUP_ROWS = 500_000


def write_files(table: Table, contract: TableContract, day: dt.date, batches: Iterable[pa.RecordBatch]) -> WrittenFiles:
    """Stream record batches into zstd Parquet files of the day; on any failure nothing is left behind.

    Each row group is sorted by the contract's sort columns here, while the engine computes the next
    batch: neighbours share values, so zstd packs them, at none of the cost of a global sort.
    """
    written = WrittenFiles()
    directory = iceberg.data_directory(table, day)
    writer = stream = None
    rows_in_file = 0
    try:
        for batch in prefetch(iter(batches), depth=2):
            if not batch.num_rows:
                continue
            if writer is None or rows_in_file >= FILE_ROWS:
                if writer is not None:
                    writer.close()
                    stream.close()
                path = f"{directory}/{uuid.uuid4()}.parquet"
                written.paths.append(path)
                stream = table.io.new_output(path).create(overwrite=False)
                writer = pq.ParquetWriter(stream, contract.arrow_schema, compression="zstd", write_statistics=True)
                rows_in_file = 0
            ordered = pa.Table.from_batches([batch]).sort_by([(c, "ascending") for c in contract.sort_columns])
            writer.write_table(ordered.cast(contract.arrow_schema), row_group_size=ROW_GROUP_ROWS)
            rows_in_file += batch.num_rows
            written.rows += batch.num_rows
        if writer is not None:
            writer.close()
            stream.close()
    except BaseException:
        if writer is not None:
            writer.close()
            stream.close()
        written.delete(table)
        raise
    written.bytes = sum(len(table.io.new_input(path)) for path in written.paths)
    return written


@dataclass(frozen=True)
class Staged:
    """Day D of a table replaced by our files on an audit branch; `main` untouched."""

    table: Table
    contract: TableContract
    day: dt.date
    written: WrittenFiles
    summary: dict[str, str]
    branch: str
    base_snapshot_id: int  # main when the branch forked
    snapshot_id: int  # the branch head: what the audit reads and publish makes current

    @property
    def ref(self) -> iceberg.PartitionRef:
        return iceberg.PartitionRef(self.table, self.contract, self.day, self.snapshot_id)


def stage(table: Table, contract: TableContract, day: dt.date, written: WrittenFiles, summary: dict[str, str]) -> Staged:
    """Fork an audit branch from `main` and replace day D on it with the written files."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        table.refresh()
        base = iceberg.snapshot_id(table)
        if base is None:
            raise RuntimeError(f"{contract.qualified_name} has no snapshot; create it with iceberg.ensure_table(branches=True)")
        branch = f"{AUDIT_BRANCH_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            with table.transaction() as tx:
                # Fork explicitly: a snapshot written to a branch that does not exist yet has no parent,
                # and publishing it would replace every other day of the table with this one.
                with ManageSnapshots(tx) as refs:
                    refs.create_branch(snapshot_id=base, branch_name=branch)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "did not match any records": the day is new, nothing to replace
                    tx.delete(iceberg.day_filter(contract, day), snapshot_properties=summary, branch=branch)
                if written.paths:
                    tx.add_files(written.paths, snapshot_properties=summary, check_duplicate_files=False, branch=branch)
                else:  # an empty day is still a built day: its commit records what it was built from
                    tx.append(contract.arrow_schema.empty_table(), snapshot_properties=summary, branch=branch)
        except CommitFailedException:  # another commit to the table landed first (any branch): fork again
            _back_off(attempt)
            continue
        except ValueError as exc:
            # A new branch asserts nothing about the table's other refs, so a concurrent commit is caught
            # only when the catalog applies our snapshot to the newer metadata: nothing was committed.
            if "sequence number" not in str(exc):
                raise
            _back_off(attempt)
            continue
        table.refresh()
        return Staged(table, contract, day, written, summary, branch, base, table.metadata.refs[branch].snapshot_id)
    raise PublishConflict(f"{contract.qualified_name} {day}: could not stage after {MAX_ATTEMPTS} attempts")


def publish(staged: Staged) -> tuple[int, int]:
    """Make the audited snapshot `main`'s; returns (snapshot id now current, attempts)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        table = staged.table
        table.refresh()
        failpoint("before_publish")
        if iceberg.snapshot_id(table) == staged.base_snapshot_id:
            try:
                with table.transaction() as tx:
                    with ManageSnapshots(tx) as ms:  # asserts main is still the fork point
                        ms.set_current_snapshot(snapshot_id=staged.snapshot_id)
                        ms.remove_branch(staged.branch)
                    # The day's data version, in the same commit: it outlives the snapshot (maintenance expires it).
                    tx.set_properties({iceberg.data_version_key(staged.day): staged.summary["k2.data-version"]})
                return staged.snapshot_id, attempt
            except CommitFailedException:
                pass
        log.info("%s %s: main moved since the audit branch forked; staging the same files again",
                 staged.contract.qualified_name, staged.day)
        _drop_branch(table, staged.branch)
        # The audited rows of day D are exactly these files, so the audit holds on the new fork too.
        staged = stage(table, staged.contract, staged.day, staged.written, staged.summary)
        _back_off(attempt)
    raise PublishConflict(f"{staged.contract.qualified_name} {staged.day}: gave up after {MAX_ATTEMPTS} publish races")


def discard(staged: Staged) -> None:
    """Drop the audit branch and its files: `main` stays exactly as it was."""
    _drop_branch(staged.table, staged.branch)
    staged.written.delete(staged.table)


def _drop_branch(table: Table, branch: str) -> None:
    for attempt in range(1, MAX_ATTEMPTS + 1):
        table.refresh()
        if branch not in table.metadata.refs:
            return
        try:
            with table.manage_snapshots() as ms:
                ms.remove_branch(branch)
            return
        except CommitFailedException:
            _back_off(attempt)
    log.warning("could not remove audit branch %s of %s; table maintenance will", branch, table.name())


def _back_off(attempt: int) -> None:
    time.sleep(random.uniform(0.02, 0.2) * attempt)
