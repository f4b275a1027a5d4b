"""A writer process for the concurrency and crash tests.

`python -m tests.audit.writer URL TAG COUNT [gate] [os]` appends COUNT events (0: until killed)
and prints `seq i` after each append returns, i.e. only for records the trail acknowledged as
durable. With `gate` it prints `ready` and waits for a line on stdin before writing, so several
writers can be started together; with `os` the trail has `os` durability (acknowledged once
the OS has the record).
"""

from __future__ import annotations

import sys

from engine.audit import open_audit_log


def main(argv: list[str]) -> int:
    url, tag, count, options = argv[1], argv[2], int(argv[3]), argv[4:]
    with open_audit_log(url, durability="os" if "os" in options else "fsync") as log:
        print("ready", flush=True)
        if "gate" in options:
            sys.stdin.readline()
        i = 0
        while count == 0 or i < count:
            i += 1
            record = log.append("statement", {"writer": tag, "i": i}, subject=tag)
            print(f"{record.seq} {i}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
