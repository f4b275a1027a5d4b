from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def policy_dir(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write {relative path: text} into a fresh policy directory and return it."""

    def write(files: dict[str, str]) -> Path:
        root = tmp_path / "policies"
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        return root

    return write
