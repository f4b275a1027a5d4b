"""The replay's findings: counts, differences grouped by rule and by subject/resource with a few
examples each, and the records that could not be replayed, by reason.

`ReplayReport` is filled one item at a time (`unchanged`, `changed`, `not_replayed`,
`duplicate`), merged across parallel workers (`merge`: counts add, the examples kept are the
earliest by seq), and rendered by `engine.replay.render` from `to_dict`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine.replay.records import Item
from engine.replay.sides import Unreplayable
from engine.replay.verdict import Change, Verdict

EXAMPLES = 3


def _keep(examples: list[dict[str, Any]], example: dict[str, Any]) -> None:
    if len(examples) < EXAMPLES:
        examples.append(example)


def _group() -> dict[str, Any]:
    return {"count": 0, "changes": Counter(), "categories": Counter(), "subjects": set(),
            "examples": []}


class ReplayReport:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.labels: Counter[str] = Counter()
        self.categories: Counter[str] = Counter()
        self.not_replayed: dict[str, dict[str, Any]] = {}
        self.by_rule: dict[str, dict[str, Any]] = {}
        self.by_subject: dict[tuple[str, str], dict[str, Any]] = {}

    # -- filling ----------------------------------------------------------------------------

    def seen(self, item: Item) -> None:
        self.counts["records"] += 1
        self.kinds[item.kind] += 1

    def duplicate(self) -> None:
        self.counts["duplicates"] += 1

    def unchanged(self) -> None:
        self.counts["replayed"] += 1
        self.counts["unchanged"] += 1

    def skipped(self, item: Item, why: Unreplayable) -> None:
        self.counts["not_replayed"] += 1
        group = self.not_replayed.setdefault(why.reason, {"count": 0, "examples": []})
        group["count"] += 1
        example = item.example()
        if why.detail:
            example["detail"] = why.detail
        _keep(group["examples"], example)

    def changed(self, item: Item, change: Change, before: Verdict, after: Verdict) -> None:
        self.counts["replayed"] += 1
        self.counts["changed"] += 1
        self.labels.update(change.labels)
        self.categories.update(change.categories)
        example = {**item.example(), "change": list(change.labels), "rules": list(change.rules),
                   "before": before.to_dict(), "after": after.to_dict()}
        subject = item.subject or "(no subject)"
        resource = item.resource or "(no resource)"
        groups = [self.by_rule.setdefault(rule, _group()) for rule in change.rules]
        groups.append(self.by_subject.setdefault((subject, resource), _group()))
        for group in groups:
            group["count"] += 1
            group["changes"].update(change.labels)
            group["categories"].update(change.categories)
            group["subjects"].add(subject)
            _keep(group["examples"], example)

    # -- merging ----------------------------------------------------------------------------

    def merge(self, other: ReplayReport) -> None:
        self.counts.update(other.counts)
        self.kinds.update(other.kinds)
        self.labels.update(other.labels)
        self.categories.update(other.categories)
        for reason, theirs in other.not_replayed.items():
            ours = self.not_replayed.setdefault(reason, {"count": 0, "examples": []})
            ours["count"] += theirs["count"]
            ours["examples"] = _earliest(ours["examples"] + theirs["examples"])
        for mine, others in ((self.by_rule, other.by_rule),
                             (self.by_subject, other.by_subject)):
            for key, theirs in others.items():
                ours = mine.setdefault(key, _group())  # type: ignore[arg-type]
                ours["count"] += theirs["count"]
                ours["changes"].update(theirs["changes"])
                ours["categories"].update(theirs["categories"])
                ours["subjects"] |= theirs["subjects"]
                ours["examples"] = _earliest(ours["examples"] + theirs["examples"])

    # -- output -----------------------------------------------------------------------------

    def failures(self, fail_on: frozenset[str]) -> dict[str, int]:
        """The failing categories and how many records each (`unreplayable` included)."""
        out = {c: n for c, n in self.categories.items() if c in fail_on and n}
        if "unreplayable" in fail_on and self.counts["not_replayed"]:
            out["unreplayable"] = self.counts["not_replayed"]
        return out

    def to_dict(self, fail_on: frozenset[str]) -> dict[str, Any]:
        def groups(items: Any, key_fields: Any) -> list[dict[str, Any]]:
            rows = [{**key_fields(key), "count": g["count"],
                     "subjects": len(g["subjects"]),
                     "changes": dict(sorted(g["changes"].items())),
                     "categories": dict(sorted(g["categories"].items())),
                     "examples": g["examples"]} for key, g in items]
            return sorted(rows, key=lambda r: (-r["count"], str(next(iter(r.values())))))

        failures = self.failures(fail_on)
        return {
            "records": self.counts["records"],
            "kinds": dict(sorted(self.kinds.items())),
            "duplicates": self.counts["duplicates"],
            "replayed": self.counts["replayed"],
            "unchanged": self.counts["unchanged"],
            "changed": self.counts["changed"],
            "not_replayed": self.counts["not_replayed"],
            "changes": dict(sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0]))),
            "categories": dict(sorted(self.categories.items())),
            "by_rule": groups(self.by_rule.items(), lambda k: {"rule": k}),
            "by_subject": groups(self.by_subject.items(),
                                 lambda k: {"subject": k[0], "resource": k[1]}),
            "not_replayed_reasons": sorted(
                ({"reason": r, **g} for r, g in self.not_replayed.items()),
                key=lambda g: (-g["count"], g["reason"])),
            "fail_on": sorted(fail_on),
            "failures": failures,
            "failed": bool(failures),
        }


def _earliest(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(examples, key=lambda e: e["seq"])[:EXAMPLES]
