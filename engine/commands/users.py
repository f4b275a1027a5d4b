"""`ordinance users`: helpers for the static users file.

* `ordinance users hash-password` prints a SCRAM-SHA-256 verifier (PostgreSQL's format) for the
  `scram:` field; `--method mysql_native_password` / `caching_sha2_password` the MySQL proxy's
  verifiers for the fields of those names. The password is read from a terminal prompt, or one
  line of stdin with `--stdin`, never from the command line (it would land in shell history and
  `ps`).
* `ordinance users check FILE` validates a users file and lists its users and groups.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from engine.identity.users import (
    DEFAULT_ITERATIONS,
    NATIVE_KEY,
    SHA2_KEY,
    UsersFileError,
    format_verifier,
    load_users,
    mysql_native_verifier,
    mysql_sha2_verifier,
    scram_auth_info,
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
        form = ",".join(name for name, v in (("scram", user.verifier), (NATIVE_KEY, user.native),
                                             (SHA2_KEY, user.sha2)) if v is not None
                        ) or "password (plaintext)"
        print(f"{user.name}\t{form}\t{','.join(user.groups) or '-'}")
    print(f"{args.file}: {len(directory)} user(s) OK", file=sys.stderr)
    return 0
