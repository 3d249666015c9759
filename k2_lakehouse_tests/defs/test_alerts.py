"""Alerts to a webhook: the pure messages and redaction (core/alerting.py), and both sensors (defs/alerts.py)
evaluated on a PostgreSQL-backed instance against a real local HTTP receiver."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    AssetCheckResult,
    AssetKey,
    DagsterInstance,
    asset,
    asset_check,
    build_sensor_context,
    materialize,
)

from k2_lakehouse.core import alerting, iceberg
from k2_lakehouse.core.alerting import AlertDeliveryError
from k2_lakehouse.core.contracts import BINANCE
from k2_lakehouse.core.settings import Settings
from k2_lakehouse.defs.alerts import AlertNotDelivered, check_failure_alert_sensor, run_failure_alert_sensor
from k2_lakehouse.defs.bronze import bronze_assets
from k2_lakehouse.defs.resources import RESOURCES
from k2_lakehouse_tests.support import Lake, free_ports, insert_binance

DAY = dt.date(2026, 4, 2)
TOKEN = "tok" + secrets.token_hex(12)  # in the webhook's path
QUERY_TOKEN = "qtok" + secrets.token_hex(12)  # and in its query string


class Receiver:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it (started on demand, so a test
    can post to its port while nothing listens: connection refused)."""

    def __init__(self, port: int) -> None:
        self.port, self.bodies, self._server = port, [], None
        self.accept = 10**6  # posts taken before it answers 503 to every other one (a webhook failing midway)
        self.url = f"http://127.0.0.1:{port}/hooks/{TOKEN}?token={QUERY_TOKEN}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                taken = len(receiver.bodies) < receiver.accept
                if taken:
                    receiver.bodies.append(body)
                self.send_response(204 if taken else 503)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def messages(self) -> list[dict]:
        return [json.loads(b) for b in self.bodies]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """Not started: K2_ALERT_WEBHOOK_URL points at its port; the test starts it when it should answer."""
    (port,) = free_ports(1)
    r = Receiver(port)
    monkeypatch.setenv(alerting.WEBHOOK_VARIABLE, r.url)
    monkeypatch.setenv(alerting.DAGSTER_URL_VARIABLE, "http://dagster.example:3000")
    yield r
    r.stop()


def _tick(sensor_def, instance: DagsterInstance, cursor: str | None):
    # Evaluated as the daemon does (cursor in, cursor out); not as a context manager, which would dispose of
    # the caller's instance. A tick that raises keeps the caller's cursor, as the daemon does.
    return sensor_def.evaluate_tick(build_sensor_context(instance=instance, cursor=cursor))


def _no_leak(text: str, *values: str) -> None:
    for value in [TOKEN, QUERY_TOKEN, *values]:
        assert value not in text


# ---- pure: core/alerting.py ---------------------------------------------------------------------------------

def test_secrets_of_the_settings_and_the_webhook_are_redacted() -> None:
    settings = Settings.from_env({
        "K2_CLICKHOUSE_URL": "clickhouse://k2_reader:chpw%2Fx1@127.0.0.1:19000/k2",
        "K2_CLICKHOUSE_WRITER_URL": "clickhouse://k2_writer:writerpw2@127.0.0.1:19000/k2",
        "K2_POSTGRES_URL": "postgresql+psycopg2://k2_dagster:pgpw3@127.0.0.1:15432/dagster",
        "K2_ICEBERG_CATALOG_URI": "postgresql+psycopg2://k2_catalog:catpw4@127.0.0.1:15432/iceberg",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE5", "AWS_SECRET_ACCESS_KEY": "s3secret6",
    })
    url = f"https://hooks.example/services/{TOKEN}?token={QUERY_TOKEN}"
    found = alerting.secrets_of(settings, url)
    assert {"chpw%2Fx1", "chpw/x1", "writerpw2", "pgpw3", "catpw4", "AKIAEXAMPLE5", "s3secret6", url, TOKEN, QUERY_TOKEN} <= set(found)
    assert "services" not in found  # a short path segment is a word, not a token
    text = (f"failed: chpw/x1 chpw%2Fx1 writerpw2 pgpw3 catpw4 key AKIAEXAMPLE5 s3secret6 posting to {url} "
            f"or /services/{TOKEN}")
    redacted = alerting.redact_text(text, found)
    for secret in ("chpw", "writerpw2", "pgpw3", "catpw4", "AKIAEXAMPLE5", "s3secret6", TOKEN, QUERY_TOKEN, "hooks.example"):
        assert secret not in redacted
    assert redacted.startswith("failed: *** *** ***")


