"""The bronze copy fanned out over Spark tasks: the same exactly-once protocol, crash and race tests as in process."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading

import pytest

from k2_lakehouse.core import offload
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.core.iceberg import read_watermark
from k2_lakehouse.core.spark import offload_writer
from k2_lakehouse_tests.core.test_offload import DAY, _assert_exactly_once, _data_files, _table
from k2_lakehouse_tests.support import Lake, insert_binance, race, then_wait


def test_slices_become_files_committed_once(lake: Lake, spark) -> None:
    client = lake.client()
    for partition in range(3):
        insert_binance(client, DAY, partition, [*range(2_500), 7, 1_000])  # two redeliveries per partition
    table = _table(lake)
    result = offload.offload_day(table, client, BINANCE, DAY, batch_rows=1_000, write=offload_writer(spark, lake.settings))
    assert result.rows == 7_500 and result.attempts == 1
    assert result.files == 9  # 3 partitions x 3 slices of at most 1,000 offsets: one file per task
    assert read_watermark(table, DAY) == {0: 2_499, 1: 2_499, 2: 2_499}
    assert _assert_exactly_once(lake, table).actual == 7_500
    again = offload.offload_day(table, client, BINANCE, DAY, write=offload_writer(spark, lake.settings))
    assert again.rows == 0 and again.attempts == 0


def test_slices_without_rows_of_the_day_write_no_file(lake: Lake, spark) -> None:
    """Feed partitions interleave days: a slice of a day's offset range can hold none of its rows."""
    client = lake.client()
    other_day = DAY - dt.timedelta(days=1)
    insert_binance(client, DAY, 0, range(1_000))
    insert_binance(client, other_day, 0, range(1_000, 3_000))  # late trades of the day before, same partition
    insert_binance(client, DAY, 0, range(3_000, 4_000))
    table = _table(lake)
    result = offload.offload_day(table, client, BINANCE, DAY, batch_rows=1_000, write=offload_writer(spark, lake.settings))
    assert result.rows == 2_000 and result.files == 2  # 4 slices, 2 of them with rows of DAY
    assert read_watermark(table, DAY) == {0: 3_999}
    assert _assert_exactly_once(lake, table).actual == 2_000
    assert len(_data_files(table)) == 2


def test_two_spark_writers_race_and_one_wins(lake: Lake, spark) -> None:
    client_a, client_b = lake.client(), lake.client()
    insert_binance(client_a, DAY, 0, range(3_000))
    barrier = threading.Barrier(2, timeout=120)
    write = then_wait(offload_writer(spark, lake.settings), barrier)  # both have their files, then race to commit
    results = race(*(
        lambda c=c: offload.offload_day(_table(lake), c, BINANCE, DAY, batch_rows=1_000, write=write)
        for c in (client_a, client_b)
    ))
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sorted(r.rows for r in results) == [0, 3_000], results
    table = _table(lake)
    assert _assert_exactly_once(lake, table).actual == 3_000
    assert len(table.inspect.files()) == 3 == len(_data_files(table))  # the loser's files were deleted


@pytest.mark.parametrize("point", ["mid_read", "mid_write"])
def test_a_killed_task_fails_the_run_and_leaves_nothing(lake: Lake, spark, point: str, monkeypatch) -> None:
    """SIGKILL in an executor's Python worker: the job fails, no file is left, nothing is committed."""
    client = lake.client()
    for partition in range(2):
        insert_binance(client, DAY, partition, range(3_000))
    table = _table(lake)
    monkeypatch.setenv("K2_FAILPOINT", point)
    with pytest.raises(Exception, match="Python worker exited unexpectedly|crashed|EOFError"):
        offload.offload_day(table, client, BINANCE, DAY, batch_rows=1_000, write=offload_writer(spark, lake.settings))
    monkeypatch.delenv("K2_FAILPOINT")
    table.refresh()
    assert table.current_snapshot() is None and read_watermark(table, DAY) == {}
    assert _data_files(table) == []
    rerun = offload.offload_day(table, client, BINANCE, DAY, batch_rows=1_000, write=offload_writer(spark, lake.settings))
    assert rerun.rows == 6_000
    assert _assert_exactly_once(lake, table).actual == 6_000


def test_driver_killed_after_the_commit(lake: Lake) -> None:
    """SIGKILL of the driver right after its Iceberg commit: the watermark came with the files, a rerun adds nothing."""
    client = lake.client()
    for partition in range(2):
        insert_binance(client, DAY, partition, range(3_000))
    script = (
        "import datetime as dt\n"
        "from k2_lakehouse.core import hot_tier, iceberg, offload, spark as k2_spark\n"
        "from k2_lakehouse.core.contracts import BINANCE\n"
        "from k2_lakehouse.core.settings import Settings\n"
        "s = Settings.from_env()\n"
        "t = iceberg.bronze_table(iceberg.catalog(s), BINANCE)\n"
        f"offload.offload_day(t, hot_tier.connect(s), BINANCE, dt.date.fromisoformat('{DAY}'), batch_rows=1000,\n"
        "                     write=k2_spark.offload_writer(k2_spark.session(s), s))\n"
    )
    env = {**os.environ, **lake.env, "K2_FAILPOINT": "after_iceberg_commit", "K2_ENGINE": "spark"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=300, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    table = _table(lake)
    assert read_watermark(table, DAY) == {0: 2_999, 1: 2_999}
    assert offload.offload_day(table, client, BINANCE, DAY).rows == 0
    assert _assert_exactly_once(lake, table).actual == 6_000
