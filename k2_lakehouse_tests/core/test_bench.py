"""The bench's own logic: no services needed (the tree measurement starts a few bare interpreters)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from k2_lakehouse import bench


def test_parallel_efficiency() -> None:
    assert bench.parallel_efficiency(10.0, 10.0, 10.0) == 1.0  # both at once as fast as one alone
    assert bench.parallel_efficiency(10.0, 10.0, 20.0) == 0.5  # no faster than one after the other
    assert bench.parallel_efficiency(8.0, 12.0, 11.0) == pytest.approx(20 / 22)
    assert bench.parallel_efficiency(1.0, 1.0, 0.0) == 0.0


def test_efficiency_bound() -> None:
    assert bench.efficiency_bound(2, [0.8, 0.9]) == 1.0  # the cores are enough for both
    assert bench.efficiency_bound(2, [2.0, 2.0]) == 0.5  # each alone already keeps both cores busy
    assert bench.efficiency_bound(4, [0.0, 0.0]) == 1.0


def test_linear_fit_and_crossover() -> None:
    fixed, per_row = bench.linear_fit([1e6, 2e6, 4e6], [3 + 2e-6 * x for x in (1e6, 2e6, 4e6)])
    assert fixed == pytest.approx(3.0) and per_row == pytest.approx(2e-6)
    assert bench.crossover(2.0, 2e-6, 20.0, 1e-6) == pytest.approx(18e6)  # Spark-like: dearer start, cheaper rows
    assert bench.crossover(2.0, 2e-6, 20.0, 3e-6) is None  # never catches up
    assert bench.crossover(5.0, 2e-6, 1.0, 1e-6) == 0.0  # never slower


def test_analyse_scale_fits_each_engine_and_the_day() -> None:
    runs = []
    for factor, rows in ((1, 2e6), (2, 4e6), (4, 8e6)):
        for engine, (fixed, per_m) in (("duckdb", (2.0, 5.0)), ("spark", (30.0, 1.0))):
            for step in bench.SCALE_STEPS:
                runs.append({"factor": factor, "engine": engine, "step": step, "rows": int(rows), "ok": True,
                             "wall_s": fixed + per_m * rows / 1e6})
    a = bench.analyse_scale(runs)
    assert a["fits"]["duckdb"]["silver"]["s_per_million_rows"] == pytest.approx(5.0)
    assert a["fits"]["spark"]["day"]["fixed_s"] == pytest.approx(90.0)
    assert a["crossover_rows"]["bronze"] == pytest.approx(7e6)  # 2 + 5x = 30 + x
    assert a["crossover_rows"]["day"] == pytest.approx(7e6)


def test_parallel_figures() -> None:
    def child(seconds: float, step: float, copy: float, start: float = 0.0) -> dict:
        return {"seconds": seconds, "result": {"step_s": step, "result_s": copy, "step_started": start, "step_ended": start + step}}

    run = {"binance": child(5.0, 3.0, 2.0), "kraken": child(5.0, 3.0, 2.0),
           "together": {"seconds": 6.0, "children": [child(6.0, 4.0, 2.5, start=100.0), child(6.0, 3.5, 2.0, start=100.2)]}}
    f = bench.parallel_figures(run, ("binance", "kraken"))
    assert f["efficiency_wall"] == pytest.approx(10 / 12)
    assert f["efficiency_step"] == pytest.approx(6 / 8)  # window: 100.0 .. 104.0
    assert f["efficiency_copy"] == pytest.approx(4 / 5)


def test_measure_tree_sums_the_whole_process_tree(tmp_path: Path) -> None:
    """A child holding 64 MiB whose own child holds 128 MiB: the tree's peak is their sum, not the larger
    one (ru_maxrss); two children started together are summed as well."""
    grandchild = "import time; b = bytearray(128 << 20); time.sleep(0.6)"
    child = (f"import subprocess, sys; b = bytearray(64 << 20); "
             f"subprocess.run([sys.executable, '-c', {grandchild!r}], check=True); print('{{\"ok\": true}}')")
    sleeper = "import time; time.sleep(0.3)"
    m = bench.measure_tree([("tree", [sys.executable, "-c", child]), ("sleeper", [sys.executable, "-c", sleeper])],
                           dict(os.environ), tmp_path, interval=0.05)
    tree, sleeper_m = m.children
    assert tree.returncode == 0 and tree.result == {"ok": True}
    assert tree.max_processes == 2
    assert tree.max_process_rss_mib >= 128  # the grandchild, reaped by the child
    assert tree.peak_rss_mib >= 64 + 128  # both at once, not the larger one
    assert tree.peak_rss_mib > tree.max_process_rss_mib + 48
    assert sleeper_m.seconds < tree.seconds <= m.seconds
    assert m.peak_rss_mib >= tree.peak_rss_mib
    assert m.cpu_machine_s >= 0 and m.cpu_clickhouse_s is None
