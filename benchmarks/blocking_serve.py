"""A control for `load_service`: `ordinance serve --decision-log async` whose decision log
also blocks each request thread for a fixed time, GIL released, as a durable log's `fdatasync`
does, but writes nothing on the answer's path.

    python -m benchmarks.blocking_serve SECONDS serve ARGS...

It answers what the durable log's cost beyond its `fdatasync` is made of: the request thread
blocking for that long costs this much over async by itself (threads and vCPUs woken again,
caches cold), whatever the log does while it waits. Benchmark-only; `serve` is not changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import time
from typing import Any

from engine import cli
from engine.service.decision_log import DecisionLog


def main(argv: list[str]) -> int:
    block_s = float(argv[0])
    with contextlib.suppress(Exception):  # PR_SET_TIMERSLACK, 1 ns: sleep no longer than asked
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # threads made later inherit it
    submit = DecisionLog.submit

    def blocking_submit(self: DecisionLog, record: dict[str, Any]) -> bool:
        accepted = submit(self, record)
        time.sleep(block_s)
        return accepted

    DecisionLog.submit = blocking_submit  # type: ignore[method-assign]
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
