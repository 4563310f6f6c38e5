"""The shared deadline watchdog: it closes what is still running at the deadline, and nothing else."""

from __future__ import annotations

import socket
import threading
import time

from channels.deadline import closing_at


def test_close_is_called_at_the_deadline_and_unblocks_a_reader() -> None:
    left, right = socket.socketpair()
    started = time.monotonic()
    with closing_at(started + 0.2, lambda: left.shutdown(socket.SHUT_RDWR)) as armed:
        data = left.recv(10)  # blocks: nothing is ever written to the other end
    assert data == b""
    assert armed.fired
    assert 0.15 < time.monotonic() - started < 5
    left.close()
    right.close()


def test_a_block_that_ends_in_time_is_never_closed() -> None:
    closed = threading.Event()
    with closing_at(time.monotonic() + 0.1, closed.set) as armed:
        pass
    time.sleep(0.3)
    assert not closed.is_set()
    assert not armed.fired


def test_no_deadline_never_closes() -> None:
    closed = threading.Event()
    with closing_at(None, closed.set) as armed:
        time.sleep(0.05)
    assert not closed.is_set() and not armed.fired


def test_many_deadlines_fire_in_their_own_order() -> None:
    fired: list[int] = []
    now = time.monotonic()
    contexts = [closing_at(now + 0.05 * (3 - i), lambda i=i: fired.append(i)) for i in range(3)]
    for context in contexts:
        context.__enter__()
    time.sleep(0.4)
    for context in contexts:
        context.__exit__(None, None, None)
    assert fired == [2, 1, 0]
