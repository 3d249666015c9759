"""Least privilege on real services: a read-only ClickHouse user for everything that reads the hot tier and a
writer for what changes it; one PostgreSQL role per database (Dagster storage, Iceberg catalog), owner of
that database only; real passwords on every service, found nowhere K2 writes; loopback-only listeners; no
hostile identifier reaches SQL.

The module runs its own `k2 services up` (its own ports and K2_HOME) with passwords on the ClickHouse reader
and writer, both PostgreSQL roles and the S3 gateway, so the session's services (no passwords, any hot
database) stay as they are.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import clickhouse_driver
import psutil
import psycopg2
import pytest
from clickhouse_driver.errors import Error as ClickHouseError
from psycopg2 import sql

from k2_lakehouse.core import feed, hot_tier, services
from k2_lakehouse.core.errors import ConfigError
from k2_lakehouse.core.settings import Settings
from k2_lakehouse_tests.support import free_ports, listening_addresses, traversable

PROJECT = Path(__file__).resolve().parents[1]
DAY = dt.date(2026, 3, 14)
READONLY = 164  # ClickHouse: "Cannot execute query in readonly mode"


class Secured:
    """The module's services: settings, the environment that reaches them, and every password in it."""

    def __init__(self, settings: Settings, env: dict[str, str], passwords: dict[str, str]) -> None:
        self.settings, self.env, self.passwords = settings, env, passwords
        self.outputs: list[str] = []  # what K2 printed or logged in this module: searched for the passwords


@pytest.fixture(scope="module")
def secured() -> Iterator[Secured]:
    # Not under pytest's tmp dirs: a pytest starting meanwhile makes its base 0700 again, and the postgres
    # user could no longer reach its data to stop (as conftest's session services, for the same reason).
    root = traversable(Path(tempfile.mkdtemp(prefix="k2-least-privilege-")))
    home = root / "home"
    ch, http, pg, s3 = free_ports(4)
    # Hex passwords: distinctive to search for, and fit into URLs as they are.
    pw = {name: f"{name}{secrets.token_hex(12)}" for name in ("chreader", "chwriter", "pgdagster", "pgcatalog", "s3secret")}
    env = {
        "K2_HOME": str(home),
        "K2_CLICKHOUSE_URL": f"clickhouse://k2_reader:{pw['chreader']}@127.0.0.1:{ch}/k2",
        "K2_CLICKHOUSE_WRITER_URL": f"clickhouse://k2_writer:{pw['chwriter']}@127.0.0.1:{ch}/k2",
        "K2_CLICKHOUSE_HTTP_PORT": str(http),
        "K2_POSTGRES_URL": f"postgresql+psycopg2://k2_dagster:{pw['pgdagster']}@127.0.0.1:{pg}/dagster",
        "K2_ICEBERG_CATALOG_URI": f"postgresql+psycopg2://k2_catalog:{pw['pgcatalog']}@127.0.0.1:{pg}/iceberg",
        "K2_WAREHOUSE": "s3://k2-least-privilege/lake",
        "K2_S3_ENDPOINT": f"http://127.0.0.1:{s3}",
        "AWS_ACCESS_KEY_ID": f"k2lp{secrets.token_hex(4)}",
        "AWS_SECRET_ACCESS_KEY": pw["s3secret"],
        "DAGSTER_HOME": str(home / "dagster"),
        "K2_FIRST_DAY": "2026-03-01",
        "K2_PG_FSYNC": "off",  # test data is disposable
    }
    settings = Settings.from_env(env)
    state = Secured(settings, env, pw)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name in [n for n in os.environ if n.startswith("K2_") and n not in env]:
            mp.delenv(name)  # K2_ENGINE and friends from the caller's shell: the defaults here
        try:
            services.up(settings, s3=True, log=state.outputs.append)
            yield state
        finally:
            services.down(settings, log=lambda _: None)
            shutil.rmtree(root, ignore_errors=True)


