"""The Engine: combining effects, failing closed, the decision cache and atomic swaps."""

from __future__ import annotations

from engine.engine import Engine
from engine.policy import load_policy_set

HEAD = "package ordinance.t\n\nimport rego.v1\n\n"


def test_deny_beats_review_beats_allow(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD +
                       'deny contains "d" if input.d\nreview contains "r" if input.r\n'})
    engine = Engine(load_policy_set(str(root)))
    assert engine.decide({"d": True, "r": True}).effect == "deny"
    assert engine.decide({"r": True}).effect == "review"
    assert engine.decide({}).effect == "allow"


def test_non_object_input_is_denied(policy_dir) -> None:
    engine = Engine(load_policy_set(str(policy_dir({"p.rego": HEAD}))))
    decision = engine.decide(["not", "an", "object"])
    assert decision.effect == "deny"
    assert "must be a JSON object" in decision.reasons[0].message


def test_cache_hit_is_identical_and_marked(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "drop" if "drop" in input.command.kinds\n'})
    engine = Engine(load_policy_set(str(root)))
    doc = {"resource": {"type": "postgres"}, "command": {"raw": "DROP TABLE x"}}
    first = engine.decide(doc)
    second = engine.decide({"command": {"raw": "DROP TABLE x"}, "resource": {"type": "postgres"}})
    assert not first.cached and second.cached
    assert second.to_dict() == first.to_dict()


def test_swap_drops_the_cache_and_changes_revision(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "a" if input.x\n'})
    engine = Engine(load_policy_set(str(root)))
    before = engine.decide({"x": True})
    (root / "p.rego").write_text(HEAD + 'review contains "b" if input.x\n')
    engine.swap(load_policy_set(str(root)))
    after = engine.decide({"x": True})
    assert (before.effect, after.effect) == ("deny", "review")
    assert before.policy_revision != after.policy_revision and not after.cached


def test_time_dependent_policies_bypass_the_cache(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "late" if time.now_ns() < 0\n'})
    engine = Engine(load_policy_set(str(root)))
    assert not engine.policy_set.cacheable
    engine.decide({"a": 1})
    assert not engine.decide({"a": 1}).cached


def test_decision_reports_enriched_command(policy_dir) -> None:
    engine = Engine(load_policy_set(str(policy_dir({"p.rego": HEAD}))))
    out = engine.decide({"resource": {"type": "postgres"}, "command": {"raw": "SELECT 1"}})
    assert out.command["kinds"] == ["select"] and out.command["parse_error"] is None


def test_statements_differing_by_literals_share_one_evaluation(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "no" if "drop" in input.command.kinds\n'})
    engine = Engine(load_policy_set(str(root)))
    assert engine.policy_set.literal_insensitive
    res = {"type": "postgres"}
    first = engine.decide({"resource": res, "command": {"raw": "SELECT a FROM t WHERE id = 1"}})
    second = engine.decide({"resource": res, "command": {"raw": "SELECT a FROM t WHERE id = 2"}})
    assert not first.cached and second.cached
    assert second.command["raw"] == "SELECT a FROM t WHERE id = 2"
    limited = engine.decide({"resource": res, "command": {"raw": "SELECT a FROM t LIMIT 9"}})
    other_limit = engine.decide({"resource": res, "command": {"raw": "SELECT a FROM t LIMIT 8"}})
    assert not limited.cached and not other_limit.cached  # LIMIT counts are facts


def test_only_postgresql_is_keyed_by_the_literal_fingerprint(policy_dir) -> None:
    """The fingerprint lexes as PostgreSQL does: under MySQL's rules (`#` comments, `\\'`
    escapes) two texts it takes for one shape read different tables."""
    root = policy_dir({"p.rego": HEAD + 'deny contains "no" if "cards" in input.command.tables\n'})
    engine = Engine(load_policy_set(str(root)))
    res = {"type": "mysql"}
    benign = "SELECT 1 FROM t WHERE a = 'x' AND b = 'y'"
    hostile = "SELECT 1 FROM t WHERE a = 'x\\' AND b = ' UNION SELECT pan FROM cards #'"
    assert engine.decide({"resource": res, "command": {"protocol": "mysql", "raw": benign}}
                         ).allowed
    second = engine.decide({"resource": res, "command": {"protocol": "mysql", "raw": hostile}})
    assert not second.cached and second.effect == "deny"
    assert engine.decide({"resource": res, "command": {
        "protocol": "mysql", "raw": "SELECT 1 FROM t WHERE a = 'z' AND b = 'w'"}}).cached is False


def test_policies_reading_raw_text_are_not_literal_cached(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD +
                       'deny contains "secret" if contains(input.command.raw, "42")\n'})
    engine = Engine(load_policy_set(str(root)))
    assert not engine.policy_set.literal_insensitive
    res = {"type": "postgres"}
    assert engine.decide({"resource": res, "command": {"raw": "SELECT 1 WHERE a = 7"}}).allowed
    assert engine.decide({"resource": res, "command": {"raw": "SELECT 1 WHERE a = 42"}}
                         ).effect == "deny"


def test_cel_rules_mentioning_raw_disable_literal_caching(policy_dir) -> None:
    root = policy_dir({"r.yaml": "rules:\n  - name: r\n    effect: deny\n"
                                 "    when: 'command.raw.contains(\"42\")'\n"})
    assert not load_policy_set(str(root)).literal_insensitive


def _session_doc(session_id: str, raw: str = "SELECT a FROM t WHERE id = 1") -> dict:
    return {"subject": {"id": "alice", "groups": ["dev"]}, "resource": {"type": "postgres"},
            "command": {"protocol": "postgres", "raw": raw},
            "session": {"id": session_id, "client_addr": "10.0.0.7"}}


def test_fields_no_policy_reads_do_not_split_the_cache(policy_dir) -> None:
    root = policy_dir({"p.rego": HEAD + 'deny contains "no" if "drop" in input.command.kinds\n'
                                        'review contains "r" if input.subject.id == "bob"\n'})
    engine = Engine(load_policy_set(str(root)))
    first = engine.decide(_session_doc("s1"))
    second = engine.decide(_session_doc("s2", "SELECT a FROM t WHERE id = 2"))
    assert not first.cached and second.cached  # another session, another literal
    assert second.command["raw"] == "SELECT a FROM t WHERE id = 2"
    bob = _session_doc("s3")
    bob["subject"] = {"id": "bob"}
    assert engine.decide(bob).effect == "review"  # what a policy reads still counts


def test_fields_a_policy_reads_keep_decisions_apart(policy_dir) -> None:
    rego = policy_dir({"p.rego": HEAD + 'deny contains "s1" if input.session.id == "s1"\n'})
    engine = Engine(load_policy_set(str(rego)))
    assert engine.decide(_session_doc("s2")).allowed
    assert engine.decide(_session_doc("s1")).effect == "deny"
    cel = policy_dir({"r.yaml": "rules:\n  - name: r\n    effect: deny\n"
                                "    when: 'has(session.id) && session.id == \"s1\"'\n"})
    engine = Engine(load_policy_set(str(cel)))
    assert engine.decide(_session_doc("s2")).allowed
    assert engine.decide(_session_doc("s1")).effect == "deny"
    whole = policy_dir({"p.rego": HEAD + 'deny contains "s1" if input.session == {"id": "s1", '
                                         '"client_addr": "10.0.0.7"}\n'})
    engine = Engine(load_policy_set(str(whole)))
    assert engine.decide(_session_doc("s2")).allowed
    assert engine.decide(_session_doc("s1")).effect == "deny"
    assert not engine.decide(_session_doc("s1")).allowed  # and from the cache
