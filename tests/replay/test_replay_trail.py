"""`ordinance replay` over trails written with the payloads the proxy and the service write:
joins, what cannot be replayed and why, baselines, duplicates, exit codes, formats, the
access record, and `--jobs` giving the single-process answer."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest

from engine.audit import open_audit_log
from engine.replay.reads import cel_paths
from tests.replay.trail import (
    RESOURCE,
    replay,
    session_start,
    statement,
    write_policies,
)

REPO = Path(__file__).resolve().parents[2]

BASE = """package ordinance.t
import rego.v1

deny contains {"msg": "no DROP", "rule": "no_drop"} if {
    some s in input.command.statements
    s.kind == "drop"
}

mask contains {"column": "pan", "method": "pan"} if not "viewers" in input.subject.groups
"""
NO_DELETE = """package ordinance.p
import rego.v1

deny contains {"msg": "no DELETE", "rule": "no_delete"} if {
    some s in input.command.statements
    s.kind == "delete"
}
"""
CLAIMS = """package ordinance.c
import rego.v1

deny contains "contractors may not write" if {
    input.subject.claims.employment == "contractor"
    some s in input.command.statements
    s.kind != "select"
}
"""
RAW = """package ordinance.r
import rego.v1

deny contains "secret" if contains(input.command.raw, "secret")
"""
PAN = "4111111111111111"


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    return {
        "base": write_policies(tmp_path / "base", {"base.rego": BASE}),
        "proposed": write_policies(tmp_path / "proposed", {"base.rego": BASE,
                                                           "p.rego": NO_DELETE}),
        "claims": write_policies(tmp_path / "claims", {"base.rego": BASE, "c.rego": CLAIMS}),
        "raw": write_policies(tmp_path / "raw", {"base.rego": BASE, "r.rego": RAW}),
        "broken": write_policies(tmp_path / "broken", {"b.rego": "package ordinance.b\n"
                                                                 "deny contains if {"}),
    }


@pytest.fixture
def trail(tmp_path: Path) -> str:
    """Two sessions: alice (dev, claims recorded) and an old-format session of bob (no claims
    key), with statements of each kind of interest."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={"employment": "staff"})
        statement(log, "s1", "alice", "SELECT id FROM cards WHERE id = 1", "d1",
                  masks=["pan:pan"])
        statement(log, "s1", "alice", "DELETE FROM scratch WHERE id = 2", "d2",
                  masks=["pan:pan"])
        statement(log, "s1", "alice", "DELETE FROM scratch WHERE id = 3", "d3",
                  masks=["pan:pan"])
        session_start(log, "s2", "bob", ["viewers"])  # claims not recorded
        statement(log, "s2", "bob", "DELETE FROM scratch WHERE id = 4", "d4", masks=[])
        statement(log, "s2", "bob", f"SELECT id FROM cards WHERE pan = '{PAN}'", "d5",
                  masks=[])
        statement(log, "s2", "bob", f"SELECT id FROM cards WHERE id = {PAN}", "d6", masks=[])
        statement(log, "s9", "eve", "SELECT 1", "d7")  # its session.start is not in the trail
        statement(log, "s1", "alice", "SELECT " + "x" * (64 * 1024) + " …[truncated]", "d8",
                  masks=["pan:pan"])
    return url


def test_statements_joined_with_their_sessions_and_each_difference_counted(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path]) -> None:
    code, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["proposed"]),
                             "--baseline", str(sets["base"]))
    assert code == 1
    assert (report["records"], report["replayed"], report["changed"], report["unchanged"],
            report["not_replayed"]) == (8, 5, 3, 2, 3)
    assert report["changes"] == {"allow->deny": 3}
    [rule] = report["by_rule"]
    assert (rule["rule"], rule["count"], rule["subjects"]) == ("ordinance.p.no_delete", 3, 2)
    assert [(e["seq"], e["subject"], e["text"]) for e in rule["examples"]] == [
        (3, "alice", "DELETE FROM scratch WHERE id = 2"),
        (4, "alice", "DELETE FROM scratch WHERE id = 3"),
        (6, "bob", "DELETE FROM scratch WHERE id = 4")]
    assert rule["examples"][0]["after"]["reasons"] == [
        {"policy": "ordinance.p.no_delete", "effect": "deny", "message": "no DELETE"}]
    assert [(g["subject"], g["resource"], g["count"]) for g in report["by_subject"]] == [
        ("alice", "payments", 2), ("bob", "payments", 1)]
    reasons = {g["reason"]: g["count"] for g in report["not_replayed_reasons"]}
    assert reasons == {
        "the trail masked a card number in the text, and the baseline policies could see it": 1,
        "its session.start record is not in the trail (pruned, or no session)": 1,
        "the statement text was truncated when recorded (over 64 KiB)": 1}
    scrubbed = next(g for g in report["not_replayed_reasons"] if "card number" in g["reason"])
    assert scrubbed["examples"][0]["text"] == "SELECT id FROM cards WHERE id = ************1111"


