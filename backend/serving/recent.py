"""A thread-safe cache of the values used last, within a budget; concurrent asks for one key compute it once.

Serving keeps three such caches (base runs, latent pages, maps over time). They share one rule: a
value being computed is waited on, not computed twice, and finished values are dropped oldest
first once their sizes sum past the budget.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

Value = TypeVar("Value")


class Recent(Generic[Value]):
    """Values by key, the least recently used dropped first once `size_of` over the kept values passes `budget`.

    With the default `size_of` (1 per value) the budget is a count. The value just computed is
    always kept, even when it alone is over the budget, so its caller and those waiting get it.
    """

    def __init__(self, budget: float, size_of: Callable[[Value], float] = lambda value: 1):
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.budget, self.size_of = budget, size_of
        self._entries: OrderedDict[Hashable, Future] = OrderedDict()  # finished or being computed, most recent last
        self._sizes: dict[Hashable, float] = {}  # finished entries only
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        """The value for `key`: kept, being computed by another caller (waited for), or `compute()` now.

        A failed computation is not kept: its waiters get the error, and the next ask tries again.
        """
        with self._lock:
            pending = self._entries.get(key)
            first = pending is None
            if first:
                pending = self._entries[key] = Future()
            else:
                self._entries.move_to_end(key)
        if first:
            try:
                value = compute()
            except BaseException as err:
                with self._lock:
                    if self._entries.get(key) is pending:
                        del self._entries[key]
                pending.set_exception(err)
                raise
            self._keep(key, pending, value)
            pending.set_result(value)
        return pending.result()

    def _keep(self, key: Hashable, pending: Future, value: Value) -> None:
        """Count `value` in the budget and drop the oldest finished values beyond it (never `key` itself)."""
        with self._lock:
            if self._entries.get(key) is not pending:
                return  # dropped while being computed: hand it out, keep nothing
            self._sizes[key] = float(self.size_of(value))
            total = sum(self._sizes.values())
            for old in list(self._entries):
                if total <= self.budget:
                    break
                if old != key and old in self._sizes:
                    total -= self._sizes.pop(old)
                    del self._entries[old]

    @property
    def kept(self) -> float:
        """The summed size of the finished values kept."""
        with self._lock:
            return sum(self._sizes.values())

    def keys(self) -> list[Hashable]:
        """The keys kept or being computed, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries
