"""A real S3-compatible server for tests (`juicefs gateway` on a free loopback port, random credentials),
and lakes whose warehouse is in it."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs

from k2_lakehouse.core import objectstore, services
from k2_lakehouse_tests.support import Lake, free_ports

BUCKET = "k2-test-warehouse"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str = REGION

    def filesystem(self) -> pyarrow.fs.S3FileSystem:
        """A client of the server, as an outside reader would be: paths are `bucket/key`."""
        return objectstore.s3_filesystem(
            endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key, region=self.region,
        )

    def objects(self, prefix: str) -> dict[str, int]:
        """Every object under `bucket/prefix`: s3:// URI -> size."""
        selector = pyarrow.fs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True)
        return {f"s3://{info.path}": info.size for info in self.filesystem().get_file_info(selector)
                if info.type == pyarrow.fs.FileType.File}


@contextmanager
def running_server(root: Path | None = None) -> Iterator[S3Server]:
    """Start a juicefs gateway with its data under `root` (default: a new temp dir), create the bucket,
    and stop the gateway (and remove a temp dir) on exit."""
    own = root is None
    root = Path(tempfile.mkdtemp(prefix="k2-s3-")) if root is None else root
    access_key, secret_key = f"k2{secrets.token_hex(6)}", secrets.token_urlsafe(24)
    (port,) = free_ports(1)
    gateway = services.start_s3_gateway(root, port, access_key, secret_key, buckets=[BUCKET], region=REGION, log=lambda _: None)
    try:
        yield S3Server(gateway.endpoint, BUCKET, access_key, secret_key)
    finally:
        services.stop_s3_gateway(root, log=lambda _: None)
        if own:
            shutil.rmtree(root, ignore_errors=True)


def on_s3(lake: Lake, server: S3Server, *, engine: str = "duckdb") -> Lake:
    """The same lake with its warehouse under its own prefix of the server's bucket, run by `engine`; set
    `credentials(server)` in the environment too."""
    prefix = lake.settings.iceberg_catalog_uri.rsplit("/", 1)[1]  # the lake's catalog database: unique per lake
    settings = dataclasses.replace(
        lake.settings, warehouse=f"s3://{server.bucket}/{prefix}", engine=engine, s3_endpoint=server.endpoint,
        s3_region=server.region, s3_access_key_id=server.access_key, s3_secret_access_key=server.secret_key,
    )
    return Lake(settings, {**lake.env, **settings.exports()})  # exports() leaves the credentials out: see `credentials`


def credentials(server: S3Server) -> dict[str, str]:
    """The server's credentials as the environment variables K2 reads (kept out of `Lake.env`, which reprs show)."""
    return {"AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key}


def warehouse_prefix(lake: Lake) -> str:
    """The lake's warehouse as a key prefix of its bucket."""
    return lake.settings.warehouse.split("://", 1)[1].split("/", 1)[1]
