"""A bounded, idle-expiring pool of reusable per-destination resources (broker connections, SNMP engines).

Tenants choose credentials freely, so a pool keyed by them must not grow with every new key: this one
keeps at most ``max_size`` entries, closes the least recently used idle one when a new one is added
beyond that, and closes entries nobody used for ``idle_seconds`` (on every pool operation and from a
small reaper thread while the pool is not empty). An entry in use (taken and not yet given back) is
never closed by the pool; if every entry is in use the pool may hold more than ``max_size`` for as
long as that lasts, which the worker's thread count bounds.

``close`` is always called outside the pool's lock, once per removed value.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("channels.pool")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Entry(Generic[V]):
    value: V
    last_used: float
    holders: int = 0


class BoundedPool(Generic[K, V]):
    """Thread-safe LRU of values by key, at most ``max_size`` idle-expiring entries."""

    def __init__(
        self,
        *,
        name: str,
        max_size: int,
        idle_seconds: float,
        close: Callable[[V], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1 or idle_seconds <= 0:
            raise ValueError("a pool needs max_size >= 1 and idle_seconds > 0")
        self.name = name
        self.max_size = max_size
        self.idle_seconds = idle_seconds
        self._close = close
        self._clock = clock
        self._lock = threading.Condition()
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()  # least recently used first
        self._retired: dict[int, _Entry[V]] = {}  # replaced while in use: closed when the last user is done
        self._reaper: threading.Thread | None = None
        self._closed = False
        self.evicted = 0  # entries closed for size or idleness, for tests and diagnostics

    def take(self, key: K, usable: Callable[[V], bool] = lambda _value: True) -> V | None:
        """The value pooled for key, marked in use (give it back with ``give_back``); None if there is
        none. A pooled value that is no longer ``usable`` is removed (and closed once unused)."""
        victims: list[V] = []
        with self._lock:
            victims += self._expired_locked()
            entry = self._entries.get(key)
            if entry is not None and not usable(entry.value):
                victims += self._retire_locked(self._entries.pop(key))
                entry = None
            if entry is not None:
                entry.holders += 1
                entry.last_used = self._clock()
                self._entries.move_to_end(key)
        self._close_all(victims)
        return None if entry is None else entry.value

    def put(self, key: K, value: V) -> None:
        """Add value for key, marked in use; closes what the size bound and idleness evict.

        A value already pooled under key (a dead one, say) is replaced and closed once unused."""
        victims: list[V] = []
        with self._lock:
            if self._closed:
                victims.append(value)
            else:
                old = self._entries.pop(key, None)
                if old is not None and old.value is not value:
                    victims += self._retire_locked(old)
                self._entries[key] = _Entry(value, self._clock(), holders=1)
                victims += self._expired_locked()
                victims += self._oversize_locked()
                self._start_reaper_locked()
        self._close_all(victims)
        if self._closed:
            raise RuntimeError(f"{self.name} pool is closed")

    def give_back(self, key: K, value: V) -> None:
        """End one use of value; a value the pool no longer holds is closed when its last user is done."""
        victims: list[V] = []
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.value is value:
                entry.holders = max(0, entry.holders - 1)
                entry.last_used = self._clock()
                victims += self._oversize_locked()
            else:
                retired = self._retired.get(id(value))
                if retired is not None and retired.value is value:
                    retired.holders -= 1
                    if retired.holders <= 0:
                        del self._retired[id(value)]
                        victims.append(value)
        self._close_all(victims)

    def discard(self, key: K, value: V) -> None:
        """Remove a broken value now (its users will fail on their own) and close it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.value is value:
                del self._entries[key]
            self._retired.pop(id(value), None)
        self._close_all([value])

    def sweep(self) -> int:
        """Close entries idle for longer than ``idle_seconds``; returns how many were closed."""
        with self._lock:
            victims = self._expired_locked()
        self._close_all(victims)
        return len(victims)

    def clear(self) -> None:
        """Close every entry, in use or not (their users fail on their own); the pool stays usable."""
        self._clear(refuse_new=False)

    def close(self) -> None:
        """Close every entry (in use or not) and refuse new ones."""
        self._clear(refuse_new=True)

    def _clear(self, *, refuse_new: bool) -> None:
        with self._lock:
            self._closed = self._closed or refuse_new
            victims = [entry.value for entry in (*self._entries.values(), *self._retired.values())]
            self._entries.clear()
            self._retired.clear()
            self._lock.notify_all()
        self._close_all(victims)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def values(self) -> list[V]:
        with self._lock:
            return [entry.value for entry in self._entries.values()]

    # -- inside the lock --

    def _expired_locked(self) -> list[V]:
        cutoff = self._clock() - self.idle_seconds
        expired = [k for k, e in self._entries.items() if e.holders == 0 and e.last_used <= cutoff]
        victims = [self._entries.pop(k).value for k in expired]
        self.evicted += len(victims)
        return victims

    def _oversize_locked(self) -> list[V]:
        victims: list[V] = []
        excess = len(self._entries) - self.max_size
        if excess <= 0:
            return victims
        for key in [k for k, e in self._entries.items() if e.holders == 0][:excess]:
            victims.append(self._entries.pop(key).value)
        self.evicted += len(victims)
        return victims

    def _retire_locked(self, entry: _Entry[V]) -> list[V]:
        """An entry leaving the pool: closed now if unused, else when its last user gives it back."""
        if entry.holders <= 0:
            return [entry.value]
        self._retired[id(entry.value)] = entry
        return []

    def _start_reaper_locked(self) -> None:
        if self._reaper is None or not self._reaper.is_alive():
            self._reaper = threading.Thread(target=self._reap, name=f"{self.name}-pool-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Sweep every half idle period until the pool is empty or closed."""
        while True:
            with self._lock:
                self._lock.wait(max(0.05, self.idle_seconds / 2))
                if self._closed or not self._entries:
                    self._reaper = None
                    return
            self.sweep()

    def _close_all(self, values: list[V]) -> None:
        for value in values:
            try:
                self._close(value)
            except Exception as exc:  # a resource that fails to close must not break the pool
                log.warning("pool.close_failed", pool=self.name, error_type=type(exc).__name__)
