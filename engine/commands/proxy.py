"""`ordinance proxy postgres`: the PostgreSQL enforcement proxy.

Clients connect to `--listen` as to PostgreSQL and log in as users of `--users` (SCRAM-SHA-256)
or with an OIDC ID token as their password (`--oidc-*`; TLS or loopback only). Each session
gets one connection to `--upstream`, made with the proxy's own credentials, with TLS as the
URL's libpq parameters say (`?sslmode=verify-full&sslrootcert=ca.pem`; default `prefer`).
Every statement is decided by the policies (in-process with `--policies`, reloaded when the
directory changes; or by `ordinance serve` over gRPC with `--decision-service`, where an
unreachable or slow service denies), then denied, held for approval, or run with its results
masked, and recorded in the audit trail (`--audit`) before its result reaches the client.

Wiring only: the proxy is `adapters.postgres.proxy`, the decision bridge
`adapters.postgres.bridge`. Prints one JSON line on stdout when listening
(`{"event": "listening", "listen": "host:port", ...}`), then one naming its upstream role
(`{"event": "upstream_role", "role": ..., "superuser": ...}`, with a `warning` when it is a
superuser); logs go to stderr; SIGTERM or SIGINT
closes every session (each gets its `session.end` record) and exits 0. Exit 2 for a bad
configuration (flags, policies, users file, audit or approvals store), 1 when it cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

AUDIT_URL_ENV = "ORDINANCE_AUDIT_URL"
UPSTREAM_URL_ENV = "ORDINANCE_UPSTREAM_URL"
HOOK_MARGIN_S = 10.0
"""The decision hook may take the decision deadline plus this (catalog reads, audit writes)."""

log = logging.getLogger("ordinance.proxy")


def _duration(text: str) -> float:
    from adapters.enforcement.review import parse_duration

    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "proxy", help="run an enforcement proxy (PostgreSQL, MySQL, SSH)",
        description="Enforcement proxies: every command is decided by policy, masked, held "
                    "for approval or blocked, and recorded.")
    kinds = parser.add_subparsers(dest="proxy_kind", metavar="PROTOCOL", required=True)
    p = kinds.add_parser(
        "postgres", help="the PostgreSQL wire-protocol proxy",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:6432", metavar="HOST:PORT",
                   help="where clients connect (default %(default)s; port 0 picks one)")
    p.add_argument("--upstream", default=os.environ.get(UPSTREAM_URL_ENV),
                   required=not os.environ.get(UPSTREAM_URL_ENV),
                   metavar="postgresql://USER:PASS@HOST:PORT/DB[?sslmode=…]",
                   help="the database served, with the proxy's credentials (default "
                        f"${UPSTREAM_URL_ENV}, which keeps the password out of `ps`); TLS as "
                        "libpq: sslmode=disable|allow|prefer (default)|require|verify-ca|"
                        "verify-full, sslrootcert=FILE|system, sslcert=FILE, sslkey=FILE")
    add_decision_arguments(p)
    _add_sql_arguments(p)
    p.set_defaults(func=run)

    m = kinds.add_parser(
        "mysql", help="the MySQL / MariaDB wire-protocol proxy",
        description=_mysql_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--listen", default="127.0.0.1:3307", metavar="HOST:PORT",
                   help="where clients connect (default %(default)s; port 0 picks one)")
    m.add_argument("--upstream", default=os.environ.get(UPSTREAM_URL_ENV),
                   required=not os.environ.get(UPSTREAM_URL_ENV),
                   metavar="mysql://USER:PASS@HOST:PORT/DB",
                   help="the database served, with the proxy's credentials (default "
                        f"${UPSTREAM_URL_ENV}, which keeps the password out of `ps`)")
    add_decision_arguments(m)
    _add_sql_arguments(m)
    m.set_defaults(func=_run_mysql)

    from engine.commands._proxy_ssh import register_ssh

    register_ssh(kinds)


def _mysql_description() -> str:
    from engine.commands import _proxy_mysql

    return _proxy_mysql.__doc__ or ""


def _run_mysql(args: argparse.Namespace) -> int:
    from engine.commands._proxy_mysql import run

    return run(args)


def _add_sql_arguments(p: argparse.ArgumentParser) -> None:
    """The database proxies' own flags: TLS towards clients and the resource's name/labels."""
    p.add_argument("--tls-cert", metavar="PEM", help="server certificate (enables TLS)")
    p.add_argument("--tls-key", metavar="PEM", help="server private key")
    p.add_argument("--insecure-listen", action="store_true",
                   help="allow a non-loopback --listen address without TLS")
    p.add_argument("--resource-name", metavar="NAME",
                   help="input.resource.name (default: the upstream database name)")
    p.add_argument("--resource-label", type=_label, action="append", default=[],
                   metavar="KEY=VALUE", help="input.resource.labels entry (repeatable), "
                                             "e.g. env=prod")


def add_decision_arguments(p: argparse.ArgumentParser) -> None:
    """--policies | --decision-service (and its TLS, token, deadline), --audit, --approvals,
    --approval-timeout, --users, --oidc-*, the reload and statement-size flags: what every
    proxy decides, records and authenticates with."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--policies", metavar="DIR",
                        help="decide in-process with this policy directory or bundle "
                             "(reloaded when it changes)")
    source.add_argument("--decision-service", metavar="HOST:PORT",
                        help="decide with `ordinance serve` over gRPC (fail closed)")
    p.add_argument("--decision-service-ca", metavar="PEM",
                   help="use TLS to the decision service, trusting this CA")
    p.add_argument("--decision-service-token-file", metavar="FILE", type=Path,
                   help="bearer token for the decision service")
    p.add_argument("--decision-deadline", type=_duration, default=2.0, metavar="DURATION",
                   help="how long a decision may take before the request is denied "
                        "(default 2s)")
    p.add_argument("--audit", default=os.environ.get(AUDIT_URL_ENV),
                   required=not os.environ.get(AUDIT_URL_ENV), metavar="URL",
                   help=f"audit trail: sqlite:///path.db or postgresql://… (default "
                        f"${AUDIT_URL_ENV})")
    p.add_argument("--approvals", metavar="URL",
                   help="approvals store (default: the audit trail's database)")
    p.add_argument("--approval-timeout", type=_duration, default=300.0, metavar="DURATION",
                   help="how long a request under review is held (default 5m)")
    p.add_argument("--users", metavar="FILE",
                   help="static users file (SCRAM-SHA-256 logins; MySQL: "
                        "caching_sha2_password and mysql_native_password; SSH: ssh_keys)")
    p.add_argument("--oidc-jwks", metavar="FILE|URL",
                   help="accept OIDC ID tokens, verified with this JWKS")
    p.add_argument("--oidc-issuer", metavar="ISS", help="expected `iss` of ID tokens")
    p.add_argument("--oidc-audience", metavar="AUD", help="expected `aud` of ID tokens")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often --policies is checked for changes (default 1)")
    p.add_argument("--reload-settle", type=float, default=1.0, metavar="SECONDS",
                   help="a changed plain policy directory (no .manifest) is loaded once it has "
                        "been quiet this long (default 1)")
    from engine.commands.serve import add_audit_durability_argument, add_statement_limit_argument

    add_statement_limit_argument(p)
    add_audit_durability_argument(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


class _Setup(Exception):
    """A configuration problem: exit 2 with this message."""


def run(args: argparse.Namespace) -> int:
    return run_proxy(args, "postgres", _configure, _serve)


def run_proxy(args: argparse.Namespace, name: str,
              configure: Callable[[argparse.Namespace, list[Any]], tuple[Any, ...]],
              serve: Callable[..., Any]) -> int:
    """A proxy's command: `configure` (a `_Setup` error exits 2), then `serve(*configured)`
    until signalled; whatever `configure` opened is closed either way."""
    from engine.service.server import configure_logging

    configure_logging(args.verbose)
    resources: list[Any] = []
    try:
        configured = configure(args, resources)
    except _Setup as exc:
        print(f"ordinance proxy {name}: {exc}", file=sys.stderr)
        _close_all(resources)
        return 2
    try:
        return int(asyncio.run(serve(*configured)))
    except OSError as exc:
        log.error("cannot listen on %s: %s", args.listen, exc)
        return 1
    finally:
        _close_all(resources)


def _close_all(resources: list[Any]) -> None:
    for close in reversed(resources):
        try:
            close()
        except Exception:  # shutting down: report and go on
            log.exception("error while closing")


def _configure(args: argparse.Namespace, resources: list[Any]) -> tuple[Any, ...]:
    from psycopg.conninfo import make_conninfo

    from adapters.enforcement.records import Resource
    from adapters.postgres.bridge import PolicyBridge
    from adapters.postgres.catalog import Catalog
    from adapters.postgres.proxy import ProxyConfig, UpstreamTarget
    from engine.audit.stores import parse_store_url
    from engine.service.server import split_host_port
    from engine.service.tls import InsecureListenError, check_listen_address, tls_config

    try:
        host, port = split_host_port(args.listen)
        target = UpstreamTarget.from_url(args.upstream)
        target.tls.ssl_context()  # a missing root certificate is a configuration error
        tls = tls_config(args.tls_cert, args.tls_key, None)
        check_listen_address(host, tls=tls is not None, token=False,
                             insecure=args.insecure_listen, what="the PostgreSQL proxy")
    except (ValueError, InsecureListenError) as exc:
        raise _Setup(str(exc)) from None
    directory, verify, audit, recorder, gate = _logins_and_trail(args, resources)

    client, decisions = _decision_client(args, audit, resources)
    resource = Resource(args.resource_name or target.database, dict(args.resource_label),
                        type="postgres")
    # libpq would take a missing sslmode from $PGSSLMODE; the proxy's sessions do not.
    catalog = Catalog(make_conninfo(args.upstream, sslmode=target.tls.mode))
    bridge = PolicyBridge(client, resource=resource, catalog=catalog, recorder=recorder,
                          approvals=gate)
    config = ProxyConfig(
        upstream_url=args.upstream, directory=directory, verify_token=verify, host=host,
        port=port, server_ssl=tls.ssl_context() if tls is not None else None,
        decide_timeout=args.decision_deadline + HOOK_MARGIN_S, **bridge.hooks())
    ready = {
        "event": "listening", "proxy": "postgres", "listen": None,
        "upstream": f"{target.host}:{target.port}/{target.database}",
        "upstream_sslmode": target.tls.mode,
        "resource": resource.to_input(), "decisions": decisions,
        "audit": parse_store_url(args.audit).redacted(),
        "audit_durability": args.audit_durability, "tls": tls is not None,
        "auth": [m for m, on in (("scram-sha-256", directory is not None),
                                 ("oidc-token", verify is not None)) if on],
        "approval_timeout_s": args.approval_timeout,
    }
    return config, catalog, client, ready


def _logins_and_trail(args: argparse.Namespace, resources: list[Any]) -> tuple[Any, ...]:
    """What every proxy sets up alike: (users directory, token verifier, audit trail, its
    recorder, the approval gate); each opened resource is appended to `resources`."""
    directory, verify = _identity(args)
    return (directory, verify, *_trail(args, resources))


def _identity(args: argparse.Namespace) -> tuple[Any, Any]:
    """The users file (`--users`) and the OIDC token verifier (`--oidc-*`), each or None."""
    oidc = [args.oidc_jwks, args.oidc_issuer, args.oidc_audience]
    if any(oidc) and not all(oidc):
        raise _Setup("--oidc-jwks, --oidc-issuer and --oidc-audience go together")
    if not args.users and not args.oidc_jwks:
        raise _Setup("clients need a way to log in: --users FILE and/or --oidc-jwks "
                     "with --oidc-issuer and --oidc-audience")

    directory = None
    if args.users:
        from engine.identity.users import load_users

        try:
            directory = load_users(args.users)
        except (OSError, ValueError) as exc:
            raise _Setup(f"users file: {exc}") from None
    verify = None
    if args.oidc_jwks:
        from engine.identity.oidc import OidcVerifier

        source = ({"jwks_url": args.oidc_jwks} if args.oidc_jwks.startswith(
            ("https://", "http://")) else {"jwks_file": args.oidc_jwks})
        try:
            verifier = OidcVerifier(args.oidc_issuer, args.oidc_audience, **source)
        except ValueError as exc:
            raise _Setup(f"OIDC: {exc}") from None
        verify = verifier.verify
    return directory, verify


def _trail(args: argparse.Namespace, resources: list[Any]) -> tuple[Any, Any, Any]:
    """The audit trail (`--audit`), its recorder and the approval gate (`--approvals`)."""
    from adapters.enforcement.review import ApprovalGate
    from engine.approvals import ApprovalStoreError, open_approval_store
    from engine.audit import AuditError, open_audit_log
    from engine.audit.recorder import AuditRecorder
    from engine.audit.stores import parse_store_url

    try:
        audit = open_audit_log(args.audit, durability=args.audit_durability)
    except AuditError as exc:
        raise _Setup(f"audit trail: {exc}") from None
    resources.append(audit.close)
    recorder = AuditRecorder(audit).start()
    resources.append(recorder.close)
    approvals_url = args.approvals or args.audit
    try:
        store = open_approval_store(approvals_url, audit=audit)
    except ApprovalStoreError as exc:
        raise _Setup(f"approvals store: {exc}") from None
    resources.append(store.close)
    hint = ("ordinance approvals approve {id} --as APPROVER --users "
            f"{args.users or 'USERS_FILE'} --audit {parse_store_url(args.audit).redacted()}")
    if args.approvals:
        hint += f" --store {parse_store_url(args.approvals).redacted()}"
    gate = ApprovalGate(store, timeout=args.approval_timeout, approve_hint=hint)
    resources.append(gate.close)
    return audit, recorder, gate


def _decision_client(args: argparse.Namespace, audit: Any,
                     resources: list[Any]) -> tuple[Any, str]:
    from engine.client import ClientTLS, GrpcDecisionClient, InProcessDecisionClient

    if args.decision_service:
        token = None
        if args.decision_service_token_file:
            try:
                token = args.decision_service_token_file.read_text().strip()
            except OSError as exc:
                raise _Setup(f"decision service token: {exc}") from None
        tls = ClientTLS(ca=Path(args.decision_service_ca)) if args.decision_service_ca \
            else None
        client = GrpcDecisionClient(args.decision_service, deadline=args.decision_deadline,
                                    tls=tls, token=token)
        resources.append(client.close)
        return client, f"grpc:{args.decision_service}"

    from engine.engine import Engine
    from engine.service.reload import PolicyWatcher

    engines: list[Engine] = []

    def loaded(policy_set: Any) -> None:
        if not engines:
            engines.append(Engine(policy_set, max_statement_bytes=args.max_statement_bytes))
            return
        if policy_set.revision == engines[0].policy_set.revision:
            return
        engines[0].swap(policy_set)
        log.info("policy set %s active", policy_set.revision)
        _record_reload(audit, args, {"revision": policy_set.revision, "errors": []})

    def rejected(errors: list[str]) -> None:
        if engines:
            _record_reload(audit, args, {"revision": engines[0].policy_set.revision,
                                   "errors": errors, "rejected": True})

    watcher = PolicyWatcher(args.policies, on_loaded=loaded, on_rejected=rejected,
                            interval=args.reload_interval, settle=args.reload_settle)
    if not watcher.load_now():
        raise _Setup(f"the policies in {args.policies} do not compile (errors above)")
    watcher.start()
    resources.append(watcher.stop)
    return InProcessDecisionClient(engines[0]), f"in-process:{args.policies}"


def _record_reload(audit: Any, args: argparse.Namespace, payload: dict[str, Any]) -> None:
    try:
        audit.append("policy.reload", {"source": f"proxy {args.proxy_kind}", **payload})
    except Exception as exc:  # the reload itself stands; the trail says so next time
        log.error("policy reload not recorded: %s", exc)


async def _serve(config: Any, catalog: Any, client: Any, ready: dict[str, Any]) -> int:
    from adapters.postgres.proxy import PostgresProxy

    checked: list[asyncio.Future[None]] = []
    try:
        return await serve_until_signalled(
            PostgresProxy(config), config.host, client, ready,
            started=lambda: checked.append(asyncio.ensure_future(_check_upstream_role(catalog))))
    finally:
        for task in checked:
            task.cancel()
        await catalog.close()


async def serve_until_signalled(server: Any, host: str, client: Any, ready: dict[str, Any],
                                started: Callable[[], None] | None = None) -> int:
    """Run a listener (a proxy or the gateway: `start()`, `port`, `active_sessions`, `close()`)
    until SIGTERM or SIGINT: print the ready line once it listens, then close it and the
    decision client."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        ready["listen"] = f"{host}:{server.port}"
        print(json.dumps(ready), flush=True)
        if started is not None:
            started()
        await stop.wait()
        log.info("shutting down: closing %d session(s)", server.active_sessions)
    finally:
        await server.close()
        aclose = getattr(client, "aclose", None)
        if aclose is not None:
            await aclose()
    return 0


async def _check_upstream_role(catalog: Any) -> None:
    """Print the role the proxy logs in upstream as (a JSON line, as the ready line), with a
    warning when it is a superuser: every session then runs as one, and whatever the policies
    let through or cannot see (the code of existing functions) can do anything on the server."""
    from adapters.postgres.catalog import CatalogError

    try:
        role, superuser = await catalog.upstream_role()
    except CatalogError as exc:
        log.warning("could not check the upstream role: %s", exc)
        return
    line: dict[str, Any] = {"event": "upstream_role", "proxy": "postgres", "role": role,
                            "superuser": superuser}
    if superuser:
        line["warning"] = (f"the upstream role {role} is a superuser: every session through "
                           "the proxy runs as one; give the proxy a role with only what its "
                           "users need (docs/postgres-proxy.md, The upstream role)")
    print(json.dumps(line), flush=True)
