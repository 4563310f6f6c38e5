"""``[worker] processes = N``: N worker processes under one ``run``, so one service uses N cores.

Each worker process is the ordinary worker (service.run_worker: its own poll loop, thread pool,
database sessions, leases, spool file and graceful shutdown), started with ``multiprocessing``'s
spawn method and given its share of the unit's settings (``settings_for_process``): ``threads``,
``max_in_flight_per_destination`` and every ``[rate_limits]`` rate are divided between the
processes, so the unit as a whole keeps the configured figures. They share the queues as any
number of workers always could (``FOR UPDATE SKIP LOCKED``).

This process (the supervisor) delivers nothing. It

* serves the one metrics and health port (supervisor_http.py; each worker process listens on a
  loopback port of its own, and only process 0 samples the queue gauges);
* turns SIGTERM, SIGINT and SIGHUP into a graceful stop of every process (a second SIGTERM/SIGINT
  is passed on, so everything exits at once, as a single worker does) and exits when all have;
  with ``--drain`` it exits once every process has drained;
* stands between the processes and systemd: each process reports READY/WATCHDOG/STATUS to a
  socket of the supervisor's, which tells systemd READY=1 once all are ready and pings the
  watchdog only while every ready process keeps pinging (a wedged poll loop in any process
  still gets the unit restarted);
* starts a worker process again when it exits on its own after it was ready (a crash), at most
  ``RESTART_LIMIT`` times within ``RESTART_WINDOW_SECONDS``; a process that cannot start (schema
  not migrated, missing GRANT, database down with ``--drain``), or one restarted too often, stops
  the whole service with exit 1 and a ``processes.failed`` line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from delivery_worker.config import Settings
from delivery_worker.logs import configure_logging
from delivery_worker.service import (
    CannotListen,
    DatabaseUnavailable,
    MissingPrivileges,
    ProcessEnvironment,
    SchemaNotReady,
    listen_address,
    run_worker,
)
from delivery_worker.signals import StopSignals
from delivery_worker.supervisor_http import LOOPBACK, ProcessesListener
from delivery_worker.systemd import Notifier, watchdog_interval

log = structlog.get_logger("delivery_worker.supervisor")

EXIT_OK = 0
EXIT_FAILURE = 1
TICK_SECONDS = 0.25
RESTART_DELAY_SECONDS = 1.0
RESTART_LIMIT = 5
RESTART_WINDOW_SECONDS = 300.0
STOP_GRACE_SECONDS = 15.0  # past shutdown_timeout before a worker process still running is killed
SAMPLING_PROCESS = 0


def share(total: int, count: int, index: int) -> int:
    """Process ``index``'s part of ``total`` split as evenly as whole numbers allow."""
    return total // count + (1 if index < total % count else 0)


def settings_for_process(settings: Settings, index: int, count: int) -> Settings:
    """What worker process ``index`` of ``count`` runs with: its share of the unit's threads,
    per-destination cap (at least 1 each) and rate limits; no listener of the configured port."""
    worker = settings.worker
    cap = worker.max_in_flight_per_destination
    rates = settings.rate_limits
    return dataclasses.replace(
        settings,
        worker=dataclasses.replace(
            worker,
            threads=share(worker.threads, count, index),
            max_in_flight_per_destination=max(1, share(cap, count, index)) if cap else 0,
            processes=1,
        ),
        rate_limits=dataclasses.replace(
            rates, **{f.name: getattr(rates, f.name) / count for f in dataclasses.fields(rates)}
        ),
        metrics=dataclasses.replace(settings.metrics, port=0),
    )


@dataclass(frozen=True)
class ProcessPlan:
    """Everything a worker process needs, sent to it when it is spawned (picklable)."""

    settings: Settings
    index: int
    drain: bool
    environment: ProcessEnvironment
    listen: bool  # serve /metrics and health on a loopback port for the supervisor
    sample_queues: bool


