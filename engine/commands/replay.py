"""`ordinance replay`: what a proposed policy set would have decided for the recorded traffic.

Owns the command-line surface of `engine.replay`: arguments, the output format, `--fail-on`
and exit codes — 0 no difference in a failing category, 1 differences that fail, 2 the trail
or a policy set cannot be used. Reading the trail is recorded as `audit.accessed` (action
`replay`), as an export is.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from typing import Any

from engine.commands.audit import AUDIT_URL_ENV, parse_duration, parse_time, record_access
from engine.replay.records import KINDS
from engine.replay.render import render
from engine.replay.run import ReplayError, ReplayOptions, open_trail, replay
from engine.replay.verdict import CATEGORIES

FAIL_ON_CHOICES = (*CATEGORIES, "unreplayable")
DEFAULT_FAIL_ON = CATEGORIES
PROG = "ordinance replay"


def parse_when(text: str) -> datetime:
    """`7d` (that long ago) or an ISO 8601 time."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except argparse.ArgumentTypeError:
        return parse_time(text)


def parse_fail_on(text: str) -> frozenset[str]:
    names = {n.strip() for n in text.split(",") if n.strip()}
    if names == {"none"}:
        return frozenset()
    if "any" in names:
        names = (names - {"any"}) | set(CATEGORIES)
    unknown = names - set(FAIL_ON_CHOICES)
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"invalid --fail-on {text!r}: a comma-separated list of {', '.join(FAIL_ON_CHOICES)}"
            f", or any, or none")
    return frozenset(names)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay", help="re-decide recorded traffic with a proposed policy set and report "
                       "every difference",
        description="Re-decide the inputs recorded in the audit trail (proxy statements, "
                    "service decisions, Envoy checks) with a proposed policy set and with a "
                    "baseline, and report every difference. Exit 0: no failing difference; "
                    "1: differences that fail (--fail-on); 2: unusable trail or policies.")
    parser.add_argument("--audit", metavar="URL", default=os.environ.get(AUDIT_URL_ENV),
                        required=not os.environ.get(AUDIT_URL_ENV),
                        help=f"the trail, sqlite:///path.db or postgresql://… "
                             f"(default ${AUDIT_URL_ENV})")
    parser.add_argument("--policies", "-p", required=True, metavar="DIR",
                        help="the proposed policy directory or bundle")
    base = parser.add_mutually_exclusive_group()
    base.add_argument("--baseline", metavar="DIR",
                      help="the current policy directory (default: the recorded decisions)")
    base.add_argument("--baseline-revision", metavar="REV",
                      help="compare with the decisions recorded under this policy revision "
                           "only")
    parser.add_argument("--since", type=parse_when, metavar="AGE|ISO",
                        help="records from then on (7d, 12h, or an ISO time)")
    parser.add_argument("--until", type=parse_when, metavar="AGE|ISO",
                        help="records before then")
    parser.add_argument("--resource", metavar="NAME", help="only this resource")
    parser.add_argument("--kind", choices=KINDS,
                        help="only proxy statements, or only service and Envoy decisions")
    parser.add_argument("--format", choices=("text", "json", "markdown", "junit"),
                        default="text")
    parser.add_argument("--fail-on", type=parse_fail_on, default=frozenset(DEFAULT_FAIL_ON),
                        metavar="LIST",
                        help=f"categories that fail: {', '.join(FAIL_ON_CHOICES)}; any (the "
                             f"default: every category but unreplayable) or none")
    parser.add_argument("--limit", type=positive, metavar="N",
                        help="replay at most the first N records in scope")
    parser.add_argument("--jobs", type=positive, default=1, metavar="N",
                        help="replay in N processes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = ReplayOptions(
        audit_url=args.audit, policies=args.policies, baseline=args.baseline,
        baseline_revision=args.baseline_revision, since=args.since, until=args.until,
        resource=args.resource, kinds=(args.kind,) if args.kind else KINDS,
        limit=args.limit, jobs=args.jobs)
    try:
        log = open_trail(options.audit_url)  # unusable: exit 2 before any policy is loaded
        log.close()
        report = replay(options)
    except ReplayError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    result = report.to_dict(args.fail_on)
    result["sides"] = {"proposed": args.policies,
                       "baseline": args.baseline or (
                           f"the decisions recorded under revision {args.baseline_revision}"
                           if args.baseline_revision else "the recorded decisions")}
    sys.stdout.write(render(result, args.format))
    sys.stdout.flush()
    filters = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in (
        ("since", args.since), ("until", args.until), ("resource", args.resource),
        ("kind", args.kind), ("limit", args.limit)) if v is not None}
    with open_trail(options.audit_url) as log:
        record_access(log, "replay", {"filters": filters, "records": result["records"],
                                      "policies": args.policies,
                                      "baseline": result["sides"]["baseline"]}, prog=PROG)
    return 1 if result["failed"] else 0
