"""Rego conformance through Ordinance's engine path, on cases in OPA's test-case YAML format.

    python -m benchmarks.rego_conformance DIR [--jobs N] [--timeout S] [--json OUT] [-v]

DIR holds `*.yaml`/`*.yml` files (searched recursively) in the format of OPA's own conformance
suite: `cases:` with `note`, `modules`, `data`, `input`, `query`, `want_result` or
`want_error`/`want_error_code`. The topic of a case is the first directory under DIR (or the file
name for files directly in DIR). No case data is shipped with Ordinance: point DIR at a copy.

Each case is loaded the way `load_policy_set` loads a directory (`read_module`, the missing-package
check, `check_calls` against regopy's builtins, `RegoProgram`) and queried with
`PolicySet.query`, the engine's OPA-style query. A query `data.a.b.p = x` (or `x = data.a.b.p`)
becomes the entrypoint query `a/b/p`; scalar keys (`data.a.p[0] = x`) become path parts, and a
JSON literal or `input` may stand for `x`. Other shapes (function calls, several expressions,
`data.p[x]` iteration) and queries of `test_*` rules (left out of serving bundles) are counted
as unsupported, not run. A case without `input` is evaluated with `input` undefined, as in OPA
(`RegoProgram.query(..., NO_INPUT)`; decisions always have an input).

Outcomes:
  pass                      the value (or undefinedness) OPA wants, or an error where OPA wants one
                            (load rejection or EvaluationError both count: the engine denies)
  wrong_result              defined, but a different value (or defined where OPA is undefined)
  missing_result            undefined where OPA has a value
  missing_error             OPA reports an error; the engine answered (value or undefined)
  rejected_unknown_builtin  load refused: a builtin regopy lacks (fail-closed, by design)
  rejected_misread          load refused: `check_calls` took a policy-defined ref-head function
                            (`p.q.f(x)`) or the `set()` literal for an unknown builtin
  rejected_other            load refused for another reason (compile error) where OPA evaluates
  eval_error                EvaluationError where OPA has a result (fail-closed)
  crash                     the worker process died (regopy abort or signal)
  timeout                   no answer within --timeout seconds
  unsupported               a query shape this runner does not translate (not counted)

wrong_result, missing_result and missing_error are silent: the engine returned normally and did
not reject the policy. Those are the fail-open risks and are listed one by one. Loaded policies
that name a builtin the engine forbids (`opa.runtime`) without calling it, which `check_calls`
does not see, are listed too, whatever their outcome.

Cases run in worker processes that are restarted after a crash, so an abort inside regopy costs
one case, not the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PASS = "pass"
SILENT = ("wrong_result", "missing_result", "missing_error")
FAIL_CLOSED = ("rejected_unknown_builtin", "rejected_misread", "rejected_other", "eval_error")
ABNORMAL = ("crash", "timeout")
UNSUPPORTED = "unsupported"
CLASSES = (PASS, *SILENT, *FAIL_CLOSED, *ABNORMAL)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NO_VALUE = object()


@dataclass
class Case:
    topic: str
    file: str
    index: int
    note: str
    raw: dict[str, Any]


@dataclass
class Outcome:
    case: Case
    outcome: str
    detail: str = ""
    got: Any = None
    elapsed_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# -- reading cases -------------------------------------------------------------------------------


def read_cases(root: Path) -> list[Case]:
    cases: list[Case] = []
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        rel = path.relative_to(root)
        topic = rel.parts[0] if len(rel.parts) > 1 else path.stem
        try:
            doc = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            print(f"{rel}: unreadable YAML: {err}", file=sys.stderr)
            continue
        if not isinstance(doc, dict):
            continue
        for i, raw in enumerate(doc.get("cases") or []):
            if isinstance(raw, dict):
                cases.append(Case(topic, str(rel), i, str(raw.get("note", f"#{i}")), raw))
    return cases


@dataclass(frozen=True)
class Query:
    """`data.a.b.p = x`: entrypoint path `a/b/p` compared with a variable (`var`), the input
    document (`against_input`) or a JSON literal (`literal`)."""

    path: str
    var: str | None = None
    against_input: bool = False
    literal: Any = _NO_VALUE


def translate_query(query: str) -> Query | None:
    """The engine query for `data.a.b["k"].p = x` (either side), or None for other shapes."""
    sides = re.split(r"(?<![=!<>:])=(?!=)", query or "")
    if len(sides) != 2:
        return None
    left, right = (s.strip() for s in sides)
    if not left.startswith("data"):
        left, right = right, left
    parts = _ref_parts(left)
    if parts is None:
        return None
    path = "/".join(parts)
    if right == "input":
        return Query(path, against_input=True)
    if _IDENT.fullmatch(right) and right not in ("true", "false", "null"):
        return Query(path, var=right)
    try:
        return Query(path, literal=json.loads(right))
    except ValueError:
        return None


def _ref_parts(ref: str) -> list[str] | None:
    """`data.a["b"][0].c` -> ["a", "b", "0", "c"]; None when a key is not a scalar."""
    if not ref.startswith("data"):
        return None
    rest, parts = ref[4:], []
    while rest:
        if rest.startswith("."):
            m = _IDENT.match(rest, 1)
            if not m:
                return None
            parts.append(m.group())
            rest = rest[m.end():]
        elif rest.startswith("["):
            close = rest.find("]")
            try:
                key = json.loads(rest[1:close]) if close > 0 else None
            except ValueError:
                return None
            if isinstance(key, bool):
                key = "true" if key else "false"
            if not isinstance(key, str | int) or "." in str(key) or "/" in str(key):
                return None
            parts.append(str(key))
            rest = rest[close + 1:]
        else:
            return None
    return parts


def _jsonable(value: Any) -> Any:
    """YAML may give non-string keys or dates; OPA's loader treats them as JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


