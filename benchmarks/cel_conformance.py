"""CEL conformance through Ordinance's CEL environment, on cel-spec's simple test files.

    python -m benchmarks.cel_conformance DIR [--jobs N] [--timeout S] [-v]

DIR holds cel-spec `*.textproto` files (`tests/simple/testdata/` of cel-spec, in the
`cel.expr.conformance.test.SimpleTestFile` text format; read by `benchmarks/textproto.py`, which
needs no protobuf descriptors). No case data is shipped with Ordinance: point DIR at a copy.

Each test is compiled the way a rule's `when` is (`compile_expression`: the static checks, then
cel-expr-python) in the engine's environment (`cel_env()`), or, when the test declares
variables (`type_env`) or a `container`, in `new_env` with the same extensions and those
variables; it is evaluated with the test's `bindings`.

Outcomes:
  pass         the value cel-spec wants, or an error (at load or evaluation) where it wants one
  refused      refused at load where cel-spec has a value (fail-closed: the policy does not load)
  error        an error value or a raised error where cel-spec has a value (fail-closed: a deny)
  silent       a value that is not cel-spec's, or a value where cel-spec wants an error
  crash        the worker process died (abort or signal)
  timeout      no answer within --timeout seconds
  unsupported  not run: needs the conformance test protos (TestAllTypes, enums), unknowns,
               check-only tests, or a declared function

`silent` is the fail-open risk: each one is listed. "core" in the summary is every file but
the extensions' (`*_ext`, `optionals`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import textproto
from benchmarks.rego_conformance import Worker
from benchmarks.textproto import Message, first, text

CLASSES = ("pass", "refused", "error", "silent", "crash", "timeout")
UNSUPPORTED = "unsupported"
_PROTO_MARKERS = ("TestAllTypes", "cel.expr.conformance", "google.api.expr.test",
                  "NestedMessage", "GlobalEnum", "NestedEnum", "TestRequired")
_WKT = "type.googleapis.com/google.protobuf."


class Unsupported(Exception):
    pass


@dataclass
class Case:
    file: str
    section: str
    name: str
    index: tuple[int, int]
    expr: str


def read_cases(root: Path) -> list[Case]:
    cases = []
    for path in sorted(root.glob("*.textproto")):
        doc = textproto.parse(path.read_text())
        for i, section in enumerate(doc.get("section", [])):
            for j, test in enumerate(section.get("test", [])):
                cases.append(Case(path.stem, text(section, "name"), text(test, "name"), (i, j),
                                  text(test, "expr")))
    return cases


def is_core(file: str) -> bool:
    return not (file.endswith("_ext") or file == "optionals")


# -- expected values -----------------------------------------------------------------------------


def expected(value: Message) -> tuple[str, Any]:
    """(kind, python value) of a `cel.expr.Value`."""
    for kind in ("null_value", "bool_value", "int64_value", "uint64_value", "double_value",
                 "string_value", "bytes_value", "list_value", "map_value", "type_value",
                 "object_value", "enum_value"):
        if kind not in value:
            continue
        raw = first(value, kind)
        if kind == "null_value":
            return "null", None
        if kind == "bool_value":
            return "bool", raw == "true"
        if kind in ("int64_value", "uint64_value"):
            return kind[:-8] if kind == "int64_value" else "uint", int(raw, 0)
        if kind == "double_value":
            return "double", float(raw.lower().replace("infinity", "inf"))
        if kind == "string_value":
            return "string", raw.decode("utf-8")
        if kind == "bytes_value":
            return "bytes", raw
        if kind == "list_value":
            return "list", [expected(v) for v in raw.get("values", [])] if raw else []
        if kind == "map_value":
            return "map", [(expected(first(e, "key")), expected(first(e, "value")))
                           for e in (raw or {}).get("entries", [])]
        if kind == "type_value":
            return "type", raw.decode("utf-8")
        if kind == "object_value":
            return _object(raw)
        raise Unsupported("enum values need the conformance protos")
    return "null", None  # an empty Value message


def _object(any_message: Message) -> tuple[str, Any]:
    (url, (body,)), = any_message.items()
    if url == _WKT + "Timestamp":
        seconds, nanos = int(first(body, "seconds", "0")), int(first(body, "nanos", "0"))
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return "timestamp", epoch + datetime.timedelta(seconds=seconds, microseconds=nanos // 1000)
    if url == _WKT + "Duration":
        seconds, nanos = int(first(body, "seconds", "0")), int(first(body, "nanos", "0"))
        return "duration", datetime.timedelta(seconds=seconds, microseconds=nanos // 1000)
    raise Unsupported(f"object value {url}")


def to_python(kind_value: tuple[str, Any]) -> Any:
    """A binding's value as the Python value the engine's activation would be given."""
    kind, value = kind_value
    if kind == "list":
        return [to_python(v) for v in value]
    if kind == "map":
        return {to_python(k): to_python(v) for k, v in value}
    if kind in ("type",):
        raise Unsupported("a type value as a binding")
    return value


# -- comparing ------------------------------------------------------------------------------------

_TYPE_NAMES = {"int": "INT", "uint": "UINT", "double": "DOUBLE", "bool": "BOOL",
               "string": "STRING", "bytes": "BYTES", "null_type": "NULL", "type": "TYPE",
               "google.protobuf.Timestamp": "TIMESTAMP", "google.protobuf.Duration": "DURATION",
               "list": "LIST", "map": "MAP"}
_KIND_OF = {"INT": "int", "UINT": "uint", "DOUBLE": "double", "BOOL": "bool", "STRING": "string",
            "BYTES": "bytes", "NULL": "null", "TIMESTAMP": "timestamp", "DURATION": "duration",
            "TYPE": "type"}


def got_kind(value: Any) -> str:
    name = value.type().name()
    if name.startswith("LIST"):
        return "list"
    if name.startswith("MAP"):
        return "map"
    return _KIND_OF.get(name, name.lower())


def same(want: tuple[str, Any], got: Any) -> bool:
    """`got` (a cel Value) is cel-spec's `want`: kinds equal, values equal (NaN equals NaN)."""
    kind, value = want
    if got_kind(got) != kind:
        return False
    actual = got.value()
    if kind == "double":
        return (math.isnan(value) and math.isnan(actual)) or value == actual
    if kind == "bytes":
        return bytes(actual) == value
    if kind == "list":
        return len(actual) == len(value) and all(same(w, g) for w, g in zip(value, actual,
                                                                              strict=True))
    if kind == "map":
        if len(actual) != len(value):
            return False
        for key, item in value:
            plain = to_python(key)
            match = [v for k, v in actual.items() if k == plain and type(k) is type(plain)]
            if len(match) != 1 or not same(item, match[0]):
                return False
        return True
    if kind == "type":
        want_name = _TYPE_NAMES.get(value, value.upper())
        got_name = actual.name()
        return got_name == want_name or got_name.split("<", 1)[0] == want_name
    return bool(actual == value) and (kind != "bool" or isinstance(actual, bool))


