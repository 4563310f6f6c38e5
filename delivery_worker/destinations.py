"""Per-destination pacing, shared by all worker threads: a rate limit and a circuit breaker.

A destination is what a channel config names as ``destination()`` (a webhook URL, a broker, a
routing key), so two channels pointing at one Slack webhook share its limit. Both mechanisms
*defer* a job rather than fail it: the job goes back to PENDING for a while with its attempts
unchanged. State is per worker process. A destination (a URL may carry a secret) appears in logs only
as a short hash, beside the ids of the job whose attempt opened or closed its circuit.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from delivery_worker.config import CircuitBreakerSettings, RateLimitSettings
from delivery_worker.jobs import DeferralReason

log = structlog.get_logger("delivery_worker.destinations")

MAX_INLINE_WAIT_SECONDS = 1.0  # wait this long in the thread for a rate-limit slot; longer: defer
DEFER_JITTER_SECONDS = 0.25


class Deferred(Exception):
    """Raised when a job must wait for its destination; it goes back to the queue unattempted."""

    def __init__(self, delay_seconds: float, reason: str, kind: DeferralReason) -> None:
        super().__init__(reason)
        self.delay_seconds = delay_seconds
        self.kind = kind


def destination_label(destination: str) -> str:
    """A stable, non-reversible name for logs and metrics."""
    return hashlib.sha256(destination.encode()).hexdigest()[:12]


@dataclass
class _Circuit:
    channel_type: str
    failures: int = 0
    open_until: float = 0.0  # monotonic; 0 while closed
    probing: bool = False


class DestinationGuard:
    """Thread-safe: admit() before a send, then succeeded()/failed() with how it went."""

    def __init__(
        self,
        rate_limits: RateLimitSettings,
        breaker: CircuitBreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate_limits = rate_limits
        self.breaker = breaker
        self.clock = clock
        self.sleep = sleep
        self.lock = threading.Lock()
        self.next_slot: dict[str, float] = {}
        self.circuits: dict[str, _Circuit] = {}

    def admit(self, channel_type: str, destination: str) -> None:
        """Return when the job may send now; raise Deferred when it should wait in the queue."""
        self._check_circuit(channel_type, destination)
        self._take_slot(channel_type, destination)

    def _check_circuit(self, channel_type: str, destination: str) -> None:
        if self.breaker.failure_threshold <= 0:
            return
        with self.lock:
            circuit = self.circuits.get(destination)
            if circuit is None or circuit.open_until == 0.0:
                return
            remaining = circuit.open_until - self.clock()
            if remaining > 0 or circuit.probing:
                delay = max(remaining, 1.0) + random.uniform(0, DEFER_JITTER_SECONDS)  # noqa: S311
                raise Deferred(
                    delay, f"circuit open for this {channel_type} destination", DeferralReason.CIRCUIT_OPEN
                )
            circuit.probing = True  # this job is the probe; the others wait for its result

    def _take_slot(self, channel_type: str, destination: str) -> None:
        rate = self.rate_limits.for_type(channel_type)
        if rate <= 0:
            return
        interval = 1.0 / rate
        with self.lock:
            now = self.clock()
            slot = max(now, self.next_slot.get(destination, now))
            wait = slot - now
            if wait > MAX_INLINE_WAIT_SECONDS:
                # Not reserved: the job comes back around when the destination should be free.
                self._release_probe(destination)
                delay = wait + random.uniform(0, DEFER_JITTER_SECONDS)  # noqa: S311
                raise Deferred(delay, "rate limited", DeferralReason.RATE_LIMITED)
            self.next_slot[destination] = slot + interval
        if wait > 0:
            self.sleep(wait)

    def _release_probe(self, destination: str) -> None:
        circuit = self.circuits.get(destination)
        if circuit is not None:
            circuit.probing = False

    def inconclusive(self, destination: str) -> None:
        """An attempt that says nothing about the destination's health: let another job probe."""
        with self.lock:
            self._release_probe(destination)

    def open_circuits(self) -> dict[str, int]:
        """How many destinations of each channel type have an open circuit now (open, or past its
        cooldown and waiting for a probe to succeed): closed only by a successful attempt."""
        counts: dict[str, int] = {}
        with self.lock:
            for circuit in self.circuits.values():
                if circuit.open_until:
                    counts[circuit.channel_type] = counts.get(circuit.channel_type, 0) + 1
        return counts

    def succeeded(self, channel_type: str, destination: str, about: Mapping[str, Any] | None = None) -> None:
        """``about``: the ids of the job (channel or integration, tenant) for the circuit's log line."""
        with self.lock:
            circuit = self.circuits.pop(destination, None)
        if circuit is not None and circuit.open_until:
            log.info(
                "circuit.closed",
                channel_type=channel_type,
                destination=destination_label(destination),
                **(about or {}),
            )

    def failed(self, channel_type: str, destination: str, about: Mapping[str, Any] | None = None) -> None:
        """A failed attempt that says the destination is unwell (transient errors)."""
        threshold = self.breaker.failure_threshold
        if threshold <= 0:
            return
        with self.lock:
            circuit = self.circuits.setdefault(destination, _Circuit(channel_type))
            circuit.failures += 1
            was_probe = circuit.probing
            circuit.probing = False
            if circuit.failures < threshold and not was_probe:
                return
            circuit.open_until = self.clock() + self.breaker.cooldown_seconds
            failures = circuit.failures
        log.warning(
            "circuit.opened",
            channel_type=channel_type,
            destination=destination_label(destination),
            consecutive_failures=failures,
            cooldown_s=self.breaker.cooldown_seconds,
            **(about or {}),
        )
