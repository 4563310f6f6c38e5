"""What every channel is given when the registry is built: settings and the shared HTTP client."""

from __future__ import annotations

from dataclasses import dataclass

from channels.http import HttpClient
from channels.netguard import AddressPolicy
from channels.settings import ChannelSettings


@dataclass(frozen=True)
class ChannelContext:
    """Shared, thread-safe resources handed to every channel when the registry is built."""

    settings: ChannelSettings
    http: HttpClient

    @property
    def address_policy(self) -> AddressPolicy:
        """Which addresses tenant-written hosts may resolve to ([http] allow_private_networks and
        allowed_networks); HTTP, SMTP, MQTT and SNMP all use it."""
        http = self.settings.http
        return AddressPolicy(
            allow_private=http.allow_private_networks, allowed_networks=http.allowed_networks
        )
