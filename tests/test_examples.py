"""The example scripts run as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_link_pairs_sim_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "examples/link_pairs_sim.py", "examples/two_nodes.toml", "50"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "50 pairs in" in result.stdout
    agree = float(result.stdout.split("predicts:")[1].split()[0])
    estimate = float(result.stdout.split("estimate:")[1].split()[0])
    # Z agreement is the weight of the heralded Bell state, at most the fidelity (+ sampling).
    assert 0.6 < agree <= 1.0
    assert estimate >= 0.9
