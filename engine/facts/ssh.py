"""Facts of SSH requests that carry no command line: an interactive shell, an SFTP operation,
a forwarding. (An exec request's command line gets the shell facts.)

The input document's `command` for protocol `ssh` (the gateway builds it; docs/ssh-gateway.md):

- `{request: "exec", raw: "<command line>"}`: the shell facts (`engine.facts.shell`);
- `{request: "shell", pty: {term, width, height}}`: an interactive shell (`interactive: true`);
- `{request: "sftp", sftp: {op, path, mode, target}}`: one SFTP operation; `op` is `open`,
  `opendir`, `remove`, `rename`, `mkdir`, `rmdir`, `stat`, `setstat`, `readlink`, `symlink`,
  `realpath`; `mode` `read`, `write` or `readwrite` for `open`; `target` for `rename`/`symlink`;
- `{request: "forward", forward: {kind, host, port}}`: `kind` `local`, `remote`, `agent`, `x11`.

`paths` holds the SFTP paths normalised (`/etc/../etc/shadow` -> `/etc/shadow`), so one policy
reads `paths` for an exec's words and an SFTP operation alike. A malformed request is a
`parse_error`.
"""

from __future__ import annotations

from typing import Any

from engine.facts.shell import no_shell_facts
from engine.facts.shell_words import normalise_path

REQUESTS = frozenset({"exec", "shell", "sftp", "forward", "subsystem"})
"""`exec` carries a command line (the shell facts); the others get their facts here."""
SFTP_OPS = frozenset({"open", "opendir", "remove", "rename", "mkdir", "rmdir", "stat", "lstat",
                      "fstat", "setstat", "readlink", "symlink", "link", "realpath", "extended"})
SFTP_MODES = frozenset({"read", "write", "readwrite"})
FORWARD_KINDS = frozenset({"local", "remote", "agent", "x11"})


def _base(parse_error: str | None) -> dict[str, Any]:
    return no_shell_facts(parse_error)


def ssh_request_facts(command: dict[str, Any]) -> dict[str, Any]:
    """Facts of a non-exec SSH request (`command.request` is not `exec`)."""
    request = command.get("request")
    if request not in REQUESTS or request == "exec":
        return _base(f"command.request must be one of {sorted(REQUESTS)}")
    facts = _base(None)
    if request == "shell":
        facts["interactive"] = True
    elif request == "sftp":
        sftp = command.get("sftp")
        if not isinstance(sftp, dict):
            return _base("command.sftp must be an object")
        op, path, mode = sftp.get("op"), sftp.get("path"), sftp.get("mode")
        if op not in SFTP_OPS:
            return _base(f"command.sftp.op must be one of {sorted(SFTP_OPS)}")
        if not isinstance(path, str) or "\0" in path:
            return _base("command.sftp.path must be a string without NUL")
        if op == "open" and mode not in SFTP_MODES:
            return _base(f"command.sftp.mode must be one of {sorted(SFTP_MODES)}")
        paths = [normalise_path(path)]
        target = sftp.get("target")
        if target is not None:
            if not isinstance(target, str) or "\0" in target:
                return _base("command.sftp.target must be a string without NUL")
            paths.append(normalise_path(target))
        facts["paths"] = paths
    elif request == "forward":
        forward = command.get("forward")
        if not isinstance(forward, dict) or forward.get("kind") not in FORWARD_KINDS:
            return _base(f"command.forward.kind must be one of {sorted(FORWARD_KINDS)}")
    return facts
