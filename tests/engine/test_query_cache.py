"""What Rego modules read of `input` (key paths, import aliases, literal subscripts), the
pruned input regopy gets, and the query cache keyed by it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.engine import Engine
from engine.errors import EvaluationError
from engine.policy import load_policy_set
from engine.policy.rego_source import read_module

ENVOY = """\
package envoy.authz

import rego.v1

import input.attributes.request.http as req

default allow := false

allow if {
	req.method == "GET"
	input.parsed_path[0] == "people"
	req.headers["x-role"] == "admin"
}

boom if 1 / count(input.parsed_path) == 0
"""


def test_read_paths_follow_aliases_and_literal_subscripts() -> None:
    module = read_module("p.rego", ENVOY)
    assert module.input_paths == {
        ("attributes", "request", "http", "method"),
        ("attributes", "request", "http", "headers", "x-role"),
        ("parsed_path",),
    }


@pytest.mark.parametrize("source", [
    "package p\nallow if input[x] == 1\n",
    "package p\nallow if count(input) > 1\n",
    "package p\nimport input as i\nallow if i[x]\n",
])
def test_computed_or_whole_input_reads_everything(source: str) -> None:
    assert read_module("p.rego", source).input_paths is None


def test_bare_alias_reads_its_whole_subtree() -> None:
    module = read_module("p.rego", "package p\nimport input.a.b\nallow if count(b) > 1\n")
    assert module.input_paths == {("a", "b")}


def engine_for(tmp_path: Path, source: str) -> Engine:
    (tmp_path / "p.rego").write_text(source)
    return Engine(load_policy_set(str(tmp_path)))


def request(method: str, path: list[str], request_id: str, role: str = "admin") -> dict:
    return {"attributes": {"request": {"time": request_id, "http": {
        "id": request_id, "method": method,
        "headers": {"x-request-id": request_id, "x-role": role}}}},
        "parsed_path": path, "parsed_body": {"big": list(range(50))}}


def test_prune_keeps_exactly_what_is_read(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, ENVOY)
    assert engine.policy_set.rego.prune(request("GET", ["people"], "r1")) == {
        "attributes": {"request": {"http": {"method": "GET", "headers": {"x-role": "admin"}}}},
        "parsed_path": ["people"]}


def test_queries_differing_only_in_unread_fields_share_one_evaluation(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, ENVOY)
    cache = engine._queries[1]
    for i in range(20):
        assert engine.query("envoy/authz/allow", request("GET", ["people"], f"r{i}")) == (
            True, True)
    assert len(cache) == 1
    assert engine.query("data.envoy.authz.allow",
                        request("GET", ["people"], "x", role="guest")) == (True, False)
    assert engine.query("envoy/authz/allow", request("POST", ["people"], "y")) == (True,
                                                                                  False)
    assert len(cache) == 3
    with pytest.raises(EvaluationError):  # errors are raised every time, never cached
        engine.query("envoy/authz/boom", request("GET", [], "z"))
    with pytest.raises(EvaluationError):
        engine.query("envoy/authz/boom", request("GET", [], "z"))
    engine.swap(load_policy_set(str(tmp_path)))
    assert len(engine._queries[1]) == 0


def test_nondeterministic_policies_are_not_cached(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, "package p\nimport rego.v1\n"
                                  "late if time.now_ns() > input.t\n")
    assert engine.query("p/late", {"t": 0}) == (True, True)
    assert len(engine._queries[1]) == 0
