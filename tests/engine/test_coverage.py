"""`ordinance test --coverage` / `--threshold`: Rego line and rule coverage measured by marker
rules, CEL rule coverage, the `opa test --coverage` JSON shape, exit codes."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from engine.coverage import CoverageReport, format_coverage_text, measure, to_opa_json
from engine.policy import load_policy_set
from tests.engine.test_cli import ordinance

OPA_FILE_KEYS = {"covered", "not_covered", "covered_lines", "not_covered_lines", "coverage"}


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
    return tmp_path


def measured(tmp_path: Path, files: dict[str, str]) -> tuple[CoverageReport, dict]:
    root = write(tmp_path, files)
    report = measure(load_policy_set(str(root)))
    return report, to_opa_json(report)


def rows(entry: dict, key: str) -> set[int]:
    return {row for r in entry.get(key, [])
            for row in range(r["start"]["row"], r["end"]["row"] + 1)}


POLICY = """
    package ordinance.demo

    import rego.v1

    deny contains "drop" if {
    \tinput.command.raw == "DROP"
    \tinput.resource.env == "prod"
    }

    deny contains "never" if {
    \tinput.command.raw == "NEVER"
    \thelper
    }

    helper if input.resource.env == "prod"
"""


def test_a_rule_no_test_reaches_is_not_covered_with_its_lines(tmp_path: Path) -> None:
    report, doc = measured(tmp_path, {
        "demo.rego": POLICY,
        "demo_test.rego": """
            package ordinance.demo

            import rego.v1

            test_drop if {
            \t"drop" in deny with input as {"command": {"raw": "DROP"}, "resource": {"env": "prod"}}
            }
        """})
    entry = doc["files"][str(tmp_path / "demo.rego")]
    # the first deny: head and both expressions
    assert {5, 6, 7} <= rows(entry, "covered")
    # the second deny was evaluated (first expression) but its body never held; `helper` is
    # mentioned only after that false expression, so it was never reached
    assert 11 in rows(entry, "covered")
    assert rows(entry, "not_covered") == {10, 12, 15}
    assert entry["covered_lines"] == 4 and entry["not_covered_lines"] == 3
    assert entry["coverage"] == round(100 * 4 / 7, 2)
    text = format_coverage_text(report)
    assert "not covered: lines 10, 12, 15" in text
    assert f"not covered: data.ordinance.demo.deny ({tmp_path / 'demo.rego'}:10)" in text
    assert f"not covered: data.ordinance.demo.helper ({tmp_path / 'demo.rego'}:15)" in text
    assert "rules: 1/3 covered" in text
    # the test file itself is not part of the report, as its rules are not policy
    assert str(tmp_path / "demo_test.rego") not in doc["files"]


def test_a_true_body_no_test_reads_is_not_covered(tmp_path: Path) -> None:
    """Evaluating a rule's body is not enough: the test must reach the rule."""
    _, doc = measured(tmp_path, {
        "p.rego": """
            package lib

            import rego.v1

            allow if input.x == 1

            other if input.x == 1
        """,
        "p_test.rego": """
            package lib

            import rego.v1

            test_other if other with input as {"x": 1}
        """})
    entry = doc["files"][str(tmp_path / "p.rego")]
    assert rows(entry, "covered") == {7}
    assert rows(entry, "not_covered") == {5}


def test_yaml_cases_reach_the_decision_rules(tmp_path: Path) -> None:
    _, doc = measured(tmp_path, {
        "demo.rego": POLICY,
        "demo_test.yaml": """
            cases:
              - name: never with prod
                input: {resource: {env: prod}, command: {raw: NEVER}}
                expect: {effect: deny, reasons: [never]}
        """})
    entry = doc["files"][str(tmp_path / "demo.rego")]
    # the engine enriches `command` (raw stays), so both bodies are evaluated
    assert rows(entry, "covered") == {6, 10, 11, 12, 15}
    assert rows(entry, "not_covered") == {5, 7}


