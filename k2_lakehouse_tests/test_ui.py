"""What the Dagster UI shows, in a real browser: the lineage from the hot tables to gold, a bronze
materialization with its watermark and checks, a gold materialization with its chart.

Drives Debian's chromium (dev.sh installs it) through playwright against a real dagster-webserver on this
test's lake, and saves the screenshots the README shows (docs/screenshots/).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from dagster import DagsterInstance
from playwright.sync_api import expect, sync_playwright

from k2_lakehouse import runner
from k2_lakehouse.core import feed
from k2_lakehouse.core.contracts import BINANCE, HOT_TABLES
from k2_lakehouse_tests.support import Lake, free_ports, graphql

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1600, "height": 1000}
GOLD_CHARTED = "gold/ohlcv_5m"

COLUMN_LINEAGE = """{ assetNodeOrError(assetKey: {path: ["silver", "trades"]}) { ... on AssetNode {
  metadataEntries { ... on TableColumnLineageMetadataEntry { lineage { columnName columnDeps { assetKey { path } columnName } } } }
} } }"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (./dev.sh setup installs it)")

# Each asset node of the lineage graph as (name, x, y, width, height) in the graph's SVG coordinates, and
# each edge as the (start, end) points of its path: an edge leaves a node's right side and enters one's left.
_GRAPH = """() => {
  const nodes = [...document.querySelectorAll('foreignObject')].filter(f => f.querySelector('[class*=AssetNode_assetName]'))
    .map(f => [f.querySelector('[class*=AssetNode_assetName]').innerText.trim(),
               ...['x', 'y', 'width', 'height'].map(a => parseFloat(f.getAttribute(a)))]);
  const edges = [...document.querySelectorAll('svg path[marker-end]')].map(p => {
    const n = p.getAttribute('d').match(/-?[0-9.]+/g).map(parseFloat);
    return [n[0], n[1], n[n.length - 2], n[n.length - 1]];
  });
  return {nodes, edges};
}"""
# How far to drag the graph to centre it in its viewport: [dx, dy].
_CENTRE = """() => {
  const b = [...document.querySelectorAll('[class*=ExpandedGroupNode]')].map(e => e.getBoundingClientRect()).filter(r => r.height > 0);
  let v = document.querySelector('svg:has(foreignObject)');
  while (v.parentElement && getComputedStyle(v).overflow !== 'hidden') v = v.parentElement;
  const a = v.getBoundingClientRect();
  return [(a.left + a.right) / 2 - (Math.min(...b.map(r => r.left)) + Math.max(...b.map(r => r.right))) / 2,
          (a.top + a.bottom) / 2 - (Math.min(...b.map(r => r.top)) + Math.max(...b.map(r => r.bottom))) / 2];
}"""


@pytest.fixture
def built_day(lake: Lake) -> dt.date:
    """A small day of trades on both exchanges, built through every layer (today: the latest partition,
    so the graph's check and partition summaries are about it)."""
    day = dt.datetime.now(dt.timezone.utc).date()
    feed.seed(lake.settings, day, 3_000, seed=11, progress=False)
    with DagsterInstance.get() as instance:
        rows = runner.run(runner.ALL, [day.isoformat()], instance)
    assert len(rows) == 10 and all(r.success for r in rows), runner.format_rows(rows)
    return day


@pytest.fixture
def webserver(lake: Lake, built_day: dt.date) -> Iterator[int]:
    """dagster-webserver on workspace.yaml with the lake's settings, partitions from the day before the data;
    stopped by SIGKILL to its process group (it ignores SIGTERM when started in the background)."""
    (port,) = free_ports(1)
    env = {**os.environ, **lake.env, "K2_FIRST_DAY": (built_day - dt.timedelta(days=1)).isoformat()}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if graphql(port, "{ assetNodes { id } }")["data"]["assetNodes"]:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "dagster-webserver did not serve the assets in 120 s"
            time.sleep(0.5)
        assert graphql(port, "mutation { setNuxSeen }")["data"]["setNuxSeen"]  # no "join the community" dialog
        yield port
    finally:
        group = [p for p in psutil.process_iter() if _pgid(p) == proc.pid]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()
        _, alive = psutil.wait_procs(group, timeout=10)
        left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"webserver processes left: {[p.pid for p in left]}"


def _pgid(p: psutil.Process) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


def test_the_ui_shows_lineage_materializations_and_the_gold_chart(lake: Lake, built_day: dt.date, webserver: int) -> None:
    base = f"http://127.0.0.1:{webserver}"
    day = built_day.isoformat()
    # The open-source UI draws column lineage only in Dagster+; the API serves what the definitions declare.
    entries = graphql(webserver, COLUMN_LINEAGE)["data"]["assetNodeOrError"]["metadataEntries"]
    lineage = {e["columnName"]: {("/".join(d["assetKey"]["path"]), d["columnName"]) for d in e["columnDeps"]}
               for e in next(m["lineage"] for m in entries if "lineage" in m)}
    assert lineage["symbol"] == {("bronze/trades_binance", "symbol"), ("bronze/trades_kraken", "pair")}
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            _lineage(page, base)
            _bronze(page, base, day)
            _gold(page, base)
        finally:
            browser.close()


