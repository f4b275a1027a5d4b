"""SFTP requests read from the client's byte stream, for deciding each one (sans-IO).

The gateway relays the SFTP subsystem between the client and the target's SFTP server packet
by packet (draft-ietf-secsh-filexfer-02, version 3, what OpenSSH speaks, with its
`@openssh.com` extensions). `SftpFramer.feed` cuts the client's bytes into whole packets;
`operation(packet)` says what a request does to which path, as the policies see it in
`input.command.sftp` (`{op, path, mode?, target?, flags?}`), or that it acts only on a handle
an earlier decided `open`/`opendir` returned (not decided again), or that the gateway does
not know it (refused: an extension it cannot read could do anything). `status(id, code,
message)` is the reply to a refused request. Field coding is asyncssh's (`asyncssh.packet`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from asyncssh.packet import Byte, PacketDecodeError, SSHPacket, String, UInt32

MAX_PACKET = 1024 * 1024  # OpenSSH sends at most 256 KiB; a longer length is an attack or junk

FXP_INIT, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE, FXP_LSTAT, FXP_FSTAT = 1, 3, 4, 5, 6, 7, 8
FXP_SETSTAT, FXP_FSETSTAT, FXP_OPENDIR, FXP_READDIR, FXP_REMOVE, FXP_MKDIR = 9, 10, 11, 12, 13, 14
FXP_RMDIR, FXP_REALPATH, FXP_STAT, FXP_RENAME, FXP_READLINK, FXP_SYMLINK = 15, 16, 17, 18, 19, 20
FXP_STATUS, FXP_EXTENDED = 101, 200
FX_PERMISSION_DENIED, FX_OP_UNSUPPORTED = 3, 8

FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20
_FLAG_NAMES = ((FXF_READ, "read"), (FXF_WRITE, "write"), (FXF_APPEND, "append"),
               (FXF_CREAT, "create"), (FXF_TRUNC, "truncate"), (FXF_EXCL, "exclusive"))

# Requests on a handle (the open/opendir that made it was decided) or on nothing
_HANDLE_OPS = frozenset({FXP_CLOSE, FXP_READ, FXP_WRITE, FXP_FSTAT, FXP_FSETSTAT,
                         FXP_READDIR})
_PATH_OPS = {FXP_LSTAT: "lstat", FXP_STAT: "stat", FXP_REALPATH: "realpath",
             FXP_READLINK: "readlink", FXP_OPENDIR: "opendir", FXP_REMOVE: "remove",
             FXP_MKDIR: "mkdir", FXP_RMDIR: "rmdir", FXP_SETSTAT: "setstat"}
_HANDLE_EXTENSIONS = frozenset({b"fstatvfs@openssh.com", b"fsync@openssh.com",
                                b"limits@openssh.com", b"copy-data",
                                b"users-groups-by-id@openssh.com"})
_PATH_EXTENSIONS = {b"statvfs@openssh.com": "stat", b"expand-path@openssh.com": "realpath",
                    b"lsetstat@openssh.com": "setstat", b"home-directory": "realpath"}
_TWO_PATH_EXTENSIONS = {b"posix-rename@openssh.com": "rename",
                        b"hardlink@openssh.com": "link"}


class SftpProtocolError(ValueError):
    """The client's SFTP stream cannot be read (the gateway closes the channel)."""


class SftpFramer:
    """Client bytes -> whole SFTP packets (each with its 4-byte length)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        packets: list[bytes] = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:4], "big")
            if length < 1 or length > MAX_PACKET:
                raise SftpProtocolError(f"SFTP packet length {length} is out of bounds")
            if len(self._buffer) < 4 + length:
                break
            packets.append(bytes(self._buffer[:4 + length]))
            del self._buffer[:4 + length]
        return packets


@dataclass(frozen=True)
class Operation:
    """What one request does; `facts` is None for a handle request (not decided)."""

    request_id: int | None
    facts: dict[str, Any] | None = None
    unsupported: str | None = None  # why the gateway refuses it unread
    extra: dict[str, Any] = field(default_factory=dict)


def _path(raw: bytes) -> str:
    text = raw.decode("utf-8", "surrogateescape")
    return posixpath.normpath(text) if text else "."


def _facts(op: str, raw: bytes, **more: Any) -> dict[str, Any]:
    path = _path(raw)
    return {"op": op, "path": path, "name": posixpath.basename(path),
            "raw_path": raw.decode("utf-8", "replace"), **more}


def operation(packet: bytes) -> Operation:
    """What `packet` (one whole packet from `SftpFramer`) asks; `SftpProtocolError` when it
    cannot be read."""
    try:
        reader = SSHPacket(packet[4:])
        kind = reader.get_byte()
        if kind == FXP_INIT:
            return Operation(None)
        request_id = reader.get_uint32()
        if kind in _HANDLE_OPS:
            return Operation(request_id)
        if kind == FXP_OPEN:
            raw = reader.get_string()
            flags = reader.get_uint32()
            names = [name for bit, name in _FLAG_NAMES if flags & bit]
            writes = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC)
            mode = ("readwrite" if flags & FXF_READ and writes else "write" if writes
                    else "read")
            return Operation(request_id, _facts("open", raw, mode=mode, flags=names))
        if kind in _PATH_OPS:
            return Operation(request_id, _facts(_PATH_OPS[kind], reader.get_string()))
        if kind == FXP_RENAME:
            old, new = reader.get_string(), reader.get_string()
            return Operation(request_id, _facts("rename", old, target=_path(new)))
        if kind == FXP_SYMLINK:  # OpenSSH sends (target, link): the reverse of the draft
            target, link = reader.get_string(), reader.get_string()
            return Operation(request_id, _facts("symlink", link, target=_path(target)))
        if kind == FXP_EXTENDED:
            name = reader.get_string()
            if name in _HANDLE_EXTENSIONS:
                return Operation(request_id)
            if name in _PATH_EXTENSIONS:
                path = reader.get_string() if reader.get_remaining_payload() else b""
                return Operation(request_id, _facts(_PATH_EXTENSIONS[name], path))
            if name in _TWO_PATH_EXTENSIONS:
                old, new = reader.get_string(), reader.get_string()
                return Operation(request_id, _facts(_TWO_PATH_EXTENSIONS[name], old,
                                                    target=_path(new)))
            return Operation(request_id, unsupported=(
                f"SFTP extension {name.decode('utf-8', 'replace')!r} is not supported by "
                "the gateway"))
        return Operation(request_id, unsupported=f"SFTP request type {kind} is not supported "
                                                 "by the gateway")
    except PacketDecodeError as exc:
        raise SftpProtocolError(f"malformed SFTP request: {exc}") from None


def status(request_id: int, code: int, message: str) -> bytes:
    """An SSH_FXP_STATUS reply."""
    body = (Byte(FXP_STATUS) + UInt32(request_id) + UInt32(code) + String(message)
            + String("en"))
    return UInt32(len(body)) + body
