"""Static users from a YAML file, with verifiers for the PostgreSQL and MySQL proxies.

Owns parsing and validating the users file, password checks, SCRAM auth info and the MySQL
verifiers. A user has either a plaintext `password` or one or more verifiers:

```yaml
users:
  - {name: alice, password: alice-secret, groups: [dev]}
  - {name: dana, scram: "SCRAM-SHA-256$4096:<salt b64>$<StoredKey b64>:<ServerKey b64>",
     mysql_native_password: "*<40 hex>", caching_sha2_password: "SHA2$<64 hex>",
     groups: [dba-leads]}
  - name: erin                     # SSH gateway logins: OpenSSH authorized_keys lines
    groups: [sre]
    ssh_keys: ['from="10.0.0.0/8" ssh-ed25519 AAAAC3Nza... erin@laptop']
```

`scram` is PostgreSQL's `pg_authid.rolpassword` verifier format (RFC 5803 layout), for the
PostgreSQL proxy. `mysql_native_password` is MySQL's own `authentication_string` of that plugin
(`*` and the hex of SHA1(SHA1(password))); `caching_sha2_password` is `SHA2$` and the hex of
SHA256(SHA256(password)), the value caching_sha2_password's fast path checks a scramble against
(MySQL's own sha256crypt string cannot serve the fast path). Prefer verifiers to `password`,
which keeps a plaintext secret on disk; `ordinance users hash-password [--method …]` prints one.
Passwords are SASLprep-normalised for SCRAM as PostgreSQL does (raw UTF-8 when SASLprep refuses
them); MySQL hashes the raw UTF-8. `ssh_keys` (the SSH gateway's public-key logins) are
authorized_keys lines checked with asyncssh's parser; of their options only `from=` is honoured
(a line with another restriction, `command=`, `no-pty`, `permitopen`, ..., is refused: the
gateway would ignore it). A user needs a password or verifiers (not both), or ssh keys, or
both (`ordinance users add-ssh-key` adds one). This module authenticates only; it does not
decide anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from scramp.core import ScramException, saslprep  # type: ignore[import-untyped]

from engine.identity import Subject

SCRAM_PREFIX = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16
_KEY_BYTES = hashlib.sha256().digest_size
# where an authorized_keys line's key begins (after its options), and its from="..." option
_KEY_START = re.compile(r"(?:^|\s)(?=(?:ssh-|ecdsa-|sk-)[\w@.-]+\s+AAAA)")
_FROM_OPTION = re.compile(r'from="[^"]*"')
NATIVE_KEY = "mysql_native_password"
SHA2_KEY = "caching_sha2_password"
SHA2_PREFIX = "SHA2$"
_VERIFIER_KEYS = ("scram", NATIVE_KEY, SHA2_KEY)
_USER_KEYS = frozenset({"name", "password", *_VERIFIER_KEYS, "groups", "ssh_keys"})

AuthInfo = tuple[bytes, bytes, bytes, int]
"""(salt, stored_key, server_key, iterations), as `scramp.ScramMechanism().make_auth_info`."""


class UsersFileError(ValueError):
    """The users file is malformed; the message starts with `file:line: users[i]:`."""


def _prepare(password: str) -> bytes:
    try:
        prepared: str = saslprep(password)
        return prepared.encode("utf-8")
    except ScramException:
        return password.encode("utf-8")


def scram_auth_info(password: str, *, iterations: int = DEFAULT_ITERATIONS,
                    salt: bytes | None = None) -> AuthInfo:
    """SCRAM-SHA-256 auth info for a password (a fresh random salt unless one is given)."""
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _prepare(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return salt, stored_key, server_key, iterations


def format_verifier(info: AuthInfo) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (PostgreSQL's format)."""
    salt, stored_key, server_key, iterations = info

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode("ascii")

    return f"{SCRAM_PREFIX}${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def mysql_native_verifier(password: str) -> str:
    """`*` + hex of SHA1(SHA1(password)): MySQL's mysql_native_password authentication_string."""
    stage2 = hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).hexdigest()
    return "*" + stage2.upper()


def mysql_sha2_verifier(password: str) -> str:
    """`SHA2$` + hex of SHA256(SHA256(password)), for caching_sha2_password."""
    inner = hashlib.sha256(password.encode("utf-8")).digest()
    return SHA2_PREFIX + hashlib.sha256(inner).hexdigest()


def _hex_verifier(text: str, prefix: str, size: int, key: str) -> bytes:
    body = text[len(prefix):] if text.startswith(prefix) else None
    try:
        value = bytes.fromhex(body) if body is not None and body.isascii() else None
    except ValueError:
        value = None
    if value is None or len(value) != size:
        raise ValueError(f"{key} verifier must be {prefix!r} followed by {size * 2} hex digits "
                         "(ordinance users hash-password --method " + key + ")")
    return value


def parse_mysql_native(text: str) -> bytes:
    """SHA1(SHA1(password)) from `*<40 hex>`; `ValueError` saying what is wrong."""
    return _hex_verifier(text, "*", 20, NATIVE_KEY)


