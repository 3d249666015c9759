"""The chaos suite, bounded: random faults across every layer, each followed by ordinary recovery runs and the
full verification, on `k2 chaos`'s own private services and lake (it needs none of the session's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k2_lakehouse import chaos

# CI runs the bounded suite (>= 20 trials); K2_CHAOS_TRIALS=200 runs the long one by hand through the same test.
TRIALS = int(os.environ.get("K2_CHAOS_TRIALS", "20"))
SEED = int(os.environ.get("K2_CHAOS_SEED", "20261127"))


@pytest.mark.slow
def test_every_fault_recovers_with_no_duplicate_and_no_loss(tmp_path: Path) -> None:
    report = tmp_path / "chaos.md"
    result = chaos.run(TRIALS, seed=SEED, report=report, log=print)

    assert len(result.trials) == TRIALS
    assert [t for t in result.trials if not t.ok] == [], "\n".join(result.failures())
    assert all(t.recovered and t.duplicates == 0 and t.losses == 0 for t in result.trials)
    # Every fault kind the checkout supports happened at least once (the plan draws each before repeating any).
    assert {t.kind for t in result.trials} == set(chaos.KINDS) - set(result.skipped)
    assert set(result.skipped) <= {"maintenance"}
    assert "| kill |" in report.read_text() and result.summary().startswith("chaos PASSED")