def _ch(secured: Secured, *, write: bool = False, database: str | None = None, password: str | None = None):
    settings = secured.settings
    addr = settings.clickhouse_writer if write else settings.clickhouse
    return clickhouse_driver.Client(
        host=addr.host, port=addr.port, user=addr.user, password=addr.password if password is None else password,
        database=addr.database if database is None else database, connect_timeout=5, send_receive_timeout=30,
    )


def _pg(secured: Secured, url_name: str, *, dbname: str | None = None, password: str | None = None):
    from urllib.parse import urlsplit

    parts = urlsplit(secured.env[url_name])
    return psycopg2.connect(host="127.0.0.1", port=parts.port, user=parts.username,
                            password=parts.password if password is None else password,
                            dbname=dbname or parts.path.lstrip("/"), connect_timeout=5)


# ------------------------------------------------------------------------------------------- (a) ClickHouse


def test_the_clickhouse_reader_reads_only_and_the_writer_writes(secured: Secured) -> None:
    report = feed.seed(secured.settings, DAY, 2_000, seed=5, progress=False)  # the feed inserts as the writer
    assert all(counts.rows >= 2_000 for counts in report.exchanges)

    writer = _ch(secured, write=True)
    writer.execute("CREATE DATABASE IF NOT EXISTS lp_other")
    writer.execute("CREATE TABLE IF NOT EXISTS lp_scratch (x UInt64) ENGINE = MergeTree ORDER BY x")
    writer.execute("INSERT INTO lp_scratch (x) VALUES", [(1,), (2,)])
    writer.execute("ALTER TABLE lp_scratch DELETE WHERE x = 1")  # a mutation, as retention deletes
    writer.execute("DROP TABLE lp_scratch")

    reader = _ch(secured)
    # Reads, with the per-query settings the offload sends (readonly=1 would refuse max_block_size).
    (count,), = reader.execute("SELECT count() FROM bronze_trades_binance", settings={"max_block_size": 1000})
    assert count > 0
    (level,), = reader.execute("SELECT value FROM system.settings WHERE name = 'readonly'")
    assert level == "2"
    for statement in (
        "INSERT INTO bronze_trades_binance SELECT * FROM bronze_trades_binance LIMIT 1",
        "ALTER TABLE bronze_trades_binance DELETE WHERE 1",
        f"ALTER TABLE bronze_trades_binance DROP PARTITION {DAY:%Y%m%d}",
        "ALTER TABLE bronze_trades_binance ADD COLUMN evil UInt8",
        "TRUNCATE TABLE bronze_trades_binance",
        "DROP TABLE bronze_trades_binance",
        "DROP DATABASE k2",
        "CREATE TABLE evil (x UInt8) ENGINE = Memory",
        "CREATE DATABASE evil",
        "RENAME TABLE bronze_trades_binance TO evil",
        "OPTIMIZE TABLE bronze_trades_binance",
        "SET readonly = 0",
    ):
        with pytest.raises(ClickHouseError) as refused:
            reader.execute(statement)
        assert refused.value.code == READONLY, (statement, refused.value)
    with pytest.raises(ClickHouseError) as refused:  # and it cannot lift its own limit per query
        reader.execute("INSERT INTO bronze_trades_binance SELECT * FROM bronze_trades_binance LIMIT 1",
                       settings={"readonly": 0})
    assert refused.value.code == READONLY
    (after,), = reader.execute("SELECT count() FROM bronze_trades_binance")
    assert after == count

    # The hot database only (allow_databases), and only with its password.
    for attempt in (lambda: _ch(secured, database="lp_other").execute("SELECT 1"),
                    lambda: _ch(secured, password="wrong").execute("SELECT 1"),
                    lambda: _ch(secured, password="").execute("SELECT 1"),
                    lambda: _ch(secured, write=True, password="").execute("SELECT 1")):
        with pytest.raises((ClickHouseError, EOFError)):
            attempt()
    with pytest.raises((ClickHouseError, EOFError)):  # no `default` user any more
        clickhouse_driver.Client(host="127.0.0.1", port=secured.settings.clickhouse.port, connect_timeout=5).execute("SELECT 1")
    # The product's own clients: the read-only user unless asked to write.
    assert hot_tier.connect(secured.settings).connection.user == "k2_reader"
    assert hot_tier.connect(secured.settings, write=True).connection.user == "k2_writer"
    assert "<password_sha256_hex>" in (secured.settings.home / "clickhouse" / "users.xml").read_text()


