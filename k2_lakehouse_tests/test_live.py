"""`k2 live` end to end: a real feed, webserver and daemon on the test's lake, stopped with nothing left behind."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from k2_lakehouse import live
from k2_lakehouse.cli import main
from k2_lakehouse.core import services
from k2_lakehouse.core.contracts import HOT_TABLES
from k2_lakehouse.core.settings import Settings
from k2_lakehouse_tests.support import Lake, free_ports, listening_addresses

PROJECT = Path(__file__).resolve().parents[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _left_in(groups: set[int]) -> list[psutil.Process]:
    """Processes (zombies aside: already dead, waiting for a parent to reap them) of the given groups."""
    left = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) in groups and proc.info["status"] != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return left


def test_live_serves_the_ui_then_stops_everything_it_started(lake: Lake, capsys: pytest.CaptureFixture[str]) -> None:
    port, metrics_port, prometheus_port, alertmanager_port = free_ports(4)
    day = dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2_lakehouse.cli", "live", "--for", "5s", "--history-days", "1",
         "--history-rows", "20000", "--port", str(port), "--rate", "50", "--metrics-port", str(metrics_port),
         "--prometheus-port", str(prometheus_port), "--alertmanager-port", str(alertmanager_port)],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)  # never blocks on a full pipe
    reader.start()
    record, answered, refused, refused_err, listening = None, False, None, "", []
    try:
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            if record is None and live.pid_file(lake.settings).exists():
                record = json.loads(live.pid_file(lake.settings).read_text())
            if not answered and _answers(port):
                answered = True
                if record is not None:  # every socket the webserver, its code server and the daemon listen on
                    listening = listening_addresses([p.pid for p in _left_in(set(record["groups"].values()))])
                # A second live system on the same K2_HOME is refused, whatever its port.
                refused = main(["live", "--port", str(free_ports(1)[0]), "--history-days", "0"])
                refused_err = capsys.readouterr().err
            time.sleep(0.5)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `k2 live` stops its groups on SIGTERM
            proc.wait(timeout=60)
        reader.join(timeout=5)
    log = "".join(output)
    print(log)  # shown by pytest on failure (or with -rP)
    assert rc == 0, log
    assert answered, log
    assert f"Dagster UI at http://127.0.0.1:{port}" in log
    assert (ipaddress.ip_address("127.0.0.1"), port) in listening, listening
    assert all(address.is_loopback and address.version == 4 for address, _ in listening), listening
    # The exporter, Prometheus and Alertmanager too (Alertmanager's cluster port, 0.0.0.0:9094 by default, is off).
    loopback = ipaddress.ip_address("127.0.0.1")
    assert {(loopback, p) for p in (metrics_port, prometheus_port, alertmanager_port)} <= set(listening), listening
    assert refused == 2 and "a live system is already running" in refused_err, refused_err

    # Every process of the three groups is gone, and so is the pid file.
    assert record is not None and set(record["groups"]) == {"feed", "webserver", "daemon", "metrics", "prometheus", "alertmanager"}
    assert _left_in(set(record["groups"].values())) == []
    assert not live.pid_file(lake.settings).exists()
    assert "no process of theirs is left" in log

    # The history day is in the hot tier once; a second `k2 live` would not seed it again.
    client = lake.client()
    for hot in HOT_TABLES.values():
        (count,), = client.execute(f"SELECT count() FROM {hot.name} WHERE trade_date = %(d)s", {"d": day},
                                   settings={"use_numpy": False})
        assert 20_000 <= count < 40_000, (hot.name, count)
    assert live.seed_history(lake.settings, 1, 20_000, log=lambda _: None) == []

    # The services were running before `k2 live` (the test session started them): still running.
    assert all(s.running for s in services.status(lake.settings))


def test_services_down_stops_an_orphaned_live_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `k2 live` killed with SIGKILL leaves its groups; `k2 services down` finds them by the pid file and
    stops them, SIGTERM-deaf children and grandchildren included, and nothing else."""
    monkeypatch.setattr(live, "_GRACE_S", 2.0)  # the deaf process will not use it anyway
    settings = Settings.from_env({"K2_HOME": str(tmp_path / "home")})
    live.live_dir(settings).mkdir(parents=True)
    token = "test-token"
    deaf = (  # ignores SIGTERM and SIGINT, like `dagster dev` in ENVIRONMENT.md, and has a child of its own
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "signal.signal(signal.SIGINT, signal.SIG_IGN); subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)']); time.sleep(300)"
    )
    env = {**os.environ, live.TOKEN_VAR: token}
    leaders = {
        "feed": subprocess.Popen(["sleep", "300"], env=env, start_new_session=True),
        "daemon": subprocess.Popen([sys.executable, "-c", deaf], env=env, start_new_session=True),
    }
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)  # not ours: must survive
    try:
        groups = {name: p.pid for name, p in leaders.items()}
        deadline = time.monotonic() + 10
        while len(_left_in(set(groups.values()))) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # the deaf one's child is up
        assert len(_left_in(set(groups.values()))) == 3
        record = {"supervisor": {"pid": 999_999_999, "start": 0}, "token": token, "port": 1, "groups": groups}
        live.pid_file(settings).write_text(json.dumps(record))

        started = time.monotonic()
        monkeypatch.setenv("K2_HOME", str(settings.home))
        assert main(["services", "down"]) == 0  # no services under this home: only the live system
        assert time.monotonic() - started < 20
        for p in leaders.values():
            p.wait(timeout=5)
        assert _left_in(set(groups.values())) == []
        assert leaders["daemon"].returncode == -signal.SIGKILL  # SIGTERM was ignored, SIGKILL was not
        assert bystander.poll() is None
        assert not live.pid_file(settings).exists()
    finally:
        for p in (*leaders.values(), bystander):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("1.5h", 5400)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert live.parse_duration(text) == seconds


def test_live_refuses_a_taken_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        settings = Settings.from_env({"K2_HOME": str(tmp_path / "home")})
        with pytest.raises(live.ServiceError, match=f"port {port} on 127.0.0.1 is taken"):
            live.run(settings, live.LiveOptions(port=port))
