"""The order in which both queues hand out due jobs (issues 11 and 12), as one SQL statement per table.

- **Severity first, without starvation.** A job's ``severity_rank`` (stored by migration 006's
  trigger from ``payload_json.severity``) orders due jobs, most severe first, equal ranks oldest-due
  first; a job due for longer than ``max_priority_wait_seconds`` ranks with the most severe.
- **Tenants interleaved.** One claim takes the best job of every tenant with due work, then each
  tenant's second best, and so on; a lone tenant still gets the whole claim (work-conserving).
- **An alert's events in order.** A job is not claimed while an earlier event's job (OPEN <
  ACKNOWLEDGED < CLOSED) for the same tenant, alert and destination is PENDING or PROCESSING. The
  check runs inside the claim, so it holds across workers: while the earlier job is open its row
  is visible as open to every claim.
- **A share per destination.** One channel or integration gets at most ``max_in_flight_per_destination``
  jobs running in this worker: a claim gives it that cap minus what this worker already runs there.
- **Paused destinations and tenants wait.** A destination whose channel, integration or tenant has a
  row in ``delivery_worker_pauses`` (`delivery-worker pause`) gets no room: its jobs stay PENDING,
  attempts unchanged, and are claimed as soon as the pause is lifted.

Why this shape (a loose index scan, a LATERAL per destination, a rank over a bounded candidate set)
rather than one ``ORDER BY`` over all due rows: the candidates read are at most min(cap, batch)
per destination with due work, each read from a partial index in order, so the cost follows the
number of busy destinations and never the number of due or finished rows (a 4,000-job flood costs
the same claim as 4 jobs). The walk over destinations visits PENDING index entries only, and skips
over a destination's not-yet-due entries (retry backoff) one by one: those are few.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg2.extensions import connection, cursor

from channels.alert import TOP_SEVERITY_RANK
from delivery_worker.jobs import Job, Table

# An alert's later event waits while an earlier one for the same destination is still open.
# OPEN has nothing before it, so it skips the lookup; the others probe the producers' unique
# constraint by its (tenant_id, alert_id) prefix: an alert's few jobs, at any history size.
_WAITS_FOR_EARLIER_EVENT = """(j.deliver_on_event = 'OPEN' OR NOT EXISTS (
                   SELECT 1 FROM {table} AS earlier
                   WHERE earlier.tenant_id = j.tenant_id AND earlier.alert_id = j.alert_id
                     AND earlier.{destination} = j.{destination}
                     AND earlier.status IN ('PENDING', 'PROCESSING')
                     AND array_position(ARRAY['OPEN', 'ACKNOWLEDGED', 'CLOSED'], earlier.deliver_on_event)
                         < array_position(ARRAY['OPEN', 'ACKNOWLEDGED', 'CLOSED'], j.deliver_on_event)))"""

# The due jobs of one destination ``r`` that may go now, with their effective rank.
_DUE_JOBS_OF_R = """SELECT j.job_id, j.tenant_id, j.next_run_at,
                    CASE WHEN j.next_run_at <= now() - %(max_wait)s * interval '1 second'
                         THEN %(top_rank)s ELSE j.severity_rank END AS rank
             FROM {table} AS j
             WHERE j.tenant_id = r.tenant_id AND j.{destination} = r.destination
               AND j.status = 'PENDING' AND j.next_run_at <= now()
               AND {waits_for_earlier_event}"""

# Every (tenant, destination) with due work, one index probe each (a loose index scan): the claim
# and the "anything due?" check both walk the queue this way.
DUE_DESTINATIONS = """destinations AS (
    (SELECT tenant_id, {destination} AS destination
     FROM {table}
     WHERE status = 'PENDING' AND next_run_at <= now()
     ORDER BY tenant_id, {destination}
     LIMIT 1)
    UNION ALL
    SELECT next.tenant_id, next.destination
    FROM destinations AS d
    CROSS JOIN LATERAL (
        SELECT tenant_id, {destination} AS destination
        FROM {table}
        WHERE status = 'PENDING' AND next_run_at <= now()
          AND (tenant_id, {destination}) > (d.tenant_id, d.destination)
        ORDER BY tenant_id, {destination}
        LIMIT 1
    ) AS next
)"""

# The common part of both tables' CLAIM: it ends with ``chosen``, the locked job ids in claim order.
ORDERED_CANDIDATES = (
    """
WITH RECURSIVE """
    + DUE_DESTINATIONS
    + """,
