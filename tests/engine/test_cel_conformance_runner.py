"""`python -m benchmarks.cel_conformance DIR` and its textproto reader, on small files written
here in cel-spec's SimpleTestFile format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import textproto

REPO = Path(__file__).resolve().parents[2]

SIMPLE = r'''
# comment
name: "mini"
section {
  name: "values"
  test { name: "int" expr: "1 + 2" value { int64_value: 3 } }
  test { name: "uint" expr: "3u" value: { uint64_value: 3 } }
  test { name: "double" expr: "1.5e+3" value { double_value: 1.5e+3 } }
  test { name: "string" expr: "'caf\\u00e9'" value { string_value: "caf\303\251" } }
  test { name: "bytes" expr: "b'\\x01'" value { bytes_value: "\001" } }
  test { name: "list" expr: "[1, 2u]" value { list_value { values { int64_value: 1 }
                                                            values { uint64_value: 2 } } } }
  test { name: "map" expr: "{'k': true}" value { map_value { entries {
           key { string_value: "k" } value { bool_value: true } } } } }
  test { name: "ts" expr: "timestamp('1970-01-01T00:00:10Z')"
         value { object_value {
           [type.googleapis.com/google.protobuf.Timestamp] { seconds: 10 } } } }
  test { name: "type" expr: "type(1)" value { type_value: "int" } }
  test { name: "default true" expr: "1 < 2" }
  test { name: "bound" expr: "x * 2" type_env { name: "x" ident { type { primitive: INT64 } } }
         bindings { key: "x" value { value { int64_value: 21 } } } value { int64_value: 42 } }
}
section {
  name: "errors"
  test { name: "div" expr: "1 / 0" eval_error { errors { message: "divide by zero" } } }
  test { name: "repeated" expr: "{0: 1, 0u: 2}[0.0]" eval_error { errors { message: "x" } } }
  test { name: "wrong" expr: "1 / 0" value { int64_value: 1 } }
  test { name: "no error" expr: "1" eval_error { errors { message: "x" } } }
  test { name: "refused" expr: "{'a': 1}.transformMap(k, v, v).size()" value { int64_value: 1 } }
  test { name: "proto" expr: "TestAllTypes{}" value { bool_value: true } }
}
'''


def test_textproto_reader() -> None:
    doc = textproto.parse(SIMPLE)
    assert textproto.text(doc, "name") == "mini"
    tests = doc["section"][0]["test"]
    assert textproto.text(tests[3], "expr") == "'caf\\u00e9'"
    assert textproto.first(tests[3]["value"][0], "string_value") == "café".encode()
    assert textproto.first(tests[4]["value"][0], "bytes_value") == b"\x01"
    assert textproto.first(tests[2]["value"][0], "double_value") == "1.5e+3"
    listed = tests[5]["value"][0]["list_value"][0]["values"]
    assert [list(v) for v in listed] == [["int64_value"], ["uint64_value"]]
    any_value = tests[7]["value"][0]["object_value"][0]
    assert list(any_value) == ["type.googleapis.com/google.protobuf.Timestamp"]
    assert textproto.parse("a: [1, 2] b: 'x' 'y'") == {"a": ["1", "2"], "b": [b"xy"]}


@pytest.mark.parametrize("bad", ["a {", "a: }", "a: 'unterminated", "{"])
def test_textproto_reader_rejects_malformed_text(bad: str) -> None:
    with pytest.raises(textproto.TextprotoError):
        textproto.parse(bad)


def test_runner_counts_each_outcome(tmp_path: Path) -> None:
    (tmp_path / "mini.textproto").write_text(SIMPLE)
    run = subprocess.run([sys.executable, "-m", "benchmarks.cel_conformance", str(tmp_path),
                          "--jobs", "1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("mini "))
    # run pass % refused error silent crash timeout unsupported
    assert row.split()[1:] == ["16", "13", "81.2", "1", "1", "1", ".", ".", "1"], run.stdout
    assert "SILENT DIFFERENCES: 1" in run.stdout
    assert "errors/no error" in run.stdout
    assert "CRASHES AND TIMEOUTS: 0" in run.stdout


def test_runner_reports_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.textproto").write_text("section { test {")
    run = subprocess.run([sys.executable, "-m", "benchmarks.cel_conformance", str(tmp_path)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unreadable test file" in run.stderr
