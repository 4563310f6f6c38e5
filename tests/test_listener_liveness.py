"""The LISTEN connection notices a silent partition by itself and comes back when the path heals."""

from __future__ import annotations

import threading

from delivery_worker.listener import NotificationListener
from tests.postgres import proxy_to_database
from tests.postgres import through as via
from tests.processes import wait_until
from tests.rows import execute


def test_listener_reconnects_after_a_silent_partition_and_wakes_again(database):
    proxy = proxy_to_database()
    wake, stopping = threading.Event(), threading.Event()
    listener = NotificationListener(via(proxy, database), wake, stopping, liveness_seconds=0.5).start()
    try:
        assert wait_until(listener.connected.is_set)
        proxy.stall()
        # Its liveness LISTEN gets no answer and is cut after statement_timeout + 5 s (20 s).
        assert wait_until(lambda: not listener.connected.is_set(), timeout=45)
        proxy.restore()
        assert wait_until(listener.connected.is_set, timeout=30)
        wake.clear()
        execute(database, "NOTIFY delivery_worker_new_job")
        assert wake.wait(timeout=10)
    finally:
        stopping.set()
        proxy.stop()
