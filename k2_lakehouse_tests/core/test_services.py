"""Integration test of `k2 services`: real ClickHouse and PostgreSQL on free loopback ports, no mocks."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from k2_lakehouse.core import hot_tier, services
from k2_lakehouse.core.contracts import HOT_TABLES
from k2_lakehouse.core.errors import ServiceError
from k2_lakehouse.core.settings import Settings
from k2_lakehouse_tests.support import services_settings, traversable


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("K2_PG_FSYNC", "off")
    s = services_settings(traversable(tmp_path / "k2"))
    try:
        yield s
    finally:
        services.down(s, log=lambda _: None)  # never leave servers behind, even on failure


def test_up_status_down(settings: Settings, tmp_path: Path) -> None:
    logs: list[str] = []
    services.up(settings, log=logs.append)
    ch_pid = (settings.home / "run" / "clickhouse.pid").read_text().strip()

    services.up(settings, log=logs.append)  # idempotent: reports, starts nothing new
    assert any("already running" in line for line in logs)
    assert (settings.home / "run" / "clickhouse.pid").read_text().strip() == ch_pid

    statuses = services.status(settings)
    assert [s.name for s in statuses] == ["clickhouse", "postgres"]
    assert all(s.running and s.healthy for s in statuses), services.format_status(statuses)
    assert "version" in statuses[0].detail

    client = hot_tier.connect(settings)
    try:
        tables = {row[0] for row in client.execute("SHOW TABLES FROM k2", settings={"use_numpy": False})}
        profile = client.execute(
            "SELECT value FROM system.settings WHERE name = 'allow_experimental_low_cardinality_type'",
            settings={"use_numpy": False},
        )
    finally:
        client.disconnect()
    assert {t.name for t in HOT_TABLES.values()} <= tables
    assert profile == [("1",)]

    conn = services.admin_connect(settings)  # the superuser: through the cluster's socket only
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database")
            assert {("dagster", "k2_dagster"), ("iceberg", "k2_catalog")} <= set(cur.fetchall())
    finally:
        conn.close()
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        psycopg2.connect(host="127.0.0.1", port=settings.postgres_port, user="postgres", dbname="postgres")

    assert (settings.dagster_home).is_dir()
    assert any(line.startswith("export K2_HOME=") for line in services.env_lines(settings))

    # A port held by someone else: a clear ServiceError, and nothing is started for that home.
    other = services_settings(traversable(tmp_path / "other"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", other.clickhouse.port))
        squatter.listen()
        with pytest.raises(ServiceError, match=f"port {other.clickhouse.port} is taken"):
            services.up(other, log=lambda _: None)
    assert not (other.home / "run" / "clickhouse.pid").exists()
    assert not (other.home / "postgres").exists()

    services.down(settings, log=logs.append)
    services.down(settings, log=logs.append)  # idempotent
    statuses = services.status(settings)
    assert not any(s.running for s in statuses), services.format_status(statuses)
    assert not (settings.home / "run" / "clickhouse.pid").exists()
    assert not os.path.exists(f"/proc/{ch_pid}") or b"clickhouse" not in Path(f"/proc/{ch_pid}/cmdline").read_bytes()