room AS (
    -- What each destination may still take: its cap minus what this worker runs there now.
    -- A paused destination or tenant (`delivery-worker pause`) takes nothing: its jobs wait, unspent.
    SELECT d.tenant_id, d.destination,
           GREATEST(LEAST(%(limit)s, %(cap)s - COALESCE(busy.running, 0)), 0) AS free
    FROM destinations AS d
    LEFT JOIN unnest(%(busy_keys)s::text[], %(busy_counts)s::int[]) AS busy (destination, running)
           ON busy.destination = d.destination::text
    WHERE {not_paused}
),
candidates AS (
    -- Each destination's best jobs: the union of its oldest and its most severe, each read in
    -- index order, ranked (a job due longer than max_wait ranks with the most severe), cut to its
    -- room. Its true best are always in that union: a job past the wait has only older (so also
    -- aged) jobs before it, and any other only jobs of a higher severity rank or aged ones.
    -- (Ordering by tenant and destination too, constant here, keeps the planner on the index that
    -- has them, even in a generic plan made when few destinations had work.)
    SELECT best.job_id, best.tenant_id, best.next_run_at, best.rank
    FROM room AS r
    CROSS JOIN LATERAL (
        SELECT job_id, tenant_id, next_run_at, rank
        FROM (
            ({due_jobs_of_r} ORDER BY j.tenant_id, j.{destination}, j.next_run_at, j.job_id LIMIT r.free)
            UNION
            ({due_jobs_of_r} ORDER BY j.severity_rank DESC, j.next_run_at, j.job_id LIMIT r.free)
        ) AS two_reads
        ORDER BY rank DESC, next_run_at, job_id
        LIMIT r.free
    ) AS best
    WHERE r.free > 0
),
ranked AS (
    -- turn 1 is each tenant's best job, turn 2 its second best...: tenants take turns. Twice the
    -- batch leaves room for rows another worker has locked; the bound also tells the planner that
    -- few rows follow, so it locks them through the primary key (not a scan of the table).
    SELECT job_id, rank, next_run_at, turn
    FROM (
        SELECT job_id, rank, next_run_at,
               row_number() OVER (PARTITION BY tenant_id ORDER BY rank DESC, next_run_at, job_id) AS turn
        FROM candidates
    ) AS turns
    ORDER BY turn, rank DESC, next_run_at, job_id
    LIMIT 2 * %(limit)s
),
chosen AS (
    -- Locked in claim order; rows another worker holds are skipped, the next candidates fill in.
    SELECT {chosen_columns}
    FROM ranked AS r
    JOIN {table} AS j ON j.job_id = r.job_id
    WHERE j.status = 'PENDING'
    ORDER BY r.turn, r.rank DESC, r.next_run_at, r.job_id
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
)
"""
)


def ordered_claim(table: Table, destination: str, chosen_columns: str, update: str) -> str:
    """The table's CLAIM: the ordered, locked ``chosen`` rows, then ``update`` (an UPDATE ... FROM chosen)."""
    waits = _WAITS_FOR_EARLIER_EVENT.format(table=table.value, destination=destination)
    due_jobs = _DUE_JOBS_OF_R.format(
        table=table.value, destination=destination, waits_for_earlier_event=waits
    )
    head = ORDERED_CANDIDATES.format(
        table=table.value,
        destination=destination,
        due_jobs_of_r=due_jobs,
        chosen_columns=chosen_columns,
        not_paused=not_paused(table, "d.tenant_id", "d.destination"),
    )
    return head + update


# Which pause (delivery_worker_pauses.scope) stops a table's destination; a tenant's pause stops both.
PAUSE_SCOPE = {Table.NOTIFICATION_JOBS: "channel", Table.DELIVERY_JOBS: "integration"}

# True unless the tenant or the destination is paused. NOT IN over an uncorrelated list is a hashed
# subplan: the few pause rows are read once per claim and each destination with due work costs one
# hash probe, before any of its jobs is read. (COALESCE: a NULL never matches, and is never paused.)
_NOT_PAUSED = """COALESCE({tenant}, '') NOT IN (
            SELECT target FROM delivery_worker_pauses WHERE scope = 'tenant')
      AND COALESCE({destination}::text, '') NOT IN (
            SELECT target FROM delivery_worker_pauses WHERE scope = '{scope}')"""


def not_paused(table: Table, tenant: str, destination: str) -> str:
    """The SQL condition "neither ``tenant`` nor ``destination`` (SQL expressions) is paused"."""
    return _NOT_PAUSED.format(scope=PAUSE_SCOPE[table], tenant=tenant, destination=destination)


# Whether a claim could find anything: some (tenant, destination) with due work that is not paused.
# It walks the destinations as the claim does (one index probe each) and stops at the first one
# not paused, so jobs waiting behind a pause cost one probe per paused destination, not per job.
_ANY_DUE_UNPAUSED = (
    """
WITH RECURSIVE """
    + DUE_DESTINATIONS
    + """
SELECT EXISTS (SELECT 1 FROM destinations AS d WHERE {not_paused})
"""
)


