"""Test support: a clickhouse-driver client that records every statement it sends, and replays them in chDB.

`Recorder.install(monkeypatch)` swaps `hot_tier.connect` (the one place the product builds ClickHouse
clients) for one that hands out `RecordingClient`s: each forwards every call to a real client and records
the SQL text, its substitution parameters, whether rows travelled as data, the settings and the database.
`Replay` then runs those statements in an in-process current ClickHouse (chDB), with the parameters
substituted by clickhouse-driver's own code, exactly as the driver sends them to the server.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import clickhouse_driver
from clickhouse_driver.util.escape import escape_param

# clickhouse-driver's per-client settings: they shape how the driver encodes and decodes, the server never sees them.
CLIENT_ONLY_SETTINGS = frozenset({
    "insert_block_size", "strings_as_bytes", "strings_encoding", "use_numpy", "opentelemetry_traceparent",
    "opentelemetry_tracestate", "quota_key", "input_format_null_as_default", "namedtuple_as_json",
    "server_side_params", "use_arrow",
})

# RecordingClient records the client methods that send SQL (execute, execute_iter, execute_with_progress,
# query_arrow_stream, query_dataframe, insert_dataframe). Any other public callable the product reaches through
# the client must be one of _PASSIVE, else it is reported: a way of sending SQL the recorder does not know.
_PASSIVE = frozenset({"disconnect", "disconnect_connection", "substitute_params", "get_connection", "reset_last_query"})


@dataclass(frozen=True)
class Call:
    """One statement as the product sent it."""

    method: str
    sql: str
    params: tuple[tuple[str, Any], ...] | None  # substitution parameters (sorted items), None when none
    data_rows: int | None  # rows sent as data (an INSERT), None when no data was passed
    settings: tuple[tuple[str, Any], ...]  # server-side settings in effect: the client's and the call's
    database: str  # the database the client was connected to ("" = the server's default)

    @property
    def statement(self) -> tuple:
        """What makes two calls the same statement: the text, where it ran, how; not the rows of data."""
        return (self.sql, repr(self.params), self.data_rows is not None, repr(self.settings), self.database)

    @property
    def kind(self) -> str:
        head = self.sql.lstrip().split(None, 1)[0].upper()
        return {"WITH": "SELECT"}.get(head, head)

    def substituted(self, client: clickhouse_driver.Client) -> str:
        """The SQL text as clickhouse-driver sends it (client-side substitution only when parameters were
        passed), by the driver's own code; `client` must be connected (dates and times are escaped in the
        server's time zone)."""
        if self.params is None:
            return self.sql
        return client.substitute_params(self.sql, dict(self.params), client.connection.context)