def test_a_field_the_record_lacks_is_reported_only_when_a_policy_reads_it(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path]) -> None:
    code, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["claims"]),
                             "--baseline", str(sets["base"]))
    reasons = {g["reason"]: g for g in report["not_replayed_reasons"]}
    lacking = reasons["the record lacks subject.claims, which the proposed policies read"]
    # bob's session.start has no claims: his two statements the baseline could decide
    assert lacking["count"] == 2
    assert {e["subject"] for e in lacking["examples"]} == {"bob"}
    # alice's claims say staff: the contractor rule changes nothing that was replayed
    assert (report["replayed"], report["changed"], code) == (3, 0, 0)


def test_a_card_number_inside_a_literal_is_replayed_unless_the_policies_read_the_text(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path]) -> None:
    _, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["base"]),
                          "--baseline", str(sets["base"]))
    assert report["replayed"] == 5  # the literal one replays; `id = ****1111` does not
    _, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["raw"]),
                          "--baseline", str(sets["base"]))
    reasons = {g["reason"]: g["count"] for g in report["not_replayed_reasons"]}
    assert reasons["the trail masked a card number in the text, and the proposed policies "
                   "could see it"] == 1
    assert report["replayed"] == 4


def test_against_the_recorded_decisions_and_a_recorded_revision(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, sets: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'rec.db'}"
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={})
        statement(log, "s1", "alice", "SELECT pan FROM cards", "d1", masks=["pan:pan"])
        statement(log, "s1", "alice", "SELECT pan FROM cards", "d2", masks=["pan:pan"],
                  revision="rev0")
        statement(log, "s1", "alice", "DROP TABLE cards", "d3", effect="deny", reasons=[
            {"policy": "ordinance.t.no_drop", "effect": "deny", "message": "no DROP"}],
            masks=["pan:pan"])
        statement(log, "s1", "alice", "SELECT 2", "d4")  # before masks were recorded
        statement(log, "s1", "alice", "SELECT 3", "d5", effect="deny", masks=[], reasons=[
            {"policy": "ordinance.client", "effect": "deny",
             "message": "decision service unavailable"}])
    viewer = write_policies(tmp_path / "viewer", {"base.rego": BASE.replace(
        'if not "viewers" in input.subject.groups', 'if {\n    not "viewers" in input.subject.'
        'groups\n    not "dev" in input.subject.groups\n}')})
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(viewer))
    assert (code, report["replayed"], report["changed"]) == (1, 3, 3)
    assert report["changes"] == {"unmask pan": 3}
    assert report["categories"] == {"unmask": 3}
    reasons = {g["reason"]: g["count"] for g in report["not_replayed_reasons"]}
    assert reasons == {
        "the record does not hold the decision's masks (written before they were recorded)": 1,
        "the recorded decision was made by Ordinance, not the policies: decision service "
        "unavailable": 1}
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(viewer),
                             "--baseline-revision", "rev0", "--fail-on", "deny,review")
    assert (code, report["replayed"], report["changed"]) == (0, 1, 1)
    other = next(g for g in report["not_replayed_reasons"]
                 if g["reason"] == "recorded under another policy revision")
    assert other["count"] == 4 and other["examples"][0]["detail"] == "revision rev1"


