"""The poll loop: claim what the free threads can take, hand it to the pool, record what finished.

The poller's thread is the only one that talks to the database (one connection); worker threads
only deliver and put their ``Outcome`` on a queue. That split means a finished delivery is never
lost to a database hiccup: outcomes wait in memory until they are written, and the loop reconnects
with backoff while jobs keep running.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from psycopg2.extensions import cursor

from channels.errors import TransientError
from delivery_worker.config import Settings
from delivery_worker.db import Connection, DatabaseRejected, DatabaseUnavailable, connect, transaction
from delivery_worker.delivery import Deliverer
from delivery_worker.digest import DigestPlanner, Task
from delivery_worker.jobs import Job, Outcome
from delivery_worker.listener import NotificationListener
from delivery_worker.observer import Observers, PollObserver
from delivery_worker.queues import JobQueue

log = structlog.get_logger("delivery_worker.poller")

REAP_INTERVAL_SECONDS = 5.0
RECONNECT_MIN_SECONDS = 0.5


@dataclass
class Running:
    job: Job
    started_at: datetime
    submitted_at: float  # monotonic
    warned: bool = False
    task: str = ""  # the first job's key: the jobs of one digest share one thread


RECONNECT_MAX_SECONDS = 15.0


class Poller:
    def __init__(
        self,
        settings: Settings,
        queues: Sequence[JobQueue],
        deliverer: Deliverer,
        stopping: threading.Event,
        observer: PollObserver | None = None,
    ) -> None:
        self.settings = settings
        self.observer: PollObserver = observer or Observers()
        self.queues = list(queues)
        self.deliverer = deliverer
        self.stopping = stopping
        self.wake = threading.Event()
        self.threads = settings.worker.threads
        self.finished: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self.unrecorded: list[Outcome] = []
        self.in_flight: dict[str, Running] = {}
        self.stop_deadline: float | None = None
        self.next_reap = 0.0
        self.conn: Connection | None = None
        self.outage_since: float | None = None
        self.reconnect_delay = RECONNECT_MIN_SECONDS
        self.cycle = 0
        self.digests = DigestPlanner(settings, deliverer.registry, self.queues)

    # --- the loop --------------------------------------------------------------------------------

    def run(self, *, drain: bool = False) -> int:
        """Poll until stopped (or, with drain, until nothing is due and nothing is in flight).

        Returns how many jobs were still running when ``shutdown_timeout`` ran out; their threads
        are abandoned (the caller should exit the process) and the jobs are already put back.
        """
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="deliver")
        listener_stop = threading.Event()
        if not drain:
            NotificationListener(self.settings.database.dsn, self.wake, listener_stop).start()
        abandoned = 0
        try:
            while True:
                self.wake.clear()
                self._collect_finished()
                claimed = self._record_and_claim()
                for task in claimed:
                    self._submit(pool, task)
                self._warn_overdue()
                self.observer.poll_ticked(
                    database_ok=self.outage_since is None, in_flight=len(self.in_flight)
                )
                if self.stopping.is_set():
                    if self.stop_deadline is None:
                        self._begin_shutdown()
                    if not self.in_flight:
                        break
                    if time.monotonic() >= (self.stop_deadline or 0):
                        abandoned = self._abandon_in_flight()
                        break
                elif drain and not claimed and not self.in_flight and self._idle():
                    break
                if not self._should_poll_again_now(claimed):
                    self.wake.wait(self._wait_seconds())
        finally:
            listener_stop.set()
            self.observer.stopping()
            self._flush_on_exit()
            pool.shutdown(wait=abandoned == 0, cancel_futures=True)
        return abandoned

    def _begin_shutdown(self) -> None:
        timeout = self.settings.worker.shutdown_timeout
        self.stop_deadline = time.monotonic() + timeout
        log.info("shutdown.started", in_flight=len(self.in_flight), timeout_s=timeout)

    def _abandon_in_flight(self) -> int:
        """Jobs still running at the shutdown deadline: count the attempt and put them back."""
        now = datetime.now(UTC)
        error = TransientError("worker shut down before the attempt finished")
        for running in self.in_flight.values():
            verdict, delay = self.deliverer.policy.decide(running.job.attempts, error)
            self.unrecorded.append(
                Outcome(
                    running.job, verdict, running.started_at, now, error=str(error), retry_delay_seconds=delay
                )
            )
        abandoned = len(self.in_flight)
        log.warning("shutdown.abandoned", jobs=sorted(self.in_flight), count=abandoned)
        self.in_flight.clear()
        return abandoned

    def _warn_overdue(self) -> None:
        limit = self.settings.worker.job_timeout_seconds
        now = time.monotonic()
        for key, running in self.in_flight.items():
            if not running.warned and now - running.submitted_at > limit:
                running.warned = True
                log.warning("job.overdue", job=key, running_s=round(now - running.submitted_at, 1))

    def _should_poll_again_now(self, claimed: list[Task]) -> bool:
        """A full claim means more may be waiting; claim again at once if threads are free."""
        full = sum(len(task) for task in claimed) >= self.settings.worker.batch_size
        return bool(claimed) and full and self._threads_busy() < self.threads

    def _wait_seconds(self) -> float:
        wait = self.reconnect_delay if self.outage_since is not None else self.settings.worker.poll_interval
        if self.stop_deadline is not None:
            wait = max(0.0, min(wait, self.stop_deadline - time.monotonic()))
        return wait

    def _idle(self) -> bool:
        return self.outage_since is None and not self.unrecorded

    # --- executing -------------------------------------------------------------------------------

    def _submit(self, pool: ThreadPoolExecutor, task: Task) -> None:
        future = pool.submit(self.deliverer.run_task, task)
        for job in task:
            self.in_flight[job.key] = Running(job, datetime.now(UTC), time.monotonic(), task=task[0].key)
        future.add_done_callback(self._on_done)

    def _on_done(self, future: Future[list[Outcome]]) -> None:
        for outcome in future.result():
            self.finished.put(outcome)
        self.wake.set()

    def _threads_busy(self) -> int:
        """Tasks running: a digest's jobs all run on one thread."""
        return len({running.task for running in self.in_flight.values()})

    def _collect_finished(self) -> None:
        while True:
            try:
                outcome = self.finished.get_nowait()
            except queue.Empty:
                break
            if self.in_flight.pop(outcome.job.key, None) is not None:
                self.unrecorded.append(outcome)  # else it was abandoned and already put back

    # --- database --------------------------------------------------------------------------------

    def _record_and_claim(self, *, claim: bool = True) -> list[Task]:
        """One transaction per cycle: write finished outcomes, take back expired leases, and
        (unless stopping) claim up to the free capacity. The outcomes stay in memory until it
        commits."""
        if not self._ensure_connection():
            return []
        assert self.conn is not None
        outcomes = list(self.unrecorded)
        claimed: list[Task] = []
        try:
            with transaction(self.conn) as cur:
                self._write(cur, outcomes)
                self._reap_expired_leases(cur)
                free = self.threads - self._threads_busy()
                if claim and free > 0 and not self.stopping.is_set():
                    claimed = self.digests.plan(cur, self._claim(cur, free))
        except DatabaseRejected as exc:
            if not outcomes:
                self._lost_connection(str(exc))
                return []
            self._record_one_by_one(exc)
            return []
        except DatabaseUnavailable as exc:
            self._lost_connection(str(exc))
            return []
        self._recorded(outcomes)
        if claimed:
            self.observer.jobs_claimed([job for task in claimed for job in task])
        return claimed

    def _write(self, cur: cursor, outcomes: list[Outcome]) -> None:
        for job_queue in self.queues:
            mine = [o for o in outcomes if o.job.table is job_queue.table]
            if mine:
                job_queue.record(cur, mine)

    def _recorded(self, outcomes: list[Outcome]) -> None:
        """Forget outcomes that are now committed."""
        if not outcomes:
            return
        done = {id(o) for o in outcomes}
        self.unrecorded = [o for o in self.unrecorded if id(o) not in done]
        self.observer.outcomes_recorded(outcomes)

    def _record_one_by_one(self, error: DatabaseRejected) -> None:
        """One bad outcome must not hold back the rest: write them one by one and drop what is
        still refused (those jobs stay PROCESSING and are reclaimed when their lease ends)."""
        assert self.conn is not None
        log.error("outcomes.rejected", error=str(error), count=len(self.unrecorded))
        for outcome in list(self.unrecorded):
            try:
                with transaction(self.conn) as cur:
                    self._write(cur, [outcome])
            except DatabaseRejected as single:
                log.error("outcome.dropped", job=outcome.job.key, error=str(single))
                self.unrecorded.remove(outcome)
                continue
            self._recorded([outcome])

    def _reap_expired_leases(self, cur: cursor) -> None:
        now = time.monotonic()
        if now < self.next_reap:
            return
        self.next_reap = now + min(REAP_INTERVAL_SECONDS, self.settings.worker.lease_seconds / 2)
        for job_queue in self.queues:
            reclaimed = job_queue.reap(cur)
            if reclaimed:
                log.warning("jobs.reclaimed", table=job_queue.table.value, count=reclaimed)

    def _claim(self, cur: cursor, free: int) -> list[Job]:
        """Claim for each table in turn, starting with a different one each cycle.

        Each table first gets an equal share of the free threads; what one leaves unused goes to
        the others. A flood in one table therefore never delays the other by more than one batch.
        """
        self.cycle += 1
        start = self.cycle % len(self.queues)
        order = self.queues[start:] + self.queues[:start]
        batch = self.settings.worker.batch_size
        share = max(1, free // len(order))
        claimed: list[Job] = []
        hungry: list[JobQueue] = []
        for job_queue in order:
            limit = min(batch, share, free - len(claimed))
            if limit <= 0:
                break
            jobs = job_queue.claim(cur, limit)
            claimed.extend(jobs)
            if len(jobs) == limit:
                hungry.append(job_queue)
        for job_queue in hungry:
            limit = min(batch, free - len(claimed))
            if limit <= 0:
                break
            claimed.extend(job_queue.claim(cur, limit))
        return claimed

    def _ensure_connection(self) -> bool:
        if self.conn is not None and not self.conn.closed:
            return True
        try:
            self.conn = connect(self.settings.database.dsn)
        except DatabaseUnavailable as exc:
            self._lost_connection(str(exc))
            return False
        if self.outage_since is not None:
            log.info(
                "database.recovered",
                outage_s=round(time.monotonic() - self.outage_since, 1),
                pending_outcomes=len(self.unrecorded),
            )
        self.outage_since = None
        self.reconnect_delay = RECONNECT_MIN_SECONDS
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

    def _flush_on_exit(self) -> None:
        """Record the last outcomes; keep trying briefly if the database is down at that moment."""
        self._collect_finished()
        deadline = time.monotonic() + 10
        while self.unrecorded and time.monotonic() < deadline:
            self._record_and_claim(claim=False)
            if self.unrecorded:
                time.sleep(self.reconnect_delay)
        if self.unrecorded:
            log.error("shutdown.outcomes_unrecorded", count=len(self.unrecorded))
        if self.conn is not None:
            self.conn.close()