def shown(got: Any) -> str:
    try:
        return f"{got_kind(got)} {got.value()!r}"[:200]
    except RuntimeError as err:
        return f"<unconvertible: {err}>"


# -- running one case (worker side) --------------------------------------------------------------

_TYPES: dict[str, Any] = {}


def _cel_type(decl_type: Message) -> Any:
    from cel_expr_python import cel

    if not _TYPES:
        _TYPES.update({"BOOL": cel.Type.BOOL, "INT64": cel.Type.INT, "UINT64": cel.Type.UINT,
                       "DOUBLE": cel.Type.DOUBLE, "STRING": cel.Type.STRING,
                       "BYTES": cel.Type.BYTES, "TIMESTAMP": cel.Type.TIMESTAMP,
                       "DURATION": cel.Type.DURATION, "ANY": cel.Type.DYN})
    if "primitive" in decl_type:
        return _TYPES[first(decl_type, "primitive")]
    if "well_known" in decl_type:
        return _TYPES[first(decl_type, "well_known")]
    if "list_type" in decl_type:
        return cel.Type.List(_cel_type(first(first(decl_type, "list_type"), "elem_type")))
    if "map_type" in decl_type:
        m = first(decl_type, "map_type")
        return cel.Type.Map(_cel_type(first(m, "key_type")), _cel_type(first(m, "value_type")))
    if "dyn" in decl_type:
        return cel.Type.DYN
    if "null" in decl_type:
        return cel.Type.NULL
    raise Unsupported(f"declared type {list(decl_type)}")