def test_a_decision_recorded_by_the_proxy_and_the_service_is_replayed_once(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, sets: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'dup.db'}"
    doc = {"subject": {"id": "alice", "groups": ["dev"], "claims": {}}, "resource": RESOURCE,
           "command": {"protocol": "postgres", "raw": "DELETE FROM t WHERE id = 1"},
           "session": {"id": "s1", "client_addr": "127.0.0.1", "tls": False,
                       "application_name": "psql"}}
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={})
        log.append("decision", {"decision_id": "d1", "kind": "decide", "transport": "grpc",
                                "input": doc, "policy_revision": "r",
                                "result": {"effect": "allow", "reasons": [],
                                           "masks": [{"column": "pan", "method": "pan"}]}},
                   subject="alice", decision_id="d1")
        statement(log, "s1", "alice", "DELETE FROM t WHERE id = 1", "d1", masks=["pan:pan"])
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(sets["proposed"]),
                             "--baseline", str(sets["base"]))
    assert (code, report["records"], report["duplicates"], report["changed"]) == (1, 2, 1, 1)
    assert report["kinds"] == {"decision": 1, "statement": 1}
    assert report["by_rule"][0]["examples"][0]["kind"] == "decision"
    _, report, _ = replay(capsys, "--audit", url, "--policies", str(sets["proposed"]),
                          "--kind", "statement")
    assert (report["records"], report["duplicates"], report["changes"]) == (
        1, 0, {"allow->deny": 1})


def test_exit_codes_and_fail_on(capsys: pytest.CaptureFixture[str], trail: str,
                                sets: dict[str, Path], tmp_path: Path) -> None:
    args = ["--audit", trail, "--policies", str(sets["proposed"]), "--baseline",
            str(sets["base"])]
    assert replay(capsys, *args)[0] == 1
    assert replay(capsys, *args, "--fail-on", "allow,unmask,review")[0] == 0
    assert replay(capsys, *args, "--fail-on", "none")[0] == 0
    assert replay(capsys, *args, "--fail-on", "deny")[0] == 1
    code, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["base"]),
                             "--baseline", str(sets["base"]), "--fail-on", "unreplayable")
    assert (code, report["failures"]) == (1, {"unreplayable": 3})
    code, _, err = replay(capsys, *args[:2], "--policies", str(sets["broken"]))
    assert code == 2 and "proposed policy set" in err and "b.rego:2" in err
    code, _, err = replay(capsys, "--audit", f"sqlite:///{tmp_path / 'none.db'}",
                          "--policies", str(sets["base"]))
    assert code == 2 and "none.db" in err
    with pytest.raises(SystemExit) as exc:
        replay(capsys, *args, "--fail-on", "sometimes")
    assert exc.value.code == 2
    assert "invalid --fail-on" in capsys.readouterr().err


def test_formats_parse(trail: str, sets: dict[str, Path]) -> None:
    def run(fmt: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "engine.cli", "replay", "--audit", trail,
                               "--policies", str(sets["proposed"]), "--baseline",
                               str(sets["base"]), "--format", fmt], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)

    junit = run("junit")
    assert junit.returncode == 1, junit.stderr
    suite = ElementTree.fromstring(junit.stdout.split("?>", 1)[1])
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"ordinance.p.no_delete", "records could not be replayed"}
    failure = cases["ordinance.p.no_delete"].find("failure")
    assert failure is not None and failure.get("message") == (
        "3 records would change: allow->deny 3")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    markdown = run("markdown")
    assert markdown.stdout.startswith("### Ordinance replay: 3 of 5 replayed decisions would "
                                      "change (❌ fails")
    assert "| `ordinance.p.no_delete` | 3 | 2 | allow->deny 3 |" in markdown.stdout
    text = run("text")
    assert "8 records in scope: 5 replayed, 3 would change" in text.stdout
    assert text.stdout.rstrip().endswith("FAILED: deny 3")
    assert json.loads(run("json").stdout)["changed"] == 3


def test_reading_the_trail_for_a_replay_is_recorded(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path]) -> None:
    replay(capsys, "--audit", trail, "--policies", str(sets["base"]), "--since", "1d",
           "--resource", "payments")
    with open_audit_log(trail, create=False) as log:
        [access] = list(log.iter_records(kind="audit.accessed"))
    assert access.payload["action"] == "replay"
    assert access.payload["records"] == 8
    assert set(access.payload["filters"]) == {"since", "resource"}


