"""`ordinance proxy ssh`: the SSH gateway.

Users log in as USER+TARGET (`ssh -p 2222 alice+payments-db1@gateway`) with a public key listed
for them in `--users` (`ssh_keys`, `ordinance users add-ssh-key`), or with an OIDC ID token
pasted at the keyboard-interactive prompt (`--oidc-*`). The gateway logs in to the target
of `--targets` with its own key or certificate, checking the target's host key against the
entries pinned there. Every exec request (scp, rsync and git included), interactive shell,
SFTP request and port forwarding request is decided by the policies (in-process with
`--policies`, or `ordinance serve` with `--decision-service`), then refused (exit 126),
held for approval, or run; output passes the card-number detector; everything is recorded in
`--audit` before its outcome reaches the client, interactive sessions as asciicast files in
`--recordings`. docs/ssh-gateway.md has the details.

Wiring only (the gateway is `adapters.ssh`). Prints one JSON line on stdout when listening
(`{"event": "listening", "proxy": "ssh", "listen": "host:port", ...}`); logs go to stderr;
SIGTERM or SIGINT closes every session (each gets its `session.end` record) and exits 0. Exit 2
for a bad configuration, 1 when it cannot listen.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ordinance.proxy.ssh")


def register_ssh(kinds: Any) -> None:
    from engine.commands.proxy import add_decision_arguments

    p = kinds.add_parser("ssh", help="the SSH gateway", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:2222", metavar="HOST:PORT",
                   help="where clients connect (default %(default)s; port 0 picks one)")
    p.add_argument("--host-key", required=True, metavar="FILE", action="append",
                   help="the gateway's own host private key (repeatable; make one with "
                        "ssh-keygen -t ed25519 -N '' -f FILE)")
    p.add_argument("--targets", required=True, metavar="FILE",
                   help="the targets file (docs/ssh-gateway.md)")
    p.add_argument("--recordings", metavar="DIR", type=Path,
                   help="where interactive sessions are recorded (asciicast v2); without "
                        "it interactive shells are refused")
    add_decision_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands.proxy import run_proxy

    return run_proxy(args, "ssh", _configure, _serve)


def _configure(args: argparse.Namespace, resources: list[Any]
               ) -> tuple[Any, Any, dict[str, Any]]:
    import asyncssh

    from adapters.ssh.enforcer import enforcers
    from adapters.ssh.gateway import GatewayConfig
    from adapters.ssh.targets import TargetsFileError, load_targets
    from engine.audit.stores import parse_store_url
    from engine.commands.proxy import _decision_client, _identity, _Setup, _trail
    from engine.service.server import split_host_port

    try:
        host, port = split_host_port(args.listen)
    except ValueError as exc:
        raise _Setup(str(exc)) from None
    host_keys = []
    for path in args.host_key:
        try:
            host_keys.append(asyncssh.read_private_key(path))
        except (OSError, ValueError, asyncssh.KeyImportError) as exc:
            raise _Setup(f"--host-key {path}: {exc} (make one with ssh-keygen -t ed25519 "
                         f"-N '' -f {path})") from None
    try:
        targets = load_targets(args.targets)
    except TargetsFileError as exc:
        raise _Setup(f"targets file: {exc}") from None
    if not len(targets):
        raise _Setup(f"targets file {args.targets} names no target")
    directory, verify = _identity(args)
    audit, recorder, gate = _trail(args, resources)
    client, decisions = _decision_client(args, audit, resources)
    config = GatewayConfig(targets=targets, host_keys=host_keys, host=host,
                           enforcers=enforcers(client, targets, recorder=recorder,
                                               approvals=gate),
                           port=port, directory=directory, verify_token=verify,
                           recordings=args.recordings)
    ready = {
        "event": "listening", "proxy": "ssh", "listen": None,
        "targets": [t.name for t in targets],
        "host_keys": [k.get_fingerprint() for k in host_keys],
        "decisions": decisions, "audit": parse_store_url(args.audit).redacted(),
        "auth": [m for m, on in (("publickey", directory is not None),
                                 ("oidc-token", verify is not None)) if on],
        "recordings": str(args.recordings) if args.recordings else None,
        "approval_timeout_s": args.approval_timeout,
    }
    return config, client, ready


async def _serve(config: Any, client: Any, ready: dict[str, Any]) -> int:
    from adapters.ssh.gateway import SshGateway
    from engine.commands.proxy import serve_until_signalled

    return await serve_until_signalled(SshGateway(config), config.host, client, ready)
