#!/bin/sh
# A CI job for a pull request that changes policies: the policy tests and their coverage
# (failing below COVERAGE_THRESHOLD percent), then a replay of the last week of production
# traffic against the main branch's policies.
#
# Needs: the repository checked out with the main branch fetched (origin/main), Python 3.11+,
# and ORDINANCE_REPLAY_TRAIL: the URL of a copy of production's trail, e.g. a SQLite file a
# nightly job copied from production with `sqlite3 /srv/ordinance/audit.db ".backup copy.db"`
# (sqlite:////ci/cache/audit-copy.db), or a read-only replica of a PostgreSQL trail. Replay
# records its read of the trail (audit.accessed) in the copy; on a read-only replica it warns
# that the access went unrecorded, so keep the replica's own access logs.
#
# Writes policy-tests.xml (JUnit), coverage.json (as `opa test --coverage` writes it),
# replay.md (post it as the pull request's comment) and replay.xml (JUnit).
# Exit codes: 0 fine, 1 a test failed, coverage is below the threshold or the replay found a
# failing difference, 2 unusable.
set -eu

: "${ORDINANCE_REPLAY_TRAIL:?set it to the URL of a copy of the production trail}"
POLICIES=${POLICIES:-policies}
FAIL_ON=${FAIL_ON:-deny,review,allow,unmask,mask}
COVERAGE_THRESHOLD=${COVERAGE_THRESHOLD:-100}

python3 -m venv .venv
.venv/bin/pip install -q -e .

.venv/bin/ordinance check "$POLICIES"
.venv/bin/ordinance test "$POLICIES" --format junit > policy-tests.xml
.venv/bin/ordinance test "$POLICIES" --coverage --format json > coverage.json
# the lines and rules no test reaches, and exit 1 below the threshold
.venv/bin/ordinance test "$POLICIES" --coverage --threshold "$COVERAGE_THRESHOLD"

BASE=$(mktemp -d)
trap 'git worktree remove --force "$BASE/main" >/dev/null 2>&1 || true; rm -rf "$BASE"' EXIT
git worktree add --quiet --detach "$BASE/main" origin/main

# A trail edited to hide traffic would hide it from the replay too: check the copy's chain.
.venv/bin/ordinance audit verify --audit "$ORDINANCE_REPLAY_TRAIL"

status=0
.venv/bin/ordinance replay --audit "$ORDINANCE_REPLAY_TRAIL" --policies "$POLICIES" \
    --baseline "$BASE/main/$POLICIES" --since 7d --fail-on "$FAIL_ON" --format markdown \
    > replay.md || status=$?
if [ "$status" -le 1 ]; then
    .venv/bin/ordinance replay --audit "$ORDINANCE_REPLAY_TRAIL" --policies "$POLICIES" \
        --baseline "$BASE/main/$POLICIES" --since 7d --fail-on "$FAIL_ON" --format junit \
        > replay.xml || true
fi
cat replay.md
exit "$status"
