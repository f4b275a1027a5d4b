"""`ordinance test` on Rego test rules as `opa test` runs them: mocking input, data, functions
and builtins with `with`; ERROR apart from FAIL; type errors fail the whole run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.policy import load_policy_set
from engine.rego_testing import run_rego_tests, with_clauses
from engine.testing import format_text
from tests.engine.test_cli import ordinance

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"

POLICY = HEAD + '''\
deny contains "blocked user" if input.user in data.config.blocked

deny contains "late" if time.now_ns() > data.config.cutoff

deny contains "foreign" if not internal(input.ip)

internal(ip) if net.cidr_contains("10.0.0.0/8", ip)

always_internal(_) := true

limit := 3

too_many if count(input.items) > limit
'''


def results_of(tmp_path: Path, tests: str, data: dict | None = None) -> dict[str, tuple[str, str]]:
    (tmp_path / "p.rego").write_text(POLICY)
    (tmp_path / "p_test.rego").write_text(HEAD + tests)
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "data.json").write_text(json.dumps(
        data or {"blocked": ["mallory"], "cutoff": 2000000000000000000}))
    return {r.name.rsplit(".", 1)[-1]: (r.status, r.message)
            for r in run_rego_tests(load_policy_set(str(tmp_path)))}


def test_with_data_mocks_a_data_document(tmp_path: Path) -> None:
    got = results_of(tmp_path, '''\
test_blocked_by_mock if {
\t"blocked user" in deny with input as {"user": "eve", "ip": "10.0.0.1"}
\t\twith data.config.blocked as ["eve"]
}

test_not_blocked_without_mock if {
\tnot "blocked user" in deny with input as {"user": "eve", "ip": "10.0.0.1"}
}

test_wrong_expectation if {
\t"blocked user" in deny with input as {"user": "eve", "ip": "10.0.0.1"}
}
''')
    assert got["test_blocked_by_mock"] == ("pass", "")
    assert got["test_not_blocked_without_mock"] == ("pass", "")
    assert got["test_wrong_expectation"][0] == "fail"


def test_with_data_mocks_a_rule(tmp_path: Path) -> None:
    got = results_of(tmp_path, '''\
test_limit_mocked if {
\ttoo_many with input as {"items": [1, 2]} with data.ordinance.t.limit as 1
}

test_limit_real if {
\tnot too_many with input as {"items": [1, 2]}
}
''')
    assert got == {"test_limit_mocked": ("pass", ""), "test_limit_real": ("pass", "")}


def test_with_a_builtin_and_a_function(tmp_path: Path) -> None:
    got = results_of(tmp_path, '''\
test_clock_mocked if {
\t"late" in deny with input as {"user": "a", "ip": "10.0.0.1"}
\t\twith time.now_ns as 3000000000000000000
}

test_function_replaced if {
\tnot "foreign" in deny with input as {"user": "a", "ip": "8.8.8.8"}
\t\twith internal as always_internal
}

test_function_value if {
\tnot "foreign" in deny with input as {"user": "a", "ip": "8.8.8.8"} with internal as true
}

test_function_by_data_path if {
\tnot "foreign" in deny with input as {"user": "a", "ip": "8.8.8.8"}
\t\twith data.ordinance.t.internal as always_internal
}

test_function_by_data_path_value if {
\tnot "foreign" in deny with input as {"user": "a", "ip": "8.8.8.8"}
\t\twith data.ordinance.t.internal as true
}

test_real_function if {
\t"foreign" in deny with input as {"user": "a", "ip": "8.8.8.8"}
}
''')
    assert got == {name: ("pass", "") for name in (
        "test_clock_mocked", "test_function_replaced", "test_function_value",
        "test_function_by_data_path", "test_function_by_data_path_value",
        "test_real_function")}, got


def test_with_input_path(tmp_path: Path) -> None:
    got = results_of(tmp_path, '''\
test_path if {
\t"blocked user" in deny with input as {"ip": "10.0.0.1"} with input.user as "mallory"
}
''')
    assert got == {"test_path": ("pass", "")}


def test_errors_are_reported_apart_from_failures(tmp_path: Path) -> None:
    got = results_of(tmp_path, '''\
test_divides_by_zero if {
\tx := 1 / input.zero with input as {"zero": 0}
\tx > 0
}

test_two_inputs if {
\tdeny with input as {"user": "a"}
\tdeny with input as {"user": "b"}
}

test_local_value if {
\tv := {"user": "a"}
\tdeny with input as v
}

test_unknown_target if {
\tdeny with nosuch.function as 1
}

test_false if {
\tfalse
}
''')
    assert got["test_divides_by_zero"][0] == "error"
    assert "divide by zero" in got["test_divides_by_zero"][1]
    assert got["test_two_inputs"][0] == "error" and "split" in got["test_two_inputs"][1]
    assert got["test_local_value"][0] == "error" and "local variable" in got["test_local_value"][1]
    assert got["test_unknown_target"][0] == "error"
    assert got["test_false"][0] == "fail"


def test_closing_line_counts_errors(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(POLICY)
    (tmp_path / "p_test.rego").write_text(
        HEAD + "test_ok if true\n\ntest_bad if false\n\n"
        'test_err if 1 / input.zero with input as {"zero": 0}\n')
    run = ordinance("test", str(tmp_path))
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert lines[-1] == "1 passed, 1 failed, 1 errored"
    assert "FAIL: data.ordinance.t.test_bad" in run.stdout
    assert "ERROR: data.ordinance.t.test_err" in run.stdout
    junit = ordinance("test", str(tmp_path), "--format", "junit")
    assert 'failures="1"' in junit.stdout and 'errors="1"' in junit.stdout
    assert "<error message=" in junit.stdout


def test_text_report_shape() -> None:
    from engine.rego_testing import TestResult

    text = format_text([TestResult("a", "f", "pass"), TestResult("b", "f", "error", "boom")],
                       verbose=True)
    assert text.splitlines() == ["PASS: a (f)", "ERROR: b (f)", "    boom", "-" * 60,
                                 "1 passed, 0 failed, 1 errored"]


@pytest.mark.parametrize("body", ["count(5)", 'upper(3)', 'sum("abc")', 'concat(",", 7)',
                                  "startswith(1, \"a\")", "abs(\"x\")"])
def test_a_type_error_fails_the_whole_run_at_load(tmp_path: Path, body: str) -> None:
    (tmp_path / "p.rego").write_text(HEAD + "ok := true\n")
    (tmp_path / "p_test.rego").write_text(HEAD + f"test_ok if true\n\ntest_type if {body}\n")
    run = ordinance("test", str(tmp_path))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "p_test.rego:7: type error" in run.stderr, run.stderr


def test_with_clauses_are_found_with_their_values() -> None:
    text = ('test_x if {\n\tdeny with input as {"a": [1,\n 2]} with data.x.y as "v"\n'
            '\tf(1) with time.now_ns as 5; true\n}')
    clauses = [(c.target, c.value) for c in with_clauses(text)]
    assert clauses == [("input", '{"a": [1,\n 2]}'), ("data.x.y", '"v"'), ("time.now_ns", "5")]


def test_verbose_shows_what_print_prints(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(POLICY)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "data.json").write_text('{"blocked": ["mallory"], "cutoff": 0}')
    (tmp_path / "p_test.rego").write_text(HEAD + """\
test_prints if {
\tr := deny with input as {"user": "mallory", "ip": "10.0.0.1"}
\tprint("reasons:", count(r), r)
\tsome i in [1, 2]
\tprint("i", i)
\tprint("missing", input.nothing)
\tcount(r) == 2
}

test_quiet if {
\tprint(net.cidr_contains("10.0.0.0/8", "10.1.1.1"))
\tfalse
}
""")
    run = ordinance("test", str(tmp_path), "-v")
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert 'PASS: data.ordinance.t.test_prints' in out
    assert '    print: reasons: 2 ["blocked user", "late"]' in out
    assert "    print: i 1" in out and "    print: i 2" in out
    assert "missing" not in out  # an undefined argument: nothing is shown
    assert "FAIL: data.ordinance.t.test_quiet" in out and "    print: true" in out
    quiet = ordinance("test", str(tmp_path))
    assert "print: reasons" not in quiet.stdout and "print: true" in quiet.stdout
