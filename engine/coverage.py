"""`ordinance test --coverage`: which Rego lines and rule bodies, and which CEL rules, the
tests reached, in the JSON shape of `opa test --coverage`.

regopy has no tracer, so coverage is measured by evaluating generated marker rules, never by
changing the policies the tests run (the tests' outcomes come from the plain runner; markers
are evaluated in a second, instrumented copy of each test's program, with the same mocks and
input). Every rule definition's body is split into its top-level expressions (the Rego
tokenizer's spans; offsets and lines stay as written) and for each prefix of i expressions one
marker is appended to the module:

    __ordinance_cov contains 17 if { <expressions 1..i of the body> }

Expression i+1 was evaluated when the rule was reached and marker i holds; the head is covered
when the whole body holds, as OPA counts it. A function's body reads its parameters, so its
markers are per call site: the caller's expressions before the call, then a call to a copy of
the function definition cut to its prefix (`__ordinance_covfn_N(params) if { prefix }`).

Which rules a test reaches is a fixpoint: the test rule is reached; a rule mentioned in an
evaluated expression of a reached rule is reached. YAML decision cases reach the `deny`,
`review` and `mask` rules of every decision package, with the input the engine builds
(`command` enriched). What is not measured is reported as not covered, never as covered: calls
to functions from other functions and from comprehensions, and `else` branches of functions.
A CEL rule is covered when a decision case made it fire (true), its lines being the rule's
entry in its YAML file.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

from cel_expr_python import cel as celpy

from engine.errors import EvaluationError, PolicySetError
from engine.facts import enrich_command
from engine.policy import PolicySet
from engine.policy.cel import CelRule, activation_data, cel_env
from engine.policy.rego import DECISION_SETS, RegoProgram
from engine.policy.rego_source import _TOKEN, KEYWORDS, RegoModule
from engine.rego_testing import RegoSuite, RegoTest

MARKER_RULE = "__ordinance_cov"
COPY_PREFIX = "__ordinance_covfn_"

RuleKey = tuple[str, str]  # (package, rule)


@dataclass
class _Expr:
    start: int
    end: int
    lines: tuple[int, int]
    mentions: set[RuleKey] = field(default_factory=set)


@dataclass
class _Def:
    """One definition of a rule or function (one top-level span)."""

    path: str
    key: RuleKey
    text: str  # the module's (test-rewritten) source
    head_lines: tuple[int, int]
    exprs: list[_Expr]
    is_function: bool
    is_test: bool
    params: str = ""
    else_lines: tuple[int, int] | None = None
    prefix_markers: dict[int, int] = field(default_factory=dict)  # i -> marker (rules)
    else_marker: int | None = None  # holds when the first body is false (rules)
    head_mentions: set[RuleKey] = field(default_factory=set)  # read when the body holds


@dataclass
class _Site:
    """A call of a function at the top level of a rule's body: where its markers live."""

    caller: _Def
    expr: int  # index of the caller's expression holding the call
    callee: _Def
    markers: dict[int, int] = field(default_factory=dict)  # callee prefix i -> marker


