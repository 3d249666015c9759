"""Schema drift through the Spark fan-out: a column the hot table gained reaches bronze from the executors too."""

from __future__ import annotations

from decimal import Decimal

from k2_lakehouse.core import iceberg, offload
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.core.spark import offload_writer
from k2_lakehouse_tests.core.test_offload import _assert_exactly_once
from k2_lakehouse_tests.core.test_schema_drift import DAY, _alter, _bronze, _insert, _trades
from k2_lakehouse_tests.support import Lake


def test_added_column_flows_through_spark_tasks(lake: Lake, spark) -> None:
    client = lake.client()
    _insert(client, _trades(range(0, 300)))
    write = offload_writer(spark, lake.settings)
    assert offload.offload_day(_bronze(lake), client, BINANCE, DAY, batch_rows=100, write=write).rows == 300
    _alter(client, "ADD COLUMN fee Decimal(18, 8)")
    _insert(client, _trades(range(300, 600), fee=[Decimal(i) / 100 for i in range(300)]), ("fee",))
    result = offload.offload_day(_bronze(lake), client, BINANCE, DAY, batch_rows=100, write=write)
    assert result.rows == 300 and result.files == 3 and result.columns_added == ("fee",)
    table = _bronze(lake)
    fees = {r["kafka_offset"]: r["fee"] for r in table.scan(selected_fields=("kafka_offset", "fee")).to_arrow().to_pylist()}
    assert all(fees[o] is None for o in range(300))
    assert [fees[o] for o in range(300, 600)] == [Decimal(i) / 100 for i in range(300)]
    assert iceberg.read_watermark(table, DAY) == {0: 599}
    _assert_exactly_once(lake, table, DAY)
