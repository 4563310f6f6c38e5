"""Storm digests, worker side: which claimed jobs travel together as one summary message.

After each claim the poller asks ``DigestPlanner.plan`` to turn the claimed jobs into tasks. Jobs for
a destination whose channel can summarise (``channels.digest.DigestChannel``) and that is rate
limited (``[rate_limits]`` > 0: Slack and Teams by default) are grouped by destination and tenant;
the group then takes that destination's other due jobs (``queues/companions.py``) in the same
transaction. A group larger than what the rate limit lets through in one second becomes ONE task:
one thread, one rate-limit slot, one message (``Deliverer.run_digest``). Every other job is a task
of its own, delivered as before.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg2.extensions import cursor

from channels.digest import DigestChannel
from channels.errors import PermanentError
from channels.registry import ChannelRegistry
from delivery_worker.config import Settings
from delivery_worker.jobs import Job, Table
from delivery_worker.queues import JobQueue
from delivery_worker.queues.companions import claim_companions
from delivery_worker.queues.status import LeasedQueue

Task = tuple[Job, ...]  # one job: a normal delivery; more: one digest covering them all


class DigestPlanner:
    """Runs on the poller's thread, inside the claim's transaction."""

    def __init__(self, settings: Settings, registry: ChannelRegistry, queues: Sequence[JobQueue]) -> None:
        self.digest = settings.digest
        self.rate_limits = settings.rate_limits
        self.registry = registry
        self.queues = {q.table: q for q in queues if isinstance(q, LeasedQueue)}

    def plan(self, cur: cursor, claimed: Sequence[Job]) -> list[Task]:
        """The claimed jobs as tasks, digests first filled up with their destination's companions."""
        if not self.digest.enabled:
            return [(job,) for job in claimed]
        tasks: list[Task] = []
        groups: dict[tuple[Table, str, str], list[Job]] = {}
        for job in claimed:
            if self._summarisable(job):
                assert job.destination is not None
                groups.setdefault((job.table, job.destination.destination_id, job.tenant_id), []).append(job)
            else:
                tasks.append((job,))
        for (table, _, _), jobs in groups.items():
            room = self.digest.max_jobs - len(jobs)
            if room > 0 and table in self.queues:
                jobs += claim_companions(cur, self.queues[table], jobs[0], room)
            tasks += self._split(jobs)
        return tasks

    def _summarisable(self, job: Job) -> bool:
        """A job that would reach a rate-limited destination whose channel can summarise.

        Jobs that will fail anyway (no channel, disabled, another tenant's) are left to fail alone."""
        destination = job.destination
        if destination is None or not destination.enabled or destination.tenant_id != job.tenant_id:
            return False
        if self.rate_limits.for_type(destination.channel_type) <= 0:
            return False
        try:
            channel = self.registry.get(destination.channel_type)
        except PermanentError:  # an unknown type fails in the Deliverer, with its message
            return False
        return isinstance(channel, DigestChannel)

    def _split(self, jobs: list[Job]) -> list[Task]:
        """One digest per ``max_jobs`` jobs when more wait than the limit lets through in a second;
        otherwise each job alone, as if there were no digests."""
        assert jobs[0].destination is not None
        per_second = max(1, int(self.rate_limits.for_type(jobs[0].destination.channel_type)))
        if len(jobs) <= per_second:
            return [(job,) for job in jobs]
        jobs = sorted(jobs, key=lambda job: job.job_id)
        size = self.digest.max_jobs
        return [tuple(jobs[i : i + size]) for i in range(0, len(jobs), size)]
