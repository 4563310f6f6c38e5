"""The poll loop: claim what the free threads can take, hand it to the pool, record what finished.

The poller's thread is the only one that talks to the database (one connection); worker threads
only deliver and put their ``Outcome`` on a queue. That split means a finished delivery is never
lost to a database hiccup: outcomes wait in memory until they are written, the leases of their jobs
renewed meanwhile, and the loop reconnects with backoff while jobs keep running.

Each cycle is one transaction: write outcomes, renew leases (the heartbeat), reap expired leases of
other workers' jobs, claim. Each step runs in a savepoint, so a refused statement costs only its step.
Shutdown always ends within ``shutdown_timeout``; what could not be written goes to the spool.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
import structlog
from psycopg2.extensions import cursor

from channels.errors import TransientError
from delivery_worker.claim_ahead import ClaimAhead
from delivery_worker.claims import Claims
from delivery_worker.config import Settings
from delivery_worker.db import (
    CONNECT_TIMEOUT_SECONDS,
    Connection,
    DatabaseRejected,
    DatabaseUnavailable,
    connect,
    transaction,
)
from delivery_worker.delivery import Deliverer
from delivery_worker.digest import DigestPlanner, Task
from delivery_worker.heartbeat import Heartbeat
from delivery_worker.jobs import Job, Outcome, Verdict
from delivery_worker.listener import NotificationListener
from delivery_worker.logs import write_held_log_lines
from delivery_worker.observer import Observers, PollObserver
from delivery_worker.queues import JobQueue
from delivery_worker.queues.claim_order import running_by_destination
from delivery_worker.reaping import Reaper
from delivery_worker.recording import OutcomeWriter, Unwritten, WriteReport
from delivery_worker.savepoint import Refused, savepoint
from delivery_worker.spool import Spool, SpooledOutcome, resolve_state_dir

log = structlog.get_logger("delivery_worker.poller")

OVERDUE_GRACE_SECONDS = 5.0  # past the attempt deadline before a running job is logged as overdue

RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 15.0
# Of shutdown_timeout, the last part is kept for writing outcomes (in-flight jobs are given up at its
# start) and the very end for saving the spool.
FLUSH_RESERVE_SECONDS = 5.0
SPOOL_RESERVE_SECONDS = 1.0


@dataclass
class Running:
    """One job being delivered by a worker thread (a task covering several jobs has one per job)."""

    job: Job
    started_at: datetime
    submitted_at: float  # monotonic
    warned: bool = False
    task: str = ""  # the first job's key: the jobs of one digest share one thread


@dataclass(frozen=True)
class ShutdownTimes:
    """Monotonic times, from the stop signal: in-flight jobs may finish until ``finish_by``, outcomes
    are written until ``flush_by``, and what is left is spooled before ``stop_deadline``."""

    finish_by: float
    flush_by: float
    stop_deadline: float

    @classmethod
    def starting_now(cls, timeout: float) -> ShutdownTimes:
        now = time.monotonic()
        spool = min(SPOOL_RESERVE_SECONDS, timeout * 0.1)
        flush = min(FLUSH_RESERVE_SECONDS, timeout * 0.3)
        return cls(
            finish_by=now + timeout - flush, flush_by=now + timeout - spool, stop_deadline=now + timeout
        )


class Poller:
    def __init__(
        self,
        settings: Settings,
        queues: Sequence[JobQueue],
        deliverer: Deliverer,
        stopping: threading.Event,
        observer: PollObserver | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.settings = settings
        self.observer: PollObserver = observer or Observers()
        self.queues = list(queues)
        self.deliverer = deliverer
        self.stopping = stopping
        self.wake = threading.Event()
        self.threads = settings.worker.threads
        self.ahead = ClaimAhead(self.threads, settings.worker.batch_size)  # tasks claimed beyond threads
        self.finished: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.in_flight: dict[str, Running] = {}  # by job key: never two deliveries of one job
        self.claims = Claims(settings.worker.lease_seconds)  # running or unwritten, by job key
        self.unwritten: dict[str, Unwritten] = {}  # by job key
        self.writer = OutcomeWriter(self.queues, self.claims)
        self.heartbeat = Heartbeat(self.queues, self.claims, settings.worker.lease_seconds)
        self.reaper = Reaper(self.queues, self.claims, settings.worker.lease_seconds)
        self.spool = spool or Spool(resolve_state_dir(settings.worker.state_dir))
        self.spooled: list[SpooledOutcome] = []  # read at start, not yet matched to this database
        self.other_databases: list[SpooledOutcome] = []  # spooled for another database: kept as is
        self.replaying = False  # spooled outcomes are written before anything is reaped or claimed
        self.database_name: str | None = None
        self.shutdown: ShutdownTimes | None = None
        self.shutdown_lock = threading.Lock()
        self.exited = threading.Event()
        self.conn: Connection | None = None
        self.outage_since: float | None = None
        self.reconnect_delay = RECONNECT_MIN_SECONDS
        self.cycle = 0
        self.saw_due = False  # the last claim's cycle found due jobs (see _cycle)
        self.digests = DigestPlanner(settings, deliverer.registry, self.queues)

    # --- the loop --------------------------------------------------------------------------------

    def run(self, *, drain: bool = False) -> int:
        """Poll until stopped (or, with drain, until nothing is due, in flight or unwritten).

        Returns how many jobs were still running when ``shutdown_timeout`` ran out; their threads
        are abandoned (the caller should exit the process) and the jobs are already put back.
        """
        self.spooled = self.spool.take()
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="deliver")
        listener_stop = threading.Event()
        if not drain:
            NotificationListener(self.settings.database.dsn, self.wake, listener_stop).start()
        threading.Thread(target=self._watch_shutdown, name="shutdown-watch", daemon=True).start()
        abandoned = 0
        try:
            while True:
                self.wake.clear()
                self._collect_finished()
                claimed = self._cycle(claim=True)
                for task in claimed:
                    self._submit(pool, task)
                self._warn_overdue()
                self.observer.poll_ticked(
                    database_ok=self.outage_since is None, in_flight=len(self.in_flight)
                )
                write_held_log_lines()
                if self.stopping.is_set():
                    times = self._shutdown_times()
                    if not self.in_flight:
                        break
                    if time.monotonic() >= times.finish_by:
                        abandoned = self._abandon_in_flight()
                        break
                elif drain and not claimed and not self.in_flight and self._idle() and not self.saw_due:
                    break
                if not self._should_poll_again_now(claimed):
                    self.wake.wait(self._wait_seconds())
        finally:
            listener_stop.set()
            self.observer.stopping()
            self._flush_on_exit()
            self.exited.set()
            pool.shutdown(wait=abandoned == 0, cancel_futures=True)
        return abandoned

    def _shutdown_times(self) -> ShutdownTimes:
        """Fixed once, when the stop (or the end of a drain) is first seen, by the loop or the watcher."""
        with self.shutdown_lock:
            if self.shutdown is None:
                timeout = self.settings.worker.shutdown_timeout
                self.shutdown = ShutdownTimes.starting_now(timeout)
                if self.stopping.is_set():
                    log.info("shutdown.started", in_flight=len(self.in_flight), timeout_s=timeout)
            return self.shutdown

    def _watch_shutdown(self) -> None:
        """The loop may be blocked in a database call when the stop comes: at ``flush_by`` this thread
        cuts the database connection, so the call fails at once and the loop spools and exits."""
        while not self.stopping.wait(0.25):
            if self.exited.is_set():
                return
        times = self._shutdown_times()
        if not self.exited.wait(max(0.0, times.flush_by - time.monotonic())):
            log.warning("shutdown.database_cut", unwritten=len(self.unwritten))
            self._cut_connection()

    def _cut_connection(self) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        with (
            contextlib.suppress(OSError, psycopg2.Error),
            socket.socket(fileno=os.dup(conn.fileno())) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)

    def _abandon_in_flight(self) -> int:
        """Jobs still running when shutdown must move on: count the attempt and put them back."""
        now = datetime.now(UTC)
        error = TransientError("worker shut down before the attempt finished")
        for key, running in self.in_flight.items():
            verdict, delay = self.deliverer.policy.decide(running.job.attempts, error)
            outcome = Outcome(
                running.job, verdict, running.started_at, now, error=str(error), retry_delay_seconds=delay
            )
            self.unwritten[key] = Unwritten(outcome)
        abandoned = len(self.in_flight)
        log.warning("shutdown.abandoned", jobs=sorted(self.in_flight), count=abandoned)
        self.in_flight.clear()
        return abandoned

    def _warn_overdue(self) -> None:
        """A job still running well past its attempt deadline: its thread is stuck somewhere the
        deadline does not reach (it should never happen; the log line says where to look)."""
        limit = self.settings.worker.job_timeout_seconds + OVERDUE_GRACE_SECONDS
        now = time.monotonic()
        for key, running in self.in_flight.items():
            if not running.warned and now - running.submitted_at > limit:
                running.warned = True
                log.warning(
                    "job.overdue",
                    job=key,
                    **running.job.log_fields(),
                    running_s=round(now - running.submitted_at, 1),
                )

    def _should_poll_again_now(self, claimed: list[Task]) -> bool:
        """A full claim means more may be waiting; claim again at once if threads are free."""
        full = sum(len(task) for task in claimed) >= self.settings.worker.batch_size
        return bool(claimed) and full and self._threads_busy() < self.threads + self.ahead.tasks

    def _wait_seconds(self) -> float:
        wait = self.reconnect_delay if self.outage_since is not None else self.settings.worker.poll_interval
        renewal = self.heartbeat.seconds_to_next()
        if renewal is not None and self.outage_since is None:
            wait = min(wait, renewal)
        if self.shutdown is not None:
            wait = max(0.0, min(wait, self.shutdown.finish_by - time.monotonic()))
        return wait

    def _idle(self) -> bool:
        return self.outage_since is None and not self.unwritten and not self.replaying and not self.spooled

    # --- executing -------------------------------------------------------------------------------

    def _submit(self, pool: ThreadPoolExecutor, task: Task) -> None:
        """One job alone, or several of one destination as one digest (delivery_worker/digest.py)."""
        jobs: list[Job] = []
        for job in task:
            if job.key in self.claims:
                # Its lease was lost and it came back to this worker, which still runs it or has its
                # outcome to write: take the new claim over instead of sending it a second time.
                log.warning("job.claimed_again", job=job.key, **job.log_fields(), attempt=job.attempt)
                self.claims.hold(job)
            else:
                jobs.append(job)
        if len(jobs) == 1:
            job = jobs[0]
            self._start(pool, jobs, lambda: self.deliverer.run(job))
        elif jobs:
            self._start(pool, jobs, lambda: self.deliverer.run_digest(jobs))

    def _threads_busy(self) -> int:
        """Tasks running: a digest's jobs all run on one thread."""
        return len({running.task for running in self.in_flight.values()})

    def _start(
        self, pool: ThreadPoolExecutor, jobs: list[Job], task: Callable[[], Outcome | list[Outcome]]
    ) -> None:
        """Run ``task`` in a worker thread; it returns the outcome of each of ``jobs``."""
        started, submitted = datetime.now(UTC), time.monotonic()
        for job in jobs:
            self.in_flight[job.key] = Running(job, started, submitted, task=jobs[0].key)
            self.claims.hold(job)
        future = pool.submit(task)
        future.add_done_callback(lambda done: self._on_done(done, jobs))

    def _on_done(self, future: Future[Outcome | list[Outcome]], jobs: list[Job]) -> None:
        try:
            result = future.result()
        except BaseException as exc:  # a bug past the job boundary: the jobs are retried, not lost
            log.error("task.crashed", jobs=[j.key for j in jobs], error=f"{type(exc).__name__}: {exc}")
            now = datetime.now(UTC)
            error = TransientError(f"internal error: {type(exc).__name__}")
            result = []
            for job in jobs:
                verdict, delay = self.deliverer.policy.decide(job.attempts, error)
                result.append(Outcome(job, verdict, now, now, error=str(error), retry_delay_seconds=delay))
        for outcome in result if isinstance(result, list) else [result]:
            self.finished.put(outcome)
        self.wake.set()

    def _collect_finished(self) -> None:
        while True:
            try:
                outcome = self.finished.get_nowait()
            except queue.Empty:
                break
            if self.in_flight.pop(outcome.job.key, None) is not None:
                self.unwritten[outcome.job.key] = Unwritten(outcome)
                if outcome.verdict is not Verdict.DEFERRED:
                    self.ahead.job_took((outcome.finished_at - outcome.started_at).total_seconds())
            # else it was abandoned at shutdown and its put-back outcome is already waiting

    # --- database --------------------------------------------------------------------------------

    def _cycle(self, *, claim: bool) -> list[Task]:
        """One transaction: write due outcomes, renew leases, take back expired leases and (unless
        stopping, or still replaying the spool) claim up to the free capacity. Nothing is forgotten
        or believed until it commits."""
        if not self._ensure_connection():
            return []
        assert self.conn is not None
        started = time.monotonic()
        due = [u for u in self.unwritten.values() if u.next_try <= started]
        claimed: list[Task] = []
        try:
            with transaction(self.conn) as cur:
                self.heartbeat.resync(cur)
                report = self.writer.write(cur, due)
                renewals = self.heartbeat.renew(cur, skip=report.done_keys)
                if not self.replaying:
                    self.reaper.reap_if_due(cur)
                    free = self.threads + self.ahead.tasks - self._threads_busy()
                    if claim and free > 0 and not self.stopping.is_set():
                        claimed = self._claim_in_savepoint(cur, free)
                        # An empty claim is not proof that nothing is due (another worker may have
                        # held every candidate row): --drain ends only when none is.
                        self.saw_due = bool(claimed) or any(q.has_due(cur) for q in self.queues)
        except (DatabaseUnavailable, DatabaseRejected) as exc:
            self.heartbeat.broke_off()
            self._lost_connection(str(exc))
            return []
        self._written(report)
        self.heartbeat.committed(renewals, started)
        self.ahead.cycle_took(time.monotonic() - started)
        if self.replaying:
            self._replayed(report)
        if claimed:
            self.observer.jobs_claimed([job for task in claimed for job in task])
        return claimed

    def _written(self, report: WriteReport) -> None:
        """Forget outcomes that are now committed, or that can no longer be written."""
        for outcome in report.written + report.superseded:
            self.unwritten.pop(outcome.job.key, None)
            self.claims.release(outcome.job.key)
        for outcome in report.superseded:
            log.warning(
                "outcome.superseded",
                job=outcome.job.key,
                **outcome.job.log_fields(),
                verdict=outcome.verdict.value,
                reason="the job is no longer held under this worker's claim (reaped, or already written)",
            )
        if report.written:
            self.observer.outcomes_recorded(report.written)

    def _claim_in_savepoint(self, cur: cursor, free: int) -> list[Task]:
        """A refused claim must not undo the outcomes and renewals written before it."""
        try:
            with savepoint(cur, "claim"):
                return self.digests.plan(cur, self._claim(cur, free))
        except Refused as exc:
            log.error("claim.refused", error=str(exc))
            return []

    def _claim(self, cur: cursor, free: int) -> list[Job]:
        """Claim for each table in turn, starting with a different one each cycle.

        Each table first gets an equal share of the free threads; what one leaves unused goes to
        the others. A flood in one table therefore never delays the other by more than one batch.
        Each claim is told what this worker runs per destination (jobs claimed a moment ago
        included), so no destination exceeds ``max_in_flight_per_destination``.
        """
        self.cycle += 1
        start = self.cycle % len(self.queues)
        order = self.queues[start:] + self.queues[:start]
        batch = self.settings.worker.batch_size
        share = max(1, free // len(order))
        running = self._running_jobs()
        claimed: list[Job] = []
        hungry: list[JobQueue] = []
        for job_queue in order:
            limit = min(batch, share, free - len(claimed))
            if limit <= 0:
                break
            jobs = job_queue.claim(cur, limit, running_by_destination(running + claimed, job_queue.table))
            claimed.extend(jobs)
            if len(jobs) == limit:
                hungry.append(job_queue)
        for job_queue in hungry:
            limit = min(batch, free - len(claimed))
            if limit <= 0:
                break
            claimed.extend(
                job_queue.claim(cur, limit, running_by_destination(running + claimed, job_queue.table))
            )
        return claimed

    def _running_jobs(self) -> list[Job]:
        """The jobs this worker is running now (the one place that reads ``in_flight``'s shape)."""
        return [running.job for running in self.in_flight.values()]

    def _ensure_connection(self) -> bool:
        if self.conn is not None and not self.conn.closed:
            return True
        if self.shutdown is not None and time.monotonic() + CONNECT_TIMEOUT_SECONDS > self.shutdown.flush_by:
            return False  # a connection attempt could outlast the shutdown: spool instead
        try:
            self.conn = connect(self.settings.database.dsn)
        except DatabaseUnavailable as exc:
            self._lost_connection(str(exc))
            return False
        if self.outage_since is not None:
            log.info(
                "database.recovered",
                outage_s=round(time.monotonic() - self.outage_since, 1),
                pending_outcomes=len(self.unwritten),
            )
        self.outage_since = None
        self.reconnect_delay = RECONNECT_MIN_SECONDS
        self.database_name = self.conn.info.dbname
        self._adopt_spool()
        return True

    def _lost_connection(self, reason: str) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = None
        if self.outage_since is None:
            self.outage_since = time.monotonic()
            log.error("database.unavailable", error=reason, in_flight=len(self.in_flight))
        else:
            self.reconnect_delay = min(self.reconnect_delay * 2, RECONNECT_MAX_SECONDS)

    # --- the spool -------------------------------------------------------------------------------

    def _adopt_spool(self) -> None:
        """Once connected: the spooled outcomes of this database become unwritten outcomes, written
        before anything is reaped or claimed; those of another database are kept for it."""
        if not self.spooled:
            return
        for entry in self.spooled:
            if entry.database != self.database_name:
                self.other_databases.append(entry)
                continue
            job = entry.outcome.job
            self.claims.hold(job, renewed_at=float("-inf"))  # its lease may have run out meanwhile
            self.unwritten[job.key] = Unwritten(entry.outcome)
            self.replaying = True
        if self.other_databases:
            log.warning(
                "spool.other_database", outcomes=len(self.other_databases), database=self.database_name
            )
        self.spooled = []
        if not self.replaying:
            self.spool.save(self.other_databases)

    def _replayed(self, report: WriteReport) -> None:
        """The spool's first write committed: claiming may start. What the database still refuses stays
        unwritten (and in the spool file) and is retried like any other outcome."""
        self.replaying = False
        log.info(
            "spool.replayed",
            written=len(report.written),
            superseded=len(report.superseded),
            still_unwritten=len(self.unwritten),
        )
        self.spool.save(self._spool_entries())

    def _spool_entries(self) -> list[SpooledOutcome]:
        database = self.database_name or ""
        owed = [SpooledOutcome(database, self.claims.current(u.outcome)) for u in self.unwritten.values()]
        return self.other_databases + self.spooled + owed

    def _flush_on_exit(self) -> None:
        """Write the last outcomes until ``flush_by``; save whatever is still unwritten to the spool."""
        self._collect_finished()
        times = self._shutdown_times()
        while self.unwritten and time.monotonic() < times.flush_by:
            self._cycle(claim=False)
            if self.unwritten:
                next_try = min(u.next_try for u in self.unwritten.values())
                pause = max(
                    self.reconnect_delay if self.outage_since is not None else 0.05,
                    next_try - time.monotonic(),
                )
                time.sleep(max(0.0, min(pause, times.flush_by - time.monotonic())))
        entries = self._spool_entries()
        if self.unwritten:
            log.error(
                "shutdown.outcomes_unwritten", count=len(self.unwritten), spool=str(self.spool.directory)
            )
        if entries or self.spool.owned:
            self.spool.save(entries)
        if self.conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self.conn.close()
