"""kill -9 under load, for the durability tests: callers run against a server process until it
is killed with SIGKILL; what each caller saw acknowledged is returned."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable

Caller = Callable[[threading.Event, list[str]], None]
"""Runs until the event is set or its server is gone, appending what was acknowledged."""


def kill_under_load(process: subprocess.Popen[str], callers: list[Caller],
                    rng: random.Random, *, after: float = 0.6) -> list[str]:
    """Start `callers`, SIGKILL `process` `after` to `after` + 0.6 s later, stop them; every
    caller must have had something acknowledged before the kill."""
    stop = threading.Event()
    acked: list[list[str]] = [[] for _ in callers]
    threads = [threading.Thread(target=caller, args=(stop, mine))
               for caller, mine in zip(callers, acked, strict=True)]
    for thread in threads:
        thread.start()
    time.sleep(after + rng.random() * 0.6)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(10) == -signal.SIGKILL
    stop.set()
    for thread in threads:
        thread.join(10)
    process.communicate(timeout=10)
    assert all(acked), "every caller had something acknowledged before the kill"
    return [item for mine in acked for item in mine]