def run_case(test: Message) -> tuple[str, str]:
    """(outcome, detail) of one SimpleTest through the engine's CEL path."""
    from cel_expr_python import cel

    from engine.policy.cel import cel_env, compile_expression, new_env

    expr = text(test, "expr")
    container = text(test, "container")
    if any(m in expr or m in container for m in _PROTO_MARKERS):
        raise Unsupported("needs the conformance test protos")
    if "check_only" in test or "unknown" in test or "any_unknowns" in test:
        raise Unsupported("check-only or unknowns test")
    variables = {}
    for decl in test.get("type_env", []):
        if "function" in decl:
            raise Unsupported("declares a function")
        variables[text(decl, "name")] = _cel_type(first(first(decl, "ident"), "type"))
    bindings = {}
    for entry in test.get("bindings", []):
        bound = first(first(entry, "value"), "value")
        if bound is None:
            raise Unsupported("a binding that is not a value")
        bindings[text(entry, "key")] = to_python(expected(bound))
    for name in bindings:
        variables.setdefault(name, cel.Type.DYN)
    if "typed_result" in test:
        want: tuple[str, Any] | None = expected(first(first(test, "typed_result"), "result"))
    elif "value" in test:
        want = expected(first(test, "value"))
    elif "eval_error" in test or "any_eval_errors" in test:
        want = None
    else:
        want = ("bool", True)  # cel-spec: no matcher means `true`
    env = new_env(variables, container) if variables or container else cel_env()
    try:
        program = compile_expression(env, expr, disable_check=first(test, "disable_check")
                                     == "true")
    except RuntimeError as err:
        return ("pass" if want is None else "refused"), str(err).splitlines()[0][:200]
    try:
        got = program.eval(data=bindings)
        kind = got.type()
    except RuntimeError as err:
        return ("pass" if want is None else "error"), f"raised: {err}"[:200]
    if kind == cel.Type.ERROR:
        return ("pass" if want is None else "error"), str(got.value())[:200]
    if want is None:
        return "silent", f"want an error; got {shown(got)}"
    try:
        if same(want, got):
            return "pass", ""
    except RuntimeError as err:
        return "error", f"result not convertible: {err}"[:200]
    return "silent", f"want {want[0]} {to_python(want)!r}; got {shown(got)}"[:300]


_FILES: dict[str, Message] = {}


def _worker_main(root: str) -> None:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            doc = _FILES.get(request["file"])
            if doc is None:
                doc = _FILES[request["file"]] = textproto.parse(
                    (Path(request["root"]) / f"{request['file']}.textproto").read_text())
            i, j = request["index"]
            outcome, detail = run_case(doc["section"][i]["test"][j])
        except Unsupported as why:
            outcome, detail = UNSUPPORTED, str(why)
        except Exception as err:  # a bug in this runner
            outcome, detail = "crash", f"runner exception {type(err).__name__}: {err}"[:300]
        out.write(json.dumps({"kind": outcome, "detail": detail}) + "\n")


# -- the parent ----------------------------------------------------------------------------------


