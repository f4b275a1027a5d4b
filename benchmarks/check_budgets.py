"""Check the latency budgets in benchmarks/budgets.yaml; exit 1 naming each class over budget.

`--quick` (used by the test suite) takes fewer samples but repeats the whole measurement and
keeps the median ratio per class, so one noisy moment cannot fail it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

from benchmarks.measure import measure

BUDGETS = Path(__file__).with_name("budgets.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer samples, 3 repeats")
    parser.add_argument("--policies", default="policies")
    args = parser.parse_args(argv)
    config = yaml.safe_load(BUDGETS.read_text())
    baseline = config["baseline"]
    repeats, rounds = (3, 300) if args.quick else (5, 3000)
    ratios: dict[str, list[float]] = {name: [] for name in config["budgets"]}
    last = {}
    for _ in range(repeats):
        last = measure(rounds=rounds, policies=args.policies)
        base = last[baseline]["median_us"]
        for name in ratios:
            ratios[name].append(last[name]["median_us"] / base)
    print(f"{baseline}: median {last[baseline]['median_us']:.1f} us, "
          f"p99 {last[baseline]['p99_us']:.1f} us")
    broken = []
    for name, budget in config["budgets"].items():
        ratio = statistics.median(ratios[name])
        status = "ok" if ratio <= budget else "OVER BUDGET"
        print(f"{name}: median {last[name]['median_us']:.1f} us, p99 {last[name]['p99_us']:.1f} us,"
              f" {ratio:.2f}x {baseline} (budget {budget}x) {status}")
        if ratio > budget:
            broken.append(name)
    if broken:
        print(f"budget broken by: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
