"""Reading a regopy result as Python values from its node tree, never from its text.

regopy 1.5.2 prints the results of a *bundle* query without escaping `"` or `\\` inside
strings: a rule whose value quotes input text (`sprintf("denied: %s", [input.command.raw])`)
came back as text that either failed to parse (every such decision became an engine error) or,
worse, parsed as JSON with fields the input wrote (`…", "approvers": ["mallory"], "x": "…` in a
message). The node tree carries each string whole (a quoted JSON token, or raw text for
strings computed from input), so results are built from it.
"""

from __future__ import annotations

import ctypes
import json
import threading
from typing import Any

from regopy import NodeKind, rego_shared

from engine.errors import EvaluationError

_lib = rego_shared.rego
_node_type = _lib.regoNodeType
_node_size = _lib.regoNodeSize
_node_get = _lib.regoNodeGet
_value_size = _lib.regoNodeValueSize
_value_into = _lib.regoNodeValue
_local = threading.local()


def _node_value(node: Any) -> str:
    """A scalar node's text, read into a buffer kept per thread (regopy's wrapper allocates one
    per call, which made reading a decision 4x slower than parsing its text)."""
    size = _value_size(node)
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = ctypes.create_string_buffer(max(size, 4096))
    if _value_into(node, buf, size) != 0:
        raise EvaluationError("the Rego runtime could not give a result value")
    return buf.value.decode("utf-8")

_STRING, _INT, _FLOAT = int(NodeKind.String), int(NodeKind.Int), int(NodeKind.Float)
_TRUE, _FALSE, _BOOLEAN = int(NodeKind.True_), int(NodeKind.False_), int(NodeKind.Boolean)
_NULL, _ARRAY, _SET = int(NodeKind.Null), int(NodeKind.Array), int(NodeKind.Set)
_OBJECT, _TERM, _SCALAR = int(NodeKind.Object), int(NodeKind.Term), int(NodeKind.Scalar)
_RESULTS, _RESULT, _TERMS = int(NodeKind.Results), int(NodeKind.Result), int(NodeKind.Terms)
_UNDEFINED = int(NodeKind.Undefined)


def value_of(node: Any) -> Any:
    """The JSON value of one term node (a set becomes a list, as OPA's JSON output has it)."""
    kind = _node_type(node)
    if kind == _STRING:
        return _string(_node_value(node))
    if kind == _ARRAY:
        return [value_of(_node_get(node, i)) for i in range(_node_size(node))]
    if kind == _SET:  # sorted, as OPA (and regopy's text) writes a set
        return sorted((value_of(_node_get(node, i)) for i in range(_node_size(node))),
                      key=_order)
    if kind == _OBJECT:
        result: dict[str, Any] = {}
        for i in range(_node_size(node)):
            item = _node_get(node, i)
            key = value_of(_node_get(item, 0))
            if not isinstance(key, str):  # as OPA writes a non-string key in JSON: `{"0": …}`
                key = json.dumps(key, separators=(",", ":"), ensure_ascii=False)
            result[key] = value_of(_node_get(item, 1))
        return result
    if kind in (_TERM, _SCALAR):
        return value_of(_node_get(node, 0))
    if kind == _INT:
        return int(_node_value(node))
    if kind == _FLOAT:
        return float(_node_value(node))
    if kind == _TRUE:
        return True
    if kind == _FALSE:
        return False
    if kind == _BOOLEAN:  # regopy writes a membership test's result as `True`/`False`
        text = _node_value(node).lower()
        if text not in ("true", "false"):
            raise EvaluationError(f"unexpected boolean in a result: {text!r}")
        return text == "true"
    if kind == _NULL:
        return None
    raise EvaluationError(f"unexpected node in a result: {rego_shared.rego_node_type_name(node)}")


_RANK = {type(None): 0, bool: 1, int: 2, float: 2, str: 3, list: 4, dict: 5}


def _order(value: Any) -> tuple[int, Any]:
    """OPA's order of values: null, booleans, numbers, strings, arrays, objects."""
    rank = _RANK[type(value)]
    if rank in (4, 5):
        return rank, json.dumps(value, sort_keys=True, ensure_ascii=False)
    return rank, value


def _string(value: str) -> str:
    """A string node's value: regopy keeps literals, data and anything built from them as
    quoted JSON tokens, and strings computed from input as raw text."""
    if not value.startswith('"'):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        raise EvaluationError("the Rego runtime returned a string it cannot tell apart from an "
                              "unterminated quoted one") from None
    if not isinstance(decoded, str):
        raise EvaluationError("the Rego runtime returned a quoted token that is not a string")
    return decoded


def is_undefined(output_node: Any) -> bool:
    return bool(_node_type(output_node) == _UNDEFINED)


def is_results(output_node: Any) -> bool:
    return bool(_node_type(output_node) == _RESULTS)


def expressions(output_node: Any) -> list[Any]:
    """The values of the first result's expressions (`[]` when there is no result)."""
    if _node_type(output_node) != _RESULTS:
        raise EvaluationError("unexpected result shape: "
                              f"{rego_shared.rego_node_type_name(output_node)}")
    if _node_size(output_node) == 0:
        return []
    result = _node_get(output_node, 0)
    if _node_type(result) != _RESULT or _node_size(result) == 0:
        raise EvaluationError("unexpected result shape: no expressions")
    terms = _node_get(result, 0)
    if _node_type(terms) != _TERMS:
        raise EvaluationError("unexpected result shape: "
                              f"{rego_shared.rego_node_type_name(terms)}")
    return [value_of(_node_get(terms, i)) for i in range(_node_size(terms))]
