"""A child process that evaluates CEL rules through the engine, for tests that must survive a
native abort: it reads JSON lines `{"when": EXPR, "doc": DOC}` and answers one JSON line each
with the compile errors, or the reasons and the kind of value the expression gave.

Run as `python -m tests.engine.cel_child ORDER`; ORDER is the import order to set up first:
`engine` (the engine's own: regopy, then CEL), `cel-first` (cel-expr-python before the engine)
or `regopy-first` (a plugin that imports regopy before the engine)."""

from __future__ import annotations

import json
import sys


def main(order: str) -> None:
    if order == "cel-first":
        import cel_expr_python.cel  # noqa: F401
    elif order == "regopy-first":
        import regopy  # noqa: F401
    import engine.policy.rego  # noqa: F401  (regopy is loaded before CEL, as the engine does)
    from engine.policy.cel import activation_data, cel_env, compile_rules, evaluate

    for line in sys.stdin:
        case = json.loads(line)
        rules, errors = compile_rules(
            "case.yaml", {"rules": [{"name": "r", "effect": "deny", "when": case["when"]}]},
            {}, {"redact"})
        if errors:
            answer: dict[str, object] = {"errors": errors}
        else:
            outcome = evaluate(rules, case["doc"])
            value = rules[0].program.eval(cel_env().Activation(activation_data(case["doc"])))
            kind = value.type().name().lower()
            answer = {"reasons": [{"message": r.message, "effect": r.effect}
                                  for r in outcome.reasons],
                      "kind": kind, "value": value.value() if kind == "bool" else None}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
