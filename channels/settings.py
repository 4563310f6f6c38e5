"""The settings channels read, declared here so ``channels/`` never depends on the worker's config.

``delivery_worker.config`` parses the INI file into these same dataclasses; a channel only sees the
sections it needs, through ``ChannelSettings``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float
    read_timeout: float
    user_agent: str
    allow_private_networks: bool
    allowed_networks: tuple[IPNetwork, ...]


@dataclass(frozen=True)
class TlsSettings:
    ca_file: str  # empty: the system trust store


@dataclass(frozen=True)
class PagerDutySettings:
    events_url: str


@dataclass(frozen=True)
class SmtpSettings:
    timeout: float
    # The sender of email channels and integrations that name none (see docs/email.md).
    from_address: str = ""  # empty: delivery-worker@<this host's fully qualified name>
    from_name: str = "Pulse Alerts"  # empty: no display name


@dataclass(frozen=True)
class SnmpSettings:
    timeout: float
    retries: int
    max_engines: int = 64  # pysnmp engines (one per v3 engine_id) kept at most
    engine_idle_seconds: float = 600.0  # an engine unused this long is closed


@dataclass(frozen=True)
class MqttSettings:
    connect_timeout: float
    publish_timeout: float
    keepalive: int
    max_connections: int = 32  # broker connections (one per broker + credentials) kept at most
    connection_idle_seconds: float = 60.0  # a connection unused this long is closed


class ChannelSettings(Protocol):
    """The sections of the worker's settings that channels read (the worker's ``Settings`` fits)."""

    @property
    def http(self) -> HttpSettings: ...

    @property
    def tls(self) -> TlsSettings: ...

    @property
    def pagerduty(self) -> PagerDutySettings: ...

    @property
    def smtp(self) -> SmtpSettings: ...

    @property
    def snmp(self) -> SnmpSettings: ...

    @property
    def mqtt(self) -> MqttSettings: ...