def _save(page, name: str) -> None:
    """A screenshot for docs/screenshots, in 256 colours: committed, so kept small (UI colours are few)."""
    from PIL import Image

    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(colors=256).save(SHOTS / f"{name}.png", optimize=True)


def _lineage(page, base: str) -> None:
    """The global lineage graph: every asset, hot tables to gold, and exactly the edges of the asset graph."""
    groups = ("hot_tier", "bronze", "silver", "gold")
    expanded = "%2C".join(f"global%40global%3A{g}" for g in groups)
    page.goto(f"{base}/asset-groups?expanded={expanded}")
    page.locator("[class*=AssetNode_assetName]").first.wait_for()
    page.get_by_text("Hide navigation").click()  # room for the graph: no navigation, no group tree
    page.locator("button:has([aria-label='panel_show_right'])").click()
    # The smallest zoom that still draws whole nodes (names, kinds, partitions, checks), then centred.
    minimal = page.locator("[class*=minimalAssetNodeBox]")
    if minimal.count() == 0:
        for _ in range(12):
            page.locator("button:has([aria-label='zoom_out'])").click()
            page.wait_for_timeout(400)
            if minimal.count():
                break
    for _ in range(12):
        if minimal.count() == 0:
            break
        page.locator("button:has([aria-label='zoom_in'])").click()
        page.wait_for_timeout(400)
    dx, dy = page.evaluate(_CENTRE)
    page.mouse.move(VIEWPORT["width"] / 2, 400)
    page.mouse.down()
    page.mouse.move(VIEWPORT["width"] / 2 + dx, 400 + dy, steps=8)
    page.mouse.up()
    page.wait_for_timeout(1000)
    for group in groups:
        expect(page.get_by_text(group, exact=True).filter(visible=True).first).to_be_visible()

    graph = page.evaluate(_GRAPH)
    names = sorted(n[0] for n in graph["nodes"])
    exchanges = [f"trades_{e}" for e in HOT_TABLES]
    assert names == sorted([*exchanges, *exchanges, "trades", "trades_rejected", *(f"ohlcv_{i}" for i in ("1m", "5m", "15m", "30m", "1h", "1d"))])
    for name in set(names):
        expect(page.locator("[class*=AssetNode_assetName]", has_text=name).first).to_be_visible()
    # Layers are the graph's columns, left to right: hot tier, bronze, silver, gold.
    columns = sorted({n[1] for n in graph["nodes"]})
    assert len(columns) == 4
    node = {}
    for name, x, y, w, h in graph["nodes"]:
        node[(columns.index(x), name)] = (x, y, w, h)

    def at(px: float, py: float, side: str) -> tuple[int, str]:
        """The node an edge leaves (its right side) or enters (its left side, where the arrow head stops short)."""
        (found,) = [k for k, (x, y, w, h) in node.items() if y <= py <= y + h and (
            abs(x + w - px) < 2 if side == "right" else 0 <= x - px < 20)]
        return found

    edges = {(at(sx, sy, "right"), at(ex, ey, "left")) for sx, sy, ex, ey in graph["edges"]}
    expected = {
        *(((0, e), (1, e)) for e in exchanges),  # hot table -> its bronze copy
        *(((1, e), (2, s)) for e in exchanges for s in ("trades", "trades_rejected")),
        *(((2, "trades"), (3, f"ohlcv_{i}")) for i in ("1m", "5m", "15m", "30m", "1h", "1d")),
    }
    assert edges == expected and len(graph["edges"]) == len(expected)
    _save(page, "lineage")


def _bronze(page, base: str, day: str) -> None:
    """A bronze day's materialization: its watermark and rows; then its two blocking checks, passed."""
    page.goto(f"{base}/assets/{'/'.join(BINANCE.asset_path)}?view=partitions&partition={day}")
    expect(page.get_by_text("Materialized", exact=True).filter(visible=True).first).to_be_visible()
    for label in ("watermark", "rows_appended", "dagster/row_count", "snapshot_id", "bytes_per_row", "commit_attempts"):
        expect(page.get_by_text(label, exact=True).filter(visible=True).first).to_be_visible()
    expect(page.get_by_text('"0":').first).to_be_visible()  # the watermark per feed partition
    _save(page, "bronze_materialization")

    page.goto(f"{base}/assets/{'/'.join(BINANCE.asset_path)}?view=checks")
    for check in ("pandera_contract", "exactly_once"):
        page.get_by_text(check, exact=True).filter(visible=True).first.click()
        expect(page.get_by_text("Passed", exact=True).filter(visible=True).first).to_be_visible()
        expect(page.get_by_text("expected", exact=True).filter(visible=True).first).to_be_visible()


def _gold(page, base: str) -> None:
    """A gold materialization carries the chart of its bars: the image is decoded and drawn."""
    page.goto(f"{base}/assets/{GOLD_CHARTED}?view=events")
    page.get_by_text("bars_chart", exact=True).first.wait_for()
    page.get_by_text("[Show Markdown]").last.click()
    image = page.locator("img[src^='data:image/png;base64,']")
    expect(image).to_be_visible()
    page.wait_for_function("() => { const i = document.querySelector(\"img[src^='data:image/png']\"); return i && i.complete && i.naturalWidth > 0; }")
    width, height = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert width >= 400 and height >= 200
    _save(page, "gold_asset")
