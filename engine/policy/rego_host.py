"""Builtins regopy cannot compute, computed by Ordinance: `json.verify_schema` and
`json.match_schema` (JSON Schema, with the `jsonschema` library).

regopy has no host functions, so these calls are planned at load. The schema must be a JSON
literal (an object, or a string holding one) or a data document (`data.schemas.pod`); the
document of `json.match_schema` a literal or a path into the input (`input.request.object`,
`input["a"].b`). A call over literals is replaced by its result; one over an input path by
`input.__ordinance_host.<n>`, which `HostCalls.compute` fills from each input document before
the query (absent when the path is undefined, so the call is undefined as in OPA). Anything
else is refused at load with `file:line`. The result has OPA's shape, `[true, []]` or
`[false, [{"error", "type", "field", "desc"}, ...]]`; the texts are jsonschema's, not
gojsonschema's. Lines do not move.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from engine.policy.rego_source import Call, call_arguments

HOST_KEY = "__ordinance_host"
CALLS = frozenset({"json.match_schema", "json.verify_schema"})
_INPUT_PATH = re.compile(
    r"""input((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*"(?:[^"\\]|\\.)*"\s*\])*)\Z""")
_PATH_PART = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*("(?:[^"\\]|\\.)*")\s*\]""")
_DATA_PATH = re.compile(r"data((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\Z")
_MISSING = object()


@dataclass
class HostCalls:
    """The input-dependent calls of a policy set: name -> (input path, schema validator)."""

    calls: dict[str, tuple[tuple[str, ...], Any]] = field(default_factory=dict)

    def compute(self, input_doc: Any) -> dict[str, Any]:
        """`input.__ordinance_host` for one input document."""
        out: dict[str, Any] = {}
        for name, (path, validator) in self.calls.items():
            value = _lookup(input_doc, path)
            if value is not _MISSING:
                out[name] = _match(validator, value)
        return out


def plan(source: str, calls: list[Call], data: dict[str, Any], host: HostCalls
         ) -> tuple[str, list[tuple[int, str]]]:
    """The source with each host call replaced, and `(line, message)` for those refused."""
    out = source
    problems: list[tuple[int, str]] = []
    for call in sorted(calls, key=lambda c: c.offset, reverse=True):  # back to front
        if call.name not in CALLS or not out.startswith(call.name, call.offset):
            continue
        spans, end = call_arguments(out, call)
        args = [out[a:b].strip() for a, b in spans]
        try:
            replacement = _replacement(call.name, args, data, host)
        except ValueError as err:
            problems.append((call.line, f"{call.name}: {err}"))
            continue
        original = out[call.offset:end]
        out = out[:call.offset] + replacement + "\n" * original.count("\n") + out[end:]
    return out, problems


def _replacement(name: str, args: list[str], data: dict[str, Any], host: HostCalls) -> str:
    if name == "json.verify_schema":
        if len(args) != 1:
            raise ValueError("takes one argument (the output-argument form is not supported)")
        return json.dumps(_verify(_schema(args[0], data)))
    if len(args) != 2:
        raise ValueError("takes two arguments (the output-argument form is not supported)")
    schema = _schema(args[1], data)
    problem = _verify(schema)
    if not problem[0]:
        raise ValueError(f"invalid schema: {problem[1]}")
    validator = jsonschema.validators.validator_for(schema, jsonschema.Draft7Validator)(schema)
    document = _literal(args[0])
    if document is not _MISSING:
        return json.dumps(_match(validator, document))
    m = _INPUT_PATH.match(args[0])
    if m is None:
        raise ValueError("the document must be a JSON literal or a path into the input "
                         "(input.a.b), which Ordinance validates before the query")
    key = f"c{len(host.calls)}"
    parts = tuple(p or json.loads(q) for p, q in _PATH_PART.findall(m.group(1)))
    host.calls[key] = (parts, validator)
    return f"input.{HOST_KEY}.{key}"


def _schema(text: str, data: dict[str, Any]) -> Any:
    m = _DATA_PATH.match(text)
    if m:
        value = _lookup(data, tuple(m.group(1)[1:].split(".")))
        if value is _MISSING:
            raise ValueError(f"{text} is not a data document of this policy set")
    else:
        value = _literal(text)
        if value is _MISSING:
            raise ValueError("the schema must be a JSON literal or a data document "
                             "(data.a.b)")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise ValueError(f"the schema string is not JSON: {err}") from None
    return value


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _MISSING


def _verify(schema: Any) -> list[Any]:
    """OPA's `json.verify_schema` result: `[true, null]` or `[false, message]`."""
    if not isinstance(schema, dict):
        return [False, f"schema must be an object, not {type(schema).__name__}"]
    try:
        jsonschema.validators.validator_for(schema, jsonschema.Draft7Validator).check_schema(
            schema)
    except jsonschema.SchemaError as err:
        return [False, err.message]
    return [True, None]


def _match(validator: Any, document: Any) -> list[Any]:
    errors = []
    for err in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append({"error": f"{where}: {err.message}", "type": str(err.validator),
                       "field": where, "desc": err.message})
    return [not errors, errors]


def _lookup(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return _MISSING
        doc = doc[key]
    return doc
