"""The warehouse in object storage: a real S3-compatible server (juicefs gateway, started by the tests),
bronze, silver and gold through Dagster, every check, and `k2 verify`, with no data file on local disk."""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance
from pyiceberg.io.pyarrow import PyArrowFileIO

from k2_lakehouse import runner
from k2_lakehouse.cli import main
from k2_lakehouse.core import feed, iceberg, services
from k2_lakehouse.core.contracts import TABLES
from k2_lakehouse.core.engine import DuckDBEngine, arrow_dataset
from k2_lakehouse.core.errors import ConfigError, ServiceError
from k2_lakehouse.core.settings import Settings
from k2_lakehouse.core.verify import verify
from k2_lakehouse_tests.s3 import S3Server, warehouse_prefix
from k2_lakehouse_tests.support import Lake, free_ports

DAY = dt.date(2026, 5, 7)
ROWS = 5_000  # feed positions per exchange; the feed adds redeliveries, replays, late and malformed messages


@pytest.mark.parametrize("s3_lake", ["duckdb", "spark"], indirect=True)
def test_bronze_silver_gold_and_verify_on_s3(s3_lake: Lake, s3_server: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    lake = s3_lake
    feed.seed(lake.settings, DAY, ROWS, seed=5, progress=False)

    rows = runner.run("*", [DAY.isoformat()], DagsterInstance.get())
    assert {r.asset for r in rows} == {"/".join(c.asset_path) for c in TABLES}, runner.format_rows(rows)
    assert all(r.success and r.checks and "FAILED" not in r.checks for r in rows), runner.format_rows(rows)
    assert sum(r.rows_appended for r in rows if r.asset.startswith("bronze/")) >= 2 * ROWS

    result = verify(lake.settings, [DAY])
    assert result.mismatched == 0 and len(result.bronze) == 2 and len(result.derived) == 8, result.report()
    assert main(["verify", "--date", DAY.isoformat()]) == 0
    assert "0 mismatched" in capsys.readouterr().out

    # Every table's metadata and data files are objects in the server, under the lake's prefix ...
    objects = s3_server.objects(warehouse_prefix(lake))
    cat = iceberg.catalog(lake.settings)
    for contract in TABLES:
        table = cat.load_table(contract.identifier)
        assert table.location().startswith(f"{lake.settings.warehouse}/")
        assert table.metadata_location in objects
        files = iceberg.partition_files(table, contract, DAY)
        assert files and all(objects.get(f, 0) > 0 for f in files), contract.qualified_name
    # ... and nothing of the warehouse is on local disk, in the lake's own directory or anywhere under K2_HOME.
    for local in (lake.settings.dagster_home.parent, lake.settings.home):
        assert not list(local.rglob("*.parquet")) and not list(local.rglob("*.metadata.json")), local


def test_s3_gateway_is_idempotent_and_stops_only_itself(tmp_path: Path) -> None:
    key, secret = f"k2{secrets.token_hex(4)}", secrets.token_hex(16)
    first, second = tmp_path / "first", tmp_path / "second"
    port, other = free_ports(2)
    gateway = services.start_s3_gateway(first, port, key, secret, buckets=["one-bucket"], log=lambda _: None)
    try:
        again = services.start_s3_gateway(first, port, key, secret, buckets=["one-bucket", "two-bucket"], log=lambda _: None)
        assert again.pid == gateway.pid and again.endpoint == f"http://127.0.0.1:{port}"
        with pytest.raises(ServiceError, match="already runs"):
            services.start_s3_gateway(first, other, key, secret, log=lambda _: None)
        with pytest.raises(ServiceError, match="is taken"):
            services.start_s3_gateway(second, port, key, secret, log=lambda _: None)
        server = S3Server(gateway.endpoint, "two-bucket", key, secret)
        with server.filesystem().open_output_stream("two-bucket/a/b.bin") as out:
            out.write(b"x" * 6_000_000)  # a multipart upload: needs the WHEN_REQUIRED checksum setting
        assert server.objects("a") == {"s3://two-bucket/a/b.bin": 6_000_000}
        assert secret not in (first / "gateway.log").read_text()
        services.stop_s3_gateway(second, log=lambda _: None)  # nothing runs there: nothing stops
        assert services.s3_gateway_pid(first) == gateway.pid
    finally:
        services.stop_s3_gateway(first, log=lambda _: None)
    assert services.s3_gateway_pid(first) is None


def test_services_up_s3_wants_a_local_endpoint_and_credentials(tmp_path: Path) -> None:
    env = {"K2_HOME": str(tmp_path), "K2_WAREHOUSE": "s3://lake/wh", "K2_S3_ENDPOINT": "http://127.0.0.1:9100",
           "AWS_ACCESS_KEY_ID": "devuser", "AWS_SECRET_ACCESS_KEY": "devsecret1"}
    assert services.local_s3_port(Settings.from_env(env)) == 9100
    for wrong in ({"K2_WAREHOUSE": ""}, {"K2_S3_ENDPOINT": "https://s3.amazonaws.com"}, {"K2_S3_ENDPOINT": ""},
                  {"AWS_SECRET_ACCESS_KEY": "short"}):
        with pytest.raises(ConfigError, match="up --s3"):
            services.local_s3_port(Settings.from_env({**env, **wrong}))
    assert "devsecret1" not in "".join(services.env_lines(Settings.from_env(env)))


def test_object_store_files_bind_like_local_ones(tmp_path: Path) -> None:
    """The Arrow-dataset binding (used for s3://) gives the rows and the contract's types, whatever the
    files' physical types; the local binding is DuckDB's own read_parquet."""
    schema = pa.schema([("k", pa.int64()), ("s", pa.string())])
    paths = []
    for i, kind in enumerate((pa.string(), pa.large_string())):  # pyiceberg writes large_string
        path = tmp_path / f"{i}.parquet"
        pq.write_table(pa.table({"k": [i, i + 10], "s": pa.array(["a", "b"], kind)}), path)
        paths.append(path.as_uri())
    with DuckDBEngine() as engine:
        engine.register_files("local_rows", paths, schema, PyArrowFileIO())
        engine.register_arrow("dataset_rows", arrow_dataset(paths, schema, PyArrowFileIO()))
        local = engine.arrow("SELECT * FROM local_rows ORDER BY k")
        through_arrow = engine.arrow("SELECT * FROM dataset_rows ORDER BY k")
        assert through_arrow.equals(local) and through_arrow.num_rows == 4
        assert engine.arrow("SELECT s FROM dataset_rows WHERE k = 10").column("s").to_pylist() == ["b"]  # pushdown