def test_secrets_are_found_even_when_the_settings_do_not_parse() -> None:
    env = {"K2_CLICKHOUSE_URL": "http://k2_reader:chpw1234@h:1/k2", "AWS_SECRET_ACCESS_KEY": "s3secret6",
           alerting.WEBHOOK_VARIABLE: f" https://hooks.example/{TOKEN} "}
    found = alerting.secrets_from_env(env)  # Settings refuses a ClickHouse URL that is not clickhouse://
    assert {"chpw1234", "s3secret6", f"https://hooks.example/{TOKEN}", TOKEN} <= set(found)


def test_credentials_in_free_text_are_redacted() -> None:
    text = ("could not connect to postgresql+psycopg2://someone:hunter2@db:5432/x, then "
            "clickhouse://u:p%40ss@h:9000/k2 and dsn 'host=h password=sekret user=u' via http://plain.host/path")
    redacted = alerting.redact_text(text)
    assert "hunter2" not in redacted and "p%40ss" not in redacted and "sekret" not in redacted
    assert "postgresql+psycopg2://someone:***@db:5432/x" in redacted and "clickhouse://u:***@h:9000/k2" in redacted
    assert "password=***" in redacted and "http://plain.host/path" in redacted  # no credentials: left as it is


def test_messages_are_redacted_before_cut() -> None:
    password = "pw" + secrets.token_hex(8)
    error = "x" * (alerting.MAX_TEXT - 10) + f" postgresql://u:{password}@h/db"  # the password straddles the cut
    message = alerting.run_failure_message(
        job="j", run_id="r1", partition="2026-04-02", assets=["b/x", "a/y"], error=error, dagster_url="", at=0,
    )
    sent = alerting.finalize({**message, "nested": [f"token={password}", float("nan")]}, [password])
    assert password[:6] not in json.dumps(sent)
    assert len(sent["error"]) == alerting.MAX_TEXT and sent["nested"] == ["token=***", None]
    assert sent["assets"] == ["a/y", "b/x"] and sent["link"] == "http://127.0.0.1:3000/runs/r1"


def test_check_message_keeps_the_numbers_only() -> None:
    message = alerting.check_failure_message(
        asset="bronze/trades_binance", check="exactly_once", partition="2026-04-02", severity="ERROR", blocking=True,
        metadata={"expected": 50, "actual": 54, "ratio": 1.08, "scope": "whole partition", "ok": False},
        description=None, run_id="", dagster_url="http://d:3000/", at=None,
    )
    assert message["numbers"] == {"expected": 50, "actual": 54, "ratio": 1.08}
    assert message["link"] == "http://d:3000/assets/bronze/trades_binance?view=checks"


def test_post_failures_raise_without_the_url() -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}/hooks/{TOKEN}?token={QUERY_TOKEN}"
    with pytest.raises(AlertDeliveryError) as refused:
        alerting.post_json(url, {"kind": "test"}, timeout=2)
    assert "unreachable" in str(refused.value) and refused.value.__suppress_context__
    _no_leak(str(refused.value), url, str(port))
    with pytest.raises(AlertDeliveryError) as scheme:
        alerting.post_json(f"file:///tmp/{TOKEN}", {})
    _no_leak(str(scheme.value))


# ---- the sensors on a real instance ---------------------------------------------------------------------------

