"""What every channel module provides, and what it is given.

A channel turns one ``Delivery`` into bytes on the wire. It parses and validates its own config
(raising ``InvalidChannelConfig``), declares which config values are secrets (so they can be
scrubbed from every error), and raises ``TransientError`` or ``PermanentError`` on failure. It never
touches the database and never sleeps for a retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from channels.alert import Alert
from channels.deadline import time_left
from channels.errors import InvalidChannelConfig


@dataclass(frozen=True)
class Delivery:
    """One alert to deliver through one destination, whichever pipeline it came from."""

    key: str  # stable for the job across retries: "notification_jobs:42"
    tenant_id: str
    alert: Alert
    payload: Mapping[str, Any]  # the producer's payload, as the webhook body
    deadline: float | None = None  # time.monotonic() by which the whole attempt must have ended

    def time_left(self, limit: float) -> float:
        """Seconds the next network wait may take: ``limit``, cut to what is left before the deadline.

        Raises DeadlineExceeded once the deadline has passed, so a channel checks before each wait."""
        return time_left(self.deadline, limit)


class AttemptClock(Protocol):
    """What bounds one attempt's waits: a Delivery, or a storm digest."""

    @property
    def deadline(self) -> float | None: ...

    def time_left(self, limit: float) -> float: ...


@dataclass(frozen=True)
class Receipt:
    """What the destination answered on success."""

    http_status: int | None = None
    detail: str = ""


class ChannelConfig(Protocol):
    def secrets(self) -> tuple[str, ...]:
        """Config values that must never appear in logs or errors."""
        ...

    def destination(self) -> str:
        """Where deliveries go (a webhook URL, a broker, a routing key). Jobs with the same
        destination share one rate limit and one circuit breaker. May hold secrets: never logged."""
        ...


class Channel(Protocol):
    channel_type: str

    def parse_config(self, raw: Mapping[str, Any]) -> ChannelConfig: ...

    def send(self, config: Any, delivery: Delivery) -> Receipt: ...

    def close(self) -> None: ...


def require_str(raw: Mapping[str, Any], key: str, *, where: str = "config") -> str:
    """A non-empty string config value, or InvalidChannelConfig naming the key."""
    value = raw.get(key)
    if value is None or value == "":
        raise InvalidChannelConfig(f"{where}.{key} is missing")
    if not isinstance(value, str):
        raise InvalidChannelConfig(f"{where}.{key} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise InvalidChannelConfig(f"{where}.{key} contains a NUL byte")
    return value


def optional_str(raw: Mapping[str, Any], key: str, *, where: str = "config") -> str | None:
    if raw.get(key) in (None, ""):
        return None
    return require_str(raw, key, where=where)


def config_object(raw: Any, *, where: str = "config") -> Mapping[str, Any]:
    """The config as a mapping; a non-object config is a permanent error."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidChannelConfig(f"{where} must be a JSON object, got {type(raw).__name__}")
    return raw
