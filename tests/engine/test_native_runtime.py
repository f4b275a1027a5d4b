"""CEL never takes the process down, whatever was imported first (engine/native.py).

regopy's library exports snmalloc's operator new/delete; loaded first, it made libstdc++ bind
to them while cel-expr-python used glibc's, and ordinary expressions (a missing key, non-ASCII
text, timestamps) aborted the process with `free(): invalid pointer`. Each evaluation runs in a
child process here, so an abort is a failing test, not a dead test run.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
DOC = {"subject": {"id": "alice", "groups": ["dev"], "name": "Ἀλίκη"},
       "resource": {"type": "postgres", "labels": {"env": "prod"}},
       "command": {"protocol": "shell", "raw": "ls -l", "argv": ["ls", "-l"]}}

# (expression, what the rule must do): "fires" (deny with the rule's message), "quiet" (no
# reason) or "error" (deny naming the CEL error). Every class that aborted before the fix.
CASES = [
    ("subject.clearance < 3", "error"),                      # missing key on a non-empty map
    ("command.kinds.exists(k, k == 'drop')", "error"),       # a SQL fact on a shell command
    ("'ίσος' == 'ίσος'", "fires"),                           # non-ASCII strings
    ("size('πέντε') == 5", "fires"),
    ("subject.name.matches('^Ἀλ')", "fires"),                # matches on non-ASCII
    ("subject.id.matches('^ålice$')", "quiet"),
    ('"a\\tb\\u00e9" == "a\\u0009bé"', "fires"),             # escape sequences
    ("timestamp('2024-01-01T00:00:00Z') < timestamp('2025-01-01T00:00:00Z')", "fires"),
    ("timestamp(subject.id) < timestamp('2025-01-01T00:00:00Z')", "error"),
    ("duration('1h') > duration('1s')", "fires"),
    ("google.protobuf.Struct{fields: {'a': 1}} == {'a': 1}", "fires"),  # Struct literal
    ("string(subject.id) == 'alice'", "fires"),              # converting a string result
    ("string(b'\\xff') == 'x'", "error"),
    ("int('x') == 1", "error"),
    ("subject.groups[5] == 'x'", "error"),
]


class Child:
    """A long-lived `tests.engine.cel_child` process."""

    def __init__(self, order: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.engine.cel_child", order], cwd=REPO,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def ask(self, when: str, doc: dict[str, Any], timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"when": when, "doc": doc}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"the child died or hung (rc {self.proc.returncode}) on "
                                 f"{when!r}:\n{err[-2000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> int:
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err[-2000:]
        return self.proc.returncode


def _effect(answer: dict[str, Any]) -> str:
    assert "errors" not in answer, answer
    reasons = answer["reasons"]
    if not reasons:
        return "quiet"
    (reason,) = reasons
    assert reason["effect"] == "deny"
    return "error" if "failed:" in reason["message"] else "fires"


@pytest.mark.parametrize("order", ["engine", "cel-first"])
def test_every_cel_class_that_aborted_evaluates_in_either_import_order(order: str) -> None:
    child = Child(order)
    got = [(when, _effect(child.ask(when, DOC))) for when, _ in CASES]
    child.close()
    assert got == CASES


def test_a_process_where_regopy_was_loaded_first_refuses_cel_instead_of_aborting() -> None:
    child = Child("regopy-first")
    answer = child.ask("subject.clearance < 3", DOC)
    child.close()
    (error,) = answer["errors"]
    assert "CEL cannot run safely in this process" in error
    assert "regopy was loaded before" in error and "librego_shared.so" in error


def _probe(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_libstdcxx_binds_operator_new_to_itself_whatever_the_engine_imports() -> None:
    """The check CEL relies on, asked directly: None after the engine's own imports (every
    adapter's), and the reason when a plugin imported regopy first."""
    ok = _probe("import engine.cli, engine.service.server, adapters.postgres.proxy, "
                "adapters.envoy.service, grpc, cel_expr_python.cel, regopy\n"
                "from engine.native import allocator_problem; print(allocator_problem())")
    assert ok == "None"
    broken = _probe("import regopy, engine\n"
                    "from engine.native import allocator_problem; print(allocator_problem())")
    assert "librego_shared.so" in broken


