"""The two ways a delivery can fail. Senders raise these; the retry policy is the only reader.

A sender never decides how long to wait or whether the job has attempts left: it only says whether
the failure is worth trying again (TransientError) or never will succeed as configured
(PermanentError), and optionally what the receiver asked for (``retry_after``).
"""

from __future__ import annotations


class DeliveryError(Exception):
    """Raised when a delivery did not reach its destination."""

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status


class TransientError(DeliveryError):
    """Raised when the same delivery may succeed later: timeouts, refused connections, 408/429/5xx."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        slow: bool = False,
    ) -> None:
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after
        # A timeout already held its thread for the whole timeout: retrying it in-process would hold
        # the thread again and starve other destinations, so it goes straight to the durable backoff.
        self.slow = slow


class DeadlineExceeded(TransientError):
    """Raised when an attempt ran past its wall-clock deadline; its connection has been closed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, slow=True)


class PermanentError(DeliveryError):
    """Raised when retrying cannot help: a rejected request (4xx) or a delivery that cannot be built."""


class InvalidChannelConfig(PermanentError):
    """Raised when a channel's or integration's config is missing a key or holds a bad value."""


class InvalidPayload(PermanentError):
    """Raised when a job's payload is not an alert object that can be rendered."""


class BlockedAddress(PermanentError):
    """Raised when a destination resolves to an address the SSRF guard refuses (channels/netguard.py)."""
