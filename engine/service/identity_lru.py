"""`IdentityLRU`: a bounded, thread-safe cache of values derived from shared, read-only objects.

The engine hands out the very same objects again and again (a cached Decision's `reasons` and
`masks` tuples, the facts lists of its facts cache), so what the service derives from them
(their protobuf encoding, their decision-log rendering) is kept keyed by the objects'
identity. Each entry holds its objects, so their ids cannot be reused while it is cached.
Only shared objects may be cached this way: the caller must never change them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class IdentityLRU:
    """`get(objects, make)`: `make()` for the tuple `objects`, computed once while cached."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, ...], tuple[tuple[Any, ...], Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, objects: tuple[Any, ...], make: Callable[[], Any], *,
            keep: bool | Callable[[Any], bool] = True) -> Any:
        """The cached value for `objects`, else `make()`, kept when `keep` (or `keep(value)`)
        says it is worth keeping: objects that will be seen again, a value that is small."""
        key = tuple(map(id, objects))
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0], objects, strict=True)):
                self._items.move_to_end(key)
                return hit[1]
        value = make()
        if keep(value) if callable(keep) else keep:
            with self._lock:
                self._items[key] = (objects, value)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
