"""CEL rule files: compiled and type-checked once at load, evaluated per decision.

A rule file is YAML with a top-level `rules:` list:

    rules:
      - name: block-truncate
        effect: deny            # deny | review | mask
        when: 'command.kinds.exists(k, k == "truncate")'
        message: "TRUNCATE is not allowed"
      - name: bulk-read
        effect: review          # with `rows`: only past that many result rows (a row budget)
        when: '"cards" in command.tables'
        approvers: [dba-leads]
        rows: 100
      - name: mask-pan
        effect: mask
        when: 'has(resource.labels.pci) && resource.labels.pci == "true"'
        mask: [{column: pan, method: pan}]

One CEL environment (Google's CEL via cel-expr-python, with the extensions in
`CEL_EXTENSIONS`) is built once. Its variables are the top-level keys of the input document,
each of type `dyn`: `subject`, `resource`, `command`, `session`, `context`, plus `input` for
the whole document and the opa-envoy-plugin keys (`attributes`, `parsed_path`, `parsed_query`,
`parsed_body`).
A missing key is an error value in CEL (`has()` tests for presence); an error value is a deny
with the error as reason, never a skipped rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel

from engine.decision import Mask, Reason
from engine.native import allocator_problem
from engine.policy.cel_source import static_problems

CEL_VARIABLES = (
    "subject", "resource", "command", "session", "context", "input", "request",
    "attributes", "parsed_path", "parsed_query", "parsed_body", "truncated_body", "version",
)
EFFECTS = ("deny", "review", "mask")
_RULE_KEYS = {"name", "effect", "when", "message", "mask", "approvers", "window", "rows",
              "description"}

# cel-expr-python's libraries, by the names its environment config knows. Not available in
# cel-expr-python 0.1.3: the network extension (`ip`, `cidr`), `transformMap` and
# `transformMapEntry` (refused at load, see cel_source.py).
CEL_EXTENSIONS = ("strings", "math", "encoders", "optional", "bindings", "sets", "lists",
                  "two-var-comprehensions", "regex", "protos")
_CONFIG = "extensions:\n" + "".join(f"  - name: {name}\n" for name in CEL_EXTENSIONS)


def new_env(variables: dict[str, Any], container: str | None = None) -> Any:
    """A CEL environment with Ordinance's extensions and the given variables (name -> Type)."""
    return cel.NewEnv(config=cel.NewEnvConfigFromYaml(_CONFIG), variables=variables,
                      container=container or None)


_ENV = new_env({name: cel.Type.DYN for name in CEL_VARIABLES})


def cel_env() -> Any:
    """The one CEL environment every rule is compiled in."""
    return _ENV


def compile_expression(env: Any, expression: str, disable_check: bool = False) -> Any:
    """The compiled program, or RuntimeError with cel-expr-python's message or ours."""
    problems = static_problems(expression)
    if problems:
        raise RuntimeError(problems[0])
    return env.compile(expression, disable_check=disable_check)


@dataclass
class CelRule:
    name: str
    effect: str
    when: str
    source: str  # "file:line" of the rule, for errors
    program: Any
    policy: str = ""  # "file#name", for reasons
    variables: frozenset[str] = frozenset(CEL_VARIABLES)  # the input keys `when` mentions
    message: str = ""
    approvers: tuple[str, ...] = ()
    window: str | None = None
    masks: tuple[Mask, ...] = field(default_factory=tuple)
    rows: int | None = None


@dataclass
class CelOutcome:
    reasons: list[Reason]
    masks: list[Mask]