def any_due_unpaused(table: Table, destination: str) -> str:
    """The table's "is any job due that a claim may take?" statement (``run --drain`` ends on no)."""
    return _ANY_DUE_UNPAUSED.format(
        table=table.value,
        destination=destination,
        not_paused=not_paused(table, "d.tenant_id", "d.destination"),
    )


@dataclass(frozen=True)
class ClaimOrder:
    """The claim's two settings ([worker] max_priority_wait_seconds, max_in_flight_per_destination)."""

    max_priority_wait_seconds: float = 60.0
    max_in_flight_per_destination: int = 4  # already resolved: 0 in the config means all the worker holds


def destination_key(job: Job) -> str | None:
    """The channel or integration a job goes to, as the claim names it (None: it no longer exists)."""
    if job.destination is not None:
        return job.destination.destination_id
    return None if job.channel_id is None else str(job.channel_id)


def running_by_destination(jobs: Iterable[Job], table: Table) -> dict[str, int]:
    """How many of ``jobs`` (those this worker runs) go to each destination of ``table``."""
    keys = (destination_key(job) for job in jobs if job.table is table)
    return dict(Counter(key for key in keys if key is not None))


# The claim's parameters in the order of the prepared statement, with their types.
CLAIM_PARAMETERS = (
    ("limit", "int"),
    ("lease_seconds", "float8"),
    ("cap", "int"),
    ("busy_keys", "text[]"),
    ("busy_counts", "int[]"),
    ("max_wait", "float8"),
    ("top_rank", "int"),
)
# Planning this statement costs more than running it (~1-5 ms against ~1 ms), and its row estimates
# would start JIT compilation (~370 ms): one generic plan per connection, no JIT.
CLAIM_SESSION_SETTINGS = (
    "SELECT set_config('jit', 'off', true), set_config('plan_cache_mode', 'force_generic_plan', true)"
)
_statement_numbers = itertools.count(1)


class PreparedClaim:
    """A CLAIM statement PREPAREd once per connection (a prepared statement outlives a rollback;
    a new connection is a new object here, so it is prepared again)."""

    def __init__(self, claim_sql: str, table: Table) -> None:
        self.name = f"delivery_worker_claim_{table.value}_{next(_statement_numbers)}"
        positional = claim_sql
        for number, (name, _type) in enumerate(CLAIM_PARAMETERS, 1):
            positional = positional.replace(f"%({name})s", f"${number}")
        types = ", ".join(kind for _name, kind in CLAIM_PARAMETERS)
        self.prepare_sql = f"PREPARE {self.name} ({types}) AS {positional}"
        arguments = ", ".join(f"%({name})s::{kind}" for name, kind in CLAIM_PARAMETERS)
        # One round trip: the settings for this transaction, then the statement (whose rows it returns).
        self.execute_sql = f"{CLAIM_SESSION_SETTINGS}; EXECUTE {self.name} ({arguments})"
        self.prepared_on: weakref.WeakSet[connection] = weakref.WeakSet()

    def execute(self, cur: cursor, parameters: Mapping[str, Any]) -> None:
        if cur.connection not in self.prepared_on:
            cur.execute(self.prepare_sql)
            self.prepared_on.add(cur.connection)
        cur.execute(self.execute_sql, parameters)


class ClaimsInOrder:
    """The ``claim`` of both queues; mixed in before LeasedQueue, which supplies ``job_from_row``."""

    table: Table
    claim_sql: str
    any_due_sql: str  # any_due_unpaused(...)
    lease_seconds: float
    order: ClaimOrder

    @functools.cached_property
    def prepared_claim(self) -> PreparedClaim:
        return PreparedClaim(self.claim_sql, self.table)

    def claim(self, cur: cursor, limit: int, running: Mapping[str, int] | None = None) -> list[Job]:
        """Claim up to ``limit`` due jobs in claim order; ``running``: this worker's jobs per destination."""
        busy = dict(running or {})
        self.prepared_claim.execute(
            cur,
            {
                "limit": limit,
                "lease_seconds": self.lease_seconds,
                "cap": self.order.max_in_flight_per_destination,
                "busy_keys": list(busy),
                "busy_counts": list(busy.values()),
                "max_wait": self.order.max_priority_wait_seconds,
                "top_rank": TOP_SEVERITY_RANK,
            },
        )
        return [self.job_from_row(row) for row in cur.fetchall()]

    def has_due(self, cur: cursor) -> bool:
        """Whether any due PENDING job could be claimed now (claimable or not by this worker):
        jobs of a paused channel, integration or tenant do not count."""
        cur.execute(self.any_due_sql)
        row = cur.fetchone()
        return bool(row and row[0])

    def job_from_row(self, row: tuple[Any, ...]) -> Job:
        raise NotImplementedError
