"""A policy set is loaded whole or not at all: slow in-place writes, multi-part writes with the
file closed in between, atomic symlink switches (git-sync, ConfigMap `..data`), `.manifest`
hashes and bundles replaced by rename, while decisions are hammered concurrently."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from engine.api import decision_pb2, decision_pb2_grpc
from engine.policy import load_policy_set
from engine.policy.snapshot import ManifestMismatch, NotSettled, take_snapshot
from engine.service.server import Service
from tests.service.conftest import wait_for

DO_BLOCK = "DO $$ BEGIN PERFORM pg_sleep(0); END $$"

OLD = """package ordinance.pack
import rego.v1

deny contains "DO blocks are not allowed" if regex.match(`^\\s*DO\\b`, input.command.raw)
"""

# Each prefix of PARTS is a valid policy set on its own; only the whole denies `DO`.
PARTS = [
    """package ordinance.pack
import rego.v1

deny contains "no DROP" if contains(input.command.raw, "DROP")
""",
    """
review contains {"message": "bulk read", "approvers": ["dba"]} if {
    contains(input.command.raw, "SELECT *")
}
""",
    """
deny contains "DO blocks are not allowed" if regex.match(`^\\s*DO\\b`, input.command.raw)
""",
]


def revision_of(files: dict[str, str], tmp: Path) -> str:
    """The revision a directory holding exactly `files` compiles to."""
    tmp.mkdir(parents=True)
    for name, text in files.items():
        (tmp / name).write_text(text)
    return str(load_policy_set(str(tmp)).revision)


class Hammer:
    """Threads deciding `DO_BLOCK` as fast as they can; every answer is kept."""

    def __init__(self, port: int, threads: int = 3) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stub = decision_pb2_grpc.DecisionServiceStub(self._channel)
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        request = decision_pb2.DecideRequest()
        request.input.update({"command": {"protocol": "postgres", "raw": DO_BLOCK}})
        while not self._stop.is_set():
            decision = self._stub.Decide(request, timeout=10).decision
            with self._lock:
                self.answers.append((decision.effect, decision.policy_revision))

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        self._channel.close()
        return list(self.answers)


@contextmanager
def hammering(service: Service) -> Iterator[Hammer]:
    assert service.grpc_port
    hammer = Hammer(service.grpc_port)
    try:
        yield hammer
    finally:
        hammer.stop()


def assert_never_partial(answers: list[tuple[int, str]], old: str, final: str,
                         partial: set[str]) -> None:
    assert answers, "no decision was made"
    revisions = {revision for _, revision in answers}
    assert not revisions & partial, "a decision was answered by a partial policy set"
    assert revisions <= {old, final}, revisions
    assert all(effect == decision_pb2.EFFECT_DENY for effect, _ in answers), \
        "DO was allowed"
    assert final in revisions, "the complete set was never served"


@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pack"
    directory.mkdir()
    (directory / "pack.rego").write_text(OLD)
    return directory


def expected_revisions(tmp_path: Path) -> tuple[str, str, set[str]]:
    old = revision_of({"pack.rego": OLD}, tmp_path / "rev-old")
    final = revision_of({"pack.rego": "".join(PARTS)}, tmp_path / "rev-final")
    partial = {revision_of({"pack.rego": "".join(PARTS[:n])}, tmp_path / f"rev-{n}")
               for n in range(1, len(PARTS))}
    return old, final, partial


def test_slow_in_place_write_never_serves_a_partial_set(
        pack_dir: Path, tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    """The file is truncated and written in three parts with pauses longer than the quiet
    period, kept open throughout: the writer check holds the reload until it is closed."""
    old, final, partial = expected_revisions(tmp_path)
    service = service_factory(pack_dir, reload_interval=0.05, reload_settle=0.3)
    runtime = service.runtime
    assert runtime is not None and runtime.status.revision == old
    with hammering(service) as hammer:
        with open(pack_dir / "pack.rego", "w") as f:  # truncates in place
            for part in PARTS:
                f.write(part)
                f.flush()
                os.fsync(f.fileno())
                time.sleep(1.0)  # > settle: only the open-for-writing check protects here
        wait_for(lambda: runtime.status.revision == final, what="the complete set")
        time.sleep(0.3)
        answers = hammer.stop()
    assert_never_partial(answers, old, final, partial)
    assert runtime.status.failures == 0  # the empty and partial files were never compiled


def test_writes_with_the_file_closed_between_parts_are_waited_for(
        pack_dir: Path, tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    """`cat part >> file` three times: no writer is open between the parts, so the quiet
    period is what keeps the partial files out."""
    old, final, partial = expected_revisions(tmp_path)
    service = service_factory(pack_dir, reload_interval=0.05, reload_settle=1.0)
    runtime = service.runtime
    assert runtime is not None
    with hammering(service) as hammer:
        (pack_dir / "pack.rego").write_text(PARTS[0])
        for part in PARTS[1:]:
            time.sleep(0.4)
            with open(pack_dir / "pack.rego", "a") as f:
                f.write(part)
        wait_for(lambda: runtime.status.revision == final, what="the complete set")
        time.sleep(0.3)
        answers = hammer.stop()
    assert_never_partial(answers, old, final, partial)


def test_multi_file_copy_is_loaded_as_one_set(
        pack_dir: Path, tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    """A set split over files, copied one by one: never half the old and half the new."""
    (pack_dir / "pack.rego").write_text(OLD)
    service = service_factory(pack_dir, reload_interval=0.05, reload_settle=1.0)
    runtime = service.runtime
    assert runtime is not None
    old = runtime.status.revision
    files = {"pack.rego": PARTS[0], "review.rego": "package ordinance.pack\nimport rego.v1\n"
             + PARTS[1], "do.rego": "package ordinance.pack\nimport rego.v1\n" + PARTS[2]}
    final = revision_of(files, tmp_path / "rev-final")
    partial = {revision_of(dict(list(files.items())[:n]), tmp_path / f"rev-{n}")
               for n in (1, 2)}
    with hammering(service) as hammer:
        for name, text in files.items():
            (pack_dir / name).write_text(text)
            time.sleep(0.3)
        wait_for(lambda: runtime.status.revision == final, what="the complete set")
        answers = hammer.stop()
    assert_never_partial(answers, old, final, partial)


def test_symlink_switch_git_sync_style(tmp_path: Path,
                                       service_factory: Callable[..., Service]) -> None:
    """`current -> worktrees/v1`, swapped by renaming a new link over it."""
    worktrees = tmp_path / "worktrees"
    (worktrees / "v1").mkdir(parents=True)
    (worktrees / "v1" / "pack.rego").write_text(OLD)
    current = tmp_path / "current"
    current.symlink_to(worktrees / "v1")
    service = service_factory(current, reload_interval=0.05, reload_settle=0.2)
    runtime = service.runtime
    assert runtime is not None
    old = runtime.status.revision
    (worktrees / "v2").mkdir()
    (worktrees / "v2" / "pack.rego").write_text("".join(PARTS))
    final = revision_of({"pack.rego": "".join(PARTS)}, tmp_path / "rev-final")
    with hammering(service) as hammer:
        link = tmp_path / "current.new"
        link.symlink_to(worktrees / "v2")
        os.replace(link, current)
        wait_for(lambda: runtime.status.revision == final, what="the switched set")
        answers = hammer.stop()
    assert_never_partial(answers, old, final, set())
    assert service.watcher is not None


def test_configmap_data_link_switch(tmp_path: Path,
                                    service_factory: Callable[..., Service]) -> None:
    """Kubernetes' layout: `..2026_v1/`, `..data -> ..2026_v1`, `pack.rego -> ..data/pack.rego`."""
    volume = tmp_path / "volume"
    (volume / "..2026_v1").mkdir(parents=True)
    (volume / "..2026_v1" / "pack.rego").write_text(OLD)
    (volume / "..data").symlink_to("..2026_v1")
    (volume / "pack.rego").symlink_to("..data/pack.rego")
    service = service_factory(volume, reload_interval=0.05, reload_settle=0.2)
    runtime = service.runtime
    assert runtime is not None
    (volume / "..2026_v2").mkdir()
    (volume / "..2026_v2" / "pack.rego").write_text("".join(PARTS))
    (volume / "..data_tmp").symlink_to("..2026_v2")
    os.replace(volume / "..data_tmp", volume / "..data")
    final = revision_of({"pack.rego": "".join(PARTS)}, tmp_path / "rev-final")
    wait_for(lambda: runtime.status.revision == final, what="the switched set")
    assert runtime.engine.policy_set.root == str(volume / "..2026_v2")