# ------------------------------------------------------------------------------------------- (b) PostgreSQL


def test_each_postgres_role_reaches_its_own_database_only(secured: Secured) -> None:
    admin = services.admin_connect(secured.settings)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                        "FROM pg_roles WHERE rolname IN ('k2_dagster', 'k2_catalog') ORDER BY rolname")
            assert cur.fetchall() == [("k2_catalog", False, False, False, False, False),
                                      ("k2_dagster", False, False, False, False, False)]
            cur.execute("SELECT datname, pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT') "
                        "FROM pg_database WHERE datname IN ('dagster', 'iceberg') ORDER BY datname")
            assert cur.fetchall() == [("dagster", "k2_dagster", False), ("iceberg", "k2_catalog", False)]
    finally:
        admin.close()

    for own, other in (("K2_POSTGRES_URL", "iceberg"), ("K2_ICEBERG_CATALOG_URI", "dagster")):
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            _pg(secured, own, dbname=other)
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _pg(secured, own, password="wrong")
        with pytest.raises(psycopg2.OperationalError, match="password"):
            _pg(secured, own, password="")
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            _pg(secured, own, dbname="postgres")
        conn = _pg(secured, own)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for statement in ("CREATE DATABASE evil", "CREATE ROLE evil", "ALTER ROLE CURRENT_USER SUPERUSER",
                                  "ALTER ROLE CURRENT_USER CREATEDB"):
                    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                        cur.execute(statement)
                cur.execute("CREATE TABLE lp_own (x int)")  # its own database: it may
                cur.execute("DROP TABLE lp_own")
        finally:
            conn.close()
    # The superuser: the cluster's Unix socket only, never TCP.
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        psycopg2.connect(host="127.0.0.1", port=secured.settings.postgres_port, user="postgres", dbname="postgres",
                         connect_timeout=5)


def test_up_migrates_an_install_made_with_the_superuser(secured: Secured) -> None:
    """Databases and tables the `postgres` superuser owns (an install from before the K2 roles) change owner."""
    admin = services.admin_connect(secured.settings, "iceberg")
    try:
        with admin.cursor() as cur:
            cur.execute("CREATE TABLE lp_legacy (id serial PRIMARY KEY, v text)")
            cur.execute("CREATE VIEW lp_legacy_view AS SELECT * FROM lp_legacy")
            cur.execute("CREATE SEQUENCE lp_legacy_seq")
            cur.execute("CREATE SCHEMA lp_legacy_schema")
            cur.execute("CREATE TABLE lp_legacy_schema.t (x int)")
            cur.execute("ALTER DATABASE iceberg OWNER TO postgres")
            cur.execute("GRANT CONNECT ON DATABASE iceberg TO PUBLIC")
    finally:
        admin.close()

    services.up(secured.settings, s3=True, log=secured.outputs.append)  # running already: it migrates only

    admin = services.admin_connect(secured.settings, "iceberg")
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT relname, pg_get_userbyid(relowner) FROM pg_class WHERE relname LIKE 'lp\\_legacy%' "
                        "OR relname = 't' ORDER BY relname")
            assert {owner for _, owner in cur.fetchall()} == {"k2_catalog"}
            cur.execute("SELECT pg_get_userbyid(datdba), has_database_privilege('public', oid, 'CONNECT') "
                        "FROM pg_database WHERE datname = 'iceberg'")
            assert cur.fetchone() == ("k2_catalog", False)
    finally:
        admin.close()
    conn = _pg(secured, "K2_ICEBERG_CATALOG_URI")
    conn.autocommit = True
    with conn.cursor() as cur:  # the role now owns them: it may change and drop them
        cur.execute("INSERT INTO lp_legacy (v) VALUES ('x')")
        cur.execute("DROP SCHEMA lp_legacy_schema CASCADE")
        cur.execute("DROP VIEW lp_legacy_view")
        cur.execute("DROP TABLE lp_legacy")
        cur.execute("DROP SEQUENCE lp_legacy_seq")
    conn.close()


