"""CI's short, noise-tolerant form of the latency budget check (benchmarks/budgets.yaml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_latency_budgets_hold() -> None:
    run = subprocess.run([sys.executable, "-m", "benchmarks.check_budgets", "--quick"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "engine_cached_parse" in run.stdout
