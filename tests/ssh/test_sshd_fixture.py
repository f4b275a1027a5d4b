"""The throwaway sshd fixture itself: OpenSSH's client logs in with the fixture's key and
host key pin, and runs a command as the non-root test user."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.support.sshd import TEST_USER, Sshd, key_pair


def _ssh_client() -> str:
    path = shutil.which("ssh")
    if path is None:
        if os.environ.get("ORDINANCE_REQUIRE_SSHD") == "1":
            pytest.fail("ssh client required (ORDINANCE_REQUIRE_SSHD=1) but not installed")
        pytest.skip("OpenSSH client (ssh) not installed")
    return path


def test_ssh_echo_through_the_fixture(sshd: Sshd) -> None:
    _ssh_client()
    done = subprocess.run(sshd.ssh_command("echo", "hello-from-sshd;", "id", "-un"),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr + sshd.log()[-800:]
    assert done.stdout.split() == ["hello-from-sshd", sshd.user]  # the remote shell ran `;`
    if os.geteuid() == 0:
        assert sshd.user == TEST_USER  # a non-root login user


def test_a_changed_host_key_is_refused(sshd: Sshd, fresh_sshd: Sshd, tmp_path) -> None:
    """The known_hosts pin is real: another server's key for this address fails."""
    _ssh_client()
    pinned = tmp_path / "known_hosts"
    pinned.write_text(f"[{fresh_sshd.host}]:{fresh_sshd.port} {sshd.host_public_key}\n")
    command = fresh_sshd.ssh_command("true")
    command[command.index(f"UserKnownHostsFile={fresh_sshd.known_hosts}")] = (
        f"UserKnownHostsFile={pinned}")
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in done.stderr


def test_an_unknown_key_is_refused(sshd: Sshd, tmp_path) -> None:
    _ssh_client()
    other, _ = key_pair(str(tmp_path), "other_key")
    command = sshd.ssh_command("true")
    command[command.index(sshd.client_key)] = other
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 255
    assert "Permission denied" in done.stderr


def test_stop_removes_the_server(fresh_sshd: Sshd) -> None:
    fresh_sshd.stop()
    assert fresh_sshd.process.poll() is not None
    assert not os.path.exists(fresh_sshd.directory)


def test_a_certificate_from_the_user_ca_logs_in(sshd: Sshd, tmp_path) -> None:
    """The fixture's CA is trusted: a gateway may log in with a certificate instead of a key."""
    _ssh_client()
    key, _ = key_pair(str(tmp_path), "cert_key")
    signed = subprocess.run(["ssh-keygen", "-q", "-s", sshd.user_ca_key, "-I", "ordinance-test",
                             "-n", sshd.user, "-V", "-5m:+1h", key + ".pub"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert signed.returncode == 0, signed.stderr
    command = sshd.ssh_command("echo", "cert-ok")
    command[command.index(sshd.client_key)] = key
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr + sshd.log()[-800:]
    assert done.stdout.strip() == "cert-ok"
    assert "CERT" in sshd.log()  # accepted as a certificate, not as a plain key
