"""Rego compiled once into a regopy bundle, then queried per decision.

Compilation adds every module (with missing builtins rewritten to Ordinance's Rego versions),
the data documents and one generated module, `ordinance_internal`, whose `decision` rule
collects the `deny`, `review` and `mask` sets of every package under `data.ordinance`. A decision
is one `query_bundle_entrypoint` call: modules are never re-parsed per request.

regopy is not thread-safe per interpreter, so each thread gets its own interpreter; the bundle
(immutable) is shared. Errors during evaluation are read from regopy's error nodes and raised as
`EvaluationError`; they never pass for an empty result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from dataclasses import dataclass
from importlib import resources
from typing import Any

import regopy
from regopy import rego_shared

from engine.errors import EvaluationError, PolicySetError
from engine.policy import rego_host, rego_output
from engine.policy.rego_input import set_input
from engine.policy.rego_safety import (
    arity_table,
    bind_parameters,
    check_module,
    function_arities,
)
from engine.policy.rego_source import (
    FORBIDDEN,
    NONDETERMINISTIC,
    RegoModule,
    blank_calls,
    blank_rules,
    literal_arguments,
    normalise_numbers,
    read_module,
    rewrite_calls,
)

POLICY_ROOT = "ordinance"
DECISION_SETS = ("deny", "review", "mask")
INTERNAL_PACKAGE = "ordinance_internal"
DECISION_ENTRYPOINT = f"{INTERNAL_PACKAGE}/decision"

# Builtins regopy lacks (or gets wrong) that Ordinance provides in Rego (policy/builtins/).
PROVIDED_BUILTINS = {
    "net.cidr_contains": "data.ordinance_builtins.net.cidr_contains",
    "net.cidr_contains_matches": "data.ordinance_builtins.net.cidr_contains_matches",
    "net.cidr_intersects": "data.ordinance_builtins.net.cidr_intersects",
    "net.cidr_expand": "data.ordinance_builtins.net.cidr_expand",
    "net.cidr_is_valid": "data.ordinance_builtins.net.cidr_is_valid",
    "net.cidr_merge": "data.ordinance_builtins.net.cidr_merge",
    "strings.split_n": "data.ordinance_builtins.strings.split_n",
    "object.union": "data.ordinance_builtins.objects.union",
    "object.union_n": "data.ordinance_builtins.objects.union_n",
    "to_number": "data.ordinance_builtins.num.to_number_normalised",
}
# OPA builtins real policy suites use that neither regopy nor Ordinance provides, and why; a
# call is refused at load (regopy would evaluate it to undefined, without an error).
NOT_PROVIDED = {
    "strings.render_template": "Go text/template rendering cannot be written faithfully in "
                               "Rego; use sprintf or concat",
}
# Builtins with no effect on a decision, compiled as `true` (regopy has no print hook).
NO_OP_BUILTINS = frozenset({"print"})
# The module of each package the provided builtins are renamed into (PROVIDED_BUILTINS).
BUILTIN_MODULES = {"net": "net.rego", "num": "num.rego", "objects": "object.rego",
                   "strings": "strings.rego"}
_PROVIDED_NAMES = frozenset(PROVIDED_BUILTINS) | NO_OP_BUILTINS

_STR, _NUM = frozenset({"string"}), frozenset({"number"})
_COLL = frozenset({"array", "set"})
# Argument types of common builtins, to refuse a literal of the wrong type at load, as OPA's
# type checker does (regopy has none: `count(5)` would be an evaluation error, or undefined).
ARGUMENT_TYPES: dict[str, tuple[frozenset[str] | None, ...]] = {
    "count": (frozenset({"string", "array", "object", "set"}),),
    **{name: (_COLL,) for name in ("sum", "product", "max", "min", "sort")},
    **{name: (_STR,) for name in ("upper", "lower", "trim_space", "strings.reverse",
                                  "base64.encode", "base64.decode", "json.unmarshal")},
    **{name: (_STR, _STR) for name in ("split", "contains", "startswith", "endswith",
                                       "indexof", "trim", "trim_left", "trim_right",
                                       "trim_prefix", "trim_suffix", "regex.match")},
    "concat": (_STR, _COLL), "replace": (_STR, _STR, _STR), "substring": (_STR, _NUM, _NUM),
    **{name: (_NUM,) for name in ("abs", "round", "ceil", "floor")},
    "format_int": (_NUM, _NUM), "numbers.range": (_NUM, _NUM),
    "array.concat": (frozenset({"array"}), frozenset({"array"})),
    "array.slice": (frozenset({"array"}), _NUM, _NUM), "sprintf": (_STR, frozenset({"array"})),
    "object.get": (frozenset({"object"}), None, None), "object.keys": (frozenset({"object"}),),
    "to_number": (frozenset({"null", "boolean", "number", "string"}),),
}

_ERROR_NODE = 1800
_ERROR_MSG_NODE = 1801
_ERROR_AST_NODE = 1802
_ERROR_MSG_TEXT = re.compile(r"\(errormsg \d+:([^\n]*?)\)\s*\n")
_REGO_ERROR = re.compile(
    r"\(error \d+:(?P<file>[^|\s]*)\|(?P<offset>\d+)\|\d+\s*\(errormsg \d+:(?P<msg>.*?)\)\s*"
    r"\(errorast",
    re.DOTALL,
)

# `query(entrypoint, NO_INPUT)` evaluates with `input` undefined, as OPA does when a query has
# no input (the conformance runner's cases); decisions always have one.
NO_INPUT: Any = object()

# regopy prints compile errors to stderr itself; the loader reports them with file:line.
regopy.set_default_log_level("None")


@dataclass(frozen=True)
class RegoPackage:
    name: str  # dotted, e.g. "ordinance.payments"
    rules: frozenset[str]


class RegoProgram:
    """The compiled bundle of a policy set and the entrypoints it can answer."""

    def __init__(self, modules: list[RegoModule], data: dict[str, Any], *,
                 with_tests: bool = False, extra_sources: dict[str, str] | None = None,
                 call_renames: dict[str, str] | None = None):
        """`with_tests=False` (serving) leaves `test_*` rules out of the bundle: regopy aborts
        the process compiling `with input as` over rules that call functions, and a decision
        never needs tests. The test runner gives `extra_sources`, which replace module sources
        by path (same offsets for every call), and `call_renames`, functions mocked by others
        (`with f as g`)."""
        self.modules = modules
        self.with_tests = with_tests
        self.extra_sources = extra_sources or {}
        self.call_renames = {**PROVIDED_BUILTINS, **(call_renames or {})}
        self.packages = _packages(modules, with_tests)
        self.decision_packages = [
            p for p in self.packages
            if (p.name == POLICY_ROOT or p.name.startswith(POLICY_ROOT + "."))
            and p.rules & set(DECISION_SETS)
        ]
        self.nondeterministic = any(
            mention.name in NONDETERMINISTIC for m in modules for mention in m.mentions)
        self.with_input_path = any(m.with_input_path for m in modules)
        self.entrypoints = self._entrypoints()
        self.input_paths = _input_paths(modules)
        self._input_tree = _path_tree(self.input_paths)
        self._trees_outside: dict[frozenset[str], dict[str, Any]] = {}
        self._local = threading.local()
        self.host = rego_host.HostCalls()
        self.bundle = self._compile(data)

    # -- compile ---------------------------------------------------------------------------

    def _entrypoints(self) -> list[str]:
        points = [DECISION_ENTRYPOINT]
        for package in self.packages:
            base = package.name.replace(".", "/")
            points.append(base)
            points.extend(f"{base}/{rule}" for rule in sorted(package.rules))
        return points

    def _compile(self, data: dict[str, Any]) -> regopy.Bundle:
        interp = self._new_interpreter()
        errors: list[str] = []
        if data:
            interp.add_data_json(json.dumps(data, ensure_ascii=False))
        builtin_sources = _builtin_sources(self.modules)
        for name, builtins_src in builtin_sources.items():
            interp.add_module(f"ordinance_builtins/{name}", builtins_src)
        sources: dict[str, str] = {}
        safety = _SafetyContext(self.modules, builtin_sources, interp.is_builtin)
        for module in self.modules:
            source = self.extra_sources.get(module.path, module.source)
            if not self.with_tests and module.test_rules:
                source = blank_rules(source, module.spans, set(module.test_rules))
            source, inexact = normalise_numbers(source)
            errors.extend(f"{_display(module.path)}:{line}: {message}"
                          for line, message in inexact)
            source = blank_calls(source, module.calls, NO_OP_BUILTINS)
            source = rewrite_calls(source, module.calls, self.call_renames)
            source, refused = rego_host.plan(source, read_module(module.path, source).calls,
                                             data, self.host)
            errors.extend(f"{_display(module.path)}:{line}: {message}" for line, message in refused)
            source, unsafe = safety.check(module, source)
            errors.extend(f"{_display(module.path)}:{line}: {message}" for line, message in unsafe)
            sources[module.path] = source
            if inexact or unsafe or refused:
                continue
            try:
                interp.add_module(module.path, source)
            except rego_shared.RegoError as err:
                errors.extend(_compile_errors(str(err), module.path, sources))
        if errors:
            raise PolicySetError(errors)
        interp.add_module("ordinance_internal.rego", self._aggregator_source())
        try:
            bundle = interp.build(None, self.entrypoints)
        except rego_shared.RegoError as err:
            raise PolicySetError(_compile_errors(str(err), "", sources)) from None
        if not bundle.ok():
            raise PolicySetError(["policy set failed to compile (regopy gave no detail)"])
        return bundle

    def _aggregator_source(self) -> str:
        lines = [f"package {INTERNAL_PACKAGE}", "", "import rego.v1", ""]
        entries = []
        for i, package in enumerate(self.decision_packages):
            fields = []
            for name in DECISION_SETS:
                if name in package.rules:
                    var = f"_p{i}_{name}"
                    lines.append(f"{var} := v if {{ v := data.{package.name}.{name} }} else := []")
                    fields.append(f'"{name}": {var}')
            entries.append(f'{{"package": "{package.name}", {", ".join(fields)}}}')
        lines.append("")
        lines.append(f"decision := [{', '.join(entries)}]")
        return "\n".join(lines) + "\n"

    @staticmethod
    def _new_interpreter() -> regopy.Interpreter:
        interp = regopy.Interpreter()
        interp.strict_built_in_errors = True
        interp.log_level = regopy.LogLevel.NONE
        return interp

    # -- evaluate --------------------------------------------------------------------------

    def _interpreter(self) -> regopy.Interpreter:
        interp = getattr(self._local, "interp", None)
        if interp is None:
            interp = self._new_interpreter()
            self._local.interp = interp
        return interp

    def query(self, entrypoint: str, input_doc: Any) -> tuple[bool, Any]:
        """(defined, value) of one entrypoint (`pkg/path/rule`) for an input document.

        Calls regopy's C API directly: its `Output` wrapper parses the result JSON eagerly and
        raises on the error text regopy returns with `ok() == True` (e.g. bundle defects).
        """
        if self.with_input_path and not isinstance(input_doc, dict):
            # regopy 1.5.2 segfaults on `with input.a as ...` when the input is no object
            raise EvaluationError("this policy set overrides input fields with `with input.…`; "
                                  "its input must be a JSON object")
        if input_doc is NO_INPUT:
            interp = self._new_interpreter()  # a fresh one: an input once set stays set
        else:
            interp = self._interpreter()
            pruned = self.prune(input_doc)
            if self.host.calls and isinstance(input_doc, dict):
                pruned = {**pruned, rego_host.HOST_KEY: self.host.compute(input_doc)}
            set_input(interp, pruned)
        impl = rego_shared.rego_bundle_query_entrypoint(interp._impl, self.bundle._impl,
                                                        entrypoint)
        try:
            ok = rego_shared.rego_output_ok(impl)
            if not ok:
                messages: list[str] = []
                with contextlib.suppress(rego_shared.RegoError):
                    _collect_error_messages(rego_shared.rego_output_node(impl), messages)
                raise EvaluationError(_error_text(entrypoint, messages))
            node = rego_shared.rego_output_node(impl)
            if rego_output.is_undefined(node):
                return False, None
            if not rego_output.is_results(node):  # an `(error …)` answered with ok() true
                text = rego_shared.rego_output_string(impl)
                raise EvaluationError(_error_text(entrypoint, _ERROR_MSG_TEXT.findall(text)))
            try:
                expressions = rego_output.expressions(node)
            except rego_shared.RegoError as err:
                raise EvaluationError(f"unreadable result from {entrypoint}: {err}") from None
        finally:
            rego_shared.rego_free_output(impl)
        if not expressions:
            return False, None
        return True, expressions[0]

    def decision_sets(self, input_doc: Any) -> list[dict[str, Any]]:
        """One entry per decision package: `{"package", "deny", "review", "mask"}`."""
        if not self.decision_packages:
            return []
        defined, value = self.query(DECISION_ENTRYPOINT, input_doc)
        if not defined or not isinstance(value, list):
            raise EvaluationError("decision query was undefined (a rule is unsafe or erroneous)")
        return value

    def has_entrypoint(self, entrypoint: str) -> bool:
        return entrypoint in self.entrypoints

    def prune(self, input_doc: Any) -> Any:
        """The part of `input_doc` the policies can read (all of it when unknown)."""
        return _prune(input_doc, self._input_tree)

    def prune_outside(self, input_doc: dict[str, Any], keys: frozenset[str]
                      ) -> dict[str, Any] | None:
        """`prune(input_doc)` less the top-level `keys` (for a caller that keeps those
        whole), or None when the modules may read all of `input`."""
        if self._input_tree is None:
            return None
        tree = self._trees_outside.get(keys)
        if tree is None:
            tree = {k: v for k, v in self._input_tree.items() if k not in keys}
            self._trees_outside[keys] = tree
        if not tree:
            return {}
        pruned: dict[str, Any] = _prune(input_doc, tree)
        return pruned


def _builtin_sources(modules: list[RegoModule]) -> dict[str, str]:
    """The builtin modules (`engine/policy/builtins/`) the set calls into, by file name: a
    bundle compiles only those (object.rego alone adds ~100 ms to a load)."""
    called = {c.name for m in modules for c in m.calls}
    files = sorted({BUILTIN_MODULES[PROVIDED_BUILTINS[name].split(".")[2]]
                    for name in called if name in PROVIDED_BUILTINS})
    return {name: resources.files("engine.policy.builtins").joinpath(name).read_text()
            for name in files}


class _SafetyContext:
    """What OPA's safety check needs across modules: each package's rule names (globals)
    and the arity of every function (for calls with an output argument)."""

    def __init__(self, modules: list[RegoModule], builtin_sources: dict[str, str],
                 is_builtin: Any):
        self.rules: dict[str, set[str]] = {}
        arities: dict[str, int] = {}
        self.functions: set[str] = set()
        for name, source in builtin_sources.items():  # provided builtins are renamed to these
            arities.update(function_arities(source, read_module(name, source).spans))
        for module in modules:
            self.rules.setdefault(module.package, set()).update(module.rules)
            self.functions |= module.functions
            arities.update(function_arities(module.source, module.spans))
        self.arity = arity_table(arities)
        self.is_builtin = is_builtin

    def check(self, module: RegoModule, source: str) -> tuple[str, list[tuple[int, str]]]:
        """The source with bodies in OPA's order, and `(line, message)` per unsafe var."""
        globals_ = self.rules.get(module.package, set()) | set(module.imports) \
            | {"data", "input"}
        source, problems = bind_parameters(source, read_module(module.path, source).spans)
        if problems:
            return source, problems
        source, unsafe = check_module(
            source, read_module(module.path, source).spans, globals_, self.arity,
            lambda name: name in self.functions or name in PROVIDED_BUILTINS
            or bool(self.is_builtin(name)),
            generated=lambda name: name.startswith("__ordinance_cov"))
        return source, [(u.line, u.text()) for u in unsafe]