@dataclass
class CoverageReport:
    """Covered and not-covered lines per file, and rule-level counts."""

    covered: dict[str, set[int]] = field(default_factory=dict)
    lines: dict[str, set[int]] = field(default_factory=dict)  # every line that counts
    # (path, rule name, first line, whether its body held for some test)
    rules: list[tuple[str, str, int, bool]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_item(self, path: str, lines: tuple[int, int], covered: bool) -> None:
        span = set(range(lines[0], lines[1] + 1))
        self.lines.setdefault(path, set()).update(span)
        self.covered.setdefault(path, set())
        if covered:
            self.covered[path].update(span)

    @property
    def percent(self) -> float:
        """The total, as in the JSON report (0 when nothing can be covered, as in OPA)."""
        return float(to_opa_json(self)["coverage"])


class RegoCoverage:
    """The markers of a policy set's Rego modules, and what they say after each test."""

    def __init__(self, modules: list[RegoModule], sources: dict[str, str]):
        self.modules = modules
        self.package_rules: dict[str, set[str]] = {}
        for m in modules:
            self.package_rules.setdefault(m.package, set()).update(m.rules)
        self.defs: list[_Def] = []
        self.sites: list[_Site] = []
        self._marker_package: dict[int, str] = {}
        self.appended: dict[str, list[str]] = {}
        for module in modules:
            self._read_defs(module, sources.get(module.path, module.source))
        for d in self.defs:
            self._add_rule_markers(d)
        self._add_sites()

    # -- reading ------------------------------------------------------------------------------

    def _read_defs(self, module: RegoModule, text: str) -> None:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]

        def line(offset: int) -> int:
            return bisect.bisect_right(starts, offset)

        for name, start, end in module.spans:
            tokens = [(m.lastgroup, m.group(), m.start(), m.end())
                      for m in _TOKEN.finditer(text, start, end)
                      if m.lastgroup not in ("space", "comment")]
            significant = [t for t in tokens if t[0] != "newline"]
            if not significant:
                continue
            last_end = significant[-1][3]
            is_function = name in module.functions and _head_call(significant)
            params = ""
            if is_function:  # the head is `name(params)`: tokens 1 and its match
                params = text[tokens[1][3]:tokens[_matching(tokens, 1)][2]]
            body_at = _depth0_index(tokens, "if")
            exprs: list[_Expr] = []
            head_end = last_end
            else_lines = None
            if body_at is not None:
                head_end = tokens[body_at][3]
                first = body_at + 1
                while first < len(tokens) and tokens[first][0] == "newline":
                    first += 1
                if first < len(tokens) and tokens[first][1] == "{":
                    close = _matching(tokens, first)
                    exprs = _split(tokens[first + 1:close])
                    after = close + 1
                else:  # `if` and one expression, up to the end of its line
                    after, depth = first, 0
                    while after < len(tokens) and not (tokens[after][0] == "newline"
                                                       and depth == 0):
                        depth += tokens[after][0] == "open"
                        depth -= tokens[after][0] == "close"
                        after += 1
                    exprs = _split(tokens[first:after])
                tail = [t for t in tokens[after:] if t[0] != "newline"]
                if tail and tail[0][1] == "else":
                    else_lines = (line(tail[0][2]), line(last_end - 1))
            for e in exprs:
                e.lines = (line(e.start), line(e.end - 1))
                e.mentions = self._mentions(module, text[e.start:e.end])
            self.defs.append(_Def(
                path=module.path, key=(module.package, name), text=text,
                head_lines=(line(start), line(head_end - 1)), exprs=exprs,
                is_function=is_function, is_test=name in module.test_rules, params=params,
                else_lines=else_lines,
                head_mentions=self._mentions(module, text[start:head_end])
                - {(module.package, name)}))

    def _mentions(self, module: RegoModule, text: str) -> set[RuleKey]:
        found: set[RuleKey] = set()
        for m in _TOKEN.finditer(text):
            if m.lastgroup != "name" or m.group() in KEYWORDS:
                continue
            name = m.group()
            first = name.split(".", 1)[0]
            if first in module.imports:
                name = module.imports[first] + name[len(first):]
            if name.startswith("data."):
                parts = name.split(".")[1:]
                for cut in range(len(parts) - 1, 0, -1):
                    package = ".".join(parts[:cut])
                    if parts[cut] in self.package_rules.get(package, ()):
                        found.add((package, parts[cut]))
                        break
            elif first in self.package_rules.get(module.package, ()):
                found.add((module.package, first))
        return found

    # -- markers ------------------------------------------------------------------------------

    def _marker(self, package: str, path: str, body: str) -> int:
        marker = len(self._marker_package)
        self._marker_package[marker] = package
        self.appended.setdefault(path, []).append(
            f"\n{MARKER_RULE} contains {marker} if {{\n{body}\n}}\n")
        return marker

    def _body(self, d: _Def, count: int) -> str:
        return "\n".join(d.text[e.start:e.end] for e in d.exprs[:count])

    def _add_rule_markers(self, d: _Def) -> None:
        if d.is_function:
            return
        package = d.key[0]
        for i in range(1, len(d.exprs) + 1):
            d.prefix_markers[i] = self._marker(package, d.path, self._body(d, i))
        if d.else_lines is not None and d.exprs:
            aux = f"{COPY_PREFIX}else_{len(self._marker_package)}"
            self.appended.setdefault(d.path, []).append(
                f"\n{aux} if {{\n{self._body(d, len(d.exprs))}\n}}\n")
            d.else_marker = self._marker(package, d.path, f"not {aux}")

    def _add_sites(self) -> None:
        functions: dict[RuleKey, list[_Def]] = {}
        for d in self.defs:
            if d.is_function:
                functions.setdefault(d.key, []).append(d)
        module_of = {m.path: m for m in self.modules}
        for caller in [d for d in self.defs if not d.is_function]:
            module = module_of[caller.path]
            for call in module.calls:
                for index, e in enumerate(caller.exprs):
                    if not e.start <= call.offset < e.end \
                            or not caller.text.startswith(call.name, call.offset):
                        continue  # elsewhere, or in a `with` value the test runner blanked
                    key = next(iter(self._mentions(module, call.name)), None)
                    if key is None or key not in functions \
                            or _nesting(caller.text, e.start, call.offset) != 0:
                        continue
                    close = _call_close(caller.text, call.offset + len(call.name))
                    if close is None:
                        continue
                    args = caller.text[caller.text.index("(", call.offset) + 1:close - 1]
                    for callee in functions[key]:
                        self.sites.append(self._site(caller, index, callee, args))

    def _site(self, caller: _Def, index: int, callee: _Def, args: str) -> _Site:
        site = _Site(caller, index, callee)
        package = callee.key[0]
        for i in range(1, len(callee.exprs) + 1):
            copy = f"{COPY_PREFIX}{len(self._marker_package)}"
            self.appended.setdefault(callee.path, []).append(
                f"\n{copy}({callee.params}) if {{\n{self._body(callee, i)}\n}}\n")
            prefix = self._body(caller, index)
            site.markers[i] = self._marker(
                caller.key[0], caller.path,
                f"{prefix}\ndata.{package}.{copy}({args})")
        return site

    @property
    def marker_packages(self) -> list[str]:
        return sorted(set(self._marker_package.values()))

    # -- what one test reached ----------------------------------------------------------------

    def holding(self, program: RegoProgram, input_doc: Any) -> set[int]:
        """The markers that hold for one program and input."""
        held: set[int] = set()
        for package in self.marker_packages:
            defined, value = program.query(f"{package.replace('.', '/')}/{MARKER_RULE}",
                                           input_doc)
            if defined and isinstance(value, list):
                held.update(v for v in value if isinstance(v, int))
        return held

    def observe(self, held: set[int], roots: set[RuleKey], mocked: set[RuleKey],
                covered: set[tuple[int, int]]) -> None:
        """Add to `covered` ((def index, expression index), with len(exprs) for the head and
        -1 for the else branch) what a test with these markers holding evaluated."""
        reached = set(roots) - mocked
        changed = True
        while changed:
            changed = False
            for i, d in enumerate(self.defs):
                for j in self._evaluated(d, held, reached, mocked):
                    covered.add((i, j))
                    read = d.exprs[j].mentions if 0 <= j < len(d.exprs) else \
                        d.head_mentions if j == len(d.exprs) else set()
                    new = read - reached - mocked
                    if new:
                        reached |= new
                        changed = True

    def _evaluated(self, d: _Def, held: set[int], reached: set[RuleKey], mocked: set[RuleKey]
                   ) -> list[int]:
        """The expression indexes of a definition that were evaluated (len(exprs) for a true
        body, -1 for a reached else branch)."""
        out: set[int] = set()
        if d.key in mocked:
            return []
        if not d.is_function:
            if d.key not in reached:
                return []
            out.add(0)
            out.update(k for k, m in d.prefix_markers.items() if m in held)
            if d.else_marker is not None and d.else_marker in held:
                out.add(-1)
            return sorted(out)
        for site in self.sites:
            if site.callee is not d or site.caller.key not in reached:
                continue
            caller_evaluated = site.expr == 0 or \
                site.caller.prefix_markers.get(site.expr) in held
            if not caller_evaluated:
                continue
            out.add(0)
            out.update(k for k, m in site.markers.items() if m in held)
        return sorted(out)


