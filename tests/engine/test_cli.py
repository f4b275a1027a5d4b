"""The CLI contract other tools and CI rely on: output shapes and exit codes, run for real."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAD = "package ordinance.t\n\nimport rego.v1\n\n"


def ordinance(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def test_eval_prints_the_decision_for_stdin() -> None:
    doc = {"subject": {"id": "bob"}, "resource": {"type": "postgres", "labels": {"env": "prod"}},
           "command": {"protocol": "postgres", "raw": "DROP TABLE cards"}}
    run = ordinance("eval", "--policies", "policies", "--input", "-", stdin=json.dumps(doc))
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert set(out) == {"effect", "reasons", "masks", "policy_revision", "command"}
    assert out["effect"] == "deny"
    assert out["command"]["kinds"] == ["drop"]


def test_eval_exit_2_for_bad_input_and_broken_policies(tmp_path: Path) -> None:
    run = ordinance("eval", "--policies", "policies", "--input", "-", stdin="{not json")
    assert run.returncode == 2 and "not valid JSON" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    missing = ordinance("eval", "--policies", "policies", "--input", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "bad.rego").write_text(HEAD + "deny contains x if {\n")
    doc = tmp_path / "in.json"
    doc.write_text("{}")
    broken = ordinance("eval", "--policies", str(tmp_path), "--input", str(doc))
    assert broken.returncode == 2 and "bad.rego:" in broken.stderr


def test_shipped_pci_pack_passes_its_own_tests() -> None:
    run = ordinance("test", "policies")
    assert run.returncode == 0, run.stdout + run.stderr
    summary = run.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert summary.endswith("0 failed, 0 errored") and passed >= 25


def test_test_command_exit_codes_and_junit(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text(
        HEAD + 'deny contains "no drops" if "drop" in input.command.kinds\n\n'
        "test_drop_denied if {\n"
        '\tcount(deny) == 1 with input as {"command": {"kinds": ["drop"]}}\n}\n\n'
        "test_wrong if {\n"
        '\tcount(deny) == 0 with input as {"command": {"kinds": ["drop"]}}\n}\n')
    (tmp_path / "cases_test.yaml").write_text(
        "cases:\n"
        "  - name: select allowed\n"
        "    input: {resource: {type: postgres}, command: {raw: 'SELECT 1'}}\n"
        "    expect: {effect: allow}\n"
        "  - name: wrong expectation\n"
        "    input: {resource: {type: postgres}, command: {raw: 'DROP TABLE x'}}\n"
        "    expect: {effect: allow}\n")
    run = ordinance("test", str(tmp_path))
    assert run.returncode == 1
    assert run.stdout.strip().splitlines()[-1] == "2 passed, 2 failed, 0 errored"
    assert "FAIL: data.ordinance.t.test_wrong" in run.stdout
    assert "effect is deny, expected allow (no drops)" in run.stdout
    junit = ordinance("test", str(tmp_path), "--format", "junit")
    suite = ET.fromstring(junit.stdout).find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "2"
    (tmp_path / "p.rego").write_text(HEAD + "deny contains x if {\n")
    assert ordinance("test", str(tmp_path)).returncode == 2


def test_test_rule_over_a_function_does_not_crash(tmp_path: Path) -> None:
    """regopy aborts compiling `with` over rules calling functions; the runner rewrites it."""
    (tmp_path / "p.rego").write_text(
        HEAD + "outside(ip) if not net.cidr_contains(\"10.0.0.0/8\", ip)\n\n"
        'deny contains "outside" if outside(input.source)\n\n'
        "test_outside_denied if {\n"
        '\t"outside" in deny with input as {"source": "192.168.1.1"}\n}\n')
    run = ordinance("test", str(tmp_path), "-v")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: data.ordinance.t.test_outside_denied" in run.stdout


def test_check_reports_every_error(tmp_path: Path) -> None:
    (tmp_path / "a.rego").write_text(HEAD + 'deny contains "x" if '
                                     'strings.render_template("a", {})\n')
    (tmp_path / "r.yaml").write_text("rules:\n  - name: r\n    effect: deny\n    when: 'nope('\n")
    run = ordinance("check", str(tmp_path))
    assert run.returncode == 2
    assert "a.rego:5: unknown builtin strings.render_template" in run.stderr
    assert "r.yaml:2:" in run.stderr
    ok = ordinance("check", "policies")
    assert ok.returncode == 0 and ok.stdout.startswith("ok:")
