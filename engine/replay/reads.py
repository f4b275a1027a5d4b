"""Which parts of an input document a policy set can read, asked per path.

A replayed record may lack a field (a subject's claims in a record written before they were
recorded, a header value the decision log redacted). Such a record can be re-decided only when
no policy can read that field: `ReadPaths(policy_set).reads(("subject", "claims"))`.

Rego: the key paths the tokenizer found (`RegoProgram.input_paths`; None means `input` whole).
CEL: each rule's `when` is scanned for `var.a.b` attribute chains of the input variables it
names; any other use of a variable (`size(subject)`, `subject["x"]`, `"a" in subject`) reads it
whole. The scan over-approximates (a variable's name inside a string literal counts as a read),
which can only make a record unreplayable, never let a missing field go unnoticed.
"""

from __future__ import annotations

import re
from functools import lru_cache

from engine.policy import PolicySet

Path = tuple[str, ...]

_CHAIN = r"(?:\s*\.\s*[A-Za-z_]\w*)*"


@lru_cache(maxsize=64)
def _variable_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){re.escape(name)}\b({_CHAIN})")


def cel_paths(when: str, variables: frozenset[str]) -> set[Path]:
    """The input paths one CEL expression reads."""
    paths: set[Path] = set()
    for name in variables:
        for match in _variable_pattern(name).finditer(when):
            chain = tuple(part.strip() for part in match.group(1).split(".")[1:])
            paths.add((name, *chain))
    return paths


def _overlaps(a: Path, b: Path) -> bool:
    """One path is a prefix of the other: reading one reads (part of) the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class ReadPaths:
    """What one policy set reads of `input`."""

    def __init__(self, policy_set: PolicySet) -> None:
        rego = policy_set.rego.input_paths
        self._whole = rego is None
        paths: set[Path] = set(rego or ())
        for rule in policy_set.cel_rules:
            if "input" in rule.variables:
                self._whole = True
            paths |= cel_paths(rule.when, rule.variables)
        self._paths = frozenset(paths)
        self._memo: dict[Path, bool] = {}

    def reads(self, path: Path) -> bool:
        """True when some policy may read `path` or anything below or above it."""
        if self._whole:
            return True
        known = self._memo.get(path)
        if known is None:
            known = any(_overlaps(path, q) for q in self._paths)
            self._memo[path] = known
        return known
