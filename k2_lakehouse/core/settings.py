"""Settings from the environment only (12-factor). Defaults point at the local services of `k2 services up`.

Nothing is read at import time: call `Settings.from_env()` where a setting is needed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from k2_lakehouse.core.errors import ConfigError

DEFAULT_CLICKHOUSE_PORT = 19000
DEFAULT_CLICKHOUSE_HTTP_PORT = 18123
DEFAULT_POSTGRES_PORT = 15432
# Least privilege (README "Security"): the hot tier is read by a read-only ClickHouse user and changed only by the
# writer; Dagster storage and the Iceberg catalog each have their own PostgreSQL role, owner of its database only.
DEFAULT_CLICKHOUSE_READER = "k2_reader"
DEFAULT_CLICKHOUSE_WRITER = "k2_writer"
DEFAULT_DAGSTER_ROLE = "k2_dagster"
DEFAULT_CATALOG_ROLE = "k2_catalog"
CATALOG_NAME = "k2"
ENGINES = ("duckdb", "spark")  # K2_ENGINE: where silver and gold (and, on Spark, the bronze copy) compute
DEFAULT_SPARK_MASTER = "local[2]"
# The first day of the daily partitions (K2_FIRST_DAY). A fixed date, not one computed from the clock: the
# partition set must be the same in every process that loads the definitions (webserver, daemon, run
# workers, `k2 run`) and across reloads, or days move in and out of the UI and runs for them fail; it is
# at or before every day the tests and the demos use. Set K2_FIRST_DAY to the first day of your data to
# show only the days that can hold data (`k2 services env` prints it).
DEFAULT_FIRST_DAY = dt.date(2026, 1, 1)


@dataclass(frozen=True)
class Settings:
    home: Path  # K2_HOME: service data, warehouse, Dagster home
    clickhouse_url: str  # clickhouse://user[:password]@host:port/database: the read-only user (offload, checks, sensors)
    postgres_url: str  # Dagster storage (dagster-postgres)
    iceberg_catalog_uri: str  # pyiceberg SqlCatalog database
    warehouse: str  # file:// or s3:// location of Iceberg data
    dagster_home: Path
    clickhouse_http_port: int
    batch_rows: int  # rows per streamed read from the hot tier (bounds memory)
    first_day: dt.date = DEFAULT_FIRST_DAY  # K2_FIRST_DAY: the first daily partition (UTC) Dagster knows
    engine: str = "duckdb"  # K2_ENGINE: duckdb (in process, the default) or spark
    spark_master: str = DEFAULT_SPARK_MASTER  # K2_SPARK_MASTER: local[N] or spark://host:7077
    # Object storage, when K2_WAREHOUSE is s3://bucket/prefix: K2_S3_ENDPOINT (any S3-compatible server),
    # AWS_REGION, and the credentials AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (never printed or logged).
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = field(default="", repr=False)
    s3_secret_access_key: str = field(default="", repr=False)
    # Long-run operations. K2_HOT_RETENTION_DAYS: hot days kept in ClickHouse (older ones are deleted once
    # bronze holds them, DESIGN §5.6; 0 keeps every day). K2_MAINTAIN_OLDER_THAN: snapshots, abandoned
    # audit branches and unreferenced files younger than this are never touched by maintenance.
    hot_retention_days: int = 0
    maintain_older_than: dt.timedelta = dt.timedelta(hours=24)
    # K2_CLICKHOUSE_WRITER_URL: the user that changes the hot tier (feed inserts, DDL, retention deletes); by
    # default (empty) the reader's server and database as user k2_writer (`hot_tier.connect(..., write=True)`).
    clickhouse_writer_url: str = ""

    def __post_init__(self) -> None:
        # Names that reach SQL text are checked once, here, with the variable that holds them.
        self.clickhouse, self.clickhouse_writer  # noqa: B018 - parse (and so validate) both now

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        home = Path(env.get("K2_HOME") or Path.cwd() / ".k2").resolve()
        ch_port = _int(env, "K2_CLICKHOUSE_PORT", DEFAULT_CLICKHOUSE_PORT)
        pg_port = _int(env, "K2_POSTGRES_PORT", DEFAULT_POSTGRES_PORT)
        pg_server = f"127.0.0.1:{pg_port}"
        clickhouse_url = env.get("K2_CLICKHOUSE_URL") or f"clickhouse://{DEFAULT_CLICKHOUSE_READER}@127.0.0.1:{ch_port}/k2"
        return cls(
            home=home,
            clickhouse_url=clickhouse_url,
            clickhouse_writer_url=env.get("K2_CLICKHOUSE_WRITER_URL", ""),  # empty: derived, see clickhouse_writer
            postgres_url=env.get("K2_POSTGRES_URL") or f"postgresql+psycopg2://{DEFAULT_DAGSTER_ROLE}@{pg_server}/dagster",
            iceberg_catalog_uri=env.get("K2_ICEBERG_CATALOG_URI")
            or f"postgresql+psycopg2://{DEFAULT_CATALOG_ROLE}@{pg_server}/iceberg",
            warehouse=env.get("K2_WAREHOUSE") or (home / "warehouse").as_uri(),
            dagster_home=Path(env.get("DAGSTER_HOME") or home / "dagster").resolve(),
            clickhouse_http_port=_int(env, "K2_CLICKHOUSE_HTTP_PORT", DEFAULT_CLICKHOUSE_HTTP_PORT),
            batch_rows=_int(env, "K2_BATCH_ROWS", 1_000_000),
            first_day=_date(env, "K2_FIRST_DAY", DEFAULT_FIRST_DAY),
            engine=_choice(env, "K2_ENGINE", ENGINES),
            spark_master=env.get("K2_SPARK_MASTER") or DEFAULT_SPARK_MASTER,
            s3_endpoint=env.get("K2_S3_ENDPOINT", ""),
            s3_region=env.get("AWS_REGION") or "us-east-1",
            s3_access_key_id=env.get("AWS_ACCESS_KEY_ID", ""),
            s3_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY", ""),
            hot_retention_days=_int(env, "K2_HOT_RETENTION_DAYS", 0),
            maintain_older_than=_duration(env, "K2_MAINTAIN_OLDER_THAN", dt.timedelta(hours=24)),
        )

    @property
    def clickhouse(self) -> ClickHouseAddress:
        """The read-only user's address (K2_CLICKHOUSE_URL)."""
        return ClickHouseAddress.parse(self.clickhouse_url)

    @property
    def clickhouse_writer(self) -> ClickHouseAddress:
        """The writer's address (K2_CLICKHOUSE_WRITER_URL)."""
        return ClickHouseAddress.parse(
            self.clickhouse_writer_url or _with_user(self.clickhouse_url, DEFAULT_CLICKHOUSE_WRITER),
            "K2_CLICKHOUSE_WRITER_URL",
        )

    @property
    def postgres_port(self) -> int:
        return urlsplit(self.postgres_url).port or 5432

    def exports(self) -> dict[str, str]:
        """Every setting in use, as environment variables (what `k2 services env` prints)."""
        return {
            "K2_HOME": str(self.home),
            "K2_CLICKHOUSE_URL": self.clickhouse_url,
            "K2_CLICKHOUSE_WRITER_URL": self.clickhouse_writer_url or _with_user(self.clickhouse_url, DEFAULT_CLICKHOUSE_WRITER),
            "K2_CLICKHOUSE_HTTP_PORT": str(self.clickhouse_http_port),
            "K2_POSTGRES_URL": self.postgres_url,
            "K2_ICEBERG_CATALOG_URI": self.iceberg_catalog_uri,
            "K2_WAREHOUSE": self.warehouse,
            "K2_BATCH_ROWS": str(self.batch_rows),
            "DAGSTER_HOME": str(self.dagster_home),
            "K2_FIRST_DAY": self.first_day.isoformat(),
            "K2_ENGINE": self.engine,
            "K2_SPARK_MASTER": self.spark_master,
            "K2_HOT_RETENTION_DAYS": str(self.hot_retention_days),
            "K2_MAINTAIN_OLDER_THAN": format_duration(self.maintain_older_than),
            **({"K2_S3_ENDPOINT": self.s3_endpoint, "AWS_REGION": self.s3_region} if self.s3_endpoint else {}),
        }  # the S3 credentials stay in the environment they came from: never printed


