"""`ordinance audit export --session ID --format asciicast|text`: a session's recording, read
back only when it is the file its record (in the hash chain) names."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from adapters.ssh.asciicast import Encoder, Header, parse_bytes
from engine.audit import open_audit_log
from engine.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_cast(path: Path, output: list[bytes]) -> bytes:
    enc = Encoder(Header(width=80, height=24, timestamp=1_765_000_000, env={"TERM": "xterm"}))
    data = enc.header() + enc.input(0.05, b"ls\r")
    for i, chunk in enumerate(output):
        data += enc.output(0.1 + i / 10, chunk)
    data += enc.finish(1.0)
    path.write_bytes(data)
    return data


def link(path: Path, data: bytes) -> dict[str, object]:
    return {"format": "asciicast-v2", "path": str(path),
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def record_shell_session(url: str, casts: list[tuple[Path, bytes]]) -> None:
    with open_audit_log(url) as log:
        log.append("session.start", {"protocol": "ssh", "user": "alice",
                                     "client_addr": "10.0.0.5", "target": "db1",
                                     "auth_method": "publickey"},
                   subject="alice", session_id="s-1")
        for path, data in casts:
            log.append("statement", {"protocol": "ssh", "request": "shell", "text": "shell",
                                     "effect": "allow", "exit_status": 0,
                                     "recording": link(path, data)},
                       subject="alice", session_id="s-1")
        log.append("session.end", {"reason": "client closed"}, subject="alice",
                   session_id="s-1")


def test_export_writes_the_recording_verbatim(store_url: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "s-1.cast"
    data = write_cast(cast, [b"file-a  file-b\r\n", b"\x1b[32m$\x1b[0m "])
    record_shell_session(store_url, [(cast, data)])
    code, out, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                         "--format", "asciicast")
    assert code == 0, err
    assert out.encode() == data
    assert parse_bytes(out.encode()).text("o").startswith("file-a  file-b")
    target = tmp_path / "copy.cast"
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "asciicast", "--output", str(target))
    assert code == 0, err
    assert target.read_bytes() == data


def test_an_edited_recording_is_refused(store_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "s-1.cast"
    data = write_cast(cast, [b"secret output\r\n"])
    record_shell_session(store_url, [(cast, data)])
    cast.write_bytes(data.replace(b"secret", b"benign"))
    code, out, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                         "--format", "asciicast")
    assert code == 1 and out == ""
    assert "does not match the trail" in err and "edited, cut or replaced" in err
    code, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "text")
    assert code == 1
    assert "recording not shown" in out and "benign" not in out


def test_a_missing_recording_or_session(store_url: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "gone.cast"
    data = write_cast(cast, [b"x"])
    record_shell_session(store_url, [(cast, data)])
    cast.unlink()
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "asciicast")
    assert code == 1 and "cannot be read" in err
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "nope",
                       "--format", "asciicast")
    assert code == 1 and "has no asciicast recording" in err
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--format", "asciicast")
    assert code == 2 and "needs --session" in err


def test_several_recordings_are_chosen_by_number(store_url: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a.cast", tmp_path / "b.cast"
    casts = [(first, write_cast(first, [b"first\r\n"])),
             (second, write_cast(second, [b"second\r\n"]))]
    record_shell_session(store_url, casts)
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "asciicast")
    assert code == 2 and "--recording N" in err
    code, out, _ = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "asciicast", "--recording", "2")
    assert code == 0 and out.encode() == casts[1][1]
    code, _, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                       "--format", "asciicast", "--recording", "3")
    assert code == 2 and "has 2 recording" in err


def test_recordings_moved_to_a_directory(store_url: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "orig" / "s-1.cast"
    cast.parent.mkdir()
    data = write_cast(cast, [b"moved\r\n"])
    record_shell_session(store_url, [(cast, data)])
    moved = tmp_path / "archive"
    moved.mkdir()
    cast.rename(moved / "s-1.cast")
    code, out, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                         "--format", "asciicast", "--recordings", str(moved))
    assert code == 0, err
    assert out.encode() == data


def test_text_export_shows_what_the_terminal_showed(store_url: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "s-1.cast"
    data = write_cast(cast, [b"\x1b[1mtotal 0\x1b[0m\r\n", b"done\r\n"])
    record_shell_session(store_url, [(cast, data)])
    code, out, err = run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
                         "--format", "text")
    assert code == 0, err
    assert "    | total 0\n    | done\n" in out
    assert "verified" in out and "Session s-1 (alice)" in out


def test_the_export_is_recorded(store_url: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    cast = tmp_path / "s-1.cast"
    record_shell_session(store_url, [(cast, write_cast(cast, [b"x"]))])
    run(capsys, "audit", "export", "--audit", store_url, "--session", "s-1",
        "--format", "asciicast")
    with open_audit_log(store_url) as log:
        accessed = [r for r in log.iter_records(kind="audit.accessed")]
    assert accessed[-1].payload["recording"] == str(cast)
    assert accessed[-1].payload["format"] == "asciicast"