def test_parallel_jobs_give_the_single_process_report(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path]) -> None:
    args = ["--audit", trail, "--policies", str(sets["proposed"]), "--baseline",
            str(sets["base"])]
    _, one, _ = replay(capsys, *args)
    _, two, _ = replay(capsys, *args, "--jobs", "2")
    assert one == two
    code, _, err = replay(capsys, *args, "--jobs", "2", "--limit", "3")
    assert code == 2 and "--limit" in err


def test_limit_and_since(capsys: pytest.CaptureFixture[str], trail: str,
                         sets: dict[str, Path]) -> None:
    _, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["proposed"]),
                          "--baseline", str(sets["base"]), "--limit", "2")
    assert (report["records"], report["changed"]) == (2, 1)
    _, report, _ = replay(capsys, "--audit", trail, "--policies", str(sets["proposed"]),
                          "--baseline", str(sets["base"]), "--since", "2999-01-01")
    assert report["records"] == 0


def test_cel_read_paths() -> None:
    names = frozenset({"subject", "session", "command"})
    assert cel_paths('has(subject.groups) && "x" in subject.groups', names) == {
        ("subject", "groups")}
    assert cel_paths("size(subject) > 1 || session.tls", names) == {("subject",),
                                                                    ("session", "tls")}


def test_a_session_started_before_since_is_looked_up(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, sets: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'since.db'}"
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={})
        time.sleep(0.01)
        statement(log, "s1", "alice", "DELETE FROM t WHERE id = 1", "d1", masks=["pan:pan"])
        since = log.tail(1)[0].ts
    _, report, _ = replay(capsys, "--audit", url, "--policies", str(sets["proposed"]),
                          "--baseline", str(sets["base"]), "--since", since)
    assert (report["records"], report["changed"], report["not_replayed"]) == (1, 1, 0)


def test_policies_that_read_the_clock_are_not_replayed(
        capsys: pytest.CaptureFixture[str], trail: str, sets: dict[str, Path],
        tmp_path: Path) -> None:
    clock = write_policies(tmp_path / "clock", {"base.rego": BASE, "h.rego": (
        'package ordinance.h\nimport rego.v1\n\n'
        'deny contains "after hours" if time.clock([time.now_ns(), "UTC"])[0] > 30\n')})
    code, report, _ = replay(capsys, "--audit", trail, "--policies", str(clock),
                             "--baseline", str(sets["base"]))
    reasons = {g["reason"]: g["count"] for g in report["not_replayed_reasons"]}
    assert reasons["the proposed policies call time, random or network builtins, so a "
                   "replay cannot give the decision of then"] == 5
    assert (code, report["replayed"]) == (0, 0)


def test_damaged_records_and_an_unusable_trail(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, sets: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={}, resource="payments")
        statement(log, "s1", "alice", "SELECT 1", "d1", masks=[])
        log.append("statement", {"effect": "allow"}, subject="x", session_id="s1",
                   decision_id="d2")
        log.append("decision", {"kind": "decide", "input": ["not", "a", "document"]},
                   decision_id="d3")
        log.append("decision", {"kind": "rejected", "outcome": "unauthenticated"},
                   decision_id="d4")
    code, report, _ = replay(capsys, "--audit", url, "--policies", str(sets["base"]),
                             "--baseline", str(sets["base"]))
    assert {g["reason"]: g["count"] for g in report["not_replayed_reasons"]} == {
        "its session.start record holds no resource": 1,
        "the record holds no statement text": 1,
        "the record holds no input document": 1,
        "rejected before any decision (unauthenticated or malformed request)": 1}
    assert code == 0
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    code, _, err = replay(capsys, "--audit", f"sqlite:///{garbage}", "--policies",
                          str(sets["base"]))
    assert code == 2 and "ordinance replay: error:" in err