# -- evaluating one case (worker side) -----------------------------------------------------------


def evaluate_case(raw: dict[str, Any]) -> dict[str, Any]:
    """Load and query one case through the engine path; the raw outcome, not yet judged."""
    import regopy

    from engine.errors import EvaluationError, PolicySetError
    from engine.policy import PolicySet
    from engine.policy.rego import NO_INPUT, RegoProgram, check_calls
    from engine.policy.rego_source import FORBIDDEN, read_module

    query = translate_query(str(raw.get("query", "")))
    if query is None:
        return {"kind": UNSUPPORTED, "detail": f"query {raw.get('query')!r}"}
    if query.path.rsplit("/", 1)[-1].startswith("test_"):
        return {"kind": UNSUPPORTED, "detail": "test_ rules are left out of serving bundles"}
    if "input_term" in raw:
        try:
            input_doc = json.loads(raw["input_term"])
        except (TypeError, ValueError):
            return {"kind": UNSUPPORTED, "detail": "input_term is not JSON"}
    elif "input" in raw:
        input_doc = _jsonable(raw["input"])
    else:
        input_doc = NO_INPUT  # undefined, as in OPA
    data = _jsonable(raw.get("data") or {})
    modules = [read_module(f"case/mod{i}.rego", str(src))
               for i, src in enumerate(raw.get("modules") or [])]
    try:
        errors = [f"{m.path}:1: missing package declaration" for m in modules if not m.package]
        errors.extend(check_calls(modules, regopy.Interpreter().is_builtin))
        if errors:
            raise PolicySetError(errors)
        program = RegoProgram(modules, data)
    except PolicySetError as err:
        return {"kind": "rejected", "detail": "; ".join(err.errors)[:500],
                "misread": _misread_calls(err.errors, modules)}
    reachable = sorted(name for name in FORBIDDEN for m in modules
                       if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", m.source))
    policy_set = PolicySet(root="<case>", revision="", rego=program, cel_rules=(), tests=(),
                           data=data, mask_methods=frozenset())
    try:
        defined, value = policy_set.query(query.path, input_doc)
    except EvaluationError as err:
        return {"kind": "eval_error", "detail": str(err)[:500], "forbidden": reachable}
    return {"kind": "value" if defined else "undefined", "value": value, "forbidden": reachable}


def _misread_calls(errors: list[str], modules: list[Any]) -> list[str]:
    """Names reported as unknown builtins that are not builtin calls at all: a function the
    policy defines under a ref head (`p.q.f(x)`, `foo["bar"](x)`) or the `set()` literal."""
    rules = {r for m in modules for r in m.rules}
    out = []
    for error in errors:
        m = re.search(r"unknown builtin (\S+)", error)
        if m and (m.group(1) == "set" or m.group(1).split(".", 1)[0] in rules):
            out.append(m.group(1))
    return out


def _worker_main() -> None:
    """Read one JSON case per line on stdin, write one JSON outcome per line. regopy's own
    writes to fd 1 are sent to stderr so that the result channel stays clean."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        try:
            result = evaluate_case(json.loads(line))
        except Exception as err:  # a bug in this runner or an unexpected engine exception
            result = {"kind": "exception", "detail": f"{type(err).__name__}: {err}"[:500]}
        out.write(json.dumps(result, default=str) + "\n")


# -- the parent: workers, judging, reporting ----------------------------------------------------


class Worker:
    """A child process running `python -m MODULE --worker`: one JSON line in, one out."""

    def __init__(self, timeout: float, module: str = "benchmarks.rego_conformance"):
        self.timeout = timeout
        self.module = module
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""

    def _start(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "--worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent)
            self.buffer = b""
        return self.proc

    def run(self, raw: dict[str, Any]) -> dict[str, Any]:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write((json.dumps(raw, default=str) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            return self._died()
        deadline = time.monotonic() + self.timeout
        fd = proc.stdout.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return {"kind": "timeout", "detail": f"no answer in {self.timeout:g}s"}
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return self._died()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def _died(self) -> dict[str, Any]:
        assert self.proc is not None
        code = self.proc.wait()
        self.proc = None
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return {"kind": "crash", "detail": f"worker died ({how})"}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def same(a: Any, b: Any) -> bool:
    """JSON equality where 1 == 1.0 but true != 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _sort_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def judge(case: Case, result: dict[str, Any]) -> tuple[str, str]:
    raw = case.raw
    kind = result["kind"]
    detail = str(result.get("detail", ""))
    if kind in ("crash", "timeout"):
        return kind, detail
    if kind == UNSUPPORTED:
        return kind, detail
    if kind == "exception":
        return "crash", f"runner exception: {detail}"
    wants_error = "want_error" in raw or "want_error_code" in raw
    if wants_error:
        if kind in ("rejected", "eval_error"):
            return PASS, detail
        shown = json.dumps(_redacted(result.get("value"))) if kind == "value" else "undefined"
        return "missing_error", f"want error {raw.get('want_error_code', '')} " \
                                f"{raw.get('want_error', '')!r}; got {shown}"
    if kind == "rejected":
        if result.get("misread"):
            return "rejected_misread", "check_calls misread as an unknown builtin: " \
                                       + ", ".join(result["misread"])
        if "unknown builtin" in detail:
            return "rejected_unknown_builtin", detail
        return "rejected_other", detail
    if kind == "eval_error":
        return "eval_error", detail
    rows = raw.get("want_result")
    if rows is None:
        return UNSUPPORTED, "neither want_result nor want_error"
    if not isinstance(rows, list) or len(rows) > 1:
        return UNSUPPORTED, "several result rows"
    query = translate_query(str(raw.get("query")))
    assert query is not None
    got = result.get("value")
    if query.var is None:  # `data.p = <literal>` or `data.p = input`: one empty row if equal
        other = _jsonable(raw.get("input")) if query.against_input else query.literal
        equal = kind == "value" and same(other, got)
        if equal == bool(rows):
            return PASS, ""
        return "wrong_result" if kind == "value" else "missing_result", \
            f"want {'equal to' if rows else 'not equal to'} {json.dumps(other)}; " \
            f"got {json.dumps(got) if kind == 'value' else 'undefined'}"
    if not rows:
        if kind == "undefined":
            return PASS, ""
        return "wrong_result", f"want undefined; got {json.dumps(_redacted(got))}"
    want = _jsonable(rows[0].get(query.var)) if isinstance(rows[0], dict) else None
    if kind == "undefined":
        return "missing_result", f"want {json.dumps(want)}; got undefined"
    if raw.get("sort_bindings") and isinstance(want, list) and isinstance(got, list):
        want, got = sorted(want, key=_sort_key), sorted(got, key=_sort_key)
    if same(want, got):
        return PASS, ""
    return "wrong_result", _difference(want, got)


def _redacted(value: Any) -> Any:
    """`opa.runtime()` results carry the process environment: never print it."""
    if isinstance(value, dict):
        return {k: "<redacted>" if k == "env" else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def _difference(want: Any, got: Any) -> str:
    """`want ...; got ...`, narrowed to the differing keys when both are objects."""
    want, got = _redacted(want), _redacted(got)
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(k for k in want.keys() | got.keys()
                      if k not in want or k not in got or not same(want[k], got[k]))
        want = {k: want.get(k, "<absent>") for k in keys}
        got = {k: got.get(k, "<absent>") for k in keys}
    return f"want {json.dumps(want)}; got {json.dumps(got)}"


def run(cases: list[Case], jobs: int, timeout: float, verbose: bool) -> list[Outcome]:
    outcomes: list[Outcome | None] = [None] * len(cases)
    queue = list(range(len(cases)))
    queue.reverse()

    def drain() -> None:
        worker = Worker(timeout)
        try:
            while True:
                try:
                    i = queue.pop()
                except IndexError:
                    return
                case = cases[i]
                started = time.perf_counter()
                result = worker.run(_jsonable(case.raw))
                elapsed = (time.perf_counter() - started) * 1000
                outcome, detail = judge(case, result)
                outcomes[i] = Outcome(case, outcome, detail, result.get("value"), elapsed,
                                      {"forbidden": result.get("forbidden") or []})
                if verbose and outcome != PASS:
                    print(f"  {outcome:<24} {case.file} [{case.note}] {detail}",
                          file=sys.stderr)
        finally:
            worker.close()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(drain) for _ in range(jobs)]:
            future.result()
    return [o for o in outcomes if o is not None]


def construct(case: Case) -> str:
    """The Rego text of the case's modules, squeezed onto one line for the report."""
    text = " | ".join(str(m) for m in case.raw.get("modules") or [])
    text = re.sub(r"^\s*package [^\n]*\n", "", text)
    return re.sub(r"\s+", " ", text).strip()[:220]


def report(outcomes: list[Outcome]) -> str:
    lines: list[str] = []
    by_topic: dict[str, Counter[str]] = defaultdict(Counter)
    for o in outcomes:
        by_topic[o.case.topic][o.outcome] += 1
    short = {"rejected_unknown_builtin": "unk_bi", "rejected_misread": "misrd",
             "rejected_other": "rej", "eval_error": "err",
             "wrong_result": "wrong", "missing_result": "miss", "missing_error": "noerr",
             "crash": "crash", "timeout": "tmo", UNSUPPORTED: "unsup"}
    columns = [c for c in (*CLASSES[1:], UNSUPPORTED)]
    header = f"{'topic':<28}{'run':>5}{'pass':>6}{'%':>6} " + "".join(
        f"{short[c]:>7}" for c in columns)
    lines.append(header)
    lines.append("-" * len(header))
    total: Counter[str] = Counter()
    for topic in sorted(by_topic):
        counts = by_topic[topic]
        total.update(counts)
        lines.append(_row(topic, counts, columns))
    lines.append("-" * len(header))
    lines.append(_row("OVERALL", total, columns))
    ran = sum(v for k, v in total.items() if k != UNSUPPORTED)
    lines.append("")
    lines.append(f"cases: {len(outcomes)} in {len(by_topic)} topics; run: {ran}; "
                 f"unsupported query shapes: {total[UNSUPPORTED]}")
    for cls in CLASSES:
        if ran:
            lines.append(f"  {cls:<26}{total[cls]:>5}  {100 * total[cls] / ran:5.1f}%")
    failing = [t for t in sorted(by_topic)
               if any(by_topic[t][c] for c in CLASSES[1:])]
    lines.append("")
    lines.append(f"topics with failures ({len(failing)}): {', '.join(failing) or 'none'}")
    silent = [o for o in outcomes if o.outcome in SILENT]
    lines.append("")
    lines.append(f"FAIL-OPEN RISKS: {len(silent)} cases answered without error and without a "
                 "load rejection, but not as OPA does")
    for o in sorted(silent, key=lambda o: (o.outcome, o.case.topic, o.case.file, o.case.index)):
        lines.append(f"- [{o.outcome}] {o.case.file}#{o.case.index} {o.case.note}")
        lines.append(f"    {o.detail[:300]}")
        lines.append(f"    rego: {construct(o.case)}")
    bypass = [o for o in outcomes if o.extra.get("forbidden")]
    lines.append("")
    lines.append(f"FORBIDDEN BUILTINS REACHABLE: {len(bypass)} loaded policies name a builtin the "
                 "engine forbids (e.g. opa.runtime) and were not rejected")
    for o in bypass:
        lines.append(f"- {o.case.file}#{o.case.index} {o.case.note}: "
                     f"{', '.join(o.extra['forbidden'])}; rego: {construct(o.case)[:160]}")
    others = [o for o in outcomes if o.outcome in FAIL_CLOSED + ABNORMAL]
    if others:
        lines.append("")
        lines.append("fail-closed and abnormal outcomes:")
        for o in sorted(others, key=lambda o: (o.outcome, o.case.file, o.case.index)):
            lines.append(f"- [{o.outcome}] {o.case.file}#{o.case.index} {o.case.note}: "
                         f"{o.detail[:200]}")
    return "\n".join(lines)


def _row(name: str, counts: Counter[str], columns: list[str]) -> str:
    ran = sum(v for k, v in counts.items() if k != UNSUPPORTED)
    rate = f"{100 * counts[PASS] / ran:5.1f}" if ran else "    -"
    return f"{name:<28}{ran:>5}{counts[PASS]:>6}{rate:>6} " + "".join(
        f"{counts[c] or '.':>7}" for c in columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="directory of OPA-format case YAML files")
    parser.add_argument("--jobs", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--filter", default="", help="only cases whose file or note contains this")
    parser.add_argument("--json", dest="json_out", help="write every outcome to this file")
    parser.add_argument("-v", "--verbose", action="store_true", help="print failures as they come")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main()
        return 0
    if not args.dir:
        parser.error("DIR is required")
    cases = [c for c in read_cases(Path(args.dir))
             if args.filter in c.file or args.filter in c.note]
    if not cases:
        print(f"no cases under {args.dir}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    outcomes = run(cases, args.jobs, args.timeout, args.verbose)
    print(report(outcomes))
    print(f"\n{len(outcomes)} cases in {time.perf_counter() - started:.1f}s "
          f"with {args.jobs} workers")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([{"topic": o.case.topic, "file": o.case.file, "index": o.case.index,
                        "note": o.case.note, "outcome": o.outcome, "detail": o.detail,
                        "elapsed_ms": round(o.elapsed_ms, 2)} for o in outcomes], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
