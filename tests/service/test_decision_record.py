"""`encode_line`, the JSON-lines decision log's encoder, against the general path it replaces:
the same line for any record (cached decisions, card numbers anywhere, odd keys and values),
and the same refusals."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.decision import Decision, Mask, Reason
from engine.masking import scrub_document
from engine.service.decision_log import line_event
from engine.service.decision_record import LINE_ENCODER, encode_line, render_record

PAN = "4111 1111 1111 1111"

_text = st.one_of(st.text(max_size=12), st.sampled_from([PAN, "4111111111111111", "x-y z",
                                                         "12345678901234", "\u00e9\u2028"]))
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), _text,
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.just(4111111111111111))
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(_text, inner, max_size=4), max_leaves=12)
_reason = st.builds(Reason, policy=_text, message=_text,
                    effect=st.sampled_from(["allow", "deny", "review"]))
_mask = st.builds(Mask, column=_text, method=st.sampled_from(["pan", "redact"]))


def _decision(reasons: tuple[Reason, ...], masks: tuple[Mask, ...], revision: str,
              cached: bool) -> Decision:
    return Decision("allow", reasons, masks, policy_revision=revision, eval_ns=1234,
                    cached=cached)


_decisions = st.builds(_decision, st.tuples(_reason), st.tuples(_mask), _text, st.booleans())


def general(record: dict[str, Any]) -> str:
    """What the decision log wrote before `encode_line`: every value scrubbed, then encoded."""
    return LINE_ENCODER.encode(scrub_document(render_record(record)))


@settings(max_examples=400, deadline=None)
@given(input_doc=_json, decision=st.one_of(st.none(), _decisions), extra=_json)
def test_encode_line_equals_the_general_path(input_doc: Any, decision: Decision | None,
                                             extra: Any) -> None:
    record: dict[str, Any] = {"decision_id": "01KQ3V7X9R2M4N6P8S0T2W4Y6Z",
                              "timestamp": 1765152000.25, "kind": "decide",
                              "transport": "grpc", "pid": 7, "input": input_doc}
    if decision is not None:
        record["decision"] = decision
    else:
        record["result"] = extra
    for _ in range(2):  # the second time a cached decision's result comes from the cache
        line = encode_line(record)
        assert line == general(record)
        assert PAN not in line and "4111111111111111" not in line
        json.loads(line)


def test_a_card_number_in_a_shared_result_is_masked_every_time() -> None:
    decision = _decision((Reason("p", f"card {PAN}", "allow"),), (), "rev", True)
    record = {"decision_id": "d", "timestamp": 0.0, "input": {}, "decision": decision}
    for _ in range(3):
        line = encode_line(record)
        assert PAN not in line and "1111" in line and line == general(record)


def test_non_string_keys_take_the_general_path() -> None:
    odd = {1: "a", False: "b", None: "c", 2.5: "d"}
    record = {"decision_id": "d", "timestamp": 0.0, "input": odd}
    assert encode_line(record) == general(record)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_values_without_a_json_form_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        encode_line({"decision_id": "d", "timestamp": 0.0, "input": {"x": bad}})


def test_a_record_without_a_json_form_is_logged_without_its_input() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    for bad in (cyclic, {"x": math.nan}, {(1, 2): "tuple key"}):
        record = {"decision_id": "d", "timestamp": 0.0, "input": bad}
        with pytest.raises((ValueError, TypeError, RecursionError)):
            encode_line(record)
        line = json.loads(line_event(record))
        assert line["decision_id"] == "d" and "input" not in line and line["truncated"]