def parse_mysql_sha2(text: str) -> bytes:
    """SHA256(SHA256(password)) from `SHA2$<64 hex>`; `ValueError` saying what is wrong."""
    return _hex_verifier(text, SHA2_PREFIX, 32, SHA2_KEY)


def parse_verifier(verifier: str) -> AuthInfo:
    """The auth info in a PostgreSQL SCRAM-SHA-256 verifier; `ValueError` saying what is wrong."""
    try:
        mechanism, rest = verifier.split("$", 1)
        params, keys = rest.split("$", 1)
        iterations_text, salt_b64 = params.split(":", 1)
        stored_b64, server_b64 = keys.split(":", 1)
    except ValueError:
        raise ValueError("scram verifier must look like "
                         "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>") from None
    if mechanism != SCRAM_PREFIX:
        raise ValueError(f"scram verifier mechanism is {mechanism!r}, expected {SCRAM_PREFIX}")
    if not iterations_text.isascii() or not iterations_text.isdigit() or int(
            iterations_text) < 1:
        raise ValueError(f"scram verifier iteration count {iterations_text!r} is not a "
                         "positive integer")
    try:
        salt, stored_key, server_key = (base64.b64decode(part, validate=True)
                                        for part in (salt_b64, stored_b64, server_b64))
    except binascii.Error as exc:
        raise ValueError(f"scram verifier has invalid base64: {exc}") from None
    if not salt:
        raise ValueError("scram verifier salt is empty")
    if len(stored_key) != _KEY_BYTES or len(server_key) != _KEY_BYTES:
        raise ValueError(f"scram verifier keys must be {_KEY_BYTES} bytes each")
    return salt, stored_key, server_key, int(iterations_text)


@dataclass(eq=False)
class StaticUser:
    """A user from the users file: a `password` or verifiers (`verifier` SCRAM, `native`
    SHA1(SHA1(pw)), `sha2` SHA256(SHA256(pw))), not both; or only `ssh_keys`; or either with
    `ssh_keys`."""

    name: str
    groups: tuple[str, ...] = ()
    password: str | None = field(default=None, repr=False)
    verifier: AuthInfo | None = field(default=None, repr=False)
    ssh_keys: tuple[str, ...] = ()
    native: bytes | None = field(default=None, repr=False)
    sha2: bytes | None = field(default=None, repr=False)
    _derived: AuthInfo | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        has_verifier = any(v is not None for v in (self.verifier, self.native, self.sha2))
        if self.password is not None and has_verifier:
            raise ValueError("a static user has a password or verifiers, not both")
        if self.password is None and not has_verifier and not self.ssh_keys:
            raise ValueError("a static user needs a password, verifiers or ssh keys")

    def scram_auth_info(self) -> AuthInfo | None:
        """(salt, stored_key, server_key, iterations) for scramp's server side; None for a
        user without a SCRAM secret (MySQL verifiers or ssh keys only: no SCRAM login).

        For a plaintext `password` it is derived once (random salt) and then kept, so repeated
        exchanges do not pay PBKDF2 again.
        """
        if self.password is None:
            return self.verifier
        with self._lock:
            if self._derived is None:
                self._derived = scram_auth_info(self.password)
            return self._derived

    def mysql_native(self) -> bytes | None:
        """SHA1(SHA1(password)) for mysql_native_password, or None."""
        if self.password is not None:
            return hashlib.sha1(hashlib.sha1(self.password.encode("utf-8")).digest()).digest()
        return self.native

    def mysql_sha2(self) -> bytes | None:
        """SHA256(SHA256(password)) for caching_sha2_password's fast path, or None."""
        if self.password is not None:
            inner = hashlib.sha256(self.password.encode("utf-8")).digest()
            return hashlib.sha256(inner).digest()
        return self.sha2

    def verify_password(self, password: str) -> bool:
        """Constant-time password check, against whichever secret the user has."""
        if self.password is not None:
            return hmac.compare_digest(password.encode("utf-8"), self.password.encode("utf-8"))
        if self.verifier is not None:
            salt, stored_key, _server_key, iterations = self.verifier
            _, candidate, _, _ = scram_auth_info(password, iterations=iterations, salt=salt)
            return hmac.compare_digest(candidate, stored_key)
        if self.sha2 is not None:
            inner = hashlib.sha256(password.encode("utf-8")).digest()
            return hmac.compare_digest(hashlib.sha256(inner).digest(), self.sha2)
        if self.native is not None:
            stage2 = hashlib.sha1(hashlib.sha1(password.encode("utf-8")).digest()).digest()
            return hmac.compare_digest(stage2, self.native)
        return False

    def subject(self) -> Subject:
        return Subject(id=self.name, groups=self.groups, claims={})


class UserDirectory:
    """The users of one file, looked up by name."""

    def __init__(self, users: list[StaticUser], source: str = "<memory>") -> None:
        self.source = source
        self._users = {u.name: u for u in users}
        if len(self._users) != len(users):
            raise ValueError("duplicate user names")

    def lookup(self, name: str) -> StaticUser | None:
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Any:
        return iter(self._users.values())