def _corrupt_bronze_day(lake: Lake, instance: DagsterInstance):
    """A bronze day whose rows appear twice behind the offload's back: the next run's checks fail, so does it."""
    insert_binance(lake.client(), DAY, 0, range(50))
    assert materialize(bronze_assets, partition_key=DAY.isoformat(), instance=instance, resources=RESOURCES).success
    table = iceberg.bronze_table(iceberg.catalog(lake.settings), BINANCE)
    table.append(table.scan(limit=3).to_arrow().cast(table.schema().as_arrow()))
    result = materialize(bronze_assets, partition_key=DAY.isoformat(), instance=instance, resources=RESOURCES, raise_on_error=False)
    assert not result.success
    return result


def test_failed_checks_and_the_failed_run_are_posted_once(lake: Lake, receiver: Receiver) -> None:
    with DagsterInstance.get() as instance:
        check_cursor = _tick(check_failure_alert_sensor, instance, None).cursor  # first start: from now on
        run_cursor = _tick(run_failure_alert_sensor, instance, None).cursor
        result = _corrupt_bronze_day(lake, instance)
        failed = {(e.asset_key.to_user_string(), e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
        assert failed == {("bronze/trades_binance", "exactly_once"), ("bronze/trades_binance", "pandera_contract")}  # duplicates

        # The receiver is down: the tick fails, says why without the URL, and the daemon keeps the cursor.
        with pytest.raises(AlertDeliveryError) as down:
            _tick(check_failure_alert_sensor, instance, check_cursor)
        _no_leak(str(down.value), receiver.url)
        assert receiver.bodies == []

        # Up, but failing after the first post: the tick keeps what was delivered and retries the rest.
        receiver.accept = 1
        receiver.start()
        midway = _tick(check_failure_alert_sensor, instance, check_cursor)
        assert len(receiver.bodies) == 1 and "then: alert webhook answered HTTP 503" in midway.skip_message
        assert int(check_cursor) < int(midway.cursor)
        receiver.accept = 10**6
        tick = _tick(check_failure_alert_sensor, instance, midway.cursor)
        posted = [m for m in receiver.messages() if m["kind"] == "check_failure"]
        assert {(m["asset"], m["check"]) for m in posted} == failed and len(posted) == len(failed)  # each once
        (exactly_once,) = [m for m in posted if m["check"] == "exactly_once"]
        assert exactly_once["partition"] == DAY.isoformat() and exactly_once["severity"] == "ERROR"
        assert exactly_once["blocking"] is True and exactly_once["run_id"] == result.run_id
        assert exactly_once["numbers"]["expected"] == 50 and exactly_once["numbers"]["actual"] == 53
        assert exactly_once["numbers"]["difference"] == 3 and exactly_once["numbers"]["duplicates"] == 3
        assert exactly_once["link"] == f"http://dagster.example:3000/runs/{result.run_id}"
        assert int(tick.cursor) > int(check_cursor)
        _no_leak(tick.cursor + tick.skip_message)

        again = _tick(check_failure_alert_sensor, instance, tick.cursor)
        assert len(receiver.bodies) == len(failed) and again.cursor == tick.cursor

        # The failed run: one post, then nothing.
        tick = _tick(run_failure_alert_sensor, instance, run_cursor)
        (run_alert,) = [m for m in receiver.messages() if m["kind"] == "run_failure"]
        assert run_alert["run_id"] == result.run_id and run_alert["partition"] == DAY.isoformat()
        assert run_alert["assets"] == ["bronze/trades_binance", "bronze/trades_kraken"]
        assert run_alert["job"] == result.dagster_run.job_name and "exactly_once" in run_alert["error"]
        assert run_alert["link"] == f"http://dagster.example:3000/runs/{result.run_id}"
        assert dt.datetime.fromisoformat(run_alert["at"]).tzinfo is not None
        again = _tick(run_failure_alert_sensor, instance, tick.cursor)
        assert len(receiver.bodies) == len(failed) + 1 and again.cursor == tick.cursor
        for body in receiver.bodies:
            _no_leak(body, receiver.url)


@asset(key=AssetKey(["test", "leaky"]))
def leaky() -> None:
    settings = Settings.from_env()
    raise RuntimeError(f"cannot reach {settings.postgres_url} nor {settings.clickhouse_writer_url} "
                       f"with key {settings.s3_access_key_id}/{settings.s3_secret_access_key}, "
                       f"nor {alerting.WEBHOOK_VARIABLE}={os.environ[alerting.WEBHOOK_VARIABLE]}")


def test_failed_run_is_retried_until_delivered_without_secrets(lake: Lake, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = {name: name + secrets.token_hex(10) for name in ("pgdagster", "pgcatalog", "chwriter", "s3key", "s3secret")}
    # The session's PostgreSQL trusts loopback: these passwords are carried (and would leak) but not checked.
    monkeypatch.setenv("K2_POSTGRES_URL", lake.env["K2_POSTGRES_URL"].replace("k2_dagster@", f"k2_dagster:{pw['pgdagster']}@"))
    monkeypatch.setenv("K2_ICEBERG_CATALOG_URI", lake.env["K2_ICEBERG_CATALOG_URI"].replace("k2_catalog@", f"k2_catalog:{pw['pgcatalog']}@"))
    monkeypatch.setenv("K2_CLICKHOUSE_WRITER_URL", lake.env["K2_CLICKHOUSE_WRITER_URL"].replace("k2_writer@", f"k2_writer:{pw['chwriter']}@"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", pw["s3key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", pw["s3secret"])
    with DagsterInstance.get() as instance:
        start = _tick(run_failure_alert_sensor, instance, None)
        assert start.skip_message.startswith("Initiating")
        result = materialize([leaky], instance=instance, raise_on_error=False)
        assert not result.success

        with pytest.raises(AlertNotDelivered) as down:  # escapes Dagster's boundary: the tick fails, cursor kept
            _tick(run_failure_alert_sensor, instance, start.cursor)
        _no_leak(str(down.value), receiver.url, *pw.values())

        receiver.start()
        tick = _tick(run_failure_alert_sensor, instance, start.cursor)
        assert tick.skip_message == f"posted the run_failure alert of run {result.run_id}"
        again = _tick(run_failure_alert_sensor, instance, tick.cursor)
        assert len(receiver.bodies) == 1 and again.cursor == tick.cursor
    (body,) = receiver.bodies
    _no_leak(body, receiver.url, *pw.values())
    (message,) = receiver.messages()
    assert message["assets"] == ["test/leaky"] and message["partition"] is None
    assert "cannot reach postgresql+psycopg2://k2_dagster:***@" in message["error"] and "***/***" in message["error"]


@asset(key=AssetKey(["test", "checked"]))
def checked() -> None:
    return None


@asset_check(asset=checked)
def always_fails() -> AssetCheckResult:
    return AssetCheckResult(passed=False, metadata={"actual": 1})


def test_without_a_webhook_sensors_skip_and_move_on(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(alerting.WEBHOOK_VARIABLE, raising=False)
    with DagsterInstance.get() as instance:
        assert materialize([checked, always_fails], instance=instance).success  # an old failed check
        start = _tick(check_failure_alert_sensor, instance, None)
        assert int(start.cursor) > 0  # from the newest evaluation on: history is not replayed
        run_start = _tick(run_failure_alert_sensor, instance, None).cursor
        assert materialize([checked, always_fails], instance=instance).success
        assert not materialize([leaky], instance=instance, raise_on_error=False).success

        skipped = _tick(check_failure_alert_sensor, instance, start.cursor)
        assert "K2_ALERT_WEBHOOK_URL is not set" in skipped.skip_message
        assert int(skipped.cursor) > int(start.cursor)  # enabling it later does not post these
        run_skipped = _tick(run_failure_alert_sensor, instance, run_start)
        assert "K2_ALERT_WEBHOOK_URL is not set" in run_skipped.skip_message and run_skipped.cursor != run_start


def test_the_sensors_are_registered_and_on() -> None:
    from k2_lakehouse.definitions import defs

    sensors = {s.name: s for s in defs.sensors}
    for name in ("run_failure_alert_sensor", "check_failure_alert_sensor"):
        assert sensors[name].default_status.value == "RUNNING"
        assert sensors[name].minimum_interval_seconds == 15

