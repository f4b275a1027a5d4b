"""Repository hygiene that CI enforces: the linter and the type checker are clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    run = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True,
                         check=False, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]


def test_mypy_is_clean() -> None:
    """`[tool.mypy]` in pyproject.toml names what is checked (engine, adapters, benchmarks)."""
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True,
                         text=True, check=False, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:]
