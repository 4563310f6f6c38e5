"""Prometheus metrics of one worker process, and the thread that samples the queues in the database.

``WorkerMetrics`` is a PollObserver: the poll loop tells it what it claimed and recorded, so the
counters cost nothing extra. What the queues hold (depth, age of the oldest due job, retry backlog,
recent FAILED jobs, the oldest PROCESSING job) comes from the database: ``QueueSampler`` reads it
every ``[metrics] queue_sample_seconds`` on a connection of its own, so a scrape never runs a query
and many scrapers cannot load the database. When a sample fails those gauges are withdrawn (not
frozen at their last values) and ``delivery_worker_queue_sample_up`` says 0.

Every labelled counter and histogram exists at 0 from the start for every known label value, so
``increase()`` sees the first event after a restart; no ``_created`` series. Labels are bounded on
purpose (docs/metrics.md): ``table``, ``channel_type`` (a type this worker does not know is counted
as ``other``, a deleted channel or integration as ``none``), ``outcome``, ``reason``; never tenant
ids, channel ids or payload text.
"""

from __future__ import annotations

import functools
import platform
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime

import psycopg2
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)

from delivery_worker import __version__
from delivery_worker.db import Connection, DatabaseRejected, DatabaseUnavailable, connect, transaction
from delivery_worker.jobs import DeferralReason, Job, Outcome, Table, Verdict

log = structlog.get_logger("delivery_worker.metrics")

# A ``_created`` series per counter doubles the exposition and no alert reads it.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Deliveries are network calls: from a fast webhook (~50 ms) to an attempt with quick retries (~30 s).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Created → delivered spans one poll (~1 s) to a day of retries (backoff_max_seconds is an hour).
LATENCY_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                   21600.0, 86400.0)  # fmt: skip
UNKNOWN_CHANNEL_TYPE = "other"
MISSING_CHANNEL_TYPE = "none"  # the job's channel or integration row does not exist
ATTEMPT_OUTCOMES = (Verdict.COMPLETED, Verdict.RETRY, Verdict.FAILED)
SAMPLE_STATEMENT_TIMEOUT_MS = 5_000
DEFAULT_FAILED_WINDOW_SECONDS = 900.0