def _head_call(tokens: list[tuple[Any, str, int, int]]) -> bool:
    return len(tokens) > 1 and tokens[1][1] == "("


def _matching(tokens: list[tuple[Any, str, int, int]], open_index: int) -> int:
    depth = 0
    for i in range(open_index, len(tokens)):
        if tokens[i][0] == "open":
            depth += 1
        elif tokens[i][0] == "close":
            depth -= 1
            if depth == 0:
                return i
    return len(tokens) - 1


def _depth0_index(tokens: list[tuple[Any, str, int, int]], word: str) -> int | None:
    depth = 0
    for i, (kind, text, _, _) in enumerate(tokens):
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        elif depth == 0 and kind == "name" and text == word:
            return i
    return None


def _split(tokens: list[tuple[Any, str, int, int]]) -> list[_Expr]:
    """Top-level expressions of a body's tokens: split at newlines and `;` at depth 0."""
    exprs: list[_Expr] = []
    depth = 0
    first: int | None = None
    last = 0
    for kind, text, start, end in tokens:
        if depth == 0 and (kind == "newline" or text == ";"):
            if first is not None:
                exprs.append(_Expr(first, last, (0, 0)))
            first = None
            continue
        if kind == "newline":
            continue
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
        if first is None:
            first = start
        last = end
    if first is not None:
        exprs.append(_Expr(first, last, (0, 0)))
    return exprs


