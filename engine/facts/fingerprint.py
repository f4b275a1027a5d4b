"""SQL text with its literal values replaced: `WHERE id = 42` and `WHERE id = 7` share one
fingerprint, so a decision taken for one can answer the other.

That is safe only when nothing a policy reads depends on the literals. Parsed facts carry no
literal values except `limit`, the setting a `set_config` call names, MySQL's `sql_mode` values
and the statement of MySQL's `PREPARE s FROM '…'` / `EXECUTE IMMEDIATE '…'`, so LIMIT/OFFSET/
FETCH counts are kept and a text that mentions `set_config`, `sql_mode` or a quoted statement
gets no fingerprint, nor one with a backslash (MySQL reads it as an escape in strings); the
Engine uses the fingerprint only for policy sets that never read `command.raw` (see
PolicySet). Text the normalizer cannot read with certainty (comments, dollar quoting, E''
strings) gets no fingerprint, and is decided in full.

The literals are found by PostgreSQL's lexical rules with `standard_conforming_strings` on, so
the fingerprint is used only for PostgreSQL's protocol (`FINGERPRINT_PROTOCOLS`): under
MySQL's rules `#` starts a comment, `"..."` is a string and a backslash escapes a quote, and
two texts this normalizer takes for one shape could be statements reading different tables
(`'x\' AND b = ' UNION SELECT pan FROM cards #'`). A text with a backslash gets no
fingerprint either: a session may turn `standard_conforming_strings` off, and then a
backslash escapes a quote in PostgreSQL too.
"""

from __future__ import annotations

import re
from functools import lru_cache

_TOKEN = re.compile(
    r"""(?P<string>'(?:[^']|'')*')
      |(?P<ident>"(?:[^"]|"")*")
      |(?P<number>(?<![\w$.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.]))
      |(?P<word>[A-Za-z_][\w$]*)
      |(?P<other>[^'"A-Za-z_\d]+|.)""",
    re.VERBOSE | re.DOTALL,
)
_LITERAL = re.compile(  # _TOKEN's literals and quoted names; the lookahead is for speed
    r"""(?=['"\d])
      (?:(?P<string>'(?:[^']|'')*')
      |(?P<ident>"(?:[^"]|"")*")
      |(?P<number>(?<![\w$.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?![\w.])))""",
    re.VERBOSE | re.DOTALL,
)
_UNSAFE = re.compile(r"--|/\*|\$[A-Za-z_]*\$|(?<![\w'])[eEbBxXuUnN]&?'", re.ASCII)
_QUOTED_STATEMENT = re.compile(r"\bprepare\s+\S+\s+from\s*['\"]|\bexecute\s+immediate\b")
_COUNT_KEYWORDS = frozenset({"limit", "offset", "first", "next", "top"})
FINGERPRINT_PROTOCOLS = frozenset({"postgres", "postgresql"})
"""The protocols whose SQL is lexed as this module lexes it."""
MAX_FINGERPRINT_INPUT = 64 << 10
CACHED_FINGERPRINT_INPUT = 8 << 10
"""Longer texts are fingerprinted each time (linear regular expressions), not kept in the LRU."""


def literal_fingerprint(raw: str) -> str | None:
    """The text with string and number literals replaced by `?`; None when unsure or when
    the text is over `MAX_FINGERPRINT_INPUT` (such a text is not kept in the cache either)."""
    if len(raw) > MAX_FINGERPRINT_INPUT:
        return None
    if len(raw) > CACHED_FINGERPRINT_INPUT:
        return _fingerprint.__wrapped__(raw)
    return _fingerprint(raw)


@lru_cache(maxsize=4096)
def _fingerprint(raw: str) -> str | None:
    if "\\" in raw:
        return None  # an escaped quote where standard_conforming_strings is off
    if ("'" in raw or "$" in raw or "--" in raw or "/*" in raw) and _UNSAFE.search(raw):
        return None  # (each of _UNSAFE's patterns needs one of these)
    lowered = raw.lower()
    if "set_config" in lowered:
        return None  # its first literal is a fact: the setting it changes (`role`?)
    if "\\" in raw or "sql_mode" in lowered:
        return None  # MySQL: a backslash escapes in strings; sql_mode's literals are facts
    if ("prepare" in lowered or "immediate" in lowered) and _QUOTED_STATEMENT.search(lowered):
        return None  # MySQL's PREPARE s FROM '…', EXECUTE IMMEDIATE '…': the literal is SQL
    if not ("limit" in lowered or "offset" in lowered or "first" in lowered
            or "next" in lowered or "top" in lowered):  # _COUNT_KEYWORDS
        # No count keyword anywhere: every string and number literal becomes `?`. Searching
        # for literals alone finds exactly the tokens the full tokenizer below would (they
        # cannot start inside a word, a quoted name or a run of other characters), so the
        # result is the same, found in C.
        if '"' not in raw:
            return _LITERAL.sub("?", raw)
        return _LITERAL.sub(_literal_mark, raw)
    out: list[str] = []
    previous_word = ""
    for m in _TOKEN.finditer(raw):
        kind = m.lastgroup
        text = m.group()
        if kind == "string":
            out.append("?")
        elif kind == "number":
            out.append(text if previous_word in _COUNT_KEYWORDS else "?")
        else:
            out.append(text)
        if kind == "word":
            previous_word = text.lower()
        elif kind != "other" or text.strip():
            previous_word = ""
    return "".join(out)


def _literal_mark(match: re.Match[str]) -> str:
    return match.group() if match.lastgroup == "ident" else "?"
