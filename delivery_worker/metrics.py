"""Prometheus metrics of one worker process, and the thread that samples queue depth.

``WorkerMetrics`` is a PollObserver: the poll loop tells it what it claimed and recorded, so the
counters cost nothing extra. Queue depth and the age of the oldest due job come from the database;
``QueueSampler`` reads them every ``[metrics] queue_sample_seconds`` on a connection of its own, so a
scrape never runs a query and many scrapers cannot load the database.

Labels are bounded on purpose: ``table`` and ``channel_type`` only (a channel type this worker does
not know is counted as ``other``), never tenant ids, channel ids or payload text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

import psycopg2
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from delivery_worker.db import Connection, DatabaseRejected, DatabaseUnavailable, connect, transaction
from delivery_worker.jobs import Job, Outcome, Table, Verdict

log = structlog.get_logger("delivery_worker.metrics")

# Deliveries are network calls: from a fast webhook (~50 ms) to an attempt with quick retries (~30 s).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNKNOWN_CHANNEL_TYPE = "other"
MISSING_CHANNEL_TYPE = "none"  # the job's channel or integration row does not exist
SAMPLE_STATEMENT_TIMEOUT_MS = 5_000

# One statement per table (the name is a fixed identifier from Table, never input). The partial
# index on PENDING rows (003_queue_indexes.sql) keeps it cheap however many finished rows pile up.
QUEUE_SAMPLE = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE next_run_at <= now()) AS due,
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_run_at) FILTER (WHERE next_run_at <= now())), 0)
           AS oldest_due_age_seconds
FROM {table}
WHERE status = 'PENDING'
"""


class WorkerMetrics:
    """The worker's metrics in a registry of their own (several can live in one test process)."""

    def __init__(
        self,
        channel_types: Iterable[str] = (),
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.known_channel_types = frozenset(channel_types)
        self.clock = clock
        self.started = clock()
        self.last_poll: float | None = None
        jobs = ["table", "channel_type"]
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, CPU seconds...
        self.claimed = Counter("delivery_worker_jobs_claimed", "Jobs claimed.", jobs, registry=r)
        self.completed = Counter("delivery_worker_jobs_completed", "Jobs delivered.", jobs, registry=r)
        self.retried = Counter(
            "delivery_worker_jobs_retried", "Failed attempts scheduled for a retry.", jobs, registry=r
        )
        self.failed = Counter("delivery_worker_jobs_failed", "Jobs marked FAILED.", jobs, registry=r)
        self.deferred = Counter(
            "delivery_worker_jobs_deferred",
            "Claimed jobs put back without an attempt (shutdown).",
            jobs,
            registry=r,
        )
        self.duration = Histogram(
            "delivery_worker_delivery_duration_seconds",
            "Time of one delivery attempt, quick retries included.",
            ["channel_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("delivery_worker_jobs_in_flight", "Jobs being delivered now.", registry=r)
        self.database_up = Gauge(
            "delivery_worker_database_up", "1 if the poll loop's last database call worked.", registry=r
        )
        self.last_poll_timestamp = Gauge(
            "delivery_worker_last_poll_timestamp_seconds", "Unix time of the last poll loop tick.", registry=r
        )
        self.queue_pending = Gauge(
            "delivery_worker_queue_pending_jobs",
            "PENDING jobs, due or scheduled later.",
            ["table"],
            registry=r,
        )
        self.queue_due = Gauge(
            "delivery_worker_queue_due_jobs",
            "PENDING jobs whose next_run_at has passed.",
            ["table"],
            registry=r,
        )
        self.queue_oldest_due_age = Gauge(
            "delivery_worker_queue_oldest_due_age_seconds",
            "How long the longest-waiting due PENDING job has been due (0 when none is).",
            ["table"],
            registry=r,
        )
        self.queue_sampled_timestamp = Gauge(
            "delivery_worker_queue_sampled_timestamp_seconds",
            "Unix time the queue gauges were last sampled.",
            registry=r,
        )
        for table in Table:  # export zeros before the first sample rather than no series at all
            for gauge in (self.queue_pending, self.queue_due, self.queue_oldest_due_age):
                gauge.labels(table=table.value)

    # --- PollObserver ----------------------------------------------------------------------------

    def poll_ticked(self, *, database_ok: bool, in_flight: int) -> None:
        self.last_poll = self.clock()
        self.last_poll_timestamp.set_to_current_time()
        self.in_flight.set(in_flight)
        self.database_up.set(1 if database_ok else 0)

    def jobs_claimed(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.claimed.labels(table=job.table.value, channel_type=self._channel_type(job)).inc()

    def outcomes_recorded(self, outcomes: Sequence[Outcome]) -> None:
        counters = {
            Verdict.COMPLETED: self.completed,
            Verdict.RETRY: self.retried,
            Verdict.FAILED: self.failed,
            Verdict.DEFERRED: self.deferred,
        }
        for outcome in outcomes:
            counter = counters.get(outcome.verdict)
            if counter is None:
                continue
            channel_type = self._channel_type(outcome.job)
            counter.labels(table=outcome.job.table.value, channel_type=channel_type).inc()
            if outcome.verdict is not Verdict.DEFERRED:  # never attempted: no duration to observe
                self.duration.labels(channel_type=channel_type).observe(outcome.latency_ms / 1000)

    def stopping(self) -> None:
        pass

    # --- for /healthz ----------------------------------------------------------------------------

    def last_poll_age(self) -> float:
        """Seconds since the loop last ticked (since start, before the first tick)."""
        return self.clock() - (self.last_poll if self.last_poll is not None else self.started)

    def _channel_type(self, job: Job) -> str:
        if job.destination is None:
            return MISSING_CHANNEL_TYPE
        kind = job.destination.channel_type
        return kind if kind in self.known_channel_types else UNKNOWN_CHANNEL_TYPE


class QueueSampler:
    """A daemon thread that samples queue depth into ``metrics`` every ``interval`` seconds."""

    def __init__(self, metrics: WorkerMetrics, dsn: str, interval: float) -> None:
        self.metrics = metrics
        self.dsn = dsn
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="queue-sampler", daemon=True)
        self._conn: Connection | None = None
        self._failing = False

    def start(self) -> QueueSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a daemon thread: never hold up shutdown for a slow sample
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sample_once()
                self._stop.wait(self.interval)
        finally:
            if self._conn is not None:
                self._conn.close()

    def sample_once(self) -> bool:
        """Read every table's depth into the gauges; False (and a log line per outage) on failure."""
        try:
            conn = self._connection()
            with transaction(conn) as cur:
                rows = {}
                for table in Table:
                    cur.execute(QUEUE_SAMPLE.format(table=table.value))
                    rows[table] = cur.fetchone()
        except (DatabaseUnavailable, DatabaseRejected, psycopg2.Error) as exc:
            self._lost(str(exc).strip())
            return False
        for table, row in rows.items():
            pending, due, age = row if row is not None else (0, 0, 0)
            self.metrics.queue_pending.labels(table=table.value).set(pending)
            self.metrics.queue_due.labels(table=table.value).set(due)
            self.metrics.queue_oldest_due_age.labels(table=table.value).set(float(age))
        self.metrics.queue_sampled_timestamp.set_to_current_time()
        if self._failing:
            self._failing = False
            log.info("metrics.queue_sample_recovered")
        return True

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
            with transaction(self._conn) as cur:
                cur.execute("SET statement_timeout = %s", (SAMPLE_STATEMENT_TIMEOUT_MS,))
        return self._conn

    def _lost(self, reason: str) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if not self._failing:
            self._failing = True
            log.warning("metrics.queue_sample_failed", error=reason)