def test_a_mocked_rule_is_not_covered(tmp_path: Path) -> None:
    _, doc = measured(tmp_path, {
        "demo.rego": POLICY,
        "demo_test.rego": """
            package ordinance.demo

            import rego.v1

            never := {"command": {"raw": "NEVER"}}

            test_never if {
            \t"never" in deny with input as never with data.ordinance.demo.helper as true
            }
        """})
    entry = doc["files"][str(tmp_path / "demo.rego")]
    assert {10, 11, 12} <= rows(entry, "covered")
    assert 15 in rows(entry, "not_covered")  # helper was replaced by the mock, never evaluated


FUNCTIONS = """
    package ordinance.fn

    import rego.v1

    deny contains t if {
    \tsome t in input.tables
    \tnot public(t)
    \tsensitive(t)
    }

    public(t) if {
    \tstartswith(t, "pub_")
    \tt != "pub_secret"
    }

    sensitive(t) if t == "cards"

    sensitive(t) if endswith(t, "_pii")
"""


def test_each_function_definition_counts_on_its_own(tmp_path: Path) -> None:
    report, doc = measured(tmp_path, {
        "fn.rego": FUNCTIONS,
        "fn_test.yaml": """
            cases:
              - name: cards are denied
                input: {tables: [cards]}
                expect: {effect: deny}
        """})
    entry = doc["files"][str(tmp_path / "fn.rego")]
    # public("cards") was called (first expression evaluated) but never held
    assert 12 in rows(entry, "covered")
    assert {11, 13} <= rows(entry, "not_covered")
    # the first definition of sensitive held; the second was evaluated (its line, head and
    # body in one, counts as covered, as in OPA) and failed: its rule is not covered
    assert {16, 18} <= rows(entry, "covered")
    uncovered = {(name, line) for _, name, line, ok in report.rules if not ok}
    assert uncovered == {("data.ordinance.fn.public", 11), ("data.ordinance.fn.sensitive", 18)}


def test_a_function_called_from_a_function_is_reported_not_covered(tmp_path: Path) -> None:
    """Not measured (documented): reported as not covered, never as covered."""
    _, doc = measured(tmp_path, {
        "f.rego": """
            package ordinance.f

            import rego.v1

            deny contains "x" if outer(input.a)

            outer(a) if inner(a)

            inner(a) if a == 1
        """,
        "f_test.yaml": """
            cases:
              - name: a is 1
                input: {a: 1}
                expect: {effect: deny}
        """})
    entry = doc["files"][str(tmp_path / "f.rego")]
    assert {5, 7} <= rows(entry, "covered")
    assert rows(entry, "not_covered") == {9}


def test_an_else_branch_counts_when_the_first_body_fails(tmp_path: Path) -> None:
    files = {
        "e.rego": """
            package ordinance.e

            import rego.v1

            level := "high" if {
            \tinput.x > 10
            } else := "low"

            deny contains level if input.x
        """,
        "e_test.yaml": """
            cases:
              - name: high
                input: {x: 20}
                expect: {effect: deny, reasons: [high]}
        """}
    _, doc = measured(tmp_path / "a", files)
    entry = doc["files"][str(tmp_path / "a" / "e.rego")]
    assert rows(entry, "covered") == {5, 6, 9}
    assert rows(entry, "not_covered") == {7}
    files["e_test.yaml"] = textwrap.dedent(files["e_test.yaml"]) + (
        "  - name: low\n    input: {x: 2}\n    expect: {effect: deny, reasons: [low]}\n")
    _, doc = measured(tmp_path / "b", files)
    assert rows(doc["files"][str(tmp_path / "b" / "e.rego")], "not_covered") == set()


