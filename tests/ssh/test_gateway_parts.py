"""The gateway's sans-IO parts: card numbers in chunked streams, SFTP requests, the targets
file, SSH keys in the users file, login names."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.ssh.gateway import split_login
from adapters.ssh.pan_stream import PanStream, mask_pans
from adapters.ssh.sftp_ops import (
    FX_PERMISSION_DENIED,
    FXP_DATA,
    SftpFramer,
    SftpProtocolError,
    masked_data_reply,
    operation,
    status,
)
from adapters.ssh.targets import TargetsFileError, parse_targets
from engine.identity.users import UsersFileError, parse_users
from engine.masking import scrub_pans
from tests.support.sshd import key_pair

# -- card numbers in a chunked stream --------------------------------------------------------

def run(stream: PanStream, chunks: list[bytes]) -> bytes:
    return b"".join(stream.feed(c) for c in chunks) + stream.flush()


def test_a_number_split_anywhere_is_masked() -> None:
    text = b"card 4111 1111 1111 1111 ok\n"
    for cut in range(len(text) + 1):
        assert run(PanStream(), [text[:cut], text[cut:]]) == b"card **** **** **** 1111 ok\n"


def test_digits_of_other_scripts_split_inside_a_character() -> None:
    fullwidth = "".join(chr(0xFF10 + int(d)) for d in "4111111111111111")  # 3 bytes each
    text = f"x {fullwidth} y".encode()
    whole = scrub_pans(text.decode()).encode()
    assert whole != text
    for cut in range(len(text) + 1):
        assert run(PanStream(), [text[:cut], text[cut:]]) == whole


def test_what_cannot_continue_a_number_is_passed_on_at_once() -> None:
    stream = PanStream()
    assert stream.feed(b"hello world\n") == b"hello world\n"
    assert stream.feed(b"total 4111") == b"total"
    assert stream.holding == len(b" 4111")
    assert stream.idle() == b" 4111" and stream.holding == 0


def test_a_long_run_is_bounded_and_still_masked() -> None:
    stream = PanStream(max_hold=256)
    out = stream.feed(b"1 " * 500) + stream.feed(b" 4111111111111111 x") + stream.flush()
    assert b"4111111111111111" not in out and out.endswith(b"************1111 x")
    assert stream.holding == 0


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789 -x\n\uff14\uff11", max_size=400),
       st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_chunking_never_changes_what_is_masked(text: str, cuts: list[int]) -> None:
    data = text.encode()
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert run(PanStream(), chunks) == scrub_pans(text).encode()


# -- SFTP requests -----------------------------------------------------------------------------

def packet(kind: int, request_id: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + request_id.to_bytes(4, "big") + b"".join(fields)
    return len(body).to_bytes(4, "big") + body


def string(value: str) -> bytes:
    raw = value.encode()
    return len(raw).to_bytes(4, "big") + raw


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def test_open_modes_paths_and_two_path_requests() -> None:
    read = operation(packet(3, 7, string("/etc/../etc/shadow"), u32(1), u32(0)))
    assert read.request_id == 7 and read.facts is not None
    assert read.facts["op"] == "open" and read.facts["mode"] == "read"
    assert read.facts["path"] == "/etc/shadow" and read.facts["raw_path"] == "/etc/../etc/shadow"
    write = operation(packet(3, 8, string("a.txt"), u32(0x1A), u32(0)))  # write|creat|trunc
    assert write.facts is not None and write.facts["mode"] == "write"
    assert write.facts["flags"] == ["write", "create", "truncate"]
    rename = operation(packet(18, 9, string("/a"), string("/b")))
    assert rename.facts == {"op": "rename", "path": "/a", "name": "a", "raw_path": "/a",
                            "target": "/b"}
    link = operation(packet(20, 10, string("/etc/shadow"), string("/tmp/l")))  # OpenSSH order
    assert link.facts is not None and link.facts["path"] == "/tmp/l"
    assert link.facts["target"] == "/etc/shadow"
    hard = operation(packet(200, 11, string("hardlink@openssh.com"), string("/etc/shadow"),
                            string("/tmp/h")))
    assert hard.facts is not None and hard.facts["op"] == "link"


def test_handle_requests_pass_and_unknown_ones_are_refused() -> None:
    assert operation(packet(5, 1, string("h"), b"\0" * 12)).facts is None  # READ on a handle
    assert operation(packet(5, 1, string("h"), b"\0" * 12)).unsupported is None
    unknown = operation(packet(200, 2, string("evil@example.com"), string("/")))
    assert unknown.unsupported is not None and "evil@example.com" in unknown.unsupported
    assert operation(packet(99, 3)).unsupported is not None


def test_malformed_and_oversized_requests_are_protocol_errors() -> None:
    with pytest.raises(SftpProtocolError):
        operation(packet(3, 1, u32(50), b"short"))
    with pytest.raises(SftpProtocolError):
        SftpFramer().feed(u32(10**8) + b"x")
    with pytest.raises(SftpProtocolError):
        SftpFramer().feed(u32(0))


def test_the_framer_reassembles_split_packets() -> None:
    one, two = packet(17, 1, string("/x")), packet(17, 2, string("/y"))
    framer = SftpFramer()
    data = one + two
    got = [p for i in range(len(data)) for p in framer.feed(data[i:i + 1])]
    assert got == [one, two]


def test_a_refusal_is_a_status_reply() -> None:
    reply = status(42, FX_PERMISSION_DENIED, "no")
    assert reply[4] == 101 and int.from_bytes(reply[5:9], "big") == 42
    assert int.from_bytes(reply[9:13], "big") == FX_PERMISSION_DENIED
    assert int.from_bytes(reply[:4], "big") == len(reply) - 4


# -- the targets file ----------------------------------------------------------------------------

def targets_yaml(key_path: str, **over: str) -> str:
    fields = {"name": "web1", "host": "10.0.0.5", "port": "2200", "user": "deploy",
              "key": key_path,
              "known_hosts": "['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6"
                             "UOoqKLsabgH5C9okWi0dh2l9GKJl']",
              "labels": "{env: prod}", **over}
    body = "".join(f"    {k}: {v}\n" for k, v in fields.items() if v != "-")
    return "targets:\n  -\n" + body


def test_a_target_with_its_key_pinned(tmp_path: Path) -> None:
    key, _ = key_pair(str(tmp_path), "gw")
    targets = parse_targets(targets_yaml(key))
    target = targets.get("web1")
    assert target is not None and target.port == 2200 and target.labels == {"env": "prod"}
    assert target.resource()["labels"] == {"env": "prod"}
    assert target.known_hosts.match("10.0.0.5", "", 2200)[0]


@pytest.mark.parametrize(("over", "message"), [
    ({"known_hosts": "[]"}, "known_hosts is required"),
    ({"known_hosts": "-"}, "known_hosts is required"),
    ({"known_hosts": "['other.host ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKL"
                     "sabgH5C9okWi0dh2l9GKJl']"}, "no entry that matches [10.0.0.5]:2200"),
    ({"name": "web+1"}, "name must be"),
    ({"port": "70000"}, "port must be"),
    ({"key": "/nonexistent/key"}, "key /nonexistent/key"),
    ({"labels": "[prod]"}, "labels must be"),
    ({"password": "x"}, "unknown key(s): password"),
])
def test_targets_file_errors_name_the_line_and_problem(tmp_path: Path, over: dict[str, str],
                                                       message: str) -> None:
    key, _ = key_pair(str(tmp_path), "gw")
    with pytest.raises(TargetsFileError) as err:
        parse_targets(targets_yaml(key, **over), "targets.yaml")
    assert message in str(err.value) and str(err.value).startswith("targets.yaml:")


# -- ssh keys in the users file --------------------------------------------------------------

def test_users_with_ssh_keys_only_and_invalid_key_lines(tmp_path: Path) -> None:
    _, public = key_pair(str(tmp_path), "u")
    users = parse_users(f"users:\n  - {{name: erin, ssh_keys: ['from=\"10.0.0.0/8\" {public}']}}\n")
    erin = users.lookup("erin")
    assert erin is not None and erin.scram_auth_info() is None
    assert not erin.verify_password("anything")
    with pytest.raises(UsersFileError, match=r"ssh_keys\[0\]: not an authorized_keys line"):
        parse_users("users:\n  - {name: erin, ssh_keys: ['ssh-ed25519 garbage']}\n")
    for option in ('command="/bin/true"', "no-pty", 'from="10.0.0.0/8",no-port-forwarding'):
        with pytest.raises(UsersFileError, match="only the from= option is honoured"):
            parse_users(f"users:\n  - {{name: erin, ssh_keys: ['{option} {public}']}}\n")
    with pytest.raises(UsersFileError, match=r"needs a password or verifiers .*, or ssh_keys"):
        parse_users("users:\n  - {name: erin}\n")


def test_ordinance_users_add_ssh_key(tmp_path: Path) -> None:
    _, public = key_pair(str(tmp_path), "k")
    users = tmp_path / "users.yaml"
    cmd = [sys.executable, "-m", "engine.cli", "users", "add-ssh-key", str(users),
           "--user", "alice", "--key", str(tmp_path / "k.pub"), "--group", "dev"]
    assert subprocess.run(cmd, capture_output=True, check=False).returncode == 0
    again = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "already has this key" in again.stderr
    alice = parse_users(users.read_text()).lookup("alice")
    assert alice is not None and alice.groups == ("dev",)
    assert alice.ssh_keys == (f"{public} k",)
    (tmp_path / "bad.pub").write_text("not a key\n")
    bad = subprocess.run([*cmd[:-4], "--key", str(tmp_path / "bad.pub")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "not an authorized_keys line" in bad.stderr


def test_login_names_pick_the_target() -> None:
    assert split_login("alice+payments-db1") == ("alice", "payments-db1")
    assert split_login("alice") == ("alice", None)
    assert split_login("alice+a+b") == ("alice", "a+b")  # no such target: refused


def _data_reply(request_id: int, data: bytes) -> bytes:
    body = bytes([FXP_DATA]) + request_id.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data
    return len(body).to_bytes(4, "big") + body


def test_sftp_data_replies_pass_the_card_number_detector() -> None:
    def mask(data: bytes) -> bytes:
        return mask_pans(data)[0]

    reply = masked_data_reply(_data_reply(7, b"card 4111 1111 1111 1111."), mask)
    assert reply == _data_reply(7, b"card **** **** **** 1111.")
    plain = _data_reply(8, b"nothing here")
    assert masked_data_reply(plain, mask) is plain
    other = status(9, 0, "4111 1111 1111 1111")  # not file data: the trail scrubs messages
    assert masked_data_reply(other, mask) is other
    with pytest.raises(SftpProtocolError):
        masked_data_reply(_data_reply(7, b"x")[:-3], mask)



@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=40) | st.just(b"x 4111111111111111 y"))
def test_any_reply_is_masked_or_refused_never_a_crash(head: bytes, data: bytes) -> None:
    def mask(chunk: bytes) -> bytes:
        return mask_pans(chunk)[0]

    assert masked_data_reply(_data_reply(1, data), mask) == _data_reply(1, mask(data))
    for packet in (head, bytes([0, 0, 0, len(head) + 1, FXP_DATA]) + head):
        with contextlib.suppress(SftpProtocolError):  # refused: never another exception
            assert isinstance(masked_data_reply(packet, mask), bytes)
