"""Test support: free ports, temp dirs the postgres user can enter, isolated lakes on the shared services."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from k2_lakehouse.core import hot_tier, services
from k2_lakehouse.core.services import free_ports  # noqa: F401  (tests import it from here)
from k2_lakehouse.core.settings import Settings

_counter = itertools.count()


def traversable(path: Path) -> Path:
    """As root, PostgreSQL runs as `postgres`, which must traverse pytest's private (0700) temp dirs."""
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.parents]:
        if p in (Path("/tmp"), Path("/")):
            break
        p.chmod(p.stat().st_mode | 0o005)
    return path


def services_settings(home: Path) -> Settings:
    ch, http, pg = free_ports(3)
    return Settings.from_env(
        {"K2_HOME": str(home), "K2_CLICKHOUSE_PORT": str(ch), "K2_CLICKHOUSE_HTTP_PORT": str(http), "K2_POSTGRES_PORT": str(pg)}
    )


@dataclass(frozen=True)
class Lake:
    """One test's private slice of the shared services: its own hot database, catalog, warehouse, Dagster DB."""

    settings: Settings
    env: dict[str, str]

    def client(self, *, write: bool = True):
        """The writer by default (tests write hand-made hot rows); `write=False`: the read-only user."""
        return hot_tier.connect(self.settings, write=write)


def new_lake(base: Settings, root: Path) -> Lake:
    n = f"{os.getpid()}_{next(_counter)}"
    hot_db, iceberg_db, dagster_db = f"k2_t{n}", f"iceberg_t{n}", f"dagster_t{n}"
    home = traversable(root / n)
    settings = dataclasses.replace(
        base,
        clickhouse_url=base.clickhouse_url.rsplit("/", 1)[0] + f"/{hot_db}",
        clickhouse_writer_url=base.clickhouse_writer_url and base.clickhouse_writer_url.rsplit("/", 1)[0] + f"/{hot_db}",
        iceberg_catalog_uri=base.iceberg_catalog_uri.rsplit("/", 1)[0] + f"/{iceberg_db}",
        postgres_url=base.postgres_url.rsplit("/", 1)[0] + f"/{dagster_db}",
        warehouse=(home / "warehouse").as_uri(),
        dagster_home=home / "dagster",
    )
    # Each database owned by its K2 role (the catalog's, Dagster's), as `k2 services up` makes them.
    services.create_database(base, settings.iceberg_catalog_uri)
    services.create_database(base, settings.postgres_url)
    client = hot_tier.connect(settings, database="", write=True)
    hot_tier.create_hot_tables(client, hot_db)
    client.disconnect()
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").symlink_to(Path(__file__).resolve().parents[1] / "dagster.yaml")
    return Lake(settings, {**settings.exports(), "K2_HOME": str(base.home)})


def insert_binance(client, day, partition: int, offsets, *, price: str = "100.00000000") -> None:
    """Write hand-made Binance messages at the given feed positions (repeat an offset for a redelivery)."""
    import datetime as dt

    import numpy as np

    from k2_lakehouse.core.contracts import BINANCE

    offsets = np.asarray(list(offsets), dtype=np.uint64)
    n = len(offsets)
    day_ms = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc).timestamp() * 1000)
    trade_time = (day_ms + offsets * 1000 % 86_400_000).astype(np.uint64)
    columns = {
        "event_type": np.array(["trade"] * n, dtype=object),
        "event_time": trade_time + 1,
        "symbol": np.array(["BTCUSDT"] * n, dtype=object),
        "trade_id": offsets + 1_000_000,
        "price": np.array([price] * n, dtype=object),
        "quantity": np.array(["0.50000000"] * n, dtype=object),
        "trade_time": trade_time,
        "is_buyer_maker": (offsets % 2).astype(np.uint8),
        "is_best_match": np.ones(n, dtype=np.uint8),
        "trade_date": np.full(n, np.datetime64(day, "D")),
        "kafka_partition": np.full(n, partition, dtype=np.uint32),
        "kafka_offset": offsets,
        "kafka_timestamp": trade_time,  # produced as the trade happened: the same on a redelivery
        "ingested_at": np.full(n, np.datetime64(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None), "s")),
    }
    names = BINANCE.column_names  # by name: the contract decides the column order
    client.execute(f"INSERT INTO {BINANCE.name} ({', '.join(names)}) VALUES", [columns[c] for c in names], columnar=True)


def insert_rows(client, hot, rows: list[dict]) -> None:
    """Write hand-made hot rows, given as dicts by column name (`ingested_at` defaults to now)."""
    import datetime as dt

    import numpy as np

    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    dtypes = {"String": object, "Date": "datetime64[D]", "DateTime('UTC')": "datetime64[s]",
              "UInt64": np.uint64, "UInt32": np.uint32, "UInt8": np.uint8}
    columns = [
        np.array([r.get(c.name, now) for r in rows], dtype=dtypes[hot.clickhouse_type(c)]) for c in hot.columns
    ]
    client.execute(f"INSERT INTO {hot.name} ({', '.join(hot.column_names)}) VALUES", columns, columnar=True)


def graphql(port: int, query: str) -> dict:
    """One query to a local Dagster webserver's GraphQL endpoint."""
    import json
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def then_wait(call, barrier):
    """`call`, then wait at `barrier`: racing writers reach their commits together."""

    def wrapped(*args, **kwargs):
        result = call(*args, **kwargs)
        barrier.wait()
        return result

    return wrapped


def race(*calls) -> list:
    """Run the calls on their own threads at once; each one's result, or the exception it raised."""
    import threading

    results: list = []

    def run(call) -> None:
        try:
            results.append(call())
        except BaseException as exc:  # returned: the caller's assertions surface it
            results.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def listening_addresses(pids: list[int]) -> list[tuple]:
    """(address, port) of every TCP socket in LISTEN state and every bound UDP socket the processes hold, read
    from /proc/net/{tcp,tcp6,udp,udp6} by socket inode."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, wanted in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == wanted and fields[9] in inodes:
                found.append(_address(fields[1]))
    return found


def _address(hex_address: str) -> tuple:
    import ipaddress

    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word in host (little-endian) order
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address, int(port, 16)


def wait_until(condition, seconds: float, context=lambda: "", every: float = 1.0):
    """`condition()`'s first truthy value within `seconds`; else fail, showing `context()` (a log's tail)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {seconds:.0f} s:\n{context()}")