def _input_paths(modules: list[RegoModule]) -> list[tuple[str, ...]] | None:
    """What the modules read of `input` (None: all of it). Test rules count too."""
    paths: set[tuple[str, ...]] = set()
    for module in modules:
        if module.input_paths is None:
            return None
        paths |= module.input_paths
    return sorted(paths)


_WHOLE: dict[str, Any] = {}
"""Marks a path the policies read entirely (a sentinel, compared by identity)."""


def _path_tree(paths: list[tuple[str, ...]] | None) -> dict[str, Any] | None:
    """The read paths as a tree of keys; a leaf is `_WHOLE`. A shorter path wins."""
    if paths is None:
        return None
    tree: dict[str, Any] = {}
    for path in sorted(paths, key=len):
        node = tree
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if child is _WHOLE:
                break
            node = child
        else:
            node[path[-1]] = _WHOLE
    return tree


def _prune(doc: Any, tree: dict[str, Any] | None) -> Any:
    """The part of `doc` the policies can read. regopy builds its input at ~5 µs a node in C,
    so a field no policy mentions is not worth passing; results cannot change. Below a path
    that meets a non-object (a list, a string), the whole value is kept."""
    if tree is None or tree is _WHOLE or not isinstance(doc, dict):
        return doc
    return {key: _prune(doc[key], sub) for key, sub in tree.items() if key in doc}