# --------------------------------------------------------------- (c) Dagster on the roles; passwords nowhere


def test_every_layer_runs_on_the_k2_roles_and_no_password_leaks(secured: Secured) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance, materialize

    from k2_lakehouse.definitions import defs

    feed.seed(secured.settings, DAY, 3_000, seed=7, progress=False)
    with DagsterInstance.get() as instance:  # PostgreSQL-backed, as k2_dagster
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        result = materialize(list(defs.assets), selection="*", partition_key=DAY.isoformat(), instance=instance,
                             resources=defs.resources)
        assert result.success
        keys = [AssetKey(["bronze", "trades_binance"]), AssetKey(["silver", "trades"]), AssetKey(["gold", "ohlcv_1m"])]
        for key in keys:
            assert instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1).records, key

    # More trades, then the `k2` command line in its own process: `k2 run` picks them up, as the roles.
    feed.seed(secured.settings, DAY, 500, seed=8, progress=False)
    env = {**os.environ, **secured.env}
    for argv in (["run"], ["verify", "--date", DAY.isoformat()], ["services", "status"], ["services", "env"]):
        done = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", *argv], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=600)
        secured.outputs += [done.stdout, done.stderr]
        assert done.returncode == 0, (argv, done.stdout[-3000:], done.stderr[-3000:])
    env_output = done.stdout
    for name in ("K2_CLICKHOUSE_URL", "K2_CLICKHOUSE_WRITER_URL", "K2_POSTGRES_URL", "K2_ICEBERG_CATALOG_URI"):
        assert f"# {name} carries a password" in env_output

    # Where could a password have gone? Search everything K2 and Dagster wrote.
    places: dict[str, str] = {"k2 output and services logs": "\n".join(secured.outputs)}
    with DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) >= 2  # the in-process materialization and `k2 run`'s
        places["run config and tags"] = json.dumps([[r.run_config, r.tags] for r in runs], default=str)
        records = []
        for key in instance.get_asset_keys():
            records += instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=1000).records
        assert records
        places["materialization metadata"] = "\n".join(repr(r.asset_materialization.metadata) for r in records)
    for database in ("dagster", "iceberg"):  # every table: event_logs, runs, ...; the catalog's tables
        places[f"PostgreSQL database {database}"] = _dump_database(secured.settings, database)
    assert "ASSET_MATERIALIZATION" in places["PostgreSQL database dagster"]
    files = _files_under(secured.settings.home)  # DAGSTER_HOME (compute logs, storage), service logs and data
    assert len(files) > 100 and any(secured.settings.dagster_home in p.parents for p in files)
    assert any("compute_logs" in str(p) or "/storage/" in str(p) for p in files), "no compute logs written"
    for path in files:
        places[str(path)] = path.read_bytes().decode("latin-1")

    leaks = [(name, where) for name, password in secured.passwords.items() for where, text in places.items()
             if password in text]
    assert leaks == [], leaks


def _dump_database(settings: Settings, database: str) -> str:
    conn = services.admin_connect(settings, database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
            tables = cur.fetchall()
            assert tables
            out = []
            for schema, table in tables:
                cur.execute(sql.SQL("SELECT t::text FROM {}.{} AS t").format(sql.Identifier(schema), sql.Identifier(table)))
                out += [f"-- {schema}.{table}", *(row[0] for row in cur.fetchall())]
            return "\n".join(out)
    finally:
        conn.close()


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and not p.name.startswith(".s.PGSQL")]


# ---------------------------------------------------------------------------------- (d) loopback listeners


def test_every_local_service_listens_on_loopback_only(secured: Secured) -> None:
    home = secured.settings.home
    pids = {
        "clickhouse": int((home / "run" / "clickhouse.pid").read_text().split()[0]),
        "postgres": int((home / "postgres" / "data" / "postmaster.pid").read_text().split()[0]),
        "s3": services.s3_gateway_pid(home / "s3"),
    }
    for name, pid in pids.items():
        bound = listening_addresses(_tree(pid))
        assert bound, f"{name} (pid {pid}) listens on nothing?"
        assert all(address.is_loopback and address.version == 4 for address, _ in bound), (name, bound)
    ports = {port for _, port in listening_addresses(_tree(pids["clickhouse"]))}
    assert ports == {secured.settings.clickhouse.port, secured.settings.clickhouse_http_port}  # no interserver port
    assert {port for _, port in listening_addresses(_tree(pids["postgres"]))} == {secured.settings.postgres_port}