def test_ordinance_eval_on_the_issues_reproduction_denies_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "level.yaml").write_text(
        "rules:\n  - {name: level, effect: deny, when: 'subject.clearance < 3', "
        "message: low clearance}\n")
    doc = {"subject": {"id": "alice", "groups": ["dev"]}, "resource": {},
           "command": {"protocol": "postgres", "raw": "SELECT 1"}}
    out = subprocess.run([sys.executable, "-m", "engine.cli", "eval", "--policies",
                          str(tmp_path), "--input", "-"], input=json.dumps(doc), cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert decision["effect"] == "deny"
    assert "Key not found in map" in decision["reasons"][0]["message"]


def test_ordinance_test_runs_cel_cases_that_aborted(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n"
        "  - {name: greek, effect: deny, when: \"subject.name.matches('^Ἀλ')\", message: greek}\n"
        "  - {name: kinds, effect: review, when: \"command.kinds.exists(k, k == 'x')\"}\n")
    (tmp_path / "rules_test.yaml").write_text(
        "cases:\n"
        "  - name: both\n"
        "    input: {subject: {id: a, name: Ἀλίκη}, resource: {},\n"
        "            command: {protocol: shell, raw: ls}}\n"
        "    expect: {effect: deny}\n")
    out = subprocess.run([sys.executable, "-m", "engine.cli", "test", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 0 failed" in out.stdout


# -- generated expressions over generated documents --------------------------------------------

_TEXT = st.text(alphabet=st.sampled_from("aZ09 _-'\"\\\nåéίσοςπέντε日本🙂\t"),  # noqa: RUF001
                max_size=8)
_KEYS = st.sampled_from(["id", "name", "groups", "labels", "ίδ", "n", "ts", "missing"])


def _cel_string(text: str) -> str:
    """A CEL string literal for `text`, with escapes."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return "'" + escaped.replace("\t", "\\t") + "'"


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | _TEXT
    | st.sampled_from(["2024-01-01T00:00:00Z", "not-a-time", "1s"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=3),
    max_leaves=8)
_DOCS = st.fixed_dictionaries({
    "subject": st.dictionaries(_KEYS, _VALUES, max_size=4),
    "resource": st.dictionaries(_KEYS, _VALUES, max_size=3),
    "command": st.fixed_dictionaries({"protocol": st.sampled_from(["shell", "http"]),
                                      "raw": _TEXT}),
})

_FIELD = st.builds(lambda top, a, b: f"{top}.{a}" + (f".{b}" if b else ""),
                   st.sampled_from(["subject", "resource", "command"]), _KEYS,
                   st.none() | _KEYS)
_LITERAL = (_TEXT.map(_cel_string) | st.integers(-5, 5).map(str)
            | st.sampled_from(["timestamp('2024-01-01T00:00:00Z')", "duration('90s')",
                               "b'\\xff'", "[1, 'a']", "{'k': 'ü'}", "null", "1u", "2.5"]))
_TERM = st.deferred(lambda: _FIELD | _LITERAL | st.builds(
    lambda fn, t: fn.format(t), st.sampled_from(
        ["size({})", "string({})", "int({})", "timestamp({})", "dyn({})", "type({})",
         "{}.lowerAscii()", "duration({})"]), _TERM))
_BOOL = st.deferred(lambda: st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} {b}", _TERM,
              st.sampled_from(["==", "!=", "<", ">=", "in"]), _TERM),
    st.builds(lambda f, p: f"{f}.matches({_cel_string(p)})", _FIELD,
              st.sampled_from(["^a", "ίσ", "[", ".*", "\\\\d"])),
    _FIELD.map(lambda f: f"has({f})"),
    st.builds(lambda a, op, b: f"({a}) {op} ({b})", _BOOL, st.sampled_from(["&&", "||"]),
              _BOOL),
    _BOOL.map(lambda b: f"!({b})"),
    _TERM,  # not a bool: the rule must deny
))


@pytest.fixture(scope="module")
def child() -> Iterator[Child]:
    running = Child("engine")
    yield running
    running.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(st.tuples(_BOOL, _DOCS), min_size=1, max_size=10))
def test_generated_cel_never_aborts_and_an_error_value_is_a_deny(
        child: Child, cases: list[tuple[str, dict[str, Any]]]) -> None:
    for when, doc in cases:
        answer = child.ask(when, doc)
        if "errors" in answer:  # refused at compile time: the set would not load
            assert all(e.startswith("case.yaml:") and "cannot run safely" not in e
                       for e in answer["errors"]), answer
            continue
        reasons = answer["reasons"]
        assert all(r["effect"] == "deny" for r in reasons), (when, answer)
        if answer["kind"] == "bool":
            assert len(reasons) == int(answer["value"]), (when, answer)
        else:  # an error value, or a value that is not a bool: a deny that says so
            assert len(reasons) == 1, (when, answer)
            assert ("failed:" if answer["kind"] == "error" else "not bool") in \
                reasons[0]["message"] or "returned" in reasons[0]["message"], (when, answer)


# -- through the long-running entry points ----------------------------------------------------

ABORTING_RULES = (
    "rules:\n"
    "  - {name: level, effect: deny, when: 'subject.clearance < 3', message: low clearance}\n"
    "  - {name: greek, effect: deny, when: \"subject.name.matches('^Ἀλ')\", message: greek}\n"
    "  - {name: stamp, effect: deny, when: \"timestamp(subject.id) > timestamp(0)\"}\n")


def test_serve_workers_answer_every_class_with_a_deny_and_stay_up(tmp_path: Path) -> None:
    import grpc

    from engine.api import decision_pb2, decision_pb2_grpc
    from tests.service.conftest import start_serve
    from tests.service.test_http_api import call

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "rules.yaml").write_text(ABORTING_RULES)
    server = start_serve(["--policies", str(policies), "--grpc", "127.0.0.1:0", "--http",
                          "127.0.0.1:0", "--workers", "2", "--decision-log", "async",
                          "--decision-log-file", str(tmp_path / "decisions.jsonl")], tmp_path)
    try:
        for i in range(20):  # fresh connections: both workers answer
            with grpc.insecure_channel(server.grpc_target) as channel:
                request = decision_pb2.DecideRequest()
                request.input.update({"subject": {"id": f"u{i}", "name": "Ἀλίκη"},
                                      "command": {"protocol": "shell", "raw": "ls"}})
                decision = decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                    request, timeout=30).decision
            assert decision.effect == decision_pb2.EFFECT_DENY
            messages = " ".join(r.message for r in decision.reasons)
            assert "Key not found" in messages and "greek" in messages
            assert "Timestamp" in messages
        port = int(server.ready["http"].rsplit(":", 1)[1])
        assert "ordinance_worker_restarts_total{" not in call(port, "GET", "/metrics")[1]
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


@pytest.mark.postgres
def test_the_postgres_proxy_denies_each_statement_and_the_session_goes_on(
        pg_database: str, tmp_path: Path) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from tests.postgres.test_enforcement_cli import Running, proxy_args

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "rules.yaml").write_text(ABORTING_RULES)
    running = Running(proxy_args(tmp_path, pg_database, "--policies", str(policies)), REPO)
    try:
        port = int(running.ready["listen"].rsplit(":", 1)[1])
        dbname = conninfo_to_dict(pg_database)["dbname"]
        with psycopg.connect(f"host=127.0.0.1 port={port} dbname={dbname} user=alice "
                             "password=alice-secret sslmode=disable", autocommit=True) as conn:
            for sql in ("SELECT 1", "SELECT 'ίσος'", "SELECT now()"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege,
                                   match="Key not found in map"):
                    conn.execute(sql)
            assert not conn.closed
        assert running.process.poll() is None  # alive for the next session
    finally:
        code, err = running.stop()
    assert code == 0, err
