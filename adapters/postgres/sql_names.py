"""The SQL-level names a statement defines or uses: cursors (DECLARE, FETCH, MOVE, CLOSE) and
prepared statements (PREPARE, EXECUTE, DEALLOCATE), so a FETCH or EXECUTE can be tied to the
statement that made what it reads (its row budget; the FETCH itself names no table).

Owns `name_actions(sql)`: one `NameAction` per such statement of a text, in order. Statements
are split where sqlglot's tokenizer finds a `;` (the facts refuse a text it splits otherwise
than PostgreSQL does: `engine.facts.pg_statements`); each one's head is read here. Must not:
decide anything; a text it cannot read gives no actions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

NameKind = Literal["cursor", "statement"]
Action = Literal["define", "use", "drop", "drop_all"]

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*)'
_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_PATTERNS: tuple[tuple[re.Pattern[str], NameKind, Action], ...] = (
    (re.compile(rf"declare\s+({_IDENT})\s", re.I), "cursor", "define"),
    (re.compile(rf"(?:fetch|move)\b.*?({_IDENT})\s*$", re.I | re.S), "cursor", "use"),
    (re.compile(r"close\s+all\s*$", re.I), "cursor", "drop_all"),
    (re.compile(rf"close\s+({_IDENT})\s*$", re.I), "cursor", "drop"),
    (re.compile(rf"prepare\s+({_IDENT})", re.I), "statement", "define"),
    (re.compile(rf"execute\s+({_IDENT})", re.I), "statement", "use"),
    (re.compile(r"deallocate\s+(?:prepare\s+)?all\s*$", re.I), "statement", "drop_all"),
    (re.compile(rf"deallocate\s+(?:prepare\s+)?({_IDENT})\s*$", re.I), "statement", "drop"),
)
_DISCARD_ALL = re.compile(r"discard\s+all\s*$", re.I)


@dataclass(frozen=True)
class NameAction:
    """`statement` (its text) defines, uses or drops the cursor or prepared statement `name`
    (PostgreSQL's folding: unquoted lower-cased); `drop_all` has no name, and `kind` None
    (DISCARD ALL) drops both kinds."""

    kind: NameKind | None
    action: Action
    name: str
    statement: str


def name_actions(sql: str) -> list[NameAction]:
    """What each statement of `sql` does to cursor and prepared-statement names."""
    low = sql.lower()  # most texts hold no such statement: a few substring tests say so
    if not ("declare" in low or "fetch" in low or "move" in low or "close" in low
            or "prepare" in low or "execute" in low or "deallocate" in low
            or "discard" in low):
        return []
    actions = []
    for text in _statements(sql):
        action = _action(text)
        if action is not None:
            actions.append(action)
    return actions


def _statements(sql: str) -> list[str]:
    try:
        tokens = sqlglot.tokenize(sql, read="postgres")
    except (SqlglotError, ValueError):
        return []
    out, start = [], 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            out.append(sql[start:token.start])
            start = token.end + 1
    out.append(sql[start:])
    return [text for text in out if text.strip()]


def _action(text: str) -> NameAction | None:
    body = text[_LEAD.match(text).end():].rstrip().rstrip(";")  # type: ignore[union-attr]
    if _DISCARD_ALL.match(body):
        return NameAction(None, "drop_all", "", text)
    for pattern, kind, action in _PATTERNS:
        match = pattern.match(body)
        if match is None:
            continue
        name = match.group(1) if match.groups() else ""
        if action == "use" and kind == "cursor" and name.lower() in _FETCH_WORDS:
            return None
        return NameAction(kind, action, _folded(name), text)
    return None


_FETCH_WORDS = frozenset({"next", "prior", "first", "last", "absolute", "relative", "all",
                          "forward", "backward", "from", "in", "fetch", "move"})


def _folded(name: str) -> str:
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()
