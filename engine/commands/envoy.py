"""`ordinance envoy`: the Envoy ext_authz sidecar (a drop-in for opa-envoy-plugin).

Serves `envoy.service.auth.v3.Authorization/Check` on `--grpc` (with gRPC health, reflection
and the DecisionService alongside) and, with `--http`, the ext_authz HTTP-service mode on a
port of its own. It is one decision-service process (`engine.service.server.Service`) without
the OPA Data API: the same live reload, decision log, TLS and token settings as
`ordinance serve`. Prints one JSON line on stdout when serving; logs go to stderr.

`add_envoy_arguments` / `envoy_options` are shared with `ordinance serve`, which mounts the
same service on its own gRPC port (and the HTTP-service mode under `/envoy` on its HTTP API).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from engine.commands.serve import (
    add_decision_log_arguments,
    add_http_limit_arguments,
    add_statement_limit_argument,
    http_limits,
    parse_size,
)

OFF = ("", "off", "none")


def add_envoy_arguments(p: argparse.ArgumentParser) -> None:
    """The ext_authz flags common to `ordinance envoy` and `ordinance serve`."""
    p.add_argument("--envoy-query", default="data.envoy.authz.allow", metavar="PATH",
                   help="decision queried for each Check, as opa-envoy-plugin's `path` "
                        "(default %(default)s); when it is undefined Ordinance's own "
                        "decision applies; 'off' always uses Ordinance's decision")
    p.add_argument("--envoy-failure-mode-allow", action="store_true",
                   help="let a request through when its evaluation fails (default: deny "
                        "with 500)")
    p.add_argument("--envoy-max-body", type=parse_size, default=1 << 20, metavar="SIZE",
                   help="request bodies longer than this are not parsed for policies "
                        "(truncated_body; default 1MiB)")
    p.add_argument("--oidc-jwks", metavar="FILE|URL",
                   help="verify 'Authorization: Bearer' ID tokens against this JWKS; the "
                        "token's identity becomes input.subject")
    p.add_argument("--oidc-issuer", metavar="ISS", help="expected `iss` of ID tokens")
    p.add_argument("--oidc-audience", metavar="AUD", help="expected `aud` of ID tokens")
    p.add_argument("--oidc-require", action="store_true",
                   help="answer 401 to a request without a valid bearer token")


def envoy_options(args: argparse.Namespace, **extra: Any) -> Any:
    """`EnvoyOptions` from parsed flags (ValueError when they do not fit together)."""
    from adapters.envoy.service import EnvoyOptions

    query = args.envoy_query
    options = EnvoyOptions(
        query=None if query is None or query.strip().lower() in OFF else query,
        failure_mode_allow=args.envoy_failure_mode_allow, oidc_jwks=args.oidc_jwks,
        oidc_issuer=args.oidc_issuer, oidc_audience=args.oidc_audience,
        require_subject=args.oidc_require, approvals_url=args.audit,
        max_body=args.envoy_max_body, **extra)
    options.check()
    return options


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "envoy", help="run the Envoy ext_authz sidecar (gRPC, optional HTTP service mode)",
        description="Answer Envoy's ext_authz checks for the policies in DIR, as "
                    "opa-envoy-plugin does (same input, same result shapes, same default "
                    "decision path), reloading the policies when they change.")
    p.add_argument("--policies", required=True, metavar="DIR",
                   help="policy directory or bundle (.tar.gz)")
    p.add_argument("--grpc", default="127.0.0.1:9191", metavar="HOST:PORT",
                   help="gRPC listen address for Authorization/Check (default %(default)s)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="listen address for the ext_authz HTTP service mode (default off)")
    add_envoy_arguments(p)
    p.add_argument("--audit", metavar="URL",
                   help="audit store (sqlite:///…, postgresql://…) for the decision log and "
                        "the approval requests of `review` decisions")
    add_decision_log_arguments(p)
    add_statement_limit_argument(p)
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--tls-client-ca", metavar="PEM",
                   help="CA that signs client certificates (enables mutual TLS)")
    p.add_argument("--token-file", metavar="FILE", type=Path,
                   help="require the service token: gRPC 'authorization: Bearer <token>' "
                        "metadata, HTTP 'x-ordinance-authorization: Bearer <token>'")
    p.add_argument("--insecure-listen", action="store_true",
                   help="allow a non-loopback address without TLS or token")
    p.add_argument("--max-message-bytes", type=parse_size, default=4 * 1024 * 1024,
                   metavar="SIZE", help="largest CheckRequest (gRPC) or forwarded body "
                                        "(HTTP) accepted (default 4MiB)")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often the policy directory is checked for changes")
    add_http_limit_arguments(p)
    p.add_argument("--reload-settle", type=float, default=1.0, metavar="SECONDS",
                   help="a changed plain policy directory (no .manifest) is loaded once it has "
                        "been quiet this long (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.service.server import (
        ServiceConfig,
        configure_logging,
        run_service,
        split_host_port,
    )
    from engine.service.tls import InsecureListenError, check_listen_address, tls_config

    configure_logging(args.verbose)
    log = logging.getLogger("ordinance.envoy")
    try:
        tls = tls_config(args.tls_cert, args.tls_key, args.tls_client_ca)
        http = None if args.http is None or args.http.lower() in OFF else args.http
        grpc = None if args.grpc.lower() in OFF else args.grpc
        if grpc is None and http is None:
            raise ValueError("both --grpc and --http are off: nothing to serve")
        options = envoy_options(args, http_address=http,
                                http_max_body_bytes=args.max_message_bytes,
                                http_limits=http_limits(args))
        config = ServiceConfig(
            policies=Path(args.policies), grpc_address=grpc, http_address=None,
            audit_url=args.audit, decision_log_path=args.decision_log_file,
            decision_log_mode=args.decision_log, audit_durability=args.audit_durability, tls=tls,
            token_file=args.token_file, insecure_listen=args.insecure_listen,
            max_message_bytes=args.max_message_bytes,
            max_statement_bytes=args.max_statement_bytes, reload_interval=args.reload_interval,
            reload_settle=args.reload_settle, http_limits=http_limits(args),
            extensions=(options,))
        config.check_security()
        if http is not None:
            check_listen_address(split_host_port(http)[0], tls=tls is not None,
                                 token=args.token_file is not None,
                                 insecure=args.insecure_listen, what="HTTP")
    except (ValueError, InsecureListenError) as exc:
        print(f"ordinance envoy: {exc}", file=sys.stderr)
        return 2
    try:
        return run_service(config)
    except (OSError, RuntimeError) as exc:  # grpc raises RuntimeError when it cannot bind
        log.error("cannot serve: %s", exc)
        return 1
