"""The committed `engine/api/*_pb2*` modules are exactly what `engine.api.generate` produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.api import generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = generate.generate(tmp_path)
    assert written, "the generator wrote nothing"
    committed = sorted(p.name for p in generate.PACKAGE_DIR.iterdir()
                       if p.name.endswith(generate._SUFFIXES))
    assert sorted(p.name for p in written) == committed, "generated file set differs"
    for path in written:
        fresh = path.read_text()
        current = (generate.PACKAGE_DIR / path.name).read_text()
        assert fresh == current, (
            f"engine/api/{path.name} is stale: run `python -m engine.api.generate`")


def test_generated_grpc_module_imports_package_relative() -> None:
    text = (generate.PACKAGE_DIR / "decision_pb2_grpc.py").read_text()
    assert "from ordinance" not in text
    assert "from . import decision_pb2" in text
    from engine.api import decision_pb2, decision_pb2_grpc

    assert decision_pb2.DESCRIPTOR.package == "ordinance.v1"
    assert hasattr(decision_pb2_grpc, "DecisionServiceStub")
