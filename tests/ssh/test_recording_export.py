"""A shell through the gateway, then `ordinance audit export --session ID --format
asciicast|text`: the recording the auditor gets is the one the trail vouches for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.ssh.asciicast import parse_bytes
from engine.cli import main
from tests.ssh.gateway_stack import Stack, open_gateway
from tests.ssh.test_gateway_sessions import shell
from tests.support.sshd import Sshd


@pytest.fixture(scope="module")
def stack(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with open_gateway(sshd, tmp_path_factory.mktemp("export")) as running:
        yield running


def test_a_recorded_shell_exports_and_replays(stack: Stack, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    output, status = shell(stack, "dana+web1", stack.dana_key,
                           ["echo exported-$((6*7))", "exit 0"])
    assert status == 0 and "exported-42" in output
    record = [r for r in stack.records("statement") if r.get("recording")][-1]
    session = record["session_id"]
    cast = tmp_path / "session.cast"
    code = main(["audit", "export", "--audit", stack.audit_url, "--session", session,
                 "--format", "asciicast", "--output", str(cast)])
    assert code == 0, capsys.readouterr().err
    data = cast.read_bytes()
    assert data == Path(record["recording"]["path"]).read_bytes()
    replay = parse_bytes(data)
    assert "exported-42" in replay.text("o") and "echo exported-$((6*7))" in replay.text("i")
    assert (replay.header.width, replay.header.height) == (100, 30)

    capsys.readouterr()
    code = main(["audit", "export", "--audit", stack.audit_url, "--session", session,
                 "--format", "text"])
    out = capsys.readouterr().out
    assert code == 0
    assert "verified" in out and any("exported-42" in line for line in out.splitlines()
                                     if line.startswith("    | "))

    Path(record["recording"]["path"]).write_bytes(data.replace(b"exported-42", b"exported-00"))
    code = main(["audit", "export", "--audit", stack.audit_url, "--session", session,
                 "--format", "asciicast"])
    assert code == 1
    assert "does not match the trail" in capsys.readouterr().err