def _tree(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid, *(child.pid for child in proc.children(recursive=True))]


def test_listening_addresses_reads_proc_net() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert (ipaddress.ip_address("127.0.0.1"), sock.getsockname()[1]) in listening_addresses([os.getpid()])


# ---------------------------------------------------------------------------------------- (e) identifiers


@pytest.mark.parametrize("variable, url", [
    ("K2_CLICKHOUSE_URL", "clickhouse://k2_reader@127.0.0.1:9000/k2; DROP DATABASE x"),
    ("K2_CLICKHOUSE_URL", "clickhouse://k2_reader@127.0.0.1:9000/k2%3B%20DROP%20DATABASE%20x"),
    ("K2_CLICKHOUSE_WRITER_URL", "clickhouse://k2_writer@127.0.0.1:9000/k2`; DROP DATABASE x"),
])
def test_a_hostile_clickhouse_database_is_refused(variable: str, url: str) -> None:
    with pytest.raises(ConfigError, match=rf"{variable}: the database 'k2.*DROP DATABASE x' is not a plain identifier"):
        Settings.from_env({variable: url})
    done = subprocess.run([sys.executable, "-m", "k2_lakehouse.cli", "services", "env"], cwd=PROJECT,
                          env={**os.environ, variable: url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"k2: error: {variable}: the database" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("variable, url", [
    ("K2_POSTGRES_URL", "postgresql+psycopg2://k2_dagster@127.0.0.1:{pg}/dagster; DROP DATABASE iceberg"),
    ("K2_ICEBERG_CATALOG_URI", "postgresql+psycopg2://k2_catalog%22%3B%20DROP%20ROLE%20x@127.0.0.1:{pg}/iceberg"),
    ("K2_CLICKHOUSE_URL", "clickhouse://k2%3C%2Fk2%3E%3Cevil@127.0.0.1:{ch}/k2"),  # users.xml markup in a user name
])
def test_hostile_names_stop_services_up_before_anything_starts(tmp_path: Path, variable: str, url: str) -> None:
    ch, http, pg = free_ports(3)
    env = {"K2_HOME": str(traversable(tmp_path / "home")), "K2_CLICKHOUSE_PORT": str(ch), "K2_CLICKHOUSE_HTTP_PORT": str(http),
           "K2_POSTGRES_PORT": str(pg), variable: url.format(ch=ch, pg=pg)}
    settings = Settings.from_env(env)
    try:
        with pytest.raises(ConfigError, match="not a valid identifier"):
            services.up(settings, log=lambda _: None)
        assert not (settings.home / "run" / "clickhouse.pid").exists() and not (settings.home / "postgres").exists()
    finally:
        services.down(settings, log=lambda _: None)


def test_services_up_refuses_the_superuser_in_a_k2_url(tmp_path: Path) -> None:
    """An environment from before the K2 roles (`eval "$(k2 services env)"` printed postgres@ URLs) is refused
    with what to do, not half started."""
    ch, http, pg = free_ports(3)
    settings = Settings.from_env({
        "K2_HOME": str(traversable(tmp_path / "home")), "K2_CLICKHOUSE_PORT": str(ch), "K2_CLICKHOUSE_HTTP_PORT": str(http),
        "K2_POSTGRES_PORT": str(pg), "K2_POSTGRES_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/dagster",
    })
    try:
        with pytest.raises(ConfigError, match="K2_POSTGRES_URL connects as the superuser `postgres`.*unset K2_POSTGRES_URL"):
            services.up(settings, log=lambda _: None)
        assert not (settings.home / "run" / "clickhouse.pid").exists()
    finally:
        services.down(settings, log=lambda _: None)
