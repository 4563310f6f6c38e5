"""Running one job in a worker thread: resolve its channel, send with quick retries, decide the outcome.

This is the job boundary: every exception a job can raise ends here as an ``Outcome`` with a readable,
secret-free error, and one log line per job says what happened.

Each attempt gets one wall-clock deadline (``attempt_deadline``: now + ``[worker] job_timeout_seconds``)
carried by the ``Delivery``: channels cut their connection at it, quick retries never wait past it.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
import tenacity

from channels.alert import alert_from_payload, decode_payload
from channels.base import Channel, ChannelConfig, Delivery, Receipt
from channels.digest import Digest, DigestChannel, summarise
from channels.errors import DeliveryError, PermanentError, TransientError
from channels.registry import ChannelRegistry
from delivery_worker.destinations import Deferred, DestinationGuard
from delivery_worker.jobs import DeferralReason, Job, Outcome, Table, Verdict
from delivery_worker.redaction import LazySecrets, redact, redacted_error, secret_values
from delivery_worker.retry import RetryPolicy

log = structlog.get_logger("delivery_worker.delivery")

DEFAULT_MAX_LISTED = 10  # [digest] max_listed
NOT_FOUND = {Table.NOTIFICATION_JOBS: "Channel not found", Table.DELIVERY_JOBS: "Integration not found"}
DISABLED = {Table.NOTIFICATION_JOBS: "Channel disabled", Table.DELIVERY_JOBS: "Integration disabled"}


class QuickRetries:
    """Logs each quick retry of one attempt (tenacity's ``before_sleep``) and counts them for the
    ``quick_retries_total`` metric: one line per extra request, with the error and the wait."""

    def __init__(self, event: str, fields: Callable[[], dict[str, Any]], secrets: Iterable[str]) -> None:
        """``fields``: the ids the lines name, built only if a retry happens (not on every job)."""
        self.event = event
        self.fields = fields
        self.secrets = secrets
        self.count = 0

    def __call__(self, state: tenacity.RetryCallState) -> None:
        self.count += 1
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            self.event,
            **self.fields(),
            quick_retry=self.count,
            error=redact(str(error) or type(error).__name__, self.secrets) if error else None,
            wait_s=round(state.upcoming_sleep, 2),
        )


class Deliverer:
    """Thread-safe: one instance serves every worker thread."""

    def __init__(
        self,
        registry: ChannelRegistry,
        policy: RetryPolicy,
        stopping: threading.Event,
        guard: DestinationGuard,
        *,
        max_listed: int = DEFAULT_MAX_LISTED,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.stopping = stopping
        self.guard = guard
        self.max_listed = max_listed

    def run(self, job: Job) -> Outcome:
        started = datetime.now(UTC)
        if self.stopping.is_set():  # claimed but not started before shutdown: put back, uncounted
            log.info("job.released", **job.log_fields(), attempt=job.attempt)
            return Outcome(job, Verdict.DEFERRED, started, started, deferral=DeferralReason.SHUTDOWN)
        secrets = LazySecrets()
        receipt: Receipt | None = None
        error: DeliveryError | None = None
        retries = QuickRetries(
            "job.quick_retry", lambda: {**job.log_fields(), "attempt": job.attempt}, secrets
        )
        try:
            if job.destination is not None:
                secrets.add(functools.partial(secret_values, job.destination.config))
            receipt = self._deliver(job, secrets, retries)
        except Deferred as deferral:
            log.info(
                "job.deferred",
                **job.log_fields(),
                reason=str(deferral),
                retry_in_s=round(deferral.delay_seconds, 2),
            )
            return Outcome(
                job,
                Verdict.DEFERRED,
                started,
                datetime.now(UTC),
                retry_delay_seconds=deferral.delay_seconds,
                deferral=deferral.kind,
            )
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # the job boundary: an unexpected bug must not kill the worker
            # No traceback: its frames' text and the message may carry a secret; log the redacted message.
            detail = redacted_error(exc, secrets)
            log.error("job.internal_error", **job.log_fields(), error=detail)
            error = TransientError(f"internal error: {detail}")
        finished = datetime.now(UTC)
        outcome = self._outcome(job, started, finished, receipt, error, secrets)
        if retries.count:
            outcome = dataclasses.replace(outcome, quick_retries=retries.count)
        self._log(job, outcome)
        return outcome

    def _deliver(self, job: Job, secrets: LazySecrets, retries: QuickRetries) -> Receipt:
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
        secrets.add(config.secrets)
        payload = decode_payload(job.payload)
        alert = alert_from_payload(payload, tenant_id=job.tenant_id, alert_id=job.alert_id, event=job.event)
        delivery = Delivery(
            key=job.key,
            tenant_id=job.tenant_id,
            alert=alert,
            payload=payload,
            deadline=self.attempt_deadline(),
        )
        return self._through_guard(
            destination.channel_type,
            config.destination(),
            lambda: self._send_with_quick_retries(channel, config, delivery, retries),
            about=circuit_ids(job),
        )

    def _through_guard(
        self, kind: str, where: str, send: Callable[[], Receipt], *, about: dict[str, Any]
    ) -> Receipt:
        """``send`` once the destination's rate limit and circuit let it, telling them how it went.
        ``about``: the job's ids, named by a circuit.opened/closed line."""
        self.guard.admit(kind, where)
        try:
            receipt = send()
        except TransientError:
            self.guard.failed(kind, where, about)
            raise
        except PermanentError as exc:
            if exc.http_status is not None:  # it answered: the destination itself is up
                self.guard.succeeded(kind, where, about)
            else:  # nothing learned about the destination (e.g. a refused address)
                self.guard.inconclusive(where)
            raise
        except BaseException:
            self.guard.inconclusive(where)
            raise
        self.guard.succeeded(kind, where, about)
        return receipt

    def attempt_deadline(self) -> float:
        """The deadline of an attempt starting now; every kind of send (one job, a digest) uses it."""
        return self.policy.attempt_deadline()

    def _send_with_quick_retries(
        self, channel: Channel, config: ChannelConfig, delivery: Delivery, retries: QuickRetries
    ) -> Receipt:
        return self.policy.send_with_quick_retries(
            lambda: channel.send(config, delivery),
            self.stopping,
            deadline=delivery.deadline,
            before_retry=retries,
        )

    def _outcome(
        self,
        job: Job,
        started: datetime,
        finished: datetime,
        receipt: Receipt | None,
        error: DeliveryError | None,
        secrets: Iterable[str],
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
            **job.log_fields(),
            "attempt": job.attempt,
            "outcome": outcome.verdict.value,
            "duration_ms": outcome.latency_ms,
        }
        if outcome.http_status is not None:
            fields["http_status"] = outcome.http_status
        if outcome.quick_retries:
            fields["quick_retries"] = outcome.quick_retries
        if outcome.verdict is Verdict.COMPLETED:
            log.info("job.completed", **fields)
        elif outcome.verdict is Verdict.RETRY:
            fields["retry_in_s"] = outcome.retry_delay_seconds
            log.warning("job.retry_scheduled", **fields, error=outcome.error)
        elif outcome.verdict is Verdict.FAILED:
            log.error("job.failed", **fields, error=outcome.error)

    # --- storm digests (delivery_worker/digest.py) ---------------------------------------------------

    def run_task(self, jobs: Sequence[Job]) -> list[Outcome]:
        """What the poller submits: one job delivered alone, or several as one digest."""
        if len(jobs) == 1:
            return [self.run(jobs[0])]
        return self.run_digest(jobs)

    def run_digest(self, jobs: Sequence[Job]) -> list[Outcome]:
        """One summary message for jobs of one destination and tenant; one Outcome per job.

        The message takes one rate-limit slot. Accepted: every covered job COMPLETED. Refused or
        unreachable: each job gets its own verdict from the retry policy (its own attempts count).
        A job that cannot be part of the message (its payload unreadable, or the whole group when
        the channel config does not parse) is run alone, so it fails exactly as it always has."""
        try:
            plan = self._plan_digest(jobs)
        except Exception:  # the job boundary: a bug here must not lose the jobs; each runs alone
            log.exception(
                "digest.internal_error",
                job_ids=[job.job_id for job in jobs],
                alert_ids=[job.alert_id for job in jobs],
            )
            plan = None
        if plan is None:
            return [self.run(job) for job in jobs]
        channel, config, digest, covered, alone = plan
        outcomes = [self.run(job) for job in alone]
        if len(covered) < 2:
            return outcomes + [self.run(job) for job in covered]
        secrets = secret_values(covered[0].destination.config if covered[0].destination else None)
        secrets.update(config.secrets())
        return outcomes + self._send_digest(channel, config, digest, covered, secrets)

    def _plan_digest(
        self, jobs: Sequence[Job]
    ) -> tuple[DigestChannel, ChannelConfig, Digest, list[Job], list[Job]] | None:
        """(channel, config, digest, covered jobs, jobs to run alone), or None to run every job alone."""
        lead = jobs[0]
        destination = lead.destination
        if self.stopping.is_set() or destination is None:
            return None
        try:
            channel = self.registry.get(destination.channel_type)
            config = channel.parse_config(destination.config)
        except DeliveryError:
            return None  # each job then fails with the config's own error
        if not isinstance(channel, DigestChannel):
            return None
        covered: list[Job] = []
        alerts = []
        alone: list[Job] = []
        for job in jobs:
            try:
                if job.destination != destination or job.tenant_id != lead.tenant_id:
                    raise PermanentError("not this digest's destination")
                payload = decode_payload(job.payload)
            except DeliveryError:
                alone.append(job)
                continue
            covered.append(job)
            alerts.append(
                alert_from_payload(payload, tenant_id=job.tenant_id, alert_id=job.alert_id, event=job.event)
            )
        key = f"{lead.table}:{covered[0].job_id}+{len(covered) - 1}" if covered else lead.key
        digest = summarise(alerts, key=key, tenant_id=lead.tenant_id, max_listed=self.max_listed)
        digest = dataclasses.replace(digest, deadline=self.attempt_deadline())
        return channel, config, digest, covered, alone

    def _send_digest(
        self,
        channel: DigestChannel,
        config: ChannelConfig,
        digest: Digest,
        jobs: list[Job],
        secrets: set[str],
    ) -> list[Outcome]:
        started = datetime.now(UTC)
        kind = jobs[0].destination.channel_type if jobs[0].destination else ""
        receipt: Receipt | None = None
        error: DeliveryError | None = None
        retries = QuickRetries("digest.quick_retry", lambda: digest_fields(digest, jobs), secrets)
        try:
            receipt = self._through_guard(
                kind,
                config.destination(),
                lambda: self._send_digest_with_quick_retries(channel, config, digest, retries),
                about=circuit_ids(jobs[0]),
            )
        except Deferred as deferral:
            log.info(
                "digest.deferred",
                **digest_fields(digest, jobs),
                reason=str(deferral),
                retry_in_s=round(deferral.delay_seconds, 2),
            )
            now = datetime.now(UTC)
            return [
                Outcome(
                    job,
                    Verdict.DEFERRED,
                    started,
                    now,
                    retry_delay_seconds=deferral.delay_seconds,
                    deferral=deferral.kind,
                )
                for job in jobs
            ]
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # the job boundary: an unexpected bug must not kill the worker
            log.exception(
                "digest.internal_error",
                job_ids=[job.job_id for job in jobs],
                alert_ids=[job.alert_id for job in jobs],
            )
            error = TransientError(f"internal error: {type(exc).__name__}: {exc}")
        finished = datetime.now(UTC)
        outcomes = [self._outcome(job, started, finished, receipt, error, secrets) for job in jobs]
        if retries.count:  # one request per retry for the whole digest: counted on its first job
            outcomes[0] = dataclasses.replace(outcomes[0], quick_retries=retries.count)
        self._log_digest(digest, jobs, outcomes)
        return outcomes

    def _send_digest_with_quick_retries(
        self, channel: DigestChannel, config: ChannelConfig, digest: Digest, retries: QuickRetries
    ) -> Receipt:
        return self.policy.send_with_quick_retries(
            lambda: channel.send_digest(config, digest),
            self.stopping,
            deadline=digest.deadline,
            before_retry=retries,
        )

    def _log_digest(self, digest: Digest, jobs: list[Job], outcomes: list[Outcome]) -> None:
        """One line for the whole digest, naming every job it covered."""
        fields: dict[str, Any] = {
            **digest_fields(digest, jobs),
            "jobs": len(jobs),
            "listed": len(digest.listed),
            "duration_ms": outcomes[0].latency_ms,
        }
        if outcomes[0].http_status is not None:
            fields["http_status"] = outcomes[0].http_status
        if outcomes[0].quick_retries:
            fields["quick_retries"] = outcomes[0].quick_retries
        if all(o.verdict is Verdict.COMPLETED for o in outcomes):
            log.info("digest.sent", **fields)
            return
        verdicts = {
            v.value: sum(1 for o in outcomes if o.verdict is v) for v in (Verdict.RETRY, Verdict.FAILED)
        }
        log.warning("digest.failed", **fields, outcomes=verdicts, error=outcomes[0].error)


def circuit_ids(job: Job) -> dict[str, Any]:
    """What a circuit.opened/closed line names besides the destination's hash: the tenant and the
    channel or integration whose attempt opened or closed it."""
    fields = job.log_fields()
    return {key: fields[key] for key in ("tenant_id", "channel_id", "integration_id") if key in fields}


def digest_fields(digest: Digest, jobs: Sequence[Job]) -> dict[str, Any]:
    """What every digest line names: its key, the lead job's destination ids, every job and alert."""
    lead = jobs[0].log_fields()
    del lead["job_id"], lead["alert_id"]
    return {
        "digest": digest.key,
        **lead,
        "job_ids": [job.job_id for job in jobs],
        "alert_ids": [job.alert_id for job in jobs],
    }
