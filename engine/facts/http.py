"""HTTP request attributes -> `method`, `path`, `headers` (lower-case keys), `query`."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit


def http_facts(command: dict[str, Any]) -> dict[str, Any]:
    raw = command.get("raw")
    method = str(command.get("method") or "").upper()
    target = str(command.get("path") or "")
    if isinstance(raw, str) and raw.strip():
        first = raw.strip().split(None, 2)
        if len(first) >= 2 and not method:
            method, target = first[0].upper(), first[1]
        elif not target:
            target = first[0]
    split = urlsplit(target)
    query = command.get("query")
    if not isinstance(query, dict):
        query = {k: v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    headers = command.get("headers") or {}
    return {
        "method": method,
        "path": split.path or "/",
        "query": query,
        "headers": {str(k).lower(): v for k, v in dict(headers).items()},
        "parse_error": None,
    }