def test_cel_rules_are_covered_when_they_fire(tmp_path: Path) -> None:
    report, doc = measured(tmp_path, {
        "rules.yaml": """
            rules:
              - name: no-drop
                effect: deny
                when: 'command.kinds.exists(k, k == "drop")'
                message: no DROP

              # a comment between rules belongs to neither
              - name: no-truncate
                effect: deny
                when: >-
                  command.kinds.exists(k, k == "truncate")
                message: no TRUNCATE
        """,
        "rules_test.yaml": """
            cases:
              - name: drop
                input: {resource: {type: postgres}, command: {raw: "DROP TABLE t"}}
                expect: {effect: deny}
        """})
    entry = doc["files"][str(tmp_path / "rules.yaml")]
    assert rows(entry, "covered") == {2, 3, 4, 5}
    assert rows(entry, "not_covered") == {8, 9, 10, 11, 12}
    assert ("CEL no-truncate", 8) in {(n, line) for _, n, line, ok in report.rules if not ok}


def test_the_json_matches_opa_and_parses(tmp_path: Path) -> None:
    write(tmp_path, {"demo.rego": POLICY, "demo_test.yaml": """
        cases:
          - name: drop in prod
            input: {resource: {env: prod}, command: {raw: DROP}}
            expect: {effect: deny}
    """})
    run = ordinance("test", str(tmp_path), "--coverage", "--format", "json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert set(doc) == {"files", "covered_lines", "not_covered_lines", "coverage"}
    covered = not_covered = 0
    for entry in doc["files"].values():
        assert set(entry) <= OPA_FILE_KEYS
        for key in ("covered", "not_covered"):
            for r in entry.get(key, []):
                assert set(r) == {"start", "end"} and set(r["start"]) == {"row"} == set(r["end"])
                assert 1 <= r["start"]["row"] <= r["end"]["row"]
        assert not rows(entry, "covered") & rows(entry, "not_covered")
        assert entry.get("covered_lines", 0) == len(rows(entry, "covered"))
        assert entry.get("not_covered_lines", 0) == len(rows(entry, "not_covered"))
        covered += entry.get("covered_lines", 0)
        not_covered += entry.get("not_covered_lines", 0)
    assert (doc["covered_lines"], doc["not_covered_lines"]) == (covered, not_covered)
    assert doc["coverage"] == round(100 * covered / (covered + not_covered), 2)
    assert 0 < doc["coverage"] < 100


def test_threshold_exit_codes(tmp_path: Path) -> None:
    write(tmp_path, {"demo.rego": POLICY, "demo_test.yaml": """
        cases:
          - name: drop in prod
            input: {resource: {env: prod}, command: {raw: DROP}}
            expect: {effect: deny}
    """})
    percent = to_opa_json(measure(load_policy_set(str(tmp_path))))["coverage"]
    assert ordinance("test", str(tmp_path), "--threshold", str(percent)).returncode == 0
    below = ordinance("test", str(tmp_path), "--threshold", str(percent + 0.01))
    assert below.returncode == 1
    assert f"coverage {percent:.2f}% is below the threshold" in below.stderr
    assert "1 passed, 0 failed" in below.stdout  # the tests themselves passed
    junit = ordinance("test", str(tmp_path), "--format", "junit", "--threshold", "99")
    assert junit.returncode == 1 and junit.stdout.startswith("<?xml")
    assert ordinance("test", str(tmp_path), "--threshold", "101").returncode == 2
    assert ordinance("test", str(tmp_path), "--threshold", "ten").returncode == 2
    assert ordinance("test", str(tmp_path), "--format", "json").returncode == 2
    assert ordinance("test", str(tmp_path), "--coverage", "--format", "junit").returncode == 2


def test_a_failing_test_fails_whatever_the_coverage(tmp_path: Path) -> None:
    write(tmp_path, {"demo.rego": POLICY, "demo_test.yaml": """
        cases:
          - name: wrong expectation
            input: {resource: {env: prod}, command: {raw: DROP}}
            expect: {effect: allow}
    """})
    run = ordinance("test", str(tmp_path), "--coverage", "--threshold", "0")
    assert run.returncode == 1
    assert "0 passed, 1 failed" in run.stdout and "coverage:" in run.stdout


def test_coverage_does_not_change_results(tmp_path: Path) -> None:
    write(tmp_path, {"fn.rego": FUNCTIONS, "fn_test.rego": """
        package ordinance.fn

        import rego.v1

        test_cards if { deny == {"cards"} with input as {"tables": ["cards", "pub_x"]} }

        test_wrong if { deny == set() with input as {"tables": ["cards"]} }

        test_public if {
        \tpublic("pub_a")
        \tnot public("pub_secret")
        }
    """})
    plain = ordinance("test", str(tmp_path), "-v")
    covered = ordinance("test", str(tmp_path), "-v", "--coverage")
    assert plain.returncode == covered.returncode == 1
    assert covered.stdout.startswith(plain.stdout.rstrip("\n"))
    assert "2 passed, 1 failed, 0 errored" in plain.stdout
    # a test calling a function directly covers that function's body
    doc = to_opa_json(measure(load_policy_set(str(tmp_path))))
    assert {11, 12, 13} <= rows(doc["files"][str(tmp_path / "fn.rego")], "covered")


def test_the_pci_pack_is_fully_covered() -> None:
    run = ordinance("test", "policies", "--coverage", "--threshold", "100")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "total: 100.00%" in run.stdout
    assert re.search(r"rules: (\d+)/\1 covered", run.stdout), run.stdout


def test_a_policy_cannot_define_the_markers_to_fake_coverage(tmp_path: Path) -> None:
    write(tmp_path, {"demo.rego": POLICY + """
        __ordinance_cov contains n if some n in numbers.range(0, 100)
    """, "demo_test.yaml": """
        cases:
          - name: nothing
            input: {resource: {env: dev}, command: {raw: SELECT}}
            expect: {effect: allow}
    """})
    run = ordinance("test", str(tmp_path), "--threshold", "1")
    assert run.returncode == 2
    assert "__ordinance_cov is reserved for coverage markers" in run.stderr
    # without coverage, the same set still runs its tests
    assert ordinance("test", str(tmp_path)).returncode == 0


def test_a_body_written_out_of_order_is_under_reported_never_over(tmp_path: Path) -> None:
    _, doc = measured(tmp_path, {
        "o.rego": """
            package ordinance.o

            import rego.v1

            deny contains "x" if {
            \tx > 1
            \tx = input.a
            }
        """,
        "o_test.yaml": """
            cases:
              - name: a is 2
                input: {a: 2}
                expect: {effect: deny}
        """})
    entry = doc["files"][str(tmp_path / "o.rego")]
    assert rows(entry, "covered") == {5, 6}  # the head: the whole body held
    assert rows(entry, "not_covered") == {7}  # the prefix `x > 1` alone is unsafe


def test_the_ci_examples_run_the_coverage_gate() -> None:
    import shlex

    import yaml

    repo = Path(__file__).resolve().parents[2]
    workflow = yaml.safe_load((repo / "docs" / "ci" / "policy-check.yml").read_text())
    scripts = [s["run"] for s in workflow["jobs"]["policy-check"]["steps"] if "run" in s]
    scripts.append((repo / "docs" / "ci" / "policy-check.sh").read_text())
    commands = {re.sub(r"\s*>>?.*$", "", c).strip()
                for script in scripts
                for c in re.findall(r"ordinance test [^\n]*--threshold[^\n]*",
                                    script.replace("\\\n", " "))}
    assert len(commands) == 2, commands
    for command in commands:
        argv = shlex.split(command.replace('"$POLICIES"', "policies")
                           .replace('"$COVERAGE_THRESHOLD"', "100"))[1:]
        run = ordinance(*argv)
        assert run.returncode == 0, (argv, run.stdout, run.stderr)
        assert "total: 100.00%" in run.stdout
