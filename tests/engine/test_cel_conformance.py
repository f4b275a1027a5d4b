"""A small cel-spec conformance check of the pinned cel-expr-python, in our CEL environment.

Cases come from cel-spec's simple tests (basic, logic, comparisons, string ext, lists, maps,
macros, errors). An upgrade that changes any answer fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from cel_expr_python import cel

from engine.policy.cel import cel_env

ERROR = object()

CASES: list[tuple[str, Any]] = [
    ("1 + 2 == 3", True),
    ("-(-1) == 1", True),
    ("9223372036854775807 + 1 > 0", ERROR),  # int overflow is an error
    ("7 / 0", ERROR),
    ("7 % 3", 1),
    ("1.5 * 2.0", 3.0),
    ("true && false", False),
    ("false && (1 / 0 == 1)", False),  # short-circuit absorbs the error
    ("true || (1 / 0 == 1)", True),
    ("!true", False),
    ("'abc' < 'abd'", True),
    ("size('héllo')", 5),  # code points, not bytes
    ("'hello'.startsWith('he')", True),
    ("'hello'.endsWith('lo')", True),
    ("'hello'.contains('ell')", True),
    ("'a,b,c'.split(',')", ["a", "b", "c"]),
    ("'  x '.trim()", "x"),
    ("'Hello'.lowerAscii()", "hello"),
    ("'hello'.upperAscii()", "HELLO"),
    ("'abc'.replace('b', 'x')", "axc"),
    ("'hello'.indexOf('l')", 2),
    ("['a', 'b'].join('-')", "a-b"),
    ("'abc'.substring(1)", "bc"),
    ("'abc'.matches('^a.c$')", True),
    ("[1, 2, 3].exists(x, x > 2)", True),
    ("[1, 2, 3].all(x, x > 0)", True),
    ("[1, 2, 3].exists_one(x, x == 2)", True),
    ("[1, 2, 3].filter(x, x > 1)", [2, 3]),
    ("[1, 2, 3].map(x, x * 2)", [2, 4, 6]),
    ("size([1, 2])", 2),
    ("2 in [1, 2]", True),
    ("'k' in {'k': 1}", True),
    ("{'a': 1}.a", 1),
    ("{'a': 1}.b", ERROR),
    ("has({'a': 1}.a)", True),
    ("has({'a': 1}.b)", False),
    ("[1, 2][5]", ERROR),
    ("int('12') + 1", 13),
    ("int('x')", ERROR),
    ("string(12)", "12"),
    ("double(1) == 1.0", True),
    ("type(1) == int", True),
    ("dyn(1) == 1.0", True),  # heterogeneous numeric equality (runtime)
    ("dyn(1) == dyn('1')", False),
    ("'a' + 'b'", "ab"),
    ("[1] + [2]", [1, 2]),
    ("true ? 1 : 2", 1),
    ("timestamp('2024-01-01T00:00:00Z') < timestamp('2024-01-02T00:00:00Z')", True),
    ("duration('1h') > duration('30m')", True),
]


@pytest.mark.parametrize(("expr", "want"), CASES, ids=[c[0] for c in CASES])
def test_cel_spec_case(expr: str, want: Any) -> None:
    value = cel_env().compile(expr).eval(data={})
    if want is ERROR:
        assert value.type() == cel.Type.ERROR, value.value()
    else:
        assert value.type() != cel.Type.ERROR, value.value()
        assert value.plain_value() == want