def _nesting(text: str, start: int, offset: int) -> int:
    depth = 0
    for m in _TOKEN.finditer(text, start, offset):
        depth += m.lastgroup == "open"
        depth -= m.lastgroup == "close"
    return depth


def _call_close(text: str, at: int) -> int | None:
    depth = 0
    for m in _TOKEN.finditer(text, at):
        if m.lastgroup == "open":
            depth += 1
        elif m.lastgroup == "close":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


# -- the whole run -----------------------------------------------------------------------------

def measure(policy_set: PolicySet) -> CoverageReport:
    """Coverage of the set's Rego and CEL rules by its Rego tests and YAML decision cases.
    Raises PolicySetError when the instrumented policies do not compile."""
    report = CoverageReport()
    modules = policy_set.rego.modules
    reserved = [f"{m.path}:{m.package_line}: the rule name {rule} is reserved for coverage "
                "markers" for m in modules for rule in sorted(m.rules)
                if rule.startswith((MARKER_RULE, COPY_PREFIX))]
    if reserved:  # a policy defining them could mark anything covered
        raise PolicySetError(["coverage cannot be measured", *reserved])
    suite = RegoSuite(policy_set)
    rego = RegoCoverage(modules, suite.sources)
    for module in modules:
        extra = "".join(rego.appended.get(module.path, []))
        if extra:
            suite.sources[module.path] = suite.sources.get(module.path, module.source) + extra
    try:
        shared = suite.program(policy_set.data)
    except PolicySetError as err:
        raise PolicySetError(["coverage cannot be measured: the instrumented policies do not "
                              "compile (a body whose expressions are out of order?)",
                              *err.errors]) from None
    covered: set[tuple[int, int]] = set()
    for test in suite.tests:
        _observe_test(suite, shared, rego, test, covered, report)
    roots = {(p.name, rule) for p in shared.decision_packages for rule in DECISION_SETS
             if rule in p.rules}
    fired: set[str] = set()
    for test_file in policy_set.tests:
        for case in test_file.document.get("cases", []):
            if not isinstance(case, dict) or not isinstance(case.get("input"), dict):
                continue  # reported by validate_case_file
            doc = dict(case["input"])
            try:
                doc["command"] = enrich_command(doc.get("command"), doc.get("resource"))
                rego.observe(rego.holding(shared, doc), roots, set(), covered)
            except (EvaluationError, TypeError, ValueError) as err:
                report.notes.append(f"{case.get('name')!r}: not measured: {err}")
                continue
            fired |= _fired(policy_set.cel_rules, doc)
    _rego_items(rego, covered, report)
    _cel_items(policy_set.cel_rules, fired, report)
    return report


def _observe_test(suite: RegoSuite, shared: RegoProgram, rego: RegoCoverage, test: RegoTest,
                  covered: set[tuple[int, int]], report: CoverageReport) -> None:
    _, message, program, input_doc = suite.execute(shared, test)
    name = f"data.{test.module.package}.{test.rule}"
    if program is None:
        report.notes.append(f"{name}: not measured: {message}")
        return
    mocked = {key for target in [*test.mocks, *test.functions] for key in
              [_mock_key(target, rego)] if key is not None}
    try:
        held = rego.holding(program, input_doc)
    except EvaluationError as err:
        report.notes.append(f"{name}: not measured: {err}")
        return
    rego.observe(held, {(test.module.package, test.rule)}, mocked, covered)


def _mock_key(target: str, rego: RegoCoverage) -> RuleKey | None:
    """The rule or function a `with` target replaces (its markers do not count)."""
    if not target.startswith("data."):
        name = target.rsplit(".", 1)[-1]
        owners = [p for p, rules in rego.package_rules.items() if name in rules]
        return (owners[0], name) if len(owners) == 1 else None
    parts = target.split(".")[1:]
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        if parts[cut] in rego.package_rules.get(package, ()):
            return package, parts[cut]
    return None


def _rego_items(rego: RegoCoverage, covered: set[tuple[int, int]],
                report: CoverageReport) -> None:
    for i, d in enumerate(rego.defs):
        if d.is_test:
            continue
        head = (i, len(d.exprs)) in covered
        report.add_item(d.path, d.head_lines, head)
        for j, e in enumerate(d.exprs):
            report.add_item(d.path, e.lines, (i, j) in covered)
        if d.else_lines is not None:
            report.add_item(d.path, d.else_lines, (i, -1) in covered)
        report.rules.append((d.path, f"data.{d.key[0]}.{d.key[1]}", d.head_lines[0], head))