def ssh_key_problem(line: str) -> str | None:
    """Why `line` is not one authorized_keys entry (OpenSSH's format, options allowed)."""
    with warnings.catch_warnings():  # cryptography's DSA notice while asyncssh imports
        warnings.simplefilter("ignore")
        import asyncssh  # the SSH gateway's library; only needed when a file has ssh keys

    text = line.strip()
    if not text or text.startswith("#") or "\n" in text:
        return "expected one authorized_keys line"
    try:
        asyncssh.import_authorized_keys(text + "\n")
    except (ValueError, asyncssh.KeyImportError) as exc:
        return f"not an authorized_keys line: {exc}"
    options = _KEY_START.split(text, maxsplit=1)[0]
    other = _FROM_OPTION.sub("", options).strip(" ,")
    if other:
        return (f"only the from= option is honoured by the SSH gateway, not {other!r}: a "
                "restriction it would ignore is refused")
    return None


def _line_of(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def parse_users(text: str, source: str = "<string>") -> UserDirectory:
    """Parse a users document; `UsersFileError` names the file, line and entry at fault."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise UsersFileError(f"{where}: not valid YAML: {exc}") from None

    def fail(node: yaml.Node | None, what: str) -> UsersFileError:
        return UsersFileError(f"{source}:{_line_of(node)}: {what}")

    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        raise fail(root, "expected a mapping with a 'users' list")
    unknown = set(data) - {"users"}
    if unknown:
        raise fail(root, f"unknown top-level key(s): {', '.join(sorted(map(str, unknown)))}")
    entries = data.get("users")
    users_node = next((v for k, v in root.value if k.value == "users"), None)
    if not isinstance(entries, list) or not isinstance(users_node, yaml.SequenceNode):
        raise fail(users_node or root, "'users' must be a list")

    users: list[StaticUser] = []
    first_line: dict[str, int] = {}
    for i, (entry, node) in enumerate(zip(entries, users_node.value, strict=True)):
        where = f"users[{i}]"
        if not isinstance(entry, dict):
            raise fail(node, f"{where}: expected a mapping with name and password or verifiers")
        unknown = set(entry) - _USER_KEYS
        if unknown:
            raise fail(node, f"{where}: unknown key(s): {', '.join(sorted(map(str, unknown)))}"
                       f" (allowed: {', '.join(sorted(_USER_KEYS))})")
        name = entry.get("name")
        if name is None:
            raise fail(node, f"{where}: missing name")
        if not isinstance(name, str) or not name:
            raise fail(node, f"{where}: name must be a non-empty string")
        where = f"users[{i}] ({name})"
        if name in first_line:
            raise fail(node, f"{where}: duplicate name, first defined at line "
                             f"{first_line[name]}")
        first_line[name] = _line_of(node)
        password = entry.get("password")
        ssh_keys = entry.get("ssh_keys", [])
        if not isinstance(ssh_keys, list) or not all(isinstance(k, str) for k in ssh_keys):
            raise fail(node, f"{where}: ssh_keys must be a list of authorized_keys lines")
        for n, line in enumerate(ssh_keys):
            problem = ssh_key_problem(line)
            if problem:
                raise fail(node, f"{where}: ssh_keys[{n}]: {problem}")
        given = [key for key in _VERIFIER_KEYS if entry.get(key) is not None]
        if password is not None and given:
            raise fail(node, f"{where}: needs a password or verifiers "
                             f"({', '.join(_VERIFIER_KEYS)}), not both")
        if password is None and not given and not ssh_keys:
            raise fail(node, f"{where}: needs a password or verifiers "
                             f"({', '.join(_VERIFIER_KEYS)}), or ssh_keys")
        if password is not None and (not isinstance(password, str) or not password):
            raise fail(node, f"{where}: password must be a non-empty string")
        parsed: dict[str, Any] = {}
        for key, parse in (("scram", parse_verifier), (NATIVE_KEY, parse_mysql_native),
                           (SHA2_KEY, parse_mysql_sha2)):
            value = entry.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise fail(node, f"{where}: {key} must be a string")
            try:
                parsed[key] = parse(value)
            except ValueError as exc:
                raise fail(node, f"{where}: {exc}") from None
        groups = entry.get("groups", [])
        if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
            raise fail(node, f"{where}: groups must be a list of non-empty strings")
        users.append(StaticUser(name=name, groups=tuple(groups), password=password,
                                verifier=parsed.get("scram"), native=parsed.get(NATIVE_KEY),
                                sha2=parsed.get(SHA2_KEY),
                                ssh_keys=tuple(k.strip() for k in ssh_keys)))
    return UserDirectory(users, source)


def load_users(path: str | Path) -> UserDirectory:
    """Load and validate a users file (see the module docstring for its format)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{path}: cannot read users file: {exc}") from None
    return parse_users(text, str(path))
