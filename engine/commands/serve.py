"""`ordinance serve`: run the decision service (gRPC + OPA-compatible HTTP) on a policy dir.

Parses flags into an `engine.service.server.ServiceConfig` and runs one process or a
supervisor of `--workers N`. Envoy's ext_authz (`envoy.service.auth.v3.Authorization/Check`)
is served on the gRPC port too, and its HTTP-service mode under `/envoy` on the HTTP port
(`engine.commands.envoy` has the flags; `--envoy-query off` still mounts it, deciding with
Ordinance's own rules only). With `--audit URL` the gRPC port also serves
`ordinance.v1.ApprovalService` (`engine.service.approvals`) on the approvals store of that URL;
approvers authenticate with an OIDC ID token (`--oidc-*`) or a client certificate
(`--tls-client-ca`, groups from `--users FILE`). Prints one JSON line on stdout when serving
(`{"event": "serving", "grpc": "host:port", "http": "host:port", ...}`); logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """`4MiB`, `4m`, `4194304` -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4MiB, 512KiB, 1048576)")
    unit = match.group(2).lower() if match.group(2) else None
    value = int(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _log_mode(text: str) -> str:
    if text in ("durable", "async"):
        return text
    hint = " (the file is --decision-log-file FILE)" if "/" in text or "." in text else ""
    raise argparse.ArgumentTypeError(f"must be 'durable' or 'async', not {text!r}{hint}")


def add_statement_limit_argument(p: argparse.ArgumentParser) -> None:
    """`--max-statement-bytes SIZE` (serve, envoy and the PostgreSQL proxy)."""
    p.add_argument("--max-statement-bytes", type=parse_size, default=256 * 1024,
                   metavar="SIZE", help="a command text (SQL statement, shell line) over this "
                                        "is not parsed: it gets parse_error, which the PCI "
                                        "pack denies (default 256KiB)")


def add_audit_durability_argument(p: argparse.ArgumentParser) -> None:
    """`--audit-durability fsync|os` (serve, envoy and the proxies)."""
    from engine.audit.durability import DURABILITIES, OS_SYNC_DELAY

    p.add_argument("--audit-durability", choices=DURABILITIES, default="fsync",
                   help="'fsync' (default): a record is on disk before the result it belongs "
                        "to goes out, and survives a power loss; 'os': it is written to the "
                        "operating system first (it survives a kill -9 of this process, not a "
                        f"power loss or kernel crash) and synced within {OS_SYNC_DELAY * 1000:g} "
                        "ms, for less CPU and latency per record")


def add_decision_log_arguments(p: argparse.ArgumentParser) -> None:
    """`--decision-log durable|async`, `--decision-log-file FILE` and `--audit-durability`
    (serve and envoy)."""
    p.add_argument("--decision-log", type=_log_mode, default="durable", metavar="MODE",
                   help="'durable' (default): a decision is answered only once its record is "
                        "committed (group commit across concurrent callers); 'async': "
                        "records are written just after the answer, and a crash loses the "
                        "ones not yet written (up to a few milliseconds of traffic)")
    p.add_argument("--decision-log-file", metavar="FILE", type=Path,
                   help="JSON-lines decision log when there is no --audit "
                        "(default ./var/decisions.jsonl)")
    add_audit_durability_argument(p)


def add_http_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """`--http-max-connections`, `--http-header-timeout`, `--http-body-timeout`,
    `--http-idle-timeout` (see `engine.service.http_server.HttpLimits`)."""
    from engine.service.http_server import HttpLimits

    d = HttpLimits()
    parser.add_argument("--http-max-connections", type=int, default=d.max_connections,
                        metavar="N", help="open HTTP connections at most; more get 503 "
                                          "(default %(default)s)")
    parser.add_argument("--http-header-timeout", type=float, default=d.header_timeout,
                        metavar="SECONDS", help="a request head must arrive within this "
                                                "(default %(default)s)")
    parser.add_argument("--http-body-timeout", type=float, default=d.body_timeout,
                        metavar="SECONDS", help="a request body must arrive within this "
                                                "(default %(default)s)")
    parser.add_argument("--http-idle-timeout", type=float, default=d.idle_timeout,
                        metavar="SECONDS", help="idle keep-alive connections are closed after "
                                                "this (default %(default)s)")


def http_limits(args: argparse.Namespace) -> Any:
    """The `HttpLimits` of `add_http_limit_arguments`' flags (ValueError when not positive)."""
    from engine.service.http_server import HttpLimits

    values = (args.http_max_connections, args.http_header_timeout, args.http_body_timeout,
              args.http_idle_timeout)
    if any(v <= 0 for v in values):
        raise ValueError("--http-max-connections and the --http-*-timeout values must be "
                         "positive")
    return HttpLimits(max_connections=args.http_max_connections,
                      header_timeout=args.http_header_timeout,
                      body_timeout=args.http_body_timeout, idle_timeout=args.http_idle_timeout)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "serve", help="run the decision service (gRPC and OPA-compatible HTTP)",
        description="Serve decisions for the policies in DIR over gRPC "
                    "(ordinance.v1.DecisionService) and OPA's HTTP Data API, reloading the "
                    "policies when they change.")
    p.add_argument("--policies", required=True, metavar="DIR",
                   help="policy directory or bundle (.tar.gz)")
    p.add_argument("--grpc", default="127.0.0.1:9191", metavar="HOST:PORT",
                   help="gRPC listen address, 'off' to disable (default %(default)s)")
    p.add_argument("--http", default="127.0.0.1:8181", metavar="HOST:PORT",
                   help="HTTP listen address, 'off' to disable (default %(default)s)")
    p.add_argument("--audit", metavar="URL",
                   help="write the decision log to this audit store (sqlite:///…, "
                        "postgresql://…) instead of a file, and serve the approvals store "
                        "in the same database as ordinance.v1.ApprovalService")
    add_decision_log_arguments(p)
    add_statement_limit_argument(p)
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="server processes sharing the ports (SO_REUSEPORT)")
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="CA that signs client certificates (enables mutual TLS)")
    p.add_argument("--token-file", metavar="FILE", type=Path,
                   help="require 'Authorization: Bearer <token>' (re-read when it changes)")
    p.add_argument("--users", metavar="FILE", type=Path,
                   help="static users file: the groups of approvers identified by their "
                        "client certificate (mutual TLS) on the ApprovalService")
    p.add_argument("--insecure-listen", action="store_true",
                   help="allow a non-loopback address without TLS or token")
    p.add_argument("--max-message-bytes", type=parse_size, default=4 * 1024 * 1024,
                   metavar="SIZE", help="largest request accepted (default 4MiB)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often the policy directory is checked for changes")
    add_http_limit_arguments(p)
    p.add_argument("--reload-settle", type=float, default=1.0, metavar="SECONDS",
                   help="a changed plain policy directory (no .manifest) is loaded once it has "
                        "been quiet this long (default 1)")
    from engine.commands.envoy import add_envoy_arguments

    add_envoy_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.commands.envoy import envoy_options
    from engine.service.server import ServiceConfig, configure_logging, run_service
    from engine.service.tls import InsecureListenError, tls_config

    configure_logging(args.verbose)
    log = logging.getLogger("ordinance.serve")
    try:
        tls = tls_config(args.tls_cert, args.tls_key, args.tls_client_ca)
        extensions: list[Any] = [envoy_options(args, http_prefix="/envoy",
                                               http_max_body_bytes=args.max_message_bytes)]
        if args.audit:
            from engine.service.approvals import ApprovalServiceOptions

            approvals = ApprovalServiceOptions(
                audit_url=args.audit, oidc_jwks=args.oidc_jwks, oidc_issuer=args.oidc_issuer,
                oidc_audience=args.oidc_audience, users_file=args.users)
            approvals.check()
            extensions.append(approvals)
        elif args.users is not None:
            raise ValueError("--users is for the approval service, which needs --audit URL")
        config = ServiceConfig(
            policies=Path(args.policies), grpc_address=args.grpc, http_address=args.http,
            audit_url=args.audit, decision_log_path=args.decision_log_file,
            decision_log_mode=args.decision_log, audit_durability=args.audit_durability,
            workers=args.workers,
            tls=tls, token_file=args.token_file, insecure_listen=args.insecure_listen,
            max_message_bytes=args.max_message_bytes,
            max_statement_bytes=args.max_statement_bytes, reload_interval=args.reload_interval,
            reload_settle=args.reload_settle, http_limits=http_limits(args),
            extensions=tuple(extensions))
        if not config.addresses():
            raise ValueError("both --grpc and --http are off: nothing to serve")
        config.check_security()
    except (ValueError, InsecureListenError) as exc:
        print(f"ordinance serve: {exc}", file=sys.stderr)
        return 2
    try:
        if args.workers > 1:
            from engine.service.workers import run_workers

            return run_workers(config, args.workers, args.verbose)
        return run_service(config)
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    except RuntimeError as exc:  # grpc raises RuntimeError when it cannot bind
        log.error("cannot serve: %s", exc)
        return 1