def _fired(rules: tuple[CelRule, ...], doc: dict[str, Any]) -> set[str]:
    """The CEL rules (by source) whose `when` is true for a document."""
    if not rules:
        return set()
    activation = cel_env().Activation(activation_data(doc))
    out = set()
    for rule in rules:
        try:
            value = rule.program.eval(activation)
        except RuntimeError:
            continue
        if value.type() == celpy.Type.BOOL and value.value() is True:
            out.add(rule.source)
    return out


def _cel_items(rules: tuple[CelRule, ...], fired: set[str], report: CoverageReport) -> None:
    by_file: dict[str, list[CelRule]] = {}
    for rule in rules:
        by_file.setdefault(rule.source.rsplit(":", 1)[0], []).append(rule)
    for path, file_rules in by_file.items():
        text = _read(path)
        file_rules.sort(key=lambda r: int(r.source.rsplit(":", 1)[1]))
        starts = [int(r.source.rsplit(":", 1)[1]) for r in file_rules]
        for k, rule in enumerate(file_rules):
            end = starts[k + 1] - 1 if k + 1 < len(starts) else len(text) or starts[k]
            while end > starts[k] and end <= len(text) and \
                    (not text[end - 1].strip() or text[end - 1].lstrip().startswith("#")):
                end -= 1
            report.add_item(path, (starts[k], max(end, starts[k])), rule.source in fired)
            report.rules.append((path, f"CEL {rule.name}", starts[k], rule.source in fired))


def _read(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


# -- reports -----------------------------------------------------------------------------------

def _ranges(lines: set[int]) -> list[dict[str, dict[str, int]]]:
    out: list[dict[str, dict[str, int]]] = []
    for row in sorted(lines):
        if out and out[-1]["end"]["row"] == row - 1:
            out[-1]["end"]["row"] = row
        else:
            out.append({"start": {"row": row}, "end": {"row": row}})
    return out


def to_opa_json(report: CoverageReport) -> dict[str, Any]:
    """The report as `opa test --coverage` writes it (empty fields left out, as OPA does)."""
    files: dict[str, Any] = {}
    total_covered = total_not = 0
    for path in sorted(report.lines):
        lines = report.lines[path]
        covered = report.covered.get(path, set()) & lines
        not_covered = lines - covered
        entry: dict[str, Any] = {}
        if covered:
            entry["covered"] = _ranges(covered)
        if not_covered:
            entry["not_covered"] = _ranges(not_covered)
        if covered:
            entry["covered_lines"] = len(covered)
        if not_covered:
            entry["not_covered_lines"] = len(not_covered)
        percent = round(100.0 * len(covered) / len(lines), 2) if lines else 0.0
        if percent:
            entry["coverage"] = percent
        files[path] = entry
        total_covered += len(covered)
        total_not += len(not_covered)
    total = total_covered + total_not
    return {"files": files, "covered_lines": total_covered, "not_covered_lines": total_not,
            "coverage": round(100.0 * total_covered / total, 2) if total else 0.0}


def format_coverage_text(report: CoverageReport) -> str:
    """Per file its percentage and the line ranges not covered, then the rules not covered."""
    doc = to_opa_json(report)
    lines = ["coverage:"]
    for path, entry in doc["files"].items():
        total = entry.get("covered_lines", 0) + entry.get("not_covered_lines", 0)
        lines.append(f"  {path}: {entry.get('coverage', 0.0):.2f}% "
                     f"({entry.get('covered_lines', 0)}/{total} lines)")
        missing = [_range_text(r) for r in entry.get("not_covered", [])]
        if missing:
            lines.append(f"    not covered: lines {', '.join(missing)}")
    uncovered = [r for r in report.rules if not r[3]]
    lines.append(f"rules: {len(report.rules) - len(uncovered)}/{len(report.rules)} covered")
    for path, name, line, _ in uncovered:
        lines.append(f"  not covered: {name} ({path}:{line})")
    lines.extend(f"  note: {note}" for note in report.notes)
    lines.append(f"total: {doc['coverage']:.2f}% "
                 f"({doc['covered_lines']}/{doc['covered_lines'] + doc['not_covered_lines']} "
                 "lines)")
    return "\n".join(lines)


def _range_text(r: dict[str, dict[str, int]]) -> str:
    start, end = r["start"]["row"], r["end"]["row"]
    return str(start) if start == end else f"{start}-{end}"
