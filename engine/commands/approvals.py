"""`ordinance approvals list|show|approve|deny`: deciding review requests from a terminal.

Owns the command-line surface over `engine.approvals`, in two modes:

- Local (`--audit URL`): straight on the store. The approver is authenticated against the
  static users file (`--users`, `--as NAME`): the password comes from `--password-stdin`, the
  environment variable `ORDINANCE_PASSWORD`, or a prompt, and the groups come from the file.
- Remote (`--server HOST:PORT`): through a running service's `ordinance.v1.ApprovalService`
  (`engine.approval_client`). The service identifies the caller from an OIDC ID token
  (`--id-token FILE`) or a client certificate (`--tls-cert/--tls-key`, with `--tls-ca` for the
  server's CA); `--token-file` (the service token) may list and show only. `--as NAME` is then
  optional and makes the service refuse the verdict unless it identified the caller as NAME.

Both print the same output. Exit codes: 0 done, 1 refused or not found (the message says why),
2 the store, trail, users file or service cannot be used (or the caller was not
authenticated). It must not apply approval rules itself.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from engine.approvals import (
    STATUSES,
    ApprovalError,
    ApprovalRequest,
    ApprovalStoreError,
    open_approval_store,
)
from engine.audit import AuditError, open_audit_log

AUDIT_URL_ENV = "ORDINANCE_AUDIT_URL"
PASSWORD_ENV = "ORDINANCE_PASSWORD"


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "approvals", help="list, show, approve or deny review requests",
        description="Just-in-time approvals: review requests filed when a policy says "
                    "'review'. Every step is written to the audit trail.")
    actions = parser.add_subparsers(dest="approvals_action", metavar="ACTION", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = actions.add_parser(name, help=help_text,
                                                          description=help_text)
        sub.add_argument("--audit", metavar="URL", default=os.environ.get(AUDIT_URL_ENV),
                         help=f"audit trail URL (default ${AUDIT_URL_ENV}); needed without "
                              "--server")
        sub.add_argument("--store", metavar="URL",
                         help="approvals store URL (default: the audit trail's database)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        remote = sub.add_argument_group(
            "through a running service (ordinance serve --audit URL)")
        remote.add_argument("--server", metavar="HOST:PORT",
                            help="the service's gRPC address; the service authenticates you")
        remote.add_argument("--id-token", metavar="FILE",
                            help="file holding your OIDC ID token")
        remote.add_argument("--token-file", metavar="FILE",
                            help="file holding the service token (list and show only)")
        remote.add_argument("--tls-ca", metavar="PEM", help="CA of the server's certificate")
        remote.add_argument("--tls-cert", metavar="PEM",
                            help="your client certificate (mutual TLS)")
        remote.add_argument("--tls-key", metavar="PEM", help="your client certificate's key")
        sub.set_defaults(func=_run)
        return sub

    listing = add("list", "list requests, oldest first")
    listing.add_argument("--status", choices=STATUSES, help="only requests in this status")
    add("show", "show one request").add_argument("id", metavar="ID")
    for verdict in ("approve", "deny"):
        sub = add(verdict, f"{verdict} a pending request as an authenticated approver")
        sub.add_argument("id", metavar="ID")
        sub.add_argument("--as", dest="identity", metavar="IDENTITY",
                         help="your user name in the users file (with --server: the identity "
                              "the service must find in your credentials)")
        sub.add_argument("--users", metavar="FILE",
                         help="static users file (local mode)")
        sub.add_argument("--comment", default="", help="why (a ticket number, …)")
        sub.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of stdin")


def _run(args: argparse.Namespace) -> int:
    try:
        if args.server:
            return _run_remote(args)
        remote_only = [flag for flag, value in (
            ("--id-token", args.id_token), ("--token-file", args.token_file),
            ("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key)) if value]
        if remote_only:
            raise _Fail(2, f"{', '.join(remote_only)}: only with --server HOST:PORT")
        if not args.audit:
            raise _Fail(2, f"give --audit URL (or ${AUDIT_URL_ENV}), or --server HOST:PORT")
        if args.approvals_action in ("approve", "deny") and not (args.identity and args.users):
            raise _Fail(2, "--as IDENTITY and --users FILE authenticate you on the store "
                           "(or use --server HOST:PORT with your credentials)")
        identity = _authenticate(args) if args.approvals_action in ("approve", "deny") else None
        try:
            audit = open_audit_log(args.audit, create=False)
        except AuditError as exc:
            raise _Fail(2, str(exc)) from exc
        with audit:
            try:
                store = open_approval_store(args.store or args.audit, audit=audit)
            except ApprovalStoreError as exc:
                raise _Fail(2, str(exc)) from exc
            with store:
                return _act(args, store, identity)
    except _Fail as fail:
        print(f"ordinance approvals: error: {fail}", file=sys.stderr)
        return fail.code


def _run_remote(args: argparse.Namespace) -> int:
    from engine.approval_client import ApprovalClient

    if getattr(args, "users", None):
        raise _Fail(2, "--users is for local use; with --server the service authenticates "
                       "you (--id-token, or --tls-cert/--tls-key)")
    if args.store:
        raise _Fail(2, "--store is for local use; the service has its own store")
    try:
        client = ApprovalClient.from_files(
            args.server, id_token_file=args.id_token, token_file=args.token_file,
            tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except ValueError as exc:
        raise _Fail(2, str(exc)) from exc
    except ApprovalStoreError as exc:
        raise _Fail(2, str(exc)) from exc
    with client:
        return _act(args, client, None)


def _act(args: argparse.Namespace, store: Any, identity: Any) -> int:
    try:
        if args.approvals_action == "list":
            requests = store.list(args.status)
            if args.json:
                now = datetime.now(UTC)
                print(json.dumps([r.to_dict(now) for r in requests], indent=2))
            else:
                _print_table(requests)
            return 0
        if args.approvals_action == "show":
            _print_request(store.get(args.id), as_json=args.json)
            return 0
        decide = store.approve if args.approvals_action == "approve" else store.deny
        if identity is None:  # remote: the service identifies the caller
            decided = decide(args.id, args.comment, expected_identity=args.identity or "")
        else:
            decided = decide(args.id, identity, args.comment)
        _print_request(decided, as_json=args.json)
        return 0
    except ApprovalStoreError as exc:
        raise _Fail(2, str(exc)) from exc
    except ApprovalError as exc:
        raise _Fail(1, str(exc)) from exc
    except AuditError as exc:
        raise _Fail(2, f"audit trail: {exc}") from exc


def _authenticate(args: argparse.Namespace) -> Any:
    """The approver as an identity with `id` and `groups`, after a password check."""
    from engine.identity.users import load_users

    try:
        users = load_users(args.users)
    except (OSError, ValueError) as exc:
        raise _Fail(2, str(exc)) from exc
    user = users.lookup(args.identity)
    if user is None:
        raise _Fail(2, f"no user {args.identity!r} in {args.users}")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.identity}: ")
    else:
        raise _Fail(2, f"no password: use --password-stdin, ${PASSWORD_ENV} or a terminal")
    if not user.verify_password(password):
        raise _Fail(2, f"authentication failed for {args.identity!r}")
    return user.subject()


def _print_table(requests: list[ApprovalRequest]) -> None:
    now = datetime.now(UTC)
    print(f"{'ID':<26}  {'STATUS':<9}  {'REQUESTER':<24}  {'RESOURCE':<16}  COMMAND")
    for r in requests:
        command = " ".join(r.command_preview.split())
        print(f"{r.id:<26}  {r.status_at(now):<9}  {r.requester_id:<24}  "
              f"{r.resource.get('name', '-')!s:<16}  "
              f"{command if len(command) <= 60 else command[:57] + '...'}")


def _print_request(req: ApprovalRequest, *, as_json: bool) -> None:
    info = req.to_dict(datetime.now(UTC))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if value is None or value == [] or value == {}:
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key + ':':<18} {json.dumps(shown) if isinstance(shown, dict) else shown}")