@dataclass
class Recorder:
    calls: list[Call] = field(default_factory=list)
    clients: int = 0  # recording clients handed out by `hot_tier.connect`
    built: int = 0  # clickhouse_driver.Client objects built: more than `clients` means one bypassed the recorder
    unrecorded: list[str] = field(default_factory=list)  # client methods called that may send SQL unrecorded
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, monkeypatch) -> Callable:
        """Route every client the product builds through this recorder; returns the real `connect`."""
        from k2_lakehouse.core import hot_tier

        real = hot_tier.connect
        recorder = self

        class CountedClient(clickhouse_driver.Client):
            def __init__(self, *args, **kwargs):
                with recorder._lock:
                    recorder.built += 1
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(clickhouse_driver, "Client", CountedClient)

        def connect(settings, *, database: str | None = None, write: bool = False):
            with self._lock:
                self.clients += 1
            return RecordingClient(real(settings, database=database, write=write), self)

        monkeypatch.setattr(hot_tier, "connect", connect)
        return real

    def add(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def distinct(self) -> list[Call]:
        """One call per distinct statement, in the order first sent."""
        seen: dict[tuple, Call] = {}
        for call in self.calls:
            seen.setdefault(call.statement, call)
        return list(seen.values())


class RecordingClient:
    """Forwards everything to a real `clickhouse_driver.Client`; records each statement before sending it."""

    def __init__(self, client: clickhouse_driver.Client, recorder: Recorder) -> None:
        self._client = client
        self._recorder = recorder

    def _record(self, method: str, query: str, params, settings: dict | None, data=None, columnar: bool = False):
        """Record one call; returns what to pass on as `params` (a generator of rows comes back as a list)."""
        if isinstance(params, types.GeneratorType):  # rows as a generator: materialize to count them
            params = list(params)
        if data is None and isinstance(params, (list, tuple)):  # clickhouse-driver: a list/tuple is data (INSERT)
            data = params
        substitution = params if isinstance(params, dict) else None
        server = {
            k: v for k, v in {**self._client.settings, **(settings or {})}.items() if k not in CLIENT_ONLY_SETTINGS
        }
        self._recorder.add(Call(
            method=method,
            sql=query,
            params=None if substitution is None else tuple(sorted(substitution.items())),
            data_rows=None if data is None else _count_rows(data, columnar),
            settings=tuple(sorted(server.items())),
            database=self._client.connection.database,
        ))
        return params

    def execute(self, query, params=None, **kwargs):
        params = self._record("execute", query, params, kwargs.get("settings"), columnar=kwargs.get("columnar", False))
        return self._client.execute(query, params, **kwargs)

    def execute_iter(self, query, params=None, **kwargs):
        params = self._record("execute_iter", query, params, kwargs.get("settings"))
        return self._client.execute_iter(query, params, **kwargs)

    def execute_with_progress(self, query, params=None, **kwargs):
        params = self._record("execute_with_progress", query, params, kwargs.get("settings"))
        return self._client.execute_with_progress(query, params, **kwargs)

    def query_arrow_stream(self, query, params=None, **kwargs):
        params = self._record("query_arrow_stream", query, params, kwargs.get("settings"))
        return self._client.query_arrow_stream(query, params, **kwargs)

    def query_dataframe(self, query, params=None, **kwargs):
        params = self._record("query_dataframe", query, params, kwargs.get("settings"))
        return self._client.query_dataframe(query, params, **kwargs)

    def insert_dataframe(self, query, dataframe, **kwargs):
        columns = [dataframe[c] for c in dataframe.columns]
        self._record("insert_dataframe", query, None, kwargs.get("settings"), data=columns, columnar=True)
        return self._client.insert_dataframe(query, dataframe, **kwargs)

    def __getattr__(self, name: str):
        value = getattr(self._client, name)
        if callable(value) and not name.startswith("_") and name not in _PASSIVE:
            self._recorder.unrecorded.append(name)
        return value


def _count_rows(data, columnar: bool) -> int:
    """Rows in INSERT data: row-wise (a list of tuples, lists or dicts) or columnar (a list of columns)."""
    if columnar:
        return len(data[0]) if len(data) else 0
    return len(data)


# --------------------------------------------------------------------------------------------------
# Replay in chDB
# --------------------------------------------------------------------------------------------------

_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+([A-Za-z_][\w.]*)\s*\(([^)]*)\)\s*VALUES\s*$", re.IGNORECASE | re.DOTALL)


def insert_target(call: Call) -> tuple[str, list[str]]:
    """(qualified table, columns) of an `INSERT INTO t (cols) VALUES` sent with data."""
    m = _INSERT.match(call.sql)
    if not m:
        raise AssertionError(f"an INSERT sent with data that is not `INSERT INTO t (columns) VALUES`: {call.sql!r}")
    table = m.group(1) if "." in m.group(1) else f"{call.database or 'default'}.{m.group(1)}"
    return table, [c.strip() for c in m.group(2).split(",")]


def render_values(rows: Iterable[tuple], context) -> str:
    """Rows as a VALUES list, each value escaped by clickhouse-driver's own `escape_param`."""
    return ", ".join(escape_param(tuple(row), context) for row in rows)


class ChdbReplay:
    """Runs recorded statements in one chDB session, in the database and with the settings they were sent with."""

    def __init__(self, session) -> None:
        self.session = session

    def run(self, call: Call, sql: str, fmt: str = "CSV"):
        self.session.query(f"USE {call.database or 'default'}")
        for name, value in call.settings:  # server-side settings, as the driver sends them with the query
            self.session.query(f"SET {name} = {_literal(value)}")
        try:
            return self.session.query(sql, fmt)
        finally:
            for name, _ in call.settings:
                self.session.query(f"SET {name} = DEFAULT")

    def query_rows(self, sql: str) -> list[tuple]:
        return arrow_rows(self.session.query(sql, "ArrowTable"))


def arrow_rows(table) -> list[tuple]:
    """An Arrow table's rows as tuples, by position (result column names may repeat)."""
    return list(zip(*(column.to_pylist() for column in table.columns))) if table.num_columns else []


def _literal(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def normalize(value):
    """One result value in a form both engines agree on: DateTime as epoch seconds (chDB's Arrow output
    gives DateTime as UInt32 seconds, clickhouse-driver a datetime), text as str, numbers as int."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return int(value.timestamp())
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode()
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value
