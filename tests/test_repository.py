"""Repository hygiene that CI enforces: the linter is clean."""

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