# One statement per table (the name is a fixed identifier from Table, never input). Each part reads
# one partial index: PENDING rows (003_queue_indexes.sql), PROCESSING rows (004_job_leases.sql) and
# FAILED rows by updated_at (010_metrics_indexes.sql), so it stays cheap however many finished rows
# pile up. A PROCESSING row's updated_at is its claim time (lease renewals do not touch it).
QUEUE_SAMPLE = """
SELECT count(*) AS pending,
       count(*) FILTER (WHERE next_run_at <= now()) AS due,
       COALESCE(EXTRACT(EPOCH FROM now() - min(next_run_at) FILTER (WHERE next_run_at <= now())), 0)
           AS oldest_due_age_seconds,
       count(*) FILTER (WHERE attempts > 0) AS retry_backlog,
       (SELECT count(*) FROM {table}
        WHERE status = 'FAILED' AND updated_at >= now() - %(failed_window)s * interval '1 second')
           AS failed_recent,
       (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(updated_at)), 0) FROM {table}
        WHERE status = 'PROCESSING') AS oldest_processing_age_seconds
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
        self.build_info = Gauge(
            "delivery_worker_build_info",
            "Always 1; the labels say which worker version runs on which Python.",
            ["version", "python"],
            registry=r,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)
        self.claimed = Counter("delivery_worker_jobs_claimed", "Jobs claimed.", jobs, registry=r)
        self.completed = Counter("delivery_worker_jobs_completed", "Jobs delivered.", jobs, registry=r)
        self.retried = Counter(
            "delivery_worker_jobs_retried", "Failed attempts scheduled for a retry.", jobs, registry=r
        )
        self.failed = Counter("delivery_worker_jobs_failed", "Jobs marked FAILED.", jobs, registry=r)
        self.deferred = Counter(
            "delivery_worker_jobs_deferred",
            "Claimed jobs put back PENDING without an attempt, by reason (shutdown, rate_limited, "
            "circuit_open, destination_busy).",
            [*jobs, "reason"],
            registry=r,
        )
        self.quick_retries = Counter(
            "delivery_worker_quick_retries",
            "Extra requests made inside one attempt (quick retries after a transient error).",
            ["channel_type"],
            registry=r,
        )
        self.duration = Histogram(
            "delivery_worker_delivery_duration_seconds",
            "Time of one delivery attempt, quick retries included, by outcome (completed, retry, failed).",
            ["channel_type", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "delivery_worker_delivery_latency_seconds",
            "From the job's created_at to its delivery (COMPLETED jobs only), retries and waits included.",
            jobs,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("delivery_worker_jobs_in_flight", "Jobs being delivered now.", registry=r)
        self.database_up = Gauge(
            "delivery_worker_database_up", "1 if the poll loop's last database call worked.", registry=r
        )
        self.last_poll_timestamp = Gauge(
            "delivery_worker_last_poll_timestamp_seconds", "Unix time of the last poll loop tick.", registry=r
        )
        self.circuits_open = Gauge(
            "delivery_worker_circuits_open",
            "Destinations whose circuit breaker is open now (or waiting for a probe to close it).",
            ["channel_type"],
            registry=r,
        )
        self.queue = QueueGauges(r)
        self._initialise_series()

    def _initialise_series(self) -> None:
        """Every series at 0 for every known label value: a first failure after a restart is a change."""
        channel_types = [*sorted(self.known_channel_types), UNKNOWN_CHANNEL_TYPE, MISSING_CHANNEL_TYPE]
        for channel_type in channel_types:
            self.quick_retries.labels(channel_type=channel_type)
            for verdict in ATTEMPT_OUTCOMES:
                self.duration.labels(channel_type=channel_type, outcome=verdict.value)
            for table in Table:
                labels = {"table": table.value, "channel_type": channel_type}
                for counter in (self.claimed, self.completed, self.retried, self.failed):
                    counter.labels(**labels)
                for reason in DeferralReason:
                    self.deferred.labels(**labels, reason=reason.value)
                self.latency.labels(**labels)
        for channel_type in [*sorted(self.known_channel_types), UNKNOWN_CHANNEL_TYPE]:
            self.circuits_open.labels(channel_type=channel_type).set(0)

    def watch_circuits(self, open_circuits: Callable[[], Mapping[str, int]]) -> None:
        """Read ``delivery_worker_circuits_open`` from ``open_circuits`` (DestinationGuard) at each scrape."""
        known = self.known_channel_types

        def count(channel_type: str) -> float:
            counts = open_circuits()
            if channel_type != UNKNOWN_CHANNEL_TYPE:
                return float(counts.get(channel_type, 0))
            return float(sum(n for kind, n in counts.items() if kind not in known))

        for channel_type in [*sorted(known), UNKNOWN_CHANNEL_TYPE]:
            self.circuits_open.labels(channel_type=channel_type).set_function(
                functools.partial(count, channel_type)
            )

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
        }
        for outcome in outcomes:
            job = outcome.job
            table, channel_type = job.table.value, self._channel_type(job)
            if outcome.quick_retries:
                self.quick_retries.labels(channel_type=channel_type).inc(outcome.quick_retries)
            if outcome.verdict is Verdict.DEFERRED:  # never attempted: no duration to observe
                # A deferral read back from the spool has lost its reason: those are shutdown releases.
                reason = outcome.deferral or DeferralReason.SHUTDOWN
                self.deferred.labels(table=table, channel_type=channel_type, reason=reason.value).inc()
                continue
            counter = counters.get(outcome.verdict)
            if counter is None:
                continue
            counter.labels(table=table, channel_type=channel_type).inc()
            self.duration.labels(channel_type=channel_type, outcome=outcome.verdict.value).observe(
                outcome.latency_ms / 1000
            )
            if outcome.verdict is Verdict.COMPLETED and job.created_at is not None:
                self.latency.labels(table=table, channel_type=channel_type).observe(
                    since(job.created_at, outcome.finished_at)
                )

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


def since(created_at: datetime, delivered_at: datetime) -> float:
    """Seconds from ``created_at`` (the database's clock) to ``delivered_at`` (this host's); never
    negative, should the two clocks disagree."""
    return max(0.0, (delivered_at - created_at).total_seconds())


class QueueGauges:
    """The gauges QueueSampler sets from the database, per table. They exist only while the last
    sample worked: during an outage they are withdrawn, so Prometheus marks them stale instead of
    showing the last values as if nothing changed, and ``delivery_worker_queue_sample_up`` is 0."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.pending = Gauge(
            "delivery_worker_queue_pending_jobs",
            "PENDING jobs, due or scheduled later.",
            ["table"],
            registry=r,
        )
        self.due = Gauge(
            "delivery_worker_queue_due_jobs",
            "PENDING jobs whose next_run_at has passed.",
            ["table"],
            registry=r,
        )
        self.oldest_due_age = Gauge(
            "delivery_worker_queue_oldest_due_age_seconds",
            "How long the longest-waiting due PENDING job has been due (0 when none is).",
            ["table"],
            registry=r,
        )
        self.retry_backlog = Gauge(
            "delivery_worker_queue_retry_backlog_jobs",
            "PENDING jobs that already failed at least one attempt (attempts > 0).",
            ["table"],
            registry=r,
        )
        self.failed_recent = Gauge(
            "delivery_worker_queue_failed_recent_jobs",
            "Jobs that became FAILED within [metrics] failed_window_seconds (by updated_at).",
            ["table"],
            registry=r,
        )
        self.oldest_processing_age = Gauge(
            "delivery_worker_queue_oldest_processing_age_seconds",
            "Since when the longest-running PROCESSING job was claimed, by any worker (0 when none is).",
            ["table"],
            registry=r,
        )
        self.sample_up = Gauge(
            "delivery_worker_queue_sample_up",
            "1 when the last sample of the queues worked; 0 while the database cannot be read "
            "(the queue gauges are then not exported).",
            registry=r,
        )
        self.sampled_timestamp = Gauge(
            "delivery_worker_queue_sampled_timestamp_seconds",
            "Unix time the queue gauges were last sampled successfully.",
            registry=r,
        )

    @property
    def per_table(self) -> tuple[Gauge, ...]:
        return (
            self.pending,
            self.due,
            self.oldest_due_age,
            self.retry_backlog,
            self.failed_recent,
            self.oldest_processing_age,
        )

    def sampled(self, rows: Mapping[Table, Sequence[float]]) -> None:
        """One sample's values, in QUEUE_SAMPLE's column order, for every table."""
        for table, row in rows.items():
            for gauge, value in zip(self.per_table, row, strict=True):
                gauge.labels(table=table.value).set(float(value))
        self.sample_up.set(1)
        self.sampled_timestamp.set_to_current_time()

    def lost(self) -> None:
        for gauge in self.per_table:
            gauge.clear()
        self.sample_up.set(0)


class QueueSampler:
    """A daemon thread that samples the queues into ``metrics`` every ``interval`` seconds."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        dsn: str,
        interval: float,
        *,
        failed_window: float = DEFAULT_FAILED_WINDOW_SECONDS,
    ) -> None:
        self.metrics = metrics
        self.dsn = dsn
        self.interval = interval
        self.failed_window = failed_window
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
        """Read every table's gauges; False (the gauges withdrawn, a log line per outage) on failure."""
        try:
            conn = self._connection()
            with transaction(conn) as cur:
                rows = {}
                for table in Table:
                    cur.execute(QUEUE_SAMPLE.format(table=table.value), {"failed_window": self.failed_window})
                    row = cur.fetchone()
                    rows[table] = tuple(row) if row is not None else (0,) * 6
        except (DatabaseUnavailable, DatabaseRejected, psycopg2.Error) as exc:
            self.metrics.queue.lost()
            self._lost(str(exc).strip())
            return False
        self.metrics.queue.sampled(rows)
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
