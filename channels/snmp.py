"""SNMP notifications: one SNMPv2c or SNMPv3 (USM) trap, or acknowledged inform, per alert event.

Config keys (``notification_channels.config``; the integrations pipeline passes ``snmp_host``,
``snmp_port``, ``snmp_oid_prefix`` and ``snmp_config`` merged into the same shape):

- ``host`` (required): receiver host name or IP address.
- ``port``: UDP port, default 162.
- ``version``: ``"2c"`` (default; ``"v2c"``, ``2``, ``"2"`` also accepted) or ``"3"`` (``"v3"``, ``3``).
- ``community``: v2c community string, default ``"public"``.
- ``username``: v3 USM user name (required for v3).
- ``auth_protocol``: v3 ``MD5``, ``SHA`` (SHA-1), ``SHA-224``, ``SHA-256``, ``SHA-384`` or ``SHA-512``
  (case and dashes do not matter: ``sha256`` works); default ``SHA`` when ``auth_password`` is set.
- ``auth_password``: v3 authentication pass phrase, at least 8 characters. Without both passwords the
  user is noAuthNoPriv; with ``auth_password`` only, authNoPriv; with both, authPriv.
- ``priv_protocol``: v3 ``AES`` (= ``AES-128``), ``AES-192``, ``AES-256`` (Blumenthal key extension, as
  Net-SNMP), ``AES-192-C``, ``AES-256-C`` (Reeder "Cisco" key extension), ``DES`` or ``3DES``; default
  ``AES`` when ``priv_password`` is set.
- ``priv_password``: v3 privacy pass phrase, at least 8 characters; requires ``auth_password``.
- ``engine_id``: v3, this sender's snmpEngineID in hex (5-32 octets, e.g. ``"0x80001f88045075736c6531"``).
  A v3 trap receiver must know the sender's engine ID (Net-SNMP snmptrapd:
  ``createUser -e <engine_id> <username> SHA <auth> AES <priv>``). Without it the worker uses an ID
  generated per process, which changes on every restart: set it for v3 traps. (Informs discover the
  receiver's engine ID and need no ``engine_id``.)
- ``oid_prefix``: the OID the notification layout (``channels/snmp_trap.py``) hangs under, default
  ``1.3.6.1.4.1.99999``; a dotted numeric OID under ``1.3.6.1`` (a leading dot is allowed).
- ``inform``: ``true`` sends an acknowledged InformRequest instead of a trap (see "Delivered" below).

Secrets (scrubbed from every error): ``community``, ``auth_password``, ``priv_password``.

The notification layout is in ``channels/snmp_trap.py`` (and ``channels/mibs/PULSE-ALERT-MIB.txt``).

"Delivered" means: for a trap (fire-and-forget UDP) that pysnmp built, secured and handed the datagram
to the operating system without error; nothing tells whether the receiver accepted it. For an inform,
that the receiver acknowledged it within ``[snmp] timeout`` seconds, retried ``[snmp] retries`` times.

Threads: pysnmp 7 is asyncio-only, so one daemon thread ("snmp-notifier", started on the first send)
runs an event loop that owns every pysnmp engine; ``send()`` hands it a coroutine and waits for the
result with a deadline, so any number of worker threads can send at once and none waits longer than
the deadline. ``close()`` stops the loop and joins the thread. Engines are pooled and bounded
(``[snmp] max_engines``, ``engine_idle_seconds``; see ``channels/snmp_engine.py``), and each attempt
ends by its ``Delivery.deadline``.

Host names are resolved once and every address of the answer must pass the outbound-address guard
(``channels/netguard.py``): a mixed public/private answer is refused. A trap counts as sent only if
its datagram left without a socket error (``channels/snmp_transport.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from pysnmp.carrier.error import CarrierError
from pysnmp.error import PySnmpError

from channels.base import Delivery, Receipt
from channels.context import ChannelContext
from channels.errors import DeliveryError, PermanentError, TransientError
from channels.snmp_config import SnmpConfig, parse_config, parse_oid_prefix
from channels.snmp_engine import SnmpNotifier
from channels.snmp_trap import (
    ALERT_CLEARED,
    ALERT_EVENT,
    DEFAULT_OID_PREFIX,
    OBJECT_COLUMNS,
    build_varbinds,
)

__all__ = [
    "ALERT_CLEARED",
    "ALERT_EVENT",
    "DEFAULT_OID_PREFIX",
    "OBJECT_COLUMNS",
    "SnmpChannel",
    "SnmpConfig",
    "parse_config",
    "parse_oid_prefix",
]


class SnmpChannel:
    channel_type = "snmp"

    def __init__(self, context: ChannelContext) -> None:
        self.settings = context.settings.snmp
        self.address_policy = context.address_policy
        self._lock = threading.Lock()
        self._notifier: SnmpNotifier | None = None
        self._closed = False

    def parse_config(self, raw: Mapping[str, Any]) -> SnmpConfig:
        return parse_config(raw)

    def send(self, config: SnmpConfig, delivery: Delivery) -> Receipt:
        varbinds = build_varbinds(delivery.alert, config.oid_prefix)
        try:
            detail = self.notifier().notify(config, varbinds, delivery.deadline)
        except DeliveryError as exc:
            raise type(exc)(_scrub(str(exc), config.secrets())) from None
        except CarrierError as exc:
            raise TransientError(
                _scrub(f"SNMP transport error to {config.target}: {exc}", config.secrets())
            ) from None
        except PySnmpError as exc:
            message = f"SNMP notification to {config.target} could not be built: {exc}"
            raise PermanentError(_scrub(message, config.secrets())) from None
        return Receipt(detail=detail)

    def notifier(self) -> SnmpNotifier:
        """The loop thread, started on first use."""
        with self._lock:
            if self._closed:
                raise TransientError("SNMP sender is shut down")
            if self._notifier is None:
                self._notifier = SnmpNotifier(
                    timeout=self.settings.timeout,
                    retries=self.settings.retries,
                    address_policy=self.address_policy,
                    max_engines=self.settings.max_engines,
                    engine_idle_seconds=self.settings.engine_idle_seconds,
                )
            return self._notifier

    def close(self) -> None:
        with self._lock:
            self._closed = True
            notifier, self._notifier = self._notifier, None
        if notifier is not None:
            notifier.close()


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message