def _packages(modules: list[RegoModule], with_tests: bool) -> list[RegoPackage]:
    rules: dict[str, set[str]] = {}
    for module in modules:
        names = module.rules - module.functions  # a function is never an entrypoint
        if not with_tests:
            names -= set(module.test_rules)
        rules.setdefault(module.package, set()).update(names)
    return [RegoPackage(name, frozenset(r)) for name, r in sorted(rules.items()) if name]


def _error_text(entrypoint: str, messages: list[str]) -> str:
    detail = "; ".join(dict.fromkeys(m.strip() for m in messages if m.strip()))
    return f"data.{entrypoint.replace('/', '.')}: {detail or 'evaluation failed (no detail)'}"


def _collect_error_messages(impl: Any, out: list[str], depth: int = 0) -> None:
    if depth > 6:
        return
    kind = rego_shared.rego_node_type(impl)
    if kind == _ERROR_MSG_NODE:
        value = rego_shared.rego_node_value(impl)
        if value:
            out.append(value)
        return
    if kind == _ERROR_AST_NODE:
        return
    for i in range(rego_shared.rego.regoNodeSize(impl)):
        _collect_error_messages(rego_shared.rego_node_get(impl, i), out, depth + 1)


def _compile_errors(text: str, default_file: str, sources: dict[str, str]) -> list[str]:
    errors = []
    for m in _REGO_ERROR.finditer(text):
        file = m.group("file") or default_file
        offset = int(m.group("offset"))
        source = sources.get(file, "")
        line = source.count("\n", 0, offset) + 1
        errors.append(f"{_display(file)}:{line}: {m.group('msg').strip()}")
    if not errors:
        first = text.strip().splitlines()[0] if text.strip() else "compile error"
        errors.append(f"{_display(default_file) or 'policy set'}: {first}")
    return list(dict.fromkeys(errors))