def process_main(plan: ProcessPlan, stop: Connection, report: Connection) -> None:
    """The entry point of a worker process (module level, so that spawn can import it)."""
    configure_logging(plan.settings.logging.level, process=plan.index)
    stopping = threading.Event()

    def stop_when_told() -> None:
        with contextlib.suppress(EOFError, OSError):
            stop.recv()  # "stop"; EOF when the supervisor is gone: stop as well
        stopping.set()

    threading.Thread(target=stop_when_told, name="supervisor-stop", daemon=True).start()
    try:
        run_worker(
            plan.settings,
            drain=plan.drain,
            environment=plan.environment,
            stopping=stopping,
            listen_at=(LOOPBACK, 0) if plan.listen else None,
            sample_queues=plan.sample_queues,
            on_listening=lambda port: report.send(("listening", port)),
        )
    except (DatabaseUnavailable, SchemaNotReady, MissingPrivileges, CannotListen) as exc:
        print(f"delivery-worker: process {plan.index}: {exc}", file=sys.stderr)
        sys.stdout.flush()
        os._exit(EXIT_FAILURE)
    sys.stdout.flush()


@dataclass
class WorkerProcess:
    """The supervisor's view of one worker process slot (the process in it may be restarted)."""

    index: int
    notify: socket.socket  # where the process's sd_notify messages arrive
    notify_name: str  # "@..." as the process's $NOTIFY_SOCKET
    process: BaseProcess | None = None
    stop: Connection | None = None
    report: Connection | None = None
    port: int | None = None
    ready: bool = False
    last_ping: float = 0.0
    done: bool = False
    restart_at: float | None = None
    restarts: deque[float] = field(default_factory=deque)


class StopAllSignals(StopSignals):
    """StopSignals whose second SIGTERM/SIGINT also reaches every worker process before exiting."""

    def __init__(self, stopping: threading.Event, pids: list[int]) -> None:
        super().__init__(stopping)
        self.pids = pids

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set() and signum != signal.SIGHUP:
            for pid in list(self.pids):
                with contextlib.suppress(OSError):
                    os.kill(pid, signum)
        super()._handle(signum, frame)


