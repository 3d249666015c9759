"""Session services (real ClickHouse and PostgreSQL on free loopback ports) and a private lake per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2_lakehouse.core import services
from k2_lakehouse.core.settings import Settings
from k2_lakehouse_tests import s3
from k2_lakehouse_tests.support import Lake, new_lake, services_settings, traversable


@pytest.fixture(scope="session")
def shared_services() -> Iterator[Settings]:
    os.environ["K2_PG_FSYNC"] = "off"  # test data is disposable
    root = traversable(Path(tempfile.mkdtemp(prefix="k2-tests-")))
    settings = services_settings(root / "home")
    services.up(settings, log=lambda _: None, any_hot_database=True)  # each lake has its own hot database
    try:
        yield settings
    finally:
        services.down(settings, log=lambda _: None)
        # 1-2 GB a session: left behind, a few dozen runs filled this machine's disk and killed a soak.
        if not os.environ.get("K2_KEEP_TEST_DATA"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lake(shared_services: Settings, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """Isolated hot database, Iceberg catalog, warehouse and Dagster storage; the K2_* env points at them."""
    lake = new_lake(shared_services, shared_services.home.parent / "lakes")
    for name, value in lake.env.items():
        monkeypatch.setenv(name, value)
    return lake


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3.S3Server]:
    """A real S3-compatible server (juicefs gateway) on a free loopback port, random credentials, one bucket."""
    with s3.running_server() as server:
        yield server


@pytest.fixture
def s3_lake(request: pytest.FixtureRequest, lake: Lake, s3_server: s3.S3Server, monkeypatch: pytest.MonkeyPatch) -> Lake:
    """`lake` with its warehouse in `s3_server` (s3://bucket/<lake's own prefix>). The engine is K2_ENGINE,
    `duckdb` unless a test parametrizes it: @pytest.mark.parametrize("s3_lake", ["spark"], indirect=True)."""
    lake = s3.on_s3(lake, s3_server, engine=getattr(request, "param", "duckdb"))
    for name, value in {**lake.env, **s3.credentials(s3_server)}.items():
        monkeypatch.setenv(name, value)
    return lake
