"""Assembling a running worker: settings → channels → deliverer → poller, plus signal handling."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import structlog

from channels.registry import build_registry
from delivery_worker.config import Settings
from delivery_worker.db import DatabaseUnavailable, connect
from delivery_worker.delivery import Deliverer
from delivery_worker.migrate import pending_migrations
from delivery_worker.poller import Poller
from delivery_worker.queues import build_queues
from delivery_worker.retry import RetryPolicy

log = structlog.get_logger("delivery_worker.service")


class SchemaNotReady(Exception):
    """Raised when the database lacks migrations this worker needs."""


def check_schema(dsn: str) -> None:
    conn = connect(dsn)
    try:
        missing = pending_migrations(conn)
    finally:
        conn.close()
    if missing:
        raise SchemaNotReady(
            f"database schema is not up to date (missing {', '.join(missing)}): run `delivery-worker migrate`"
        )


def install_signal_handlers(stopping: threading.Event, wake: threading.Event) -> None:
    """First SIGTERM/SIGINT: stop claiming and finish in-flight jobs. Second: exit at once."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stopping.is_set():
            os.write(2, b"delivery-worker: second signal, exiting now\n")
            os._exit(1)
        stopping.set()
        wake.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_worker(settings: Settings, *, drain: bool = False) -> None:
    """Run until a signal (or, with drain, until the queues are empty). Raises DatabaseUnavailable
    or SchemaNotReady when it cannot start."""
    check_schema(settings.database.dsn)
    stopping = threading.Event()
    registry = build_registry(settings)
    deliverer = Deliverer(registry, RetryPolicy.from_settings(settings.worker), stopping)
    poller = Poller(settings, build_queues(settings), deliverer, stopping)
    if threading.current_thread() is threading.main_thread():
        install_signal_handlers(stopping, poller.wake)
    log.info(
        "worker.started",
        threads=settings.worker.threads,
        batch_size=settings.worker.batch_size,
        channel_types=registry.types,
        drain=drain,
        config=settings.source,
    )
    try:
        abandoned = poller.run(drain=drain)
    finally:
        registry.close()
    log.info("worker.stopped", reason="drained" if drain and not stopping.is_set() else "signal")
    if abandoned:
        # Threads stuck in network I/O cannot be interrupted; their jobs are already put back.
        sys.stdout.flush()
        os._exit(0)


__all__ = ["DatabaseUnavailable", "SchemaNotReady", "run_worker"]