class Supervisor:
    def __init__(self, settings: Settings, *, drain: bool, environment: ProcessEnvironment) -> None:
        self.settings = settings
        self.drain = drain
        self.environment = environment
        self.count = settings.worker.processes
        self.context = multiprocessing.get_context("spawn")
        self.stopping = threading.Event()
        self.pids: list[int] = []
        self.signals = StopAllSignals(self.stopping, self.pids)
        self.notifier = Notifier(environment.notify_socket)
        self.ping_every = watchdog_interval(environment.watchdog_usec, environment.watchdog_pid, os.getpid())
        self.address = listen_address(settings, environment)
        token = secrets.token_hex(4)
        self.slots = [self._slot(index, token) for index in range(self.count)]
        self.registry = CollectorRegistry()
        Gauge("delivery_worker_processes", "[worker] processes of this run.", registry=self.registry).set(
            self.count
        )
        self.running = Gauge(
            "delivery_worker_processes_running", "Worker processes running now.", registry=self.registry
        )
        self.restarted = Counter(
            "delivery_worker_process_restarts", "Worker processes started again.", registry=self.registry
        )
        self.listener: ProcessesListener | None = None
        self.ready_sent = False
        self.stop_sent = False
        self.stop_deadline: float | None = None
        self.failure: str | None = None
        self.last_ping = 0.0

    def _slot(self, index: int, token: str) -> WorkerProcess:
        name = f"@delivery-worker-{os.getpid()}-{token}-{index}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(b"\0" + name[1:].encode())
        sock.setblocking(False)
        return WorkerProcess(index, sock, name)

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self.signals.install()
        try:
            if self.address is not None:
                host, port = self.address
                try:
                    self.listener = ProcessesListener(
                        host, port, self._ports, self.registry, sampling_process=SAMPLING_PROCESS
                    )
                except OSError as exc:
                    raise CannotListen(
                        f"cannot listen on {host}:{port} for /metrics and /healthz: {exc}"
                    ) from None
                self.listener.start()
            per_process = [share(self.settings.worker.threads, self.count, i) for i in range(self.count)]
            log.info("processes.starting", processes=self.count, threads=per_process, drain=self.drain)
            for slot in self.slots:
                self._start(slot)
            while not all(slot.done for slot in self.slots):
                self._tick()
        finally:
            if self.listener is not None:
                self.listener.stop()
            for slot in self.slots:
                slot.notify.close()
            self.signals.uninstall()
        if self.failure is not None:
            log.error("processes.failed", reason=self.failure)
            return EXIT_FAILURE
        reason = "drained" if self.drain and not self.stopping.is_set() else "signal"
        log.info("worker.stopped", reason=reason, processes=self.count)
        return EXIT_OK

    def _tick(self) -> None:
        waitables: list[Any] = []
        for slot in self.slots:
            waitables.append(slot.notify)
            if slot.process is not None and not slot.done:
                assert slot.report is not None
                waitables += [slot.report, slot.process.sentinel]
        wait(waitables, timeout=TICK_SECONDS)
        now = time.monotonic()
        for slot in self.slots:
            self._read_reports(slot)
            self._read_notifications(slot, now)
            if slot.process is not None and slot.process.exitcode is not None:
                self._exited(slot, now)
            if slot.restart_at is not None and now >= slot.restart_at and not self.stopping.is_set():
                slot.restart_at = None
                self._start(slot)
        if self.stopping.is_set():
            self._stop_all(now)
        self._notify_systemd(now)
        self.running.set(sum(1 for s in self.slots if s.process is not None and s.process.exitcode is None))

    def _start(self, slot: WorkerProcess) -> None:
        plan = ProcessPlan(
            settings=settings_for_process(self.settings, slot.index, self.count),
            index=slot.index,
            drain=self.drain,
            environment=ProcessEnvironment(
                notify_socket=slot.notify_name,
                watchdog_usec=self.environment.watchdog_usec if self.ping_every is not None else None,
            ),
            listen=self.listener is not None,
            sample_queues=slot.index == SAMPLING_PROCESS,
        )
        stop_read, stop_write = self.context.Pipe(duplex=False)
        report_read, report_write = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=process_main,
            args=(plan, stop_read, report_write),
            name=f"delivery-worker-{slot.index}",
            daemon=True,  # should the supervisor itself fail, multiprocessing stops them (SIGTERM)
        )
        process.start()
        stop_read.close()
        report_write.close()
        slot.process, slot.stop, slot.report = process, stop_write, report_read
        slot.port, slot.ready, slot.last_ping = None, False, time.monotonic()
        assert process.pid is not None
        self.pids.append(process.pid)
        log.info("process.started", process=slot.index, pid=process.pid, threads=plan.settings.worker.threads)
        if self.stop_sent:  # started (or restarted) while stopping: stop it at once
            self._send_stop(slot)

    def _ports(self) -> list[int | None]:
        return [slot.port for slot in self.slots]

    def _read_reports(self, slot: WorkerProcess) -> None:
        while slot.report is not None:
            try:
                if not slot.report.poll():
                    return
                message = slot.report.recv()
            except (EOFError, OSError):
                return
            if isinstance(message, tuple) and message[0] == "listening":
                slot.port = int(message[1])

    def _read_notifications(self, slot: WorkerProcess, now: float) -> None:
        while True:
            try:
                datagram = slot.notify.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for line in datagram.decode("utf-8", "replace").splitlines():
                key, _, value = line.partition("=")
                if key == "READY" and value == "1":
                    slot.ready, slot.last_ping = True, now
                    log.info("process.ready", process=slot.index)
                elif key == "WATCHDOG" and value == "1":
                    slot.last_ping = now
                elif key == "STATUS":
                    self.notifier.notify(f"STATUS=process {slot.index}: {value}")
                elif key == "EXTEND_TIMEOUT_USEC" and not self.ready_sent:
                    self.notifier.notify(line)

    def _exited(self, slot: WorkerProcess, now: float) -> None:
        assert slot.process is not None
        code = slot.process.exitcode
        pid = slot.process.pid
        slot.process.join(timeout=0)
        slot.process = None
        for conn in (slot.stop, slot.report):
            if conn is not None:
                conn.close()
        slot.stop = slot.report = None
        slot.port = None
        with contextlib.suppress(ValueError):
            self.pids.remove(pid or -1)
        was_ready, slot.ready = slot.ready, False
        if self.stopping.is_set() or (self.drain and code == 0):
            slot.done = True
            log.info("process.exited", process=slot.index, pid=pid, exit_code=code)
            return
        if not was_ready:
            self._fail(
                f"worker process {slot.index} exited with {code} before it was ready (see its last lines)"
            )
            slot.done = True
            return
        while slot.restarts and now - slot.restarts[0] > RESTART_WINDOW_SECONDS:
            slot.restarts.popleft()
        if len(slot.restarts) >= RESTART_LIMIT:
            self._fail(
                f"worker process {slot.index} exited {RESTART_LIMIT + 1} times within "
                f"{RESTART_WINDOW_SECONDS:.0f} s (last exit code {code})"
            )
            slot.done = True
            return
        slot.restarts.append(now)
        slot.restart_at = now + RESTART_DELAY_SECONDS
        self.restarted.inc()
        log.error(
            "process.crashed",
            process=slot.index,
            pid=pid,
            exit_code=code,
            restart_in_s=RESTART_DELAY_SECONDS,
            note="its claimed jobs go back to the queue when their leases expire",
        )

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("process.failed", reason=reason)
        self.stopping.set()

    def _stop_all(self, now: float) -> None:
        if not self.stop_sent:
            self.stop_sent = True
            self.signals.log_received()
            self.notifier.notify("STOPPING=1", "STATUS=stopping every worker process")
            self.stop_deadline = now + self.settings.worker.shutdown_timeout + STOP_GRACE_SECONDS
            for slot in self.slots:
                slot.restart_at = None
                if slot.process is None:
                    slot.done = True
                else:
                    self._send_stop(slot)
        elif self.stop_deadline is not None and now > self.stop_deadline:
            for slot in self.slots:
                if slot.process is not None and slot.process.exitcode is None:
                    log.error("process.killed", process=slot.index, pid=slot.process.pid)
                    slot.process.kill()
            self.stop_deadline = None

    def _send_stop(self, slot: WorkerProcess) -> None:
        if slot.stop is not None:
            with contextlib.suppress(OSError):
                slot.stop.send("stop")

    def _notify_systemd(self, now: float) -> None:
        if not self.ready_sent and all(slot.ready for slot in self.slots):
            self.ready_sent = True
            self.notifier.notify(
                "READY=1",
                f"STATUS=delivering: {self.count} processes, {self.settings.worker.threads} threads in all",
            )
            log.info("processes.ready", processes=self.count)
        if self.ping_every is None or not self.ready_sent or now - self.last_ping < self.ping_every:
            return
        # A ready process pings every ping_every; one silent for two of them (WatchdogSec) is wedged.
        if all(not slot.ready or now - slot.last_ping <= 2 * self.ping_every for slot in self.slots):
            self.last_ping = now
            self.notifier.notify("WATCHDOG=1")


def run_processes(
    settings: Settings, *, drain: bool = False, environment: ProcessEnvironment | None = None
) -> int:
    """Run ``[worker] processes`` worker processes until a signal (or, with drain, until all have
    drained); the exit code of ``run``. Raises CannotListen when the port cannot be bound."""
    supervisor = Supervisor(
        settings, drain=drain, environment=environment or ProcessEnvironment.read(os.environ)
    )
    return supervisor.run()
