"""Raw commands become facts: the `command` part of the input document, enriched.

A pipeline in one direction (raw text -> parsed statements -> plain facts) for each protocol:
SQL (sqlglot, in the resource's dialect), shell (tree-sitter-bash; protocols `shell` and `ssh`,
whose exec requests are command lines: `shell.py`; SSH requests without one: `ssh.py`) and
HTTP. Facts are cached by
(protocol, dialect, raw text) in a bounded LRU, so a hot loop never parses the same text twice.
The functions here never raise on bad input; they report it in `parse_error`.

A text over `max_statement_bytes` (UTF-8; default `DEFAULT_MAX_STATEMENT_BYTES`, 256 KiB) is
not parsed at all: its facts say `parse_error` ("statement too large to analyse"), which the
PCI pack denies, in time that does not grow with the text, and it never enters a cache (the
facts made for it are fresh each time).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from engine.facts.http import http_facts
from engine.facts.shell import no_shell_facts, shell_facts
from engine.facts.sql import dialect_for, parse_mysql, parse_sql, unparseable
from engine.facts.ssh import ssh_request_facts, terminal_exec_facts

SQL_PROTOCOLS = frozenset({"postgres", "postgresql", "mysql", "mariadb", "sql", "sqlite"})
SHELL_PROTOCOLS = frozenset({"shell", "ssh"})
DEFAULT_MAX_STATEMENT_BYTES = 256 * 1024
FACTS_CACHE_SIZE = 4096
CACHED_TEXT_CHARS = 8 * 1024
"""Longer texts are parsed each time rather than kept in the LRU, which so holds at most
FACTS_CACHE_SIZE such texts (~32 MiB of them) and their facts. (A repeated long statement is
still answered from the engine's decision cache without being parsed.)"""


def statement_too_large(raw: str, limit: int) -> bool:
    """Whether `raw` is over `limit` bytes in UTF-8; the usual text is not encoded to tell."""
    if len(raw) > limit:
        return True
    if 4 * len(raw) <= limit:
        return False
    return len(raw.encode("utf-8", "surrogatepass")) > limit


def _too_large(raw: str, limit: int) -> str:
    return (f"statement too large to analyse ({len(raw.encode('utf-8', 'surrogatepass'))} "
            f"bytes, limit {limit})")


@lru_cache(maxsize=FACTS_CACHE_SIZE)
def _cached_sql(raw: str, dialect: str | None) -> dict[str, Any]:
    return _parse(raw, dialect)


def _parse(raw: str, dialect: str | None) -> dict[str, Any]:
    return parse_mysql(raw) if dialect == "mysql" else parse_sql(raw, dialect)


@lru_cache(maxsize=FACTS_CACHE_SIZE)
def _cached_shell(raw: str) -> dict[str, Any]:
    return shell_facts(raw)


def sql_facts(raw: str, dialect: str | None,
              max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES) -> dict[str, Any]:
    """Parsed SQL facts. They are shared with the cache: read them, never change them."""
    if statement_too_large(raw, max_statement_bytes):
        return unparseable(_too_large(raw, max_statement_bytes))
    if len(raw) > CACHED_TEXT_CHARS:
        return _parse(raw, dialect)
    return _cached_sql(raw, dialect)


def shell_command_facts(raw: str,
                        max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES
                        ) -> dict[str, Any]:
    """Parsed shell facts (shared with the cache: read-only), with the same size limit."""
    if statement_too_large(raw, max_statement_bytes):
        return no_shell_facts(_too_large(raw, max_statement_bytes))
    if len(raw) > CACHED_TEXT_CHARS:
        return shell_facts(raw)
    return _cached_shell(raw)


def enrich_command(command: dict[str, Any] | None, resource: dict[str, Any] | None, *,
                   max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES) -> dict[str, Any]:
    """The command with its facts added; the caller's dict is not modified.

    Nested values are shared with the facts cache and must be treated as read-only.

    The protocol comes from `command.protocol`, else from `resource.type`. Facts a caller
    already supplied are overwritten: policies must see what the engine parsed, not what an
    adapter claims.
    """
    command = dict(command or {})
    resource = resource or {}
    protocol = str(command.get("protocol") or resource.get("type") or "").lower()
    raw = command.get("raw")
    if protocol:
        command["protocol"] = protocol
    if protocol == "http":
        command.update(http_facts(command))
        return command
    if protocol == "ssh" and command.get("request", "exec" if raw is not None else None) \
            != "exec":
        # the request decides which facts: a shell's or an SFTP operation's never come from a
        # `raw` an adapter may have added (interactive, paths stay the engine's)
        command.update(ssh_request_facts(command))
        return command
    if not isinstance(raw, str) and protocol in SHELL_PROTOCOLS:
        command.update(no_shell_facts("command.raw must be a string"))
        return command
    if not isinstance(raw, str):
        if raw is not None or protocol in SQL_PROTOCOLS:
            command["parse_error"] = "command.raw must be a string"
            command.setdefault("statements", [])
            command.setdefault("kinds", [])
            command.setdefault("tables", [])
        return command
    if protocol in SHELL_PROTOCOLS:
        facts = shell_command_facts(raw, max_statement_bytes)
        if protocol == "ssh" and command.get("pty") is not None and facts["parse_error"] is None:
            facts = terminal_exec_facts(facts)
        command.update(facts)
        return command
    # the protocol spoken decides the dialect (a `mysql` session of a resource typed
    # otherwise is still MySQL text), else the resource's type
    dialect = dialect_for(protocol) or dialect_for(str(resource.get("type") or ""))
    command.update(sql_facts(raw, dialect, max_statement_bytes))
    return command


def clear_caches() -> None:
    _cached_sql.cache_clear()
    _cached_shell.cache_clear()
