"""The two sides of a replay: a policy directory re-deciding each item (`PolicySide`), or the
decision recorded with it (`RecordedSide`). Each gives a `Verdict`, or `Unreplayable` saying
why this item cannot be decided on that side (never a guess).

`PolicySide` decides through an `Engine` with a large decision cache, so statements that
differ only by literals share one evaluation (the literal fingerprint, as in the proxy), and
reduces each Decision to a Verdict once per cached decision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.engine import Engine
from engine.errors import EvaluationError
from engine.facts.fingerprint import literal_fingerprint
from engine.policy import PolicySet
from engine.replay.reads import ReadPaths
from engine.replay.records import SCRUBBED, Item, recorded_as
from engine.replay.verdict import Verdict, decision_verdict, query_verdict

CACHE_SIZE = 200_000
_VERDICTS = 65_536


@dataclass(frozen=True, slots=True)
class Unreplayable:
    reason: str
    """A category, the same for every record it applies to (it is counted)."""
    detail: str = ""


def marks_inside_literals(text: str) -> bool:
    """Every scrubbed card number in `text` lies inside a string literal: the text has the
    literal fingerprint the original had."""
    fingerprint = literal_fingerprint(text)
    return fingerprint is not None and fingerprint == literal_fingerprint(
        SCRUBBED.sub("0", text))


class PolicySide:
    def __init__(self, policy_set: PolicySet, label: str) -> None:
        self.policy_set = policy_set
        self.label = label
        self.engine = Engine(policy_set, cache_size=CACHE_SIZE)
        self.reads = ReadPaths(policy_set)
        self._verdicts: dict[tuple[int, int, str], tuple[Any, Any, Verdict]] = {}

    def verdict(self, item: Item) -> Verdict | Unreplayable:
        assert item.input is not None
        if not self.policy_set.cacheable:
            return Unreplayable(f"the {self.label} policies call time, random or network "
                                f"builtins, so a replay cannot give the decision of then")
        for path in item.missing:
            if self.reads.reads(path):
                return Unreplayable(f"the record lacks {'.'.join(path)}, which the {self.label} "
                                    f"policies read")
        if item.scrubbed and not (self.policy_set.literal_insensitive
                                  and marks_inside_literals(item.text)):
            return Unreplayable(f"the trail masked a card number in the text, and the "
                                f"{self.label} policies could see it")
        if item.query_path is not None:
            return self._query(item.query_path, item.input, item.query_enriched)
        decision = self.engine.decide(item.input)
        key = (id(decision.reasons), id(decision.masks), decision.effect)
        entry = self._verdicts.get(key)
        if entry is not None and entry[0] is decision.reasons and entry[1] is decision.masks:
            return entry[2]
        verdict = decision_verdict(decision)
        if len(self._verdicts) >= _VERDICTS:
            self._verdicts.clear()
        # The entry holds the tuples, so their ids cannot be reused while it exists; cached
        # decisions share the tuples of the decision that filled the cache.
        self._verdicts[key] = (decision.reasons, decision.masks, verdict)
        return verdict

    def _query(self, path: str, doc: dict[str, Any], enrich: bool) -> Verdict | Unreplayable:
        from engine.service.runtime import enriched_input

        try:
            defined, value = self.engine.query(path, enriched_input(doc) if enrich else doc)
        except (EvaluationError, TypeError, ValueError) as exc:
            return Verdict("error", result=json.dumps(f"evaluation error: {exc}"))
        return query_verdict(defined, value)


class RecordedSide:
    """The decision recorded with each item; with `revision`, only items recorded under it."""

    label = "recorded"

    def __init__(self, revision: str | None) -> None:
        self.revision = revision

    def verdict(self, item: Item) -> Verdict | Unreplayable:
        if self.revision is not None and item.recorded_revision != self.revision:
            return Unreplayable("recorded under another policy revision",
                                f"revision {item.recorded_revision or '(none)'}")
        recorded = recorded_as(item)
        return Unreplayable(recorded) if isinstance(recorded, str) else recorded
