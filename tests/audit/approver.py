"""An approver in another process, for the `wait()` test.

`python -m tests.audit.approver URL REQUEST_ID NAME GROUP DELAY` sleeps DELAY seconds, approves
the request as NAME (member of GROUP) through its own store and trail connections, and prints
the resulting status.
"""

from __future__ import annotations

import sys
import time

from engine.approvals import open_approval_store
from engine.audit import open_audit_log
from engine.identity import Subject


def main(argv: list[str]) -> int:
    url, request_id, name, group, delay = argv[1:6]
    time.sleep(float(delay))
    with open_audit_log(url) as audit, open_approval_store(url, audit=audit) as store:
        print(store.approve(request_id, Subject(id=name, groups=(group,)), "ok").stored_status,
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
