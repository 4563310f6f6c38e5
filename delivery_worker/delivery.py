"""Running one job in a worker thread: resolve its channel, send with quick retries, decide the outcome.

This is the job boundary: every exception a job can raise ends here as an ``Outcome`` with a readable,
secret-free error, and one log line per job says what happened.

Each attempt gets one wall-clock deadline (``attempt_deadline``: now + ``[worker] job_timeout_seconds``)
carried by the ``Delivery``: channels cut their connection at it, quick retries never wait past it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import structlog

from channels.alert import alert_from_payload, decode_payload
from channels.base import Channel, ChannelConfig, Delivery, Receipt
from channels.errors import DeliveryError, PermanentError, TransientError
from channels.registry import ChannelRegistry
from delivery_worker.destinations import Deferred, DestinationGuard
from delivery_worker.jobs import Job, Outcome, Table, Verdict
from delivery_worker.redaction import redact, redacted_error, secret_values
from delivery_worker.retry import RetryPolicy

log = structlog.get_logger("delivery_worker.delivery")

NOT_FOUND = {Table.NOTIFICATION_JOBS: "Channel not found", Table.DELIVERY_JOBS: "Integration not found"}
DISABLED = {Table.NOTIFICATION_JOBS: "Channel disabled", Table.DELIVERY_JOBS: "Integration disabled"}


class Deliverer:
    """Thread-safe: one instance serves every worker thread."""

    def __init__(
        self,
        registry: ChannelRegistry,
        policy: RetryPolicy,
        stopping: threading.Event,
        guard: DestinationGuard,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.stopping = stopping
        self.guard = guard

    def run(self, job: Job) -> Outcome:
        started = datetime.now(UTC)
        if self.stopping.is_set():  # claimed but not started before shutdown: put back, uncounted
            log.info("job.released", job_id=job.job_id, table=job.table.value, attempt=job.attempt)
            return Outcome(job, Verdict.DEFERRED, started, started)
        secrets: set[str] = set()
        receipt: Receipt | None = None
        error: DeliveryError | None = None
        try:
            if job.destination is not None:
                secrets = secret_values(job.destination.config)
            receipt = self._deliver(job, secrets)
        except Deferred as deferral:
            log.info(
                "job.deferred",
                job_id=job.job_id,
                table=job.table.value,
                reason=str(deferral),
                retry_in_s=round(deferral.delay_seconds, 2),
            )
            return Outcome(
                job, Verdict.DEFERRED, started, datetime.now(UTC), retry_delay_seconds=deferral.delay_seconds
            )
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # the job boundary: an unexpected bug must not kill the worker
            # No traceback: its frames' text and the message may carry a secret; log the redacted message.
            detail = redacted_error(exc, secrets)
            log.error("job.internal_error", job_id=job.job_id, table=job.table.value, error=detail)
            error = TransientError(f"internal error: {detail}")
        finished = datetime.now(UTC)
        outcome = self._outcome(job, started, finished, receipt, error, secrets)
        self._log(job, outcome)
        return outcome

    def _deliver(self, job: Job, secrets: set[str]) -> Receipt:
        if job.unreadable is not None:  # a JSON column the claim could not read (queues/json_columns.py)
            raise PermanentError(job.unreadable)
        destination = job.destination
        if destination is None:
            raise PermanentError(NOT_FOUND[job.table])
        if destination.tenant_id != job.tenant_id:
            # A producer bug or a tampered row must never send one tenant's alert to another's channel.
            raise PermanentError("Channel belongs to another tenant")
        if not destination.enabled:
            raise PermanentError(DISABLED[job.table])
        channel = self.registry.get(destination.channel_type)
        config = channel.parse_config(destination.config)
        secrets.update(config.secrets())
        payload = decode_payload(job.payload)
        alert = alert_from_payload(payload, tenant_id=job.tenant_id, alert_id=job.alert_id, event=job.event)
        delivery = Delivery(
            key=job.key,
            tenant_id=job.tenant_id,
            alert=alert,
            payload=payload,
            deadline=self.attempt_deadline(),
        )
        kind, where = destination.channel_type, config.destination()
        self.guard.admit(kind, where)
        try:
            receipt = self._send_with_quick_retries(channel, config, delivery)
        except TransientError:
            self.guard.failed(kind, where)
            raise
        except PermanentError as exc:
            if exc.http_status is not None:  # it answered: the destination itself is up
                self.guard.succeeded(kind, where)
            else:  # nothing learned about the destination (e.g. a refused address)
                self.guard.inconclusive(where)
            raise
        except BaseException:
            self.guard.inconclusive(where)
            raise
        self.guard.succeeded(kind, where)
        return receipt

    def attempt_deadline(self) -> float:
        """The deadline of an attempt starting now; every kind of send (one job, a digest) uses it."""
        return self.policy.attempt_deadline()

    def _send_with_quick_retries(
        self, channel: Channel, config: ChannelConfig, delivery: Delivery
    ) -> Receipt:
        for attempt in self.policy.quick_retrying(self.stopping, deadline=delivery.deadline):
            with attempt:
                return channel.send(config, delivery)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _outcome(
        self,
        job: Job,
        started: datetime,
        finished: datetime,
        receipt: Receipt | None,
        error: DeliveryError | None,
        secrets: set[str],
    ) -> Outcome:
        if error is None:
            status = receipt.http_status if receipt else None
            return Outcome(job, Verdict.COMPLETED, started, finished, http_status=status)
        verdict, delay = self.policy.decide(job.attempts, error)
        message = redact(str(error) or type(error).__name__, secrets)
        return Outcome(
            job,
            verdict,
            started,
            finished,
            error=message,
            http_status=error.http_status,
            retry_delay_seconds=delay,
        )

    def _log(self, job: Job, outcome: Outcome) -> None:
        fields: dict[str, Any] = {
            "job_id": job.job_id,
            "table": job.table.value,
            "tenant_id": job.tenant_id,
            "channel_id": job.destination.destination_id if job.destination else job.channel_id,
            "channel_type": job.destination.channel_type if job.destination else None,
            "attempt": job.attempt,
            "outcome": outcome.verdict.value,
            "duration_ms": outcome.latency_ms,
        }
        if outcome.http_status is not None:
            fields["http_status"] = outcome.http_status
        if outcome.verdict is Verdict.COMPLETED:
            log.info("job.completed", **fields)
        elif outcome.verdict is Verdict.RETRY:
            fields["retry_in_s"] = outcome.retry_delay_seconds
            log.warning("job.retry_scheduled", **fields, error=outcome.error)
        elif outcome.verdict is Verdict.FAILED:
            log.error("job.failed", **fields, error=outcome.error)
