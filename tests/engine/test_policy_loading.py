"""Loading, validating and evaluating policy sets: Rego, CEL, data, bundles, errors."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from engine.engine import Engine
from engine.errors import EvaluationError, PolicySetError
from engine.policy import load_policy_set

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"
PG = {"type": "postgres", "labels": {"env": "prod"}}


def decide(root: Path, raw: str = "SELECT 1", **extra: object) -> dict:
    doc = {"subject": {"id": "a"}, "resource": PG, "command": {"raw": raw}, **extra}
    return Engine(load_policy_set(str(root))).decide(doc).to_dict()


def errors_of(root: Path) -> list[str]:
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(root))
    return info.value.errors


def test_deny_review_mask_collected_from_subpackages(policy_dir) -> None:
    root = policy_dir({
        "a.rego": HEAD + 'deny contains "no" if input.command.kinds[_] == "drop"\n',
        "team/b.rego": "package ordinance.team.payments\n\nimport rego.v1\n\n"
                       'review contains {"msg": "check", "approvers": ["leads"], '
                       '"window": "30m"} if true\n'
                       'mask contains {"column": "cards.pan", "method": "pan"} if true\n',
    })
    out = decide(root, "DROP TABLE x")
    assert out["effect"] == "deny"
    assert {r["policy"] for r in out["reasons"]} == {"ordinance.t.deny",
                                                     "ordinance.team.payments.review"}
    review = next(r for r in out["reasons"] if r["effect"] == "review")
    assert review["approvers"] == ["leads"] and review["window"] == "30m"
    assert out["masks"] == [{"column": "cards.pan", "method": "pan"}]
    assert decide(root, "SELECT 1")["effect"] == "review"


def test_syntax_error_reports_file_and_line(policy_dir) -> None:
    root = policy_dir({"bad.rego": HEAD + "deny contains x if {\n  x := \n"})
    errors = errors_of(root)
    assert any("bad.rego:" in e for e in errors), errors


def test_unknown_builtin_is_rejected_with_line(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "x" if {\n'
                                        '  not strings.render_template("x", {})\n}\n'})
    errors = errors_of(root)
    assert len(errors) == 1
    assert "p.rego:6: unknown builtin strings.render_template (" in errors[0], errors


@pytest.mark.parametrize("call", ["strings.render_template", "http.send"])
def test_missing_regopy_builtins_never_fail_open(policy_dir, call: str) -> None:
    root = policy_dir({"p.rego": HEAD + f'allow_it if {call}("a", "b")\n'})
    assert any(f"unknown builtin {call}" in e for e in errors_of(root))


def test_opa_runtime_is_forbidden(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "x" if opa.runtime().env.HOME\n'})
    assert any("opa.runtime is not allowed" in e for e in errors_of(root))


def test_policy_defined_functions_and_imports_are_accepted(policy_dir) -> None:
    root = policy_dir({
        "lib.rego": "package lib.util\n\nimport rego.v1\n\n"
                    'is_prod(r) if r.labels.env == "prod"\n',
        "p.rego": HEAD + "import data.lib.util\n\nlocal(x) := x\n\n"
                  'deny contains "prod" if {\n  util.is_prod(input.resource)\n  local(1) == 1\n}\n',
    })
    assert decide(root)["effect"] == "deny"


@pytest.mark.parametrize(("addr", "effect"), [
    ("10.1.2.3", "allow"), ("192.168.0.1", "deny"), ("2001:db8::5", "allow"),
    ("2001:db9::5", "deny"), ("not-an-ip", "deny"),
])
def test_net_cidr_contains_is_provided(policy_dir, addr: str, effect: str) -> None:
    root = policy_dir({"p.rego": HEAD +
                       'trusted if net.cidr_contains("10.0.0.0/8", input.source)\n'
                       'trusted if net.cidr_contains("2001:db8::/32", input.source)\n'
                       'deny contains "untrusted source" if not trusted\n'})
    assert decide(root, source=addr)["effect"] == effect


def test_runtime_error_is_a_deny_with_the_error(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "x" if 1 / input.zero > 1\n'})
    out = decide(root, zero=0)
    assert out["effect"] == "deny"
    assert "divide by zero" in out["reasons"][0]["message"]


def test_conflicting_values_are_a_deny(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + "x := 1 if true\nx := 2 if true\n"
                                        'deny contains "never" if x == 3\n'})
    out = decide(root)
    assert out["effect"] == "deny" and "policy evaluation error" in out["reasons"][0]["message"]


def test_unknown_mask_method_fails_closed(policy_dir) -> None:
    rule = 'mask contains {"column": "pan", "method": "rot13"} if true\n'
    root = policy_dir({"p.rego": HEAD + rule})
    out = decide(root)
    assert out["effect"] == "deny" and "unknown mask method" in out["reasons"][0]["message"]


def test_cel_rules_compile_once_and_fire(policy_dir) -> None:
    root = policy_dir({"r.yaml": """rules:
  - name: block-truncate
    effect: deny
    when: 'command.kinds.exists(k, k == "truncate")'
    message: "TRUNCATE is not allowed"
  - name: mask-pan
    effect: mask
    when: 'resource.labels.env == "prod"'
    mask: [{column: pan, method: pan}]