def run(root: Path, cases: list[Case], jobs: int, timeout: float, verbose: bool
        ) -> list[tuple[Case, str, str]]:
    results: list[tuple[Case, str, str] | None] = [None] * len(cases)
    queue = list(range(len(cases)))[::-1]

    def drain() -> None:
        worker = Worker(timeout, module="benchmarks.cel_conformance")
        try:
            while queue:
                try:
                    i = queue.pop()
                except IndexError:
                    return
                case = cases[i]
                answer = worker.run({"root": str(root), "file": case.file,
                                     "index": list(case.index)})
                kind = answer["kind"]
                results[i] = (case, kind, str(answer.get("detail", "")))
                if verbose and kind not in ("pass", UNSUPPORTED):
                    print(f"  {kind:<8} {case.file}/{case.section}/{case.name}: "
                          f"{answer.get('detail', '')}", file=sys.stderr)
        finally:
            worker.close()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(drain) for _ in range(jobs)]:
            future.result()
    return [r for r in results if r is not None]


def report(results: list[tuple[Case, str, str]]) -> str:
    by_file: dict[str, Counter[str]] = defaultdict(Counter)
    for case, kind, _ in results:
        by_file[case.file][kind] += 1
    columns = (*CLASSES[1:], UNSUPPORTED)
    header = f"{'file':<20}{'run':>6}{'pass':>6}{'%':>7}" + "".join(f"{c[:7]:>9}" for c in columns)
    lines = [header, "-" * len(header)]
    core: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for file in sorted(by_file):
        counts = by_file[file]
        total.update(counts)
        if is_core(file):
            core.update(counts)
        lines.append(_row(file, counts, columns))
    lines.append("-" * len(header))
    lines.append(_row("core", core, columns))
    lines.append(_row("OVERALL", total, columns))
    silent = [(c, d) for c, k, d in results if k == "silent"]
    lines.append("")
    lines.append(f"SILENT DIFFERENCES: {len(silent)} (a value that is not cel-spec's)")
    for case, detail in silent:
        lines.append(f"- {case.file}/{case.section}/{case.name}: {case.expr[:120]}")
        lines.append(f"    {detail}")
    abnormal = [(c, k, d) for c, k, d in results if k in ("crash", "timeout")]
    lines.append("")
    lines.append(f"CRASHES AND TIMEOUTS: {len(abnormal)}")
    for case, kind, detail in abnormal:
        lines.append(f"- [{kind}] {case.file}/{case.section}/{case.name}: {case.expr[:120]}: "
                     f"{detail}")
    return "\n".join(lines)


def _row(name: str, counts: Counter[str], columns: tuple[str, ...]) -> str:
    ran = sum(v for k, v in counts.items() if k != UNSUPPORTED)
    rate = f"{100 * counts['pass'] / ran:6.1f}" if ran else "     -"
    return f"{name:<20}{ran:>6}{counts['pass']:>6}{rate:>7}" + "".join(
        f"{counts[c] or '.':>9}" for c in columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", help="directory of cel-spec *.textproto files")
    parser.add_argument("--jobs", type=int, default=max(2, os.cpu_count() or 2))
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--filter", default="", help="only files or tests containing this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print failures as they come")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker_main(args.dir or ".")
        return 0
    if not args.dir:
        parser.error("DIR is required")
    root = Path(args.dir)
    try:
        cases = [c for c in read_cases(root)
                 if args.filter in c.file or args.filter in c.name or args.filter in c.section]
    except textproto.TextprotoError as err:
        print(f"unreadable test file: {err}", file=sys.stderr)
        return 2
    if not cases:
        print(f"no cases under {args.dir}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = run(root, cases, args.jobs, args.timeout, args.verbose)
    print(report(results))
    elapsed = time.perf_counter() - started
    print(f"\n{len(results)} cases in {elapsed:.1f}s with {args.jobs} workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
