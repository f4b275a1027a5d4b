"""`ordinance users`: helpers for the static users file.

* `ordinance users hash-password` prints a SCRAM-SHA-256 verifier (PostgreSQL's format) for the
  `scram:` field; `--method mysql_native_password` / `caching_sha2_password` the MySQL proxy's
  verifiers for the fields of those names. The password is read from a terminal prompt, or one
  line of stdin with `--stdin`, never from the command line (it would land in shell history and
  `ps`).
* `ordinance users check FILE` validates a users file and lists its users and groups.
* `ordinance users add-ssh-key FILE --user NAME --key PUBKEY` adds an authorized_keys line
  (a `.pub` file, or `-` for stdin) to a user's `ssh_keys` (the SSH gateway's logins),
  creating the user with `--group`s when absent. The file is rewritten from its parsed YAML:
  comments are not kept.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from engine.identity.users import (
    DEFAULT_ITERATIONS,
    NATIVE_KEY,
    SHA2_KEY,
    UsersFileError,
    format_verifier,
    load_users,
    mysql_native_verifier,
    mysql_sha2_verifier,
    parse_users,
    scram_auth_info,
    ssh_key_problem,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("users", help="static users file helpers",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    hash_password = actions.add_parser(
        "hash-password", help="print a SCRAM-SHA-256 verifier for a users file entry")
    hash_password.add_argument("--stdin", action="store_true",
                               help="read the password from the first line of stdin")
    hash_password.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                               help=f"PBKDF2 iterations (default {DEFAULT_ITERATIONS}, "
                                    "PostgreSQL's)")
    hash_password.add_argument("--method", choices=("scram", NATIVE_KEY, SHA2_KEY),
                               default="scram",
                               help="which verifier: scram (PostgreSQL proxy, default), "
                                    f"{NATIVE_KEY} or {SHA2_KEY} (MySQL proxy); the users "
                                    "file field has the same name")
    hash_password.set_defaults(func=hash_password_command)

    check = actions.add_parser("check", help="validate a users file")
    check.add_argument("file", help="path of the users YAML file")
    check.set_defaults(func=check_command)

    add_key = actions.add_parser("add-ssh-key", help="add an SSH public key to a user")
    add_key.add_argument("file", help="path of the users YAML file (created if absent)")
    add_key.add_argument("--user", required=True, help="the user's name")
    add_key.add_argument("--key", required=True, metavar="PUBKEY",
                         help="an OpenSSH public key file (authorized_keys line), - for stdin")
    add_key.add_argument("--group", action="append", default=[],
                         help="groups of a user this creates (repeatable)")
    add_key.set_defaults(func=add_ssh_key_command)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        print("ordinance users hash-password: passwords differ", file=sys.stderr)
        return None
    return first


def hash_password_command(args: argparse.Namespace) -> int:
    if args.iterations < DEFAULT_ITERATIONS:
        print(f"ordinance users hash-password: --iterations must be at least "
              f"{DEFAULT_ITERATIONS}", file=sys.stderr)
        return 2
    password = _read_password(args.stdin)
    if password is None:
        return 1
    if not password:
        print("ordinance users hash-password: empty password", file=sys.stderr)
        return 1
    if args.method == NATIVE_KEY:
        print(mysql_native_verifier(password))
    elif args.method == SHA2_KEY:
        print(mysql_sha2_verifier(password))
    else:
        print(format_verifier(scram_auth_info(password, iterations=args.iterations)))
    return 0


def check_command(args: argparse.Namespace) -> int:
    try:
        directory = load_users(args.file)
    except UsersFileError as exc:
        print(f"ordinance users check: {exc}", file=sys.stderr)
        return 1
    for user in directory:
        forms = [name for name, v in (("scram", user.verifier), (NATIVE_KEY, user.native),
                                      (SHA2_KEY, user.sha2)) if v is not None]
        if user.password is not None:
            forms.append("password (plaintext)")
        if user.ssh_keys:
            forms.append(f"{len(user.ssh_keys)} ssh key(s)")
        form = ", ".join(forms)
        print(f"{user.name}\t{form}\t{','.join(user.groups) or '-'}")
    print(f"{args.file}: {len(directory)} user(s) OK", file=sys.stderr)
    return 0


def add_ssh_key_command(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"ordinance users add-ssh-key: {message}", file=sys.stderr)
        return 1

    try:
        line = (sys.stdin.readline() if args.key == "-"
                else Path(args.key).read_text(encoding="utf-8")).strip()
    except (OSError, UnicodeDecodeError) as exc:
        return fail(f"cannot read {args.key}: {exc}")
    problem = ssh_key_problem(line)
    if problem:
        return fail(f"{args.key}: {problem}")
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else "users: []\n"
        parse_users(text, str(path))  # refuse to edit a file that is already wrong
    except (OSError, UnicodeDecodeError, UsersFileError) as exc:
        return fail(str(exc))
    data: dict[str, Any] = yaml.safe_load(text)
    entry = next((u for u in data["users"] if u.get("name") == args.user), None)
    if entry is None:
        entry = {"name": args.user, "groups": list(args.group)}
        data["users"].append(entry)
    keys = entry.setdefault("ssh_keys", [])
    if line in keys:
        print(f"{args.file}: {args.user} already has this key", file=sys.stderr)
        return 0
    keys.append(line)
    out = yaml.safe_dump(data, sort_keys=False, width=1000)
    parse_users(out, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(out)
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o600)
    os.replace(tmp, path)
    print(f"{args.file}: key added to {args.user}", file=sys.stderr)
    return 0