def compile_rules(path: str, document: Any, lines: dict[int, int],
                  mask_methods: set[str]) -> tuple[list[CelRule], list[str]]:
    """Rules of one file and `file:line: message` errors. `lines` maps rule index -> line."""
    problem = allocator_problem()
    if problem:
        return [], [f"{path}:1: CEL cannot run safely in this process: {problem}"]
    errors: list[str] = []
    rules: list[CelRule] = []
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list):
        return [], [f"{path}:1: `rules` must be a list"]
    names: set[str] = set()
    for index, raw in enumerate(raw_rules):
        where = f"{path}:{lines.get(index, 1)}"
        if not isinstance(raw, dict):
            errors.append(f"{where}: rule {index} must be a mapping")
            continue
        unknown = set(raw) - _RULE_KEYS
        if unknown:
            errors.append(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = raw.get("name")
        effect = raw.get("effect")
        when = raw.get("when")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: rule {index} needs a `name`")
            continue
        if name in names:
            errors.append(f"{where}: duplicate rule name {name!r}")
        names.add(name)
        if effect not in EFFECTS:
            errors.append(f"{where}: rule {name!r}: effect must be one of {', '.join(EFFECTS)}")
            continue
        if not isinstance(when, str) or not when.strip():
            errors.append(f"{where}: rule {name!r} needs a `when` expression")
            continue
        try:
            program = compile_expression(_ENV, when)
        except RuntimeError as err:
            errors.append(f"{where}: rule {name!r}: {_cel_message(err)}")
            continue
        return_type = program.return_type()
        if return_type not in (cel.Type.BOOL, cel.Type.DYN):
            errors.append(f"{where}: rule {name!r}: `when` must be a bool, "
                          f"not {return_type.name().lower()}")
            continue
        masks, mask_errors = _masks(raw.get("mask"), effect, name, where, mask_methods)
        errors.extend(mask_errors)
        approvers = raw.get("approvers") or []
        if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
            errors.append(f"{where}: rule {name!r}: approvers must be a list of group names")
            approvers = []
        rows = raw.get("rows")
        if rows is not None and (effect != "review" or isinstance(rows, bool)
                                 or not isinstance(rows, int) or rows < 0):
            errors.append(f"{where}: rule {name!r}: rows must be a whole number >= 0, on a "
                          "review rule")
            rows = None
        message = raw.get("message") or raw.get("description") or name
        rules.append(CelRule(
            name=name, effect=effect, when=when, source=where, program=program,
            policy=f"{path}#{name}", variables=_mentioned_variables(when),
            message=str(message), approvers=tuple(approvers),
            window=str(raw["window"]) if raw.get("window") else None, masks=masks,
            rows=rows,
        ))
    return rules, errors


def _masks(raw: Any, effect: str, name: str, where: str,
           mask_methods: set[str]) -> tuple[tuple[Mask, ...], list[str]]:
    if effect != "mask":
        if raw:
            return (), [f"{where}: rule {name!r}: `mask` only goes with effect: mask"]
        return (), []
    if not isinstance(raw, list) or not raw:
        return (), [f"{where}: rule {name!r}: effect mask needs a `mask` list"]
    masks = []
    errors = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("column"), str):
            errors.append(f"{where}: rule {name!r}: each mask needs a `column`")
            continue
        method = item.get("method", "redact")
        if method not in mask_methods:
            errors.append(f"{where}: rule {name!r}: unknown mask method {method!r} "
                          f"(known: {', '.join(sorted(mask_methods))})")
            continue
        masks.append(Mask(column=item["column"].lower(), method=method, policy=name))
    return tuple(masks), errors


def _cel_message(err: Exception) -> str:
    text = str(err).replace("INVALID_ARGUMENT: ", "").strip()
    return " ".join(line.strip() for line in text.splitlines()[:1]).replace("ERROR: ", "")


def _mentioned_variables(expression: str) -> frozenset[str]:
    """The environment's variables an expression names (a superset is harmless)."""
    return frozenset(n for n in CEL_VARIABLES if re.search(rf"\b{n}\b", expression))


def activation_data(doc: dict[str, Any], names: frozenset[str] = frozenset(CEL_VARIABLES)
                    ) -> dict[str, Any]:
    """The variables for one document. Only the named ones are converted to CEL values
    (conversion is most of an evaluation's cost); the others are empty maps."""
    data = {name: doc.get(name, {}) if name in names else {} for name in CEL_VARIABLES}
    data["input"] = doc if "input" in names else {}
    return data


def evaluate(rules: list[CelRule], doc: dict[str, Any]) -> CelOutcome:
    """Every rule against one document. An error value is a deny naming the rule."""
    outcome = CelOutcome(reasons=[], masks=[])
    if not rules:
        return outcome
    names = frozenset().union(*(rule.variables for rule in rules))
    activation = _ENV.Activation(activation_data(doc, names))
    for rule in rules:
        try:
            # cel-expr-python raises for some evaluation errors (a repeated map key built at
            # run time, a result it cannot convert) instead of returning an error value
            value = rule.program.eval(activation)
            kind = value.type()
            result = value.value()
        except RuntimeError as err:
            kind, result = cel.Type.ERROR, _cel_message(err)
        if kind == cel.Type.ERROR:
            outcome.reasons.append(Reason(
                policy=rule.policy,
                message=f"CEL rule {rule.name!r} failed: {result}", effect="deny"))
            continue
        if kind != cel.Type.BOOL:
            outcome.reasons.append(Reason(
                policy=rule.policy,
                message=f"CEL rule {rule.name!r} returned {kind.name().lower()}, not bool",
                effect="deny"))
            continue
        if not result:
            continue
        if rule.effect == "mask":
            outcome.masks.extend(rule.masks)
        else:
            outcome.reasons.append(Reason(
                policy=rule.policy, message=rule.message,
                effect=rule.effect, approvers=rule.approvers, window=rule.window,  # type: ignore[arg-type]
                rows=rule.rows))
    return outcome
