"""`ordinance proxy mysql`: the MySQL / MariaDB enforcement proxy.

Clients connect to `--listen` as to MySQL and log in as users of `--users`
(caching_sha2_password, its fast path or full authentication over TLS, loopback or RSA; or
mysql_native_password) or with an OIDC ID token sent with mysql_clear_password (`--oidc-*`;
TLS only). Each session gets one connection to `--upstream`, made with the proxy's own
credentials. Every statement text (COM_QUERY, COM_STMT_PREPARE, COM_INIT_DB as `USE`) is
decided by the policies (in-process with `--policies`, or `ordinance serve` with
`--decision-service`), then denied (ERR 1142), held for approval, or run with its results
masked, and recorded in the audit trail (`--audit`) before its result reaches the client.

Wiring only: the proxy is `adapters.mysql.proxy`, the decision bridge `adapters.mysql.bridge`.
Prints one JSON line on stdout when listening (`{"event": "listening", "proxy": "mysql", ...}`);
logs go to stderr; SIGTERM or SIGINT closes every session (each gets its `session.end`
record) and exits 0. Exit 2 for a bad configuration, 1 when it cannot listen.
"""

from __future__ import annotations

import argparse
from typing import Any

from engine.commands.proxy import (
    HOOK_MARGIN_S,
    _decision_client,
    _logins_and_trail,
    _Setup,
    run_proxy,
)


def run(args: argparse.Namespace) -> int:
    return run_proxy(args, "mysql", _configure, _serve)


def _configure(args: argparse.Namespace, resources: list[Any]) -> tuple[Any, ...]:
    from adapters.enforcement.records import Resource
    from adapters.mysql.bridge import MySQLBridge
    from adapters.mysql.catalog import Catalog, connect_url
    from adapters.mysql.proxy import ProxyConfig, UpstreamTarget
    from engine.audit.stores import parse_store_url
    from engine.service.server import split_host_port
    from engine.service.tls import InsecureListenError, check_listen_address, tls_config

    try:
        host, port = split_host_port(args.listen)
        target = UpstreamTarget.from_url(args.upstream)
        tls = tls_config(args.tls_cert, args.tls_key, None)
        check_listen_address(host, tls=tls is not None, token=False,
                             insecure=args.insecure_listen, what="the MySQL proxy")
    except (ValueError, InsecureListenError) as exc:
        raise _Setup(str(exc)) from None
    directory, verify, audit, recorder, gate = _logins_and_trail(args, resources)
    client, decisions = _decision_client(args, audit, resources)
    resource = Resource(args.resource_name or target.database, dict(args.resource_label),
                        type="mysql")
    catalog = Catalog(connect_url(args.upstream))
    resources.append(catalog.close)
    bridge = MySQLBridge(client, resource=resource, recorder=recorder, catalog=catalog,
                         approvals=gate)
    config = ProxyConfig(
        upstream=target, directory=directory, verify_token=verify, host=host, port=port,
        server_ssl=tls.ssl_context() if tls is not None else None,
        decide_timeout=args.decision_deadline + HOOK_MARGIN_S,
        **bridge.hooks())
    ready = {
        "event": "listening", "proxy": "mysql", "listen": None,
        "upstream": f"{target.host}:{target.port}/{target.database}",
        "resource": resource.to_input(), "decisions": decisions,
        "audit": parse_store_url(args.audit).redacted(), "tls": tls is not None,
        "auth": [m for m, on in (("caching_sha2_password", directory is not None),
                                 ("mysql_native_password", directory is not None),
                                 ("oidc-token", verify is not None)) if on],
        "approval_timeout_s": args.approval_timeout,
    }
    return config, client, ready


async def _serve(config: Any, client: Any, ready: dict[str, Any]) -> int:
    from adapters.mysql.proxy import MySQLProxy
    from engine.commands.proxy import serve_until_signalled

    return await serve_until_signalled(MySQLProxy(config), config.host, client, ready)
