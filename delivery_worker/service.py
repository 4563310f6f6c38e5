"""Assembling a running worker: settings → channels → deliverer → poller, plus what watches it.

Around the poll loop: signal handling (signals.py), waiting for the database at start (startup.py),
the systemd notifications (READY, STOPPING, WATCHDOG) and, when a port is configured, the metrics and
health listener. What the process manager passes through the environment (``$PORT``,
``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``) is read here, once, at start.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from channels.registry import build_registry
from delivery_worker.config import Settings
from delivery_worker.db import DatabaseUnavailable
from delivery_worker.delivery import Deliverer
from delivery_worker.destinations import DestinationGuard
from delivery_worker.health import HealthServer, LoopLiveness, ReadinessCheck, staleness_bound
from delivery_worker.logs import write_held_log_lines
from delivery_worker.metrics import QueueSampler, WorkerMetrics
from delivery_worker.observer import Observers, PollObserver
from delivery_worker.poller import Poller
from delivery_worker.privileges import MissingPrivileges
from delivery_worker.queues import build_queues
from delivery_worker.retry import RetryPolicy
from delivery_worker.signals import StopSignals
from delivery_worker.startup import SchemaNotReady, connect_and_check
from delivery_worker.systemd import Notifier, SystemdObserver, watchdog_interval

log = structlog.get_logger("delivery_worker.service")

ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - $PORT platforms route to the dyno/container from outside


class CannotListen(Exception):
    """Raised when the metrics and health listener cannot bind its address."""


@dataclass(frozen=True)
class ProcessEnvironment:
    """What the process manager tells the worker through the environment, read once at start."""

    port: int | None = None  # $PORT (Heroku and similar): serve /metrics and the probes on it
    notify_socket: str | None = None  # $NOTIFY_SOCKET (systemd Type=notify)
    watchdog_usec: str | None = None  # $WATCHDOG_USEC (systemd WatchdogSec=)
    watchdog_pid: str | None = None  # $WATCHDOG_PID: the process the watchdog is meant for

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> ProcessEnvironment:
        port_text = environ.get("PORT", "").strip()
        port = None
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise CannotListen(f"$PORT: expected a port number, got {port_text!r}")
            port = int(port_text)
        return cls(
            port=port,
            notify_socket=environ.get("NOTIFY_SOCKET") or None,
            watchdog_usec=environ.get("WATCHDOG_USEC") or None,
            watchdog_pid=environ.get("WATCHDOG_PID") or None,
        )


def listen_address(settings: Settings, environment: ProcessEnvironment) -> tuple[str, int] | None:
    """``[metrics] port`` when set; else ``$PORT`` on all interfaces; else no listener."""
    if settings.metrics.port > 0:
        return settings.metrics.host, settings.metrics.port
    if environment.port is not None:
        return ALL_INTERFACES, environment.port
    return None


class Monitoring:
    """The metrics, the thread sampling queue depth, the liveness the loop ticks, and the HTTP
    listener serving /metrics, /livez, /readyz and /healthz."""

    def __init__(
        self,
        settings: Settings,
        address: tuple[str, int],
        channel_types: list[str],
        stopping: threading.Event,
        *,
        sample_queues: bool = True,
    ) -> None:
        self.metrics = WorkerMetrics(channel_types)
        self.liveness = LoopLiveness(staleness_bound(settings.worker.poll_interval))
        readiness = ReadinessCheck(settings.database.dsn, stopping)
        host, port = address
        try:
            self.server = HealthServer(host, port, self.metrics.registry, self.liveness, readiness)
        except OSError as exc:
            raise CannotListen(f"cannot listen on {host}:{port} for /metrics and the probes: {exc}") from None
        # Of several worker processes under one `run`, one samples the queues (supervisor.py).
        self.sampler = (
            QueueSampler(
                self.metrics,
                settings.database.dsn,
                settings.metrics.queue_sample_seconds,
                failed_window=settings.metrics.failed_window_seconds,
            )
            if sample_queues
            else None
        )

    def start(self) -> None:
        if self.sampler is not None:
            self.sampler.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        if self.sampler is not None:
            self.sampler.stop()


def off_the_main_thread(loop: Callable[[], int]) -> int:
    """Run ``loop`` on a thread of its own and wait for it; its result, or its exception.

    Python runs signal handlers in the main thread only, between bytecodes. A poll loop on the main
    thread blocked in a database call (a frozen database: until the statement timeout, 20 s) would
    hold SIGTERM back that long, and with it the shutdown watcher that cuts the connection at
    ``shutdown_timeout``. Waiting here instead, the main thread takes the signal at once."""
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(loop())
        except BaseException as exc:  # handed to the main thread, which raises it
            errors.append(exc)

    thread = threading.Thread(target=run, name="poll-loop")
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if errors:
        raise errors[0]
    return results[0]


def run_worker(
    settings: Settings,
    *,
    drain: bool = False,
    environment: ProcessEnvironment | None = None,
    stopping: threading.Event | None = None,
    listen_at: tuple[str, int] | None = None,
    sample_queues: bool = True,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Run until a signal (or, with drain, until the queues are empty).

    ``environment`` defaults to this process's environment. ``stopping``, when given, lets the
    caller stop the worker as a signal would. An unreachable database is waited for (a signal
    ends the wait); with ``drain`` it raises DatabaseUnavailable at once instead. Raises
    SchemaNotReady, MissingPrivileges or CannotListen when it cannot start.

    For a worker process under supervisor.py: ``listen_at`` replaces the configured metrics address
    (port 0: any free port, told to ``on_listening``), and ``sample_queues`` False leaves the queue
    gauges to another process.
    """
    if environment is None:
        environment = ProcessEnvironment.read(os.environ)
    from delivery_worker.check_config import deployment_warnings  # it imports this module

    for warning in deployment_warnings(settings, environment):  # what `check-config` prints
        log.warning("config.warning", warning=warning)
    stopping = stopping or threading.Event()
    notifier = Notifier(environment.notify_socket)
    signals = StopSignals(stopping)
    if threading.current_thread() is threading.main_thread():
        signals.install()  # before the wait for the database, so SIGTERM ends it
    registry = build_registry(settings, pool_size=settings.worker.threads)
    monitoring: Monitoring | None = None
    try:
        address = listen_at or listen_address(settings, environment)
        # Listen first: while the database is awaited /readyz says 503 and /livez 200.
        if address is not None:
            monitoring = Monitoring(settings, address, registry.types, stopping, sample_queues=sample_queues)
            monitoring.start()
            if on_listening is not None:
                on_listening(monitoring.server.port)
        alive = monitoring.liveness.tick if monitoring is not None else None
        if not connect_and_check(
            settings.database.dsn,
            stopping,
            notifier,
            wait=not drain,
            alive=alive,
            schema_wait_seconds=settings.database.schema_wait_seconds,
        ):
            signals.log_received()
            log.info("worker.stopped", reason="signal while waiting for the database")
            return
        observers: list[PollObserver] = [
            signals,
            SystemdObserver(
                notifier,
                ping_every=watchdog_interval(
                    environment.watchdog_usec, environment.watchdog_pid, os.getpid()
                ),
                stopping=stopping,
            ),
        ]
        guard = DestinationGuard(settings.rate_limits, settings.circuit_breaker)
        if monitoring is not None:
            observers += [monitoring.metrics, monitoring.liveness]
            monitoring.metrics.watch_circuits(guard.open_circuits)
        deliverer = Deliverer(
            registry,
            RetryPolicy.from_settings(settings.worker),
            stopping,
            guard,
            max_listed=settings.digest.max_listed,
        )
        poller = Poller(settings, build_queues(settings), deliverer, stopping, observer=Observers(*observers))
        signals.also_wake(poller.wake)
        log.info(
            "worker.started",
            threads=settings.worker.threads,
            batch_size=settings.worker.batch_size,
            channel_types=registry.types,
            drain=drain,
            config=settings.source,
            metrics=f"{monitoring.server.host}:{monitoring.server.port}" if monitoring else None,
        )
        notifier.notify("READY=1", f"STATUS=delivering with {settings.worker.threads} threads")
        abandoned = off_the_main_thread(lambda: poller.run(drain=drain))
    finally:
        if monitoring is not None:
            monitoring.stop()
        registry.close()
        signals.uninstall()
    log.info("worker.stopped", reason="drained" if drain and not stopping.is_set() else "signal")
    write_held_log_lines()
    if abandoned:
        # Threads stuck in network I/O cannot be interrupted; their jobs are already put back.
        sys.stdout.flush()
        os._exit(0)


__all__ = [
    "CannotListen",
    "DatabaseUnavailable",
    "MissingPrivileges",
    "ProcessEnvironment",
    "SchemaNotReady",
    "run_worker",
]
