"""Policy sets: loaded from a directory or bundle, compiled once, evaluated many times.

`load_policy_set(dir)` returns an immutable `PolicySet` or raises `PolicySetError` listing every
problem as `file:line: message`. `PolicySet.evaluate(doc)` runs Rego and CEL on one enriched
input document and returns what fired; combining that into a Decision is the Engine's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import regopy

from engine.decision import Mask, Reason
from engine.errors import PolicySetError
from engine.policy import cel
from engine.policy.loader import PolicySource, TestFile, mask_method_names, read_policy_dir
from engine.policy.rego import INTERNAL_PACKAGE, RegoProgram, check_calls

__all__ = ["PolicySet", "PolicySetError", "compile_policy_source", "load_policy_set"]


@dataclass(frozen=True)
class PolicySet:
    root: str
    revision: str
    rego: RegoProgram
    cel_rules: tuple[cel.CelRule, ...]
    tests: tuple[TestFile, ...]
    data: dict[str, Any]
    mask_methods: frozenset[str]

    @property
    def cacheable(self) -> bool:
        """False when a policy calls time, random or network builtins."""
        return not self.rego.nondeterministic

    @cached_property
    def literal_insensitive(self) -> bool:
        """True when no policy can see literal values: no Rego module reads `input` whole,
        `input.command` whole or `input.command.raw`, and no CEL rule mentions `raw` or
        `input`. Then SQL that differs only by literals gets the same decision."""
        paths = self.rego.input_paths
        if paths is None or ("command",) in paths or ("command", "raw") in paths:
            return False
        return not any(re.search(r"\b(raw|input)\b", rule.when) for rule in self.cel_rules)

    @cached_property
    def decision_keys(self) -> frozenset[str] | None:
        """The top-level input keys a decision may depend on as a whole, or None when it may
        depend on the whole document: `command` (its facts, and `Decision.command`, come from
        it), `resource` (its type picks the SQL dialect) and every variable a CEL rule names
        (CEL is given exactly those). Below the other keys a decision depends only on what
        the Rego modules read (`decision_input`)."""
        if self.rego.input_paths is None:
            return None
        names: set[str] = {"command", "resource"}
        for rule in self.cel_rules:
            names |= rule.variables
        return None if "input" in names else frozenset(names)

    def decision_input(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The part of an input document that `evaluate` (after the Engine's enrichment of
        `command`) can depend on: equal parts give equal decisions, so the Engine caches by
        it. Fields no policy reads (a session id, a client address) are left out, which lets
        sessions share decisions."""
        keys = self.decision_keys
        if keys is None:
            return doc
        others = self.rego.prune_outside(doc, keys)
        if others is None:
            return doc
        part = {k: doc[k] for k in keys if k in doc}
        part.update(others)
        return part

    def evaluate(self, doc: dict[str, Any]) -> tuple[list[Reason], list[Mask]]:
        """What fired for one enriched input document. Raises EvaluationError."""
        reasons: list[Reason] = []
        masks: list[Mask] = []
        for entry in self.rego.decision_sets(doc):
            package = str(entry.get("package", "?"))
            for effect in ("deny", "review"):
                for item in _as_list(entry.get(effect), package, effect):
                    reasons.append(_reason(package, effect, item))
            for item in _as_list(entry.get("mask"), package, "mask"):
                mask, problem = _mask(package, item, self.mask_methods)
                if mask is not None:
                    masks.append(mask)
                if problem is not None:
                    reasons.append(problem)
        outcome = cel.evaluate(list(self.cel_rules), doc)
        reasons.extend(outcome.reasons)
        masks.extend(outcome.masks)
        return reasons, masks

    def query(self, path: str, doc: Any) -> tuple[bool, Any]:
        """OPA-style `data.a.b.c` (or `a/b/c`) for an input document: (defined, value)."""
        parts = _path_parts(path)
        if not parts:
            return True, self._whole_data(doc)
        for cut in range(len(parts), 0, -1):
            entrypoint = "/".join(parts[:cut])
            if self.rego.has_entrypoint(entrypoint):
                defined, value = self.rego.query(entrypoint, doc)
                return _descend(defined, value, parts[cut:])
        return _descend(True, self._whole_data(doc), parts)

    def defines(self, path: str) -> bool:
        """True when a package, rule or data document of the set is on `path` (so querying
        it is meaningful even when the answer for some input is undefined)."""
        parts = _path_parts(path)
        if any(self.rego.has_entrypoint("/".join(parts[:cut]))
               for cut in range(len(parts), 0, -1)):
            return True
        return _descend(True, self.data, parts)[0]

    def _whole_data(self, doc: Any) -> dict[str, Any]:
        tree: dict[str, Any] = json.loads(json.dumps(self.data))
        for package in self.rego.packages:
            if package.name == INTERNAL_PACKAGE:
                continue
            defined, value = self.rego.query(package.name.replace(".", "/"), doc)
            if not defined:
                continue
            node = tree
            *parents, last = package.name.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        return tree


