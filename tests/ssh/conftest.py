"""Fixtures for the SSH tests: a throwaway OpenSSH server as the target.

`sshd` is one server for the whole session (`tests/support/sshd.py`); `fresh_sshd` is a new
server per test (another host key and port: a test that restarts or re-keys its target uses
it). When sshd is missing or cannot start the tests skip with the reason, unless
`ORDINANCE_REQUIRE_SSHD=1` (set by `.ci/run`), which turns that skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.sshd import Sshd, SshdUnavailable, start_sshd


def _started() -> Sshd:
    try:
        return start_sshd()
    except SshdUnavailable as exc:
        if os.environ.get("ORDINANCE_REQUIRE_SSHD") == "1":
            pytest.fail(f"sshd required (ORDINANCE_REQUIRE_SSHD=1) but unavailable: {exc}")
        pytest.skip(f"sshd unavailable: {exc}")


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    """A running target sshd shared by the session's tests (do not stop or re-key it)."""
    server = _started()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh_sshd() -> Iterator[Sshd]:
    """A target sshd of this test's own."""
    server = _started()
    try:
        yield server
    finally:
        server.stop()
