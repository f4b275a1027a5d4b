"""A replay report as text (a terminal), JSON (tools), Markdown (a pull-request comment) or
JUnit XML (CI: one test case per changed rule, failing when its changes are in `--fail-on`,
and one for the records that could not be replayed)."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree

Report = dict[str, Any]


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _changes(changes: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in changes.items())


def _summary(r: Report) -> str:
    return (f"{r['records']} records in scope: {r['replayed']} replayed, {r['changed']} would "
            f"change, {r['unchanged']} unchanged, {r['not_replayed']} could not be replayed"
            + (f", {r['duplicates']} duplicates" if r["duplicates"] else ""))


def _example_line(e: dict[str, Any]) -> str:
    change = ", ".join(e.get("change") or ()) or e.get("detail", "")
    return (f"#{e['seq']} {e['subject'] or '-'} @ {e['resource'] or '-'}: "
            f"{' '.join(e['text'].split())}" + (f"  [{change}]" if change else ""))


def text(r: Report) -> str:
    lines = [f"replay of {r['sides']['proposed']} against {r['sides']['baseline']}",
             _summary(r)]
    if r["changes"]:
        lines.append("changes: " + _changes(r["changes"]))
    for title, rows, name in (("by rule", r["by_rule"], lambda g: g["rule"]),
                              ("by subject and resource", r["by_subject"],
                               lambda g: f"{g['subject']} @ {g['resource']}")):
        if rows:
            lines.append(f"{title}:")
        for g in rows:
            lines.append(f"  {name(g)}: {_n(g['count'], 'record')}, "
                         f"{_n(g['subjects'], 'subject')} ({_changes(g['changes'])})")
            lines.extend(f"    {_example_line(e)}" for e in g["examples"])
    if r["not_replayed_reasons"]:
        lines.append("not replayed:")
    for g in r["not_replayed_reasons"]:
        lines.append(f"  {g['count']}: {g['reason']}")
        lines.extend(f"    {_example_line(e)}" for e in g["examples"])
    lines.append("FAILED: " + _changes(r["failures"]) if r["failed"] else "OK")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|").replace("`", "'")


def markdown(r: Report) -> str:
    status = "❌ fails" if r["failed"] else "✅ passes"
    out = [f"### Ordinance replay: {r['changed']} of {r['replayed']} replayed decisions would "
           f"change ({status} `--fail-on {','.join(r['fail_on']) or 'none'}`)", "",
           f"Proposed `{_cell(r['sides']['proposed'])}` against "
           f"`{_cell(r['sides']['baseline'])}`. {_summary(r)}.", ""]
    if r["changes"]:
        out += ["| change | records |", "|---|---:|"]
        out += [f"| {_cell(k)} | {n} |" for k, n in r["changes"].items()] + [""]
    if r["by_rule"]:
        out += ["| rule | records | subjects | changes |", "|---|---:|---:|---|"]
        out += [f"| `{_cell(g['rule'])}` | {g['count']} | {g['subjects']} | "
                f"{_cell(_changes(g['changes']))} |" for g in r["by_rule"]] + [""]
    if r["by_subject"]:
        out += ["| subject | resource | records | changes |", "|---|---|---:|---|"]
        out += [f"| {_cell(g['subject'])} | {_cell(g['resource'])} | {g['count']} | "
                f"{_cell(_changes(g['changes']))} |" for g in r["by_subject"]] + [""]
    if r["by_rule"]:
        out += ["<details><summary>Examples</summary>", ""]
        for g in r["by_rule"]:
            out.append(f"**`{_cell(g['rule'])}`**")
            out += [f"- `{_cell(_example_line(e))}`" for e in g["examples"]]
            out.append("")
        out += ["</details>", ""]
    if r["not_replayed_reasons"]:
        out += ["| not replayed because | records |", "|---|---:|"]
        out += [f"| {_cell(g['reason'])} | {g['count']} |"
                for g in r["not_replayed_reasons"]] + [""]
    return "\n".join(out)


def junit(r: Report) -> str:
    fail_on = set(r["fail_on"])
    suite = ElementTree.Element("testsuite", name="ordinance replay")
    failures = 0
    cases = 0
    for g in r["by_rule"]:
        cases += 1
        case = ElementTree.SubElement(suite, "testcase", classname="replay.rule",
                                      name=g["rule"])
        detail = "\n".join(_example_line(e) for e in g["examples"])
        if fail_on & set(g["categories"]):
            failures += 1
            failure = ElementTree.SubElement(
                case, "failure", message=f"{_n(g['count'], 'record')} would change: "
                                         f"{_changes(g['changes'])}")
            failure.text = detail
        else:
            ElementTree.SubElement(case, "system-out").text = detail
    cases += 1
    case = ElementTree.SubElement(suite, "testcase", classname="replay",
                                  name="records could not be replayed")
    reasons = "\n".join(f"{g['count']}: {g['reason']}" for g in r["not_replayed_reasons"])
    if r["not_replayed"] and "unreplayable" in fail_on:
        failures += 1
        ElementTree.SubElement(case, "failure",
                               message=f"{r['not_replayed']} records").text = reasons
    else:
        ElementTree.SubElement(case, "system-out").text = reasons or "none"
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return ElementTree.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def render(r: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(r, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return {"text": text, "markdown": markdown, "junit": junit}[fmt](r)
