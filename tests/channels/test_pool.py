"""channels/pool.py: the bounded, idle-expiring pool behind MQTT connections and SNMP engines."""

from __future__ import annotations

import time

import pytest

from channels.pool import BoundedPool


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(
    clock: Clock, closed: list[str], max_size: int = 2, idle: float = 60.0
) -> BoundedPool[str, str]:
    return BoundedPool(name="test", max_size=max_size, idle_seconds=idle, close=closed.append, clock=clock)


def test_least_recently_used_idle_entry_is_closed_when_full() -> None:
    clock, closed = Clock(), []
    pool = make_pool(clock, closed)
    for key, value in (("a", "A"), ("b", "B")):
        pool.put(key, value)
        pool.give_back(key, value)
    assert pool.take("a") == "A"  # a is now the most recently used
    pool.give_back("a", "A")

    pool.put("c", "C")

    assert closed == ["B"]
    assert sorted(pool.values()) == ["A", "C"]
    assert pool.evicted == 1


def test_entries_in_use_are_never_closed_even_over_the_bound() -> None:
    clock, closed = Clock(), []
    pool = make_pool(clock, closed, max_size=1)
    pool.put("a", "A")  # in use
    pool.put("b", "B")  # in use too: the pool holds 2 for now

    assert closed == [] and len(pool) == 2
    pool.give_back("a", "A")  # the first one back is the least recently used idle one
    assert closed == ["A"] and pool.values() == ["B"]


def test_idle_entries_expire() -> None:
    clock, closed = Clock(), []
    pool = make_pool(clock, closed, idle=60)
    pool.put("a", "A")
    pool.give_back("a", "A")
    clock.now += 59
    assert pool.take("a") == "A"
    pool.give_back("a", "A")
    clock.now += 61

    assert pool.take("a") is None
    assert closed == ["A"]


def test_unusable_entry_is_replaced_and_closed_after_its_last_user() -> None:
    clock, closed = Clock(), []
    pool = make_pool(clock, closed)
    pool.put("a", "A1")  # one user still holds A1

    assert pool.take("a", usable=lambda value: value != "A1") is None
    pool.put("a", "A2")
    assert closed == []
    pool.give_back("a", "A1")
    assert closed == ["A1"]
    assert pool.values() == ["A2"]


def test_discard_closes_at_once_and_close_closes_everything() -> None:
    clock, closed = Clock(), []
    pool = make_pool(clock, closed)
    pool.put("a", "A")
    pool.put("b", "B")
    pool.discard("a", "A")
    assert closed == ["A"]

    pool.close()

    assert closed == ["A", "B"] and len(pool) == 0
    with pytest.raises(RuntimeError, match="closed"):
        pool.put("c", "C")
    assert closed[-1] == "C"


def test_reaper_thread_expires_idle_entries_without_traffic() -> None:
    closed: list[str] = []
    pool: BoundedPool[str, str] = BoundedPool(name="t", max_size=4, idle_seconds=0.2, close=closed.append)
    pool.put("a", "A")
    pool.give_back("a", "A")

    deadline = time.monotonic() + 10
    while not closed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert closed == ["A"]
    assert len(pool) == 0
