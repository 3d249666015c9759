"""workspace.yaml + dagster.yaml as the UI uses them: a real dagster-webserver serves every asset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from k2_lakehouse_tests.support import Lake, free_ports, graphql

ROOT = Path(__file__).resolve().parents[1]
QUERY = "{ assetNodes { assetKey { path } groupName isPartitioned hasAssetChecks } }"


def test_webserver_loads_the_workspace(lake: Lake) -> None:
    (port,) = free_ports(1)
    webserver = Path(sys.executable).with_name("dagster-webserver")
    proc = subprocess.Popen(
        [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env={**os.environ, **lake.env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                nodes = graphql(port, QUERY)["data"]["assetNodes"]
                if nodes:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "dagster-webserver did not serve the assets in 90 s"
            time.sleep(0.5)
        assert {("/".join(n["assetKey"]["path"]), n["groupName"]) for n in nodes} == {
            ("hot/trades_binance", "hot_tier"), ("hot/trades_kraken", "hot_tier"),  # external: the ClickHouse tables
            ("bronze/trades_binance", "bronze"), ("bronze/trades_kraken", "bronze"),
            ("silver/trades", "silver"), ("silver/trades_rejected", "silver"),
            *((f"gold/ohlcv_{i}", "gold") for i in ("1m", "5m", "15m", "30m", "1h", "1d")),
        }
        assert all(n["isPartitioned"] and n["hasAssetChecks"] for n in nodes if n["groupName"] != "hot_tier")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