"""})
    out = decide(root, "TRUNCATE cards")
    assert out["effect"] == "deny"
    assert out["reasons"][0]["policy"].endswith("r.yaml#block-truncate")
    assert out["masks"] == [{"column": "pan", "method": "pan"}]


def test_cel_error_value_is_a_deny_not_a_skipped_rule(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: needs-pci\n    effect: review\n"
                                 "    when: 'resource.labels.pci == \"true\"'\n"})
    out = decide(root)
    assert out["effect"] == "deny"
    assert "needs-pci" in out["reasons"][0]["message"]
    assert "labels" in out["reasons"][0]["message"] or "pci" in out["reasons"][0]["message"]


@pytest.mark.parametrize(("when", "fragment"), [
    ("command.kinds.exists(k, k == ", "Syntax error"),
    ('1 + "a"', "no matching overload"),
    ("nosuchvar == 1", "undeclared reference"),
    ("1 + 2", "must be a bool"),
])
def test_cel_compile_errors_name_file_and_line(policy_dir, when: str, fragment: str) -> None:
    root = policy_dir({"r.yaml": f"# header\nrules:\n  - name: r1\n    effect: deny\n"
                                 f"    when: '{when}'\n"})
    errors = errors_of(root)
    assert len(errors) == 1 and "r.yaml:3:" in errors[0] and fragment in errors[0], errors


def test_cel_rule_file_validation(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: a\n    effect: allow\n    when: 'true'\n"
                                 "  - name: b\n    effect: mask\n    when: 'true'\n"
                                 "    mask: [{column: pan, method: rot13}]\n",
                       "other.yaml": "settings: {a: 1}\n"})
    errors = errors_of(root)
    assert any("effect must be one of" in e for e in errors)
    assert any("unknown mask method 'rot13'" in e for e in errors)
    assert any("not a CEL rule file" in e for e in errors)


def test_yaml_syntax_error_has_a_line(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: a\n   effect: [\n"})
    assert any("r.yaml:" in e for e in errors_of(root))


def test_data_documents_mount_by_directory(policy_dir) -> None:
    root = policy_dir({
        "settings/team/data.yaml": "blocked: [mallory]\n",
        "p.rego": HEAD + 'deny contains "blocked user" if input.subject.id in '
                         "data.settings.team.blocked\n",
    })
    engine = Engine(load_policy_set(str(root)))
    assert engine.decide({"subject": {"id": "mallory"}}).effect == "deny"
    assert engine.decide({"subject": {"id": "alice"}}).effect == "allow"
    assert engine.query("data.settings.team.blocked", {}) == (True, ["mallory"])


def test_opa_bundle_archive_loads(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        policy = 'package ordinance.x\n\nimport rego.v1\n\ndeny contains "from bundle" if true\n'
        members = {".manifest": json.dumps({"revision": "7"}), "ordinance/x/policy.rego": policy}
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = Engine(load_policy_set(str(bundle))).decide({"command": {"raw": "x"}})
    assert out.effect == "deny" and out.reasons[0].message == "from bundle"


def test_broken_bundle_is_a_clear_error(tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(b"not a tarball")
    with pytest.raises(PolicySetError) as info:
        load_policy_set(str(bundle))
    assert "unreadable bundle" in info.value.errors[0]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicySetError, match="no such policy directory"):
        load_policy_set(str(tmp_path / "nope"))


def test_revision_is_a_content_hash(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "a" if false\n'})
    first = load_policy_set(str(root)).revision
    assert load_policy_set(str(root)).revision == first
    (root / "p.rego").write_text(HEAD + 'deny contains "b" if false\n')
    assert load_policy_set(str(root)).revision != first


def test_query_returns_defined_and_value(policy_dir) -> None:
    root = policy_dir({"envoy.rego": "package envoy.authz\n\nimport rego.v1\n\n"
                                     "default allow := false\n\n"
                                     'allow if input.method == "GET"\n'})
    engine = Engine(load_policy_set(str(root)))
    assert engine.query("data.envoy.authz.allow", {"method": "GET"}) == (True, True)
    assert engine.query("envoy/authz/allow", {"method": "POST"}) == (True, False)
    assert engine.query("data.envoy.authz.nothing", {}) == (False, None)
    defined, everything = engine.query("", {"method": "GET"})
    assert defined and everything["envoy"]["authz"]["allow"] is True


def test_ref_head_functions_and_empty_set_literal_are_not_unknown_builtins(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + "helpers.double(x) := x * 2\n\n"
                                        'deny contains "big" if {\n  helpers.double(input.n) > 10\n'
                                        "  count(set()) == 0\n}\n"})
    engine = Engine(load_policy_set(str(root)))
    assert engine.decide({"n": 6}).effect == "deny"
    assert engine.decide({"n": 1}).effect == "allow"


def test_mocking_with_a_nondeterministic_builtin_disables_the_cache(policy_dir) -> None:
    rule = "stamp := x if { x := count([]) with count as time.now_ns }\n"
    root = policy_dir({"p.rego": HEAD + rule + 'deny contains "never" if false\n'})
    assert not load_policy_set(str(root)).cacheable


def test_with_input_path_on_non_object_input_is_an_error_not_a_crash(policy_dir) -> None:
    rules = "a := input.a\n\nv := x if {\n  x := a with input.a as 1\n}\n"
    root = policy_dir({"p.rego": HEAD + rules})
    engine = Engine(load_policy_set(str(root)))
    with pytest.raises(EvaluationError, match="must be a JSON object"):
        engine.query("data.ordinance.t.v", None)
    assert engine.query("data.ordinance.t.v", {}) == (True, 1)
