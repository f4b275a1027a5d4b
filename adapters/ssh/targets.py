"""The targets file: the hosts the gateway reaches, with its own credential for each.

```yaml
targets:
  - name: payments-db1            # what users type: ssh -p 2222 alice+payments-db1@gateway
    host: 10.0.4.17
    port: 22                      # default 22
    user: deploy                  # the account the gateway logs in as
    key: /etc/ordinance/ssh/payments-db1          # the gateway's private key (OpenSSH/PEM)
    certificate: /etc/ordinance/ssh/payments-db1-cert.pub   # optional: an SSH certificate
    known_hosts:                  # pinned: a host key that matches none of these is refused
      - ssh-ed25519 AAAAC3Nza...  # a bare key is pinned for host:port
      - "@cert-authority *.corp ssh-ed25519 AAAA..."   # or any known_hosts line
    labels: {env: prod, team: payments}      # input.resource.labels
```

Owns parsing and validating the file (`TargetsFileError` with `file:line`), loading the keys
and building each target's pinned `SSHKnownHosts` (asyncssh's known_hosts matching: patterns,
`@cert-authority`, `@revoked`). Users never see a target's credential; this module does not
connect anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import yaml

_TARGET_KEYS = frozenset({"name", "host", "port", "user", "key", "certificate",
                          "known_hosts", "labels"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BARE_KEY = re.compile(r"^(ssh-|ecdsa-|sk-|rsa-sha2-)")


class TargetsFileError(ValueError):
    """The targets file is malformed; the message starts with `file:line: targets[i]:`."""


@dataclass(frozen=True, eq=False)
class Target:
    name: str
    host: str
    port: int
    user: str
    key: asyncssh.SSHKey = field(repr=False)
    certificate: asyncssh.SSHCertificate | None = field(repr=False)
    known_hosts: asyncssh.SSHKnownHosts = field(repr=False)
    labels: Mapping[str, str] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        """`input.resource` of every command on this target."""
        return {"type": "ssh", "name": self.name, "labels": dict(self.labels),
                "host": self.host, "port": self.port, "user": self.user}

    def client_keys(self) -> list[Any]:
        return [(self.key, self.certificate) if self.certificate is not None else self.key]


class Targets:
    """The targets of one file, by name."""

    def __init__(self, targets: list[Target], source: str = "<memory>") -> None:
        self.source = source
        self._by_name = {t.name: t for t in targets}

    def get(self, name: str) -> Target | None:
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Target]:
        return iter(self._by_name.values())


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _pinned(entries: Any, host: str, port: int, fail: Any) -> asyncssh.SSHKnownHosts:
    if entries is None:
        entries = []
    if isinstance(entries, str):
        entries = entries.splitlines()
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise fail("known_hosts must be a list of known_hosts lines or public keys")
    pattern = host if port == 22 else f"[{host}]:{port}"
    lines = []
    for entry in (e.strip() for e in entries):
        if not entry or entry.startswith("#"):
            continue
        lines.append(f"{pattern} {entry}" if _BARE_KEY.match(entry) else entry)
    if not lines:
        raise fail("known_hosts is required: the target's host key must be pinned (e.g. the "
                   "output of `ssh-keyscan -p PORT HOST`)")
    try:
        known = asyncssh.import_known_hosts("\n".join(lines) + "\n")
    except (ValueError, asyncssh.KeyImportError) as exc:
        raise fail(f"known_hosts: {exc}") from None
    matched = known.match(host, "", port)
    if not (matched[0] or matched[1] or matched[3] or matched[5]):
        raise fail(f"known_hosts has no entry that matches {pattern}")
    return known


def _read_key(path: Any, base: Path, what: str, fail: Any, certificate: bool = False) -> Any:
    if not isinstance(path, str) or not path:
        raise fail(f"{what} must be a file path")
    full = (base / path) if not Path(path).is_absolute() else Path(path)
    try:
        if certificate:
            return asyncssh.read_certificate(str(full))
        return asyncssh.read_private_key(str(full))
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise fail(f"{what} {full}: {exc}") from None


def parse_targets(text: str, source: str = "<string>", base: Path | None = None) -> Targets:
    """Parse a targets document; key paths are relative to `base` (the file's directory)."""
    base = base or Path.cwd()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise TargetsFileError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"targets"} or not isinstance(
            root, yaml.MappingNode):
        raise TargetsFileError(f"{source}:{_line(root)}: expected a mapping with only a "
                               "'targets' list")
    entries = data["targets"]
    node_list = next((v for k, v in root.value if k.value == "targets"), None)
    if not isinstance(entries, list) or not isinstance(node_list, yaml.SequenceNode):
        raise TargetsFileError(f"{source}:{_line(node_list)}: 'targets' must be a list")
    targets: list[Target] = []
    seen: set[str] = set()
    for i, (entry, node) in enumerate(zip(entries, node_list.value, strict=True)):
        where = f"targets[{i}]"

        def fail(what: str, node: yaml.Node = node, where: str = where) -> TargetsFileError:
            return TargetsFileError(f"{source}:{_line(node)}: {where}: {what}")

        if not isinstance(entry, dict):
            raise fail("expected a mapping")
        unknown = set(entry) - _TARGET_KEYS
        if unknown:
            raise fail(f"unknown key(s): {', '.join(sorted(map(str, unknown)))} (allowed: "
                       f"{', '.join(sorted(_TARGET_KEYS))})")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise fail("name must be letters, digits, '.', '_' or '-' (no '+', '@')")
        where = f"targets[{i}] ({name})"
        if name in seen:
            raise fail("duplicate name")
        seen.add(name)
        host, user = entry.get("host"), entry.get("user")
        if not isinstance(host, str) or not host:
            raise fail("host must be a non-empty string")
        if not isinstance(user, str) or not user:
            raise fail("user must be a non-empty string")
        port = entry.get("port", 22)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise fail("port must be an integer from 1 to 65535")
        key = _read_key(entry.get("key"), base, "key", fail)
        cert = (_read_key(entry["certificate"], base, "certificate", fail, certificate=True)
                if entry.get("certificate") is not None else None)
        labels = entry.get("labels", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str | int | bool) for k, v in
                labels.items()):
            raise fail("labels must be a mapping of names to strings")
        known = _pinned(entry.get("known_hosts"), host, port, fail)
        targets.append(Target(name, host, port, user, key, cert, known,
                              {k: str(v).lower() if isinstance(v, bool) else str(v)
                               for k, v in labels.items()}))
    return Targets(targets, source)


def load_targets(path: str | Path) -> Targets:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetsFileError(f"{path}: cannot read targets file: {exc}") from None
    return parse_targets(text, str(path), path.parent)