def _display(path: str) -> str:
    return os.path.relpath(path) if os.path.isabs(path) else path


def _type_errors(module: RegoModule, call: Any) -> list[str]:
    wanted = ARGUMENT_TYPES[call.name]
    kinds = literal_arguments(module.source, call)
    if len(kinds) != len(wanted):
        return []  # a wrong argument count is regopy's compile error
    return [f"type error: {call.name}: argument {i + 1} is a {have} literal, "
            f"it must be {' or '.join(sorted(want))}"
            for i, (have, want) in enumerate(zip(kinds, wanted, strict=True))
            if have is not None and want is not None and have not in want]


def check_calls(modules: list[RegoModule], is_builtin: Any) -> list[str]:
    """`file:line: ...` for each call that is neither a builtin regopy implements, a provided
    builtin, nor a function the policy set defines; and for each forbidden builtin."""
    defined = {f for m in modules for f in m.functions}
    refs = {r for m in modules for r in m.function_refs}
    errors: list[str] = []
    for module in modules:
        errors.extend(f"{_display(module.path)}:{module.package_line}: a function named {name} "
                      "would shadow a builtin Ordinance provides; rename it"
                      for name in sorted(module.function_refs & _PROVIDED_NAMES))
        if rego_host.HOST_KEY in module.source:
            errors.append(f"{_display(module.path)}:{module.package_line}: the name "
                          f"{rego_host.HOST_KEY} is reserved (host builtin results)")
        called = {c.offset for c in module.calls}
        for mention in module.mentions:
            if mention.name in FORBIDDEN and mention.offset not in called:
                errors.append(f"{_display(module.path)}:{mention.line}: "
                              f"{FORBIDDEN[mention.name]}")
        for call in module.calls:
            name = call.name
            where = f"{_display(module.path)}:{call.line}"
            if name in ARGUMENT_TYPES and name not in defined:
                errors.extend(f"{where}: {problem}" for problem in _type_errors(module, call))
            if name in FORBIDDEN:
                errors.append(f"{where}: {FORBIDDEN[name]}")
                continue
            if name in PROVIDED_BUILTINS or name in NO_OP_BUILTINS or name in rego_host.CALLS:
                continue
            head, _, _ = name.partition(".")
            last = name.rsplit(".", 1)[-1]
            if "." not in name and name in module.functions | defined:
                continue
            if name == "set" or name in refs:
                continue  # `set()` is the empty-set literal; `p.q.f(x)` a ref-head function
            if (head == "data" or head in module.imports) and last in defined:
                continue
            if is_builtin(name):
                continue
            if name in NOT_PROVIDED:
                errors.append(f"{where}: unknown builtin {name} ({NOT_PROVIDED[name]})")
                continue
            errors.append(f"{where}: unknown builtin {name}")
    return list(dict.fromkeys(errors))
