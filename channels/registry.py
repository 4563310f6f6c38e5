"""The one place that maps a ``channel_type`` to the module that delivers it."""

from __future__ import annotations

from collections.abc import Callable

from channels.base import Channel
from channels.context import ChannelContext
from channels.email import EmailChannel
from channels.errors import PermanentError
from channels.http import HttpClient
from channels.mqtt import MqttChannel
from channels.netguard import AddressPolicy
from channels.pagerduty import PagerDutyChannel
from channels.settings import ChannelSettings
from channels.slack import SlackChannel
from channels.snmp import SnmpChannel
from channels.teams import TeamsChannel
from channels.webhook import WebhookChannel

# channel_type -> factory. Aliases share one instance (see build_registry).
FACTORIES: dict[str, Callable[[ChannelContext], Channel]] = {
    "slack": SlackChannel,
    "pagerduty": PagerDutyChannel,
    "teams": TeamsChannel,
    "webhook": WebhookChannel,
    "email": EmailChannel,
    "mqtt": MqttChannel,
    "snmp": SnmpChannel,
}
ALIASES = {"http": "webhook"}


class UnknownChannelType(PermanentError):
    """Raised when a job names a channel type this worker cannot deliver."""


class ChannelRegistry:
    """Channel instances built once per worker, shared by all threads, closed at shutdown."""

    def __init__(self, context: ChannelContext) -> None:
        self.context = context
        self._channels = {name: factory(context) for name, factory in FACTORIES.items()}

    @property
    def types(self) -> list[str]:
        return sorted([*self._channels, *ALIASES])

    def get(self, channel_type: str) -> Channel:
        name = ALIASES.get(channel_type, channel_type)
        try:
            return self._channels[name]
        except KeyError:
            known = ", ".join(self.types)
            raise UnknownChannelType(f"unknown channel type {channel_type!r} (supported: {known})") from None

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self.context.http.close()


def build_registry(settings: ChannelSettings, *, pool_size: int = 16) -> ChannelRegistry:
    """Every channel, sharing one HTTP client sized for ``pool_size`` concurrent sends."""
    http = HttpClient(
        connect_timeout=settings.http.connect_timeout,
        read_timeout=settings.http.read_timeout,
        user_agent=settings.http.user_agent,
        pool_size=pool_size,
        ca_file=settings.tls.ca_file,
        policy=AddressPolicy(settings.http.allow_private_networks, settings.http.allowed_networks),
    )
    return ChannelRegistry(ChannelContext(settings=settings, http=http))