def _manifest(directory: Path, files: dict[str, str], revision: str) -> None:
    doc = {"revision": revision, "files": {
        name: "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        for name, text in files.items()}}
    tmp = directory / ".manifest.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, directory / ".manifest")


def test_manifest_gates_the_set(pack_dir: Path, tmp_path: Path,
                                service_factory: Callable[..., Service]) -> None:
    """With a `.manifest`, the set loads when (and only when) it matches: no quiet period."""
    _manifest(pack_dir, {"pack.rego": OLD}, "r1")
    service = service_factory(pack_dir, reload_interval=0.05, reload_settle=600)
    runtime = service.runtime
    assert runtime is not None and runtime.ready  # the manifest matched: no 600 s wait
    old = runtime.status.revision
    # the content changes first: it does not match the manifest, so it is rejected
    (pack_dir / "pack.rego").write_text(PARTS[0])
    wait_for(lambda: runtime.status.failures >= 1, what="mismatch reported")
    assert runtime.status.revision == old
    assert any("pack.rego does not match its hash" in e for e in runtime.status.last_errors)
    # then the manifest: the set is complete
    (pack_dir / "pack.rego").write_text("".join(PARTS))
    _manifest(pack_dir, {"pack.rego": "".join(PARTS)}, "r2")
    final = revision_of({"pack.rego": "".join(PARTS)}, tmp_path / "rev-final")
    wait_for(lambda: runtime.status.revision == final, what="the manifest's set")
    # a file the manifest does not list is not part of a complete set
    (pack_dir / "extra.rego").write_text("package ordinance.extra\n")
    wait_for(lambda: any("extra.rego is present but not listed" in e
                         for e in runtime.status.last_errors), what="extra file reported")
    assert runtime.status.revision == final


def _bundle(text: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in ((".manifest", b'{"revision": "b"}'), ("pack.rego", text.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_bundle_replaced_by_rename_and_a_truncated_bundle(
        tmp_path: Path, service_factory: Callable[..., Service]) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(_bundle(OLD))
    service = service_factory(bundle, reload_interval=0.05, reload_settle=0.2)
    runtime = service.runtime
    assert runtime is not None and runtime.ready
    old = runtime.status.revision
    full = _bundle("".join(PARTS))
    # written in place and cut short (a crashed copy): rejected, the old set serves
    bundle.write_bytes(full[: len(full) // 2])
    wait_for(lambda: runtime.status.failures >= 1, what="truncated bundle rejected")
    assert runtime.status.revision == old
    # replaced by rename: loaded whole
    tmp = tmp_path / "bundle.tar.gz.tmp"
    tmp.write_bytes(full)
    os.replace(tmp, bundle)
    wait_for(lambda: runtime.status.revision not in ("", old), what="renamed bundle loaded")


# --- the snapshot rules, directly ---------------------------------------------------------


def test_a_file_open_for_writing_is_not_read(pack_dir: Path) -> None:
    with open(pack_dir / "pack.rego", "a") as writer:
        with pytest.raises(NotSettled, match="open for writing"):
            take_snapshot(str(pack_dir), settle=0)
        writer.write("\n")
    snapshot = take_snapshot(str(pack_dir), settle=0)
    assert snapshot.writer_check == "lease"
    assert dict(snapshot.files)["pack.rego"] == (OLD + "\n").encode()


def test_a_fresh_change_waits_for_the_quiet_period(pack_dir: Path) -> None:
    (pack_dir / "pack.rego").write_text(OLD)
    with pytest.raises(NotSettled, match="quiet"):
        take_snapshot(str(pack_dir), settle=30)
    later = time.time_ns() + 31 * 10**9
    assert take_snapshot(str(pack_dir), settle=30, clock=lambda: later).files


def test_backdated_mtime_does_not_skip_the_quiet_period(pack_dir: Path) -> None:
    """`cp -p`/`tar x` set old mtimes; the ctime still says the file just changed."""
    (pack_dir / "pack.rego").write_text(OLD)
    os.utime(pack_dir / "pack.rego", (0, 0))
    with pytest.raises(NotSettled):
        take_snapshot(str(pack_dir), settle=30)


def test_a_malformed_manifest_is_a_clear_error(pack_dir: Path) -> None:
    (pack_dir / ".manifest").write_text("{not json")
    with pytest.raises(ManifestMismatch, match="unreadable manifest"):
        take_snapshot(str(pack_dir), settle=0)
    (pack_dir / ".manifest").write_text('{"files": ["pack.rego"]}')
    with pytest.raises(ManifestMismatch, match="must map"):
        take_snapshot(str(pack_dir), settle=0)


def test_a_symlinked_policy_file_is_read_through_its_link(tmp_path: Path) -> None:
    (tmp_path / "shared.rego").write_text(OLD)
    directory = tmp_path / "set"
    directory.mkdir()
    (directory / "pack.rego").symlink_to(tmp_path / "shared.rego")
    snapshot = take_snapshot(str(directory), settle=0)
    assert dict(snapshot.files) == {"pack.rego": OLD.encode()}