@dataclass(frozen=True)
class ClickHouseAddress:
    host: str
    port: int
    user: str
    password: str = field(repr=False)
    database: str = ""

    @classmethod
    def parse(cls, url: str, variable: str = "K2_CLICKHOUSE_URL") -> ClickHouseAddress:
        from k2_lakehouse.core.contracts import validate_identifier  # local: contracts imports pyarrow

        parts = urlsplit(url)
        try:
            port = parts.port or 9000
        except ValueError:
            port = 0
        if parts.scheme != "clickhouse" or not parts.hostname or not port:
            raise ConfigError(f"{variable} must look like clickhouse://user[:password]@host:port/database, got {redact(url)}")
        user, database = unquote(parts.username or "default"), unquote(parts.path.lstrip("/")) or "k2"
        try:
            validate_identifier(database)  # it reaches SQL text: CREATE DATABASE, the hot tables' DDL
        except ConfigError:
            raise ConfigError(
                f"{variable}: the database {database!r} is not a plain identifier (letters, digits and _, "
                "not starting with a digit); refusing to use it"
            ) from None
        return cls(host=parts.hostname, port=port, user=user, password=unquote(parts.password or ""), database=database)


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _date(env: dict[str, str], name: str, default: dt.date) -> dt.date:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a date YYYY-MM-DD, got {raw!r}") from None


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(raw: str) -> dt.timedelta:
    """`90s`, `15m`, `24h`, `7d` (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", raw)
    if not match:
        raise ConfigError(f"a duration looks like 90s, 15m, 24h or 7d, got {raw!r}")
    return dt.timedelta(seconds=float(match[1]) * _DURATION_UNITS[match[2] or "s"])


def format_duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s"


def _duration(env: dict[str, str], name: str, default: dt.timedelta) -> dt.timedelta:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return parse_duration(raw)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _with_user(url: str, user: str) -> str:
    """`url` with `user` and no password (the writer's default: the reader's server and database)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def has_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def redact(url: str) -> str:
    """A URL fit for logs: the password replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)