def test_an_envoy_record_rebuilt_with_what_it_lacks() -> None:
    from adapters.envoy.replay import input_from_log
    from adapters.envoy.translate import check_request_to_input, redact_for_log
    from engine.identity import Subject
    from tests.envoy.envoy_requests import envoy_check_request

    request = envoy_check_request("POST", "/refunds?x=1", body='{"amount": 5}', headers={
        "authorization": "Bearer t", "content-type": "application/json"})
    original = check_request_to_input(request, subject=Subject("alice", ("dev",)))
    rebuilt, missing = input_from_log(redact_for_log(original), 1 << 20)
    assert rebuilt["parsed_body"] == {"amount": 5} and rebuilt["subject"] == original["subject"]
    assert {k: v for k, v in rebuilt.items() if k not in ("attributes", "command")} == {
        k: v for k, v in original.items() if k not in ("attributes", "command")}
    assert rebuilt["command"] == {**original["command"], "headers": {
        **original["command"]["headers"], "authorization": "[redacted]"}}
    assert missing == [("command", "headers", "authorization"),
                       ("attributes", "request", "http", "headers", "authorization")]
    _, missing = input_from_log(redact_for_log(original), None)  # body limit not recorded
    assert ("parsed_body",) in missing and ("truncated_body",) in missing


def test_what_the_proxy_decided_with_session_state_is_not_replayed(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, sets: dict[str, Path]) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with open_audit_log(url) as log:
        session_start(log, "s1", "alice", ["dev"], claims={})
        statement(log, "s1", "alice", "PREPARE del AS DELETE FROM t WHERE id = $1", "d1",
                  masks=["pan:pan"])
        statement(log, "s1", "alice", "EXECUTE del(1)", "d2", masks=["pan:pan"])
        statement(log, "s1", "alice", "SELECT 'execute me' AS x", "d3", masks=["pan:pan"])
        statement(log, "s1", "alice", "\\x00", "", effect="deny", masks=[], reasons=[
            {"policy": "ordinance.proxy", "effect": "deny", "message": "bad message"}])
    _, report, _ = replay(capsys, "--audit", url, "--policies", str(sets["proposed"]),
                          "--baseline", str(sets["base"]))
    assert {g["reason"]: g["count"] for g in report["not_replayed_reasons"]} == {
        "it EXECUTEs a statement prepared in its session: the proxy decided it with the "
        "PREPARE's text too (that PREPARE is replayed)": 1,
        "the proxy refused it itself (no policy was asked)": 1}
    assert (report["replayed"], report["changes"]) == (2, {"allow->deny": 1})


def test_the_ci_examples_use_options_replay_has() -> None:
    import re

    import yaml

    from engine.cli import build_parser

    workflow = yaml.safe_load((REPO / "docs" / "ci" / "policy-check.yml").read_text())
    steps = workflow["jobs"]["policy-check"]["steps"]
    scripts = [s["run"] for s in steps if "run" in s]
    scripts.append((REPO / "docs" / "ci" / "policy-check.sh").read_text())
    parser = build_parser()
    replay_parser = parser._subparsers._group_actions[0].choices["replay"]  # type: ignore[union-attr]
    known = {o for a in replay_parser._actions for o in a.option_strings}
    used = {flag for script in scripts
            for command in re.findall(r"ordinance replay[^\n]*(?:\\\n[^\n]*)*", script)
            for flag in re.findall(r"(?<!\S)--[a-z-]+", command)}
    assert used and used <= known, used - known
    assert any("ordinance test policies" in s for s in scripts)


@pytest.mark.parametrize("pan", ["4111111111111111", "4111 1111 1111 1111",
                                 "4111-1111-1111-1111", "5500005555555559", "378282246310005",
                                 "6011000990139424", "4222222222222"])
def test_the_scrubbed_mark_is_recognised(pan: str) -> None:
    from engine.masking import scrub_pans
    from engine.replay.records import SCRUBBED

    scrubbed = scrub_pans(f"SELECT 1 WHERE x = '{pan}'")
    assert pan not in scrubbed and SCRUBBED.search(scrubbed)
    assert not SCRUBBED.search("SELECT * FROM t WHERE a * 2 > 1234 AND b = '***1234'")


def test_the_truncation_mark_is_the_proxys() -> None:
    from adapters.enforcement import records
    from engine.replay.records import TRUNCATED_AT, TRUNCATED_MARK

    assert records.MAX_RECORDED_TEXT == TRUNCATED_AT
    assert f'+ "{TRUNCATED_MARK}")' in Path(records.__file__).read_text()