def load_policy_set(root: str) -> PolicySet:
    """Read, validate and compile a policy directory or bundle; all-or-nothing."""
    return compile_policy_source(read_policy_dir(root), root)


def compile_policy_source(source: PolicySource, root: str) -> PolicySet:
    """Validate and compile what was read from `root`; all-or-nothing."""
    errors = list(source.errors)
    methods = frozenset(mask_method_names())
    rules: list[cel.CelRule] = []
    for path, document, lines in source.cel_files:
        compiled, problems = cel.compile_rules(path, document, lines, set(methods))
        rules.extend(compiled)
        errors.extend(problems)
    for module in source.rego:
        if not module.package:
            errors.append(f"{module.path}:1: missing package declaration")
    probe = regopy.Interpreter()
    errors.extend(check_calls(source.rego, probe.is_builtin))
    if errors:
        raise PolicySetError(errors)
    program = RegoProgram(source.rego, source.data)
    return PolicySet(root=root, revision=source.digest.hexdigest()[:16], rego=program,
                     cel_rules=tuple(rules), tests=tuple(source.tests), data=source.data,
                     mask_methods=methods)


def _path_parts(path: str) -> list[str]:
    path = path.strip().strip("/")
    if path.startswith("data."):
        path = path[5:]
    elif path == "data":
        path = ""
    return [p for p in path.replace(".", "/").split("/") if p]


def _descend(defined: bool, value: Any, rest: list[str]) -> tuple[bool, Any]:
    for key in rest:
        if not defined:
            break
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return defined, value if defined else None


def _as_list(value: Any, package: str, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    if isinstance(value, bool):
        return [f"{package}.{name} is true"] if value else []
    return [value]


def _reason(package: str, effect: str, item: Any) -> Reason:
    if isinstance(item, str):
        return Reason(policy=f"{package}.{effect}", message=item, effect=effect)  # type: ignore[arg-type]
    if isinstance(item, dict):
        message = item.get("msg", item.get("message"))
        rule = item.get("rule") or item.get("id")
        approvers = item.get("approvers") or []
        if isinstance(approvers, str):
            approvers = [approvers]
        return Reason(
            policy=f"{package}.{rule}" if rule else f"{package}.{effect}",
            message=str(message) if message is not None else json.dumps(item, sort_keys=True),
            effect=effect,  # type: ignore[arg-type]
            approvers=tuple(str(a) for a in approvers if isinstance(a, str | int)),
            window=str(item["window"]) if item.get("window") else None,
            rows=_row_budget(item.get("rows")) if effect == "review" else None,
        )
    return Reason(policy=f"{package}.{effect}", message=json.dumps(item), effect=effect)  # type: ignore[arg-type]


def _row_budget(value: Any) -> int | None:
    """A review item's `rows`: a whole number >= 0, else None (a plain review: what cannot be
    read as a budget holds the statement before any row, failing closed)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value < 0 or value > 2**53 or value != int(value):
        return None
    return int(value)


def _mask(package: str, item: Any,
          methods: frozenset[str]) -> tuple[Mask | None, Reason | None]:
    if not isinstance(item, dict) or not isinstance(item.get("column"), str):
        return None, Reason(policy=f"{package}.mask", effect="deny",
                            message=f"invalid mask {json.dumps(item)}: needs a string `column`")
    method = item.get("method", "redact")
    if method not in methods:
        return None, Reason(policy=f"{package}.mask", effect="deny",
                            message=f"unknown mask method {method!r} for column "
                                    f"{item['column']!r}; failing closed")
    return Mask(column=item["column"].lower(), method=str(method), policy=f"{package}.mask"), None

