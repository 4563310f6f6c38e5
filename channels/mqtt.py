"""MQTT: the alert payload as compact JSON, published to a per-alert topic on the customer's broker.

Config (``notification_channels.config`` for ``mqtt``): ``topic`` (default ``pulse/alerts``, may hold
``{tenant_id}`` ``{site_id}`` ``{device_id}`` ``{alert_id}`` ``{alert_type}`` ``{severity}``), ``qos``
(0/1/2, default 1), ``retain`` (default false), ``broker_url`` (``mqtt://host:1883`` or
``mqtts://host:8883``), ``username``, ``password`` and ``tls_verify`` (default true; false accepts any
server certificate, for lab equipment only). The web UI's spelling ``broker_host`` / ``broker_port``
(+ ``tls`` / ``use_tls``) is mapped onto ``broker_url`` by ``normalise_config``; ``broker_url`` wins
when both are present. Parsing is in ``channels/mqtt_config.py``; what alert values may bring into a
topic, and which configured topics are refused, in ``channels/mqtt_topic.py``.

Delivery semantics: at QoS 1 and 2 a send succeeds only once the broker acknowledged the message
(PUBACK / PUBCOMP). At QoS 0 the broker never answers a PUBLISH, so a send succeeds once the message
was written and the broker then answered a PINGREQ on the same connection: it read the message and
did not drop the connection over it (it may still discard it, e.g. by ACL; QoS 0 cannot tell). A
connection lost before that answer is a transient failure without in-process quick retries
(``slow``): a broker that drops a connection over a message would drop every quick retry too. Every
wait is bounded by ``[mqtt] connect_timeout`` / ``publish_timeout`` and by the attempt's deadline
(``Delivery.deadline``, then DeadlineExceeded and the connection is closed).

Connections are pooled per (host, port, tls, username, password, tls_verify) and shared by all worker
threads, in a bounded idle-expiring pool (``channels/pool.py``): at most ``[mqtt] max_connections``
(32), each closed after ``connection_idle_seconds`` (60) unused or when the pool is full and it is
the least recently used; closing stops paho's thread and closes its sockets. A pooled client that
lost its connection is dropped and a new one is made on next use.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from channels.base import Delivery, Receipt
from channels.context import ChannelContext
from channels.errors import DeadlineExceeded, DeliveryError, PermanentError, TransientError
from channels.mqtt_config import MqttConfig, normalise_config, parse_config
from channels.mqtt_connection import BrokerConnection, connect, seconds_left
from channels.mqtt_topic import DEFAULT_TOPIC, render_topic, sanitise_topic_value
from channels.pool import BoundedPool

__all__ = [
    "DEFAULT_TOPIC",
    "MqttChannel",
    "MqttConfig",
    "encode_payload",
    "normalise_config",
    "render_topic",
    "sanitise_topic_value",
]

_WAIT_SLICE = 0.25  # seconds between checks that the connection is still up while waiting for an ack

PoolKey = tuple[str, int, bool, str | None, str | None, bool]


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of the producer's payload."""
    try:
        text = json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, default=str)
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \\u escape, still valid JSON
        return json.dumps(dict(payload), separators=(",", ":"), default=str).encode("ascii")


_LINK_DOWN = frozenset({MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_CONN_LOST})


def _lost(config: MqttConfig, what: str, detail: str) -> TransientError:
    """The connection went down before the broker confirmed the message. Slow: no in-process quick
    retry, since a broker that drops a connection over a message drops every quick retry too."""
    reason = f" ({detail})" if detail else ""
    return TransientError(
        f"MQTT broker {config.broker}: connection lost before the {what}: the broker may have refused"
        f" the message{reason}",
        slow=True,
    )


@dataclass
class _ConnectSlot:
    """Threads wanting a connection to one broker+credentials: one connects, the others wait for it
    and share its failure. Removed when nobody waits, so slots do not accumulate per key."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiters: int = 0
    failure: tuple[float, DeliveryError] | None = None


class MqttChannel:
    channel_type = "mqtt"

    def __init__(self, context: ChannelContext) -> None:
        self.settings = context.settings.mqtt
        self.address_policy = context.address_policy
        self.ca_file = context.settings.tls.ca_file or None
        self.connects = 0  # successful connections made, for tests and diagnostics
        self._lock = threading.Lock()
        self._pool: BoundedPool[PoolKey, BrokerConnection] = BoundedPool(
            name="mqtt-connections",
            max_size=self.settings.max_connections,
            idle_seconds=self.settings.connection_idle_seconds,
            close=lambda conn: conn.shutdown(0),
        )
        self._slots: dict[PoolKey, _ConnectSlot] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}

    def parse_config(self, raw: Mapping[str, Any]) -> MqttConfig:
        return parse_config(raw)

    # -- sending --

    def send(self, config: MqttConfig, delivery: Delivery) -> Receipt:
        topic = render_topic(config.topic, delivery.alert.placeholders())
        body = encode_payload(delivery.payload)
        conn = self._connection(config, delivery.deadline)
        try:
            mid = self._publish(conn, config, topic, body, delivery.deadline)
        finally:
            self._pool.give_back(config.pool_key, conn)
        what = "acknowledged" if config.qos else "sent"
        return Receipt(detail=f"{what} on {topic} (qos {config.qos}, mid {mid})")

    def _publish(
        self, conn: BrokerConnection, config: MqttConfig, topic: str, body: bytes, deadline: float | None
    ) -> int:
        try:
            info = conn.client.publish(topic, body, qos=config.qos, retain=config.retain)
        except ValueError as exc:  # invalid topic or a payload over the MQTT limit
            raise PermanentError(f"MQTT broker {config.broker}: cannot publish: {exc}") from None
        ack = "PUBCOMP" if config.qos == 2 else "PUBACK" if config.qos == 1 else "socket write"
        if info.rc in _LINK_DOWN:  # paho may already have written it: the broker may have dropped us over it
            self._discard(config, conn)
            raise _lost(config, ack, mqtt.error_string(info.rc))
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._discard(config, conn)
            raise TransientError(f"MQTT broker {config.broker}: publish failed: {mqtt.error_string(info.rc)}")
        self._wait(conn, config, deadline, ack, info.is_published, lambda left: info.wait_for_publish(left))
        if config.qos == 0:  # the broker never answers a QoS 0 PUBLISH: ask it something after it
            self._confirm_read(conn, config, deadline)
        return info.mid

    def _confirm_read(self, conn: BrokerConnection, config: MqttConfig, deadline: float | None) -> None:
        what = "PINGRESP after the message"
        ping = conn.ping()
        if ping is None:
            self._discard(config, conn)
            raise _lost(config, what, "")
        self._wait(
            conn,
            config,
            deadline,
            what,
            lambda: conn.answered(ping),
            lambda left: conn.wait_answer(ping, left),
        )

    def _wait(
        self,
        conn: BrokerConnection,
        config: MqttConfig,
        deadline: float | None,
        what: str,
        done: Callable[[], bool],
        wait_slice: Callable[[float], object],
    ) -> None:
        """Wait until ``done()`` within publish_timeout and the deadline, calling ``wait_slice`` for
        at most a slice at a time and checking in between that the connection is still up."""
        where = f"MQTT broker {config.broker}"
        timeout = self.settings.publish_timeout
        until = time.monotonic() + timeout
        while True:
            if done():  # checked first: an answer that came in time counts even at the deadline
                return
            try:
                left = seconds_left(deadline, until - time.monotonic())
            except DeadlineExceeded:
                self._discard(config, conn)
                raise DeadlineExceeded(f"{where}: attempt deadline reached waiting for the {what}") from None
            if left <= 0:
                break
            try:
                wait_slice(min(left, _WAIT_SLICE))
            except (RuntimeError, ValueError) as exc:  # paho failed the message: the link went down
                self._discard(config, conn)
                raise _lost(config, what, str(exc)) from None
            if done():
                return
            if conn.lost.is_set():
                self._discard(config, conn)
                raise _lost(config, what, "")
        # A broker that does not answer in time is treated as a broken link: start afresh.
        self._discard(config, conn)
        raise TransientError(f"{where}: no {what} within {timeout:g}s", slow=True)

    # -- the pool --

    def _connection(self, config: MqttConfig, deadline: float | None) -> BrokerConnection:
        key = config.pool_key
        asked_at = time.monotonic()
        conn = self._pool.take(key, usable=lambda pooled: pooled.alive)
        if conn is not None:
            return conn
        with self._connect_slot(key) as slot:
            # One thread per broker connects; the others wait (bounded) and share its result.
            wait = seconds_left(deadline, self._connect_bound())
            if not slot.lock.acquire(timeout=wait):
                if deadline is not None and time.monotonic() >= deadline:
                    raise DeadlineExceeded(f"MQTT broker {config.broker}: attempt deadline reached")
                raise TransientError(f"MQTT broker {config.broker}: timed out waiting for a connection")
            try:
                conn = self._pool.take(key, usable=lambda pooled: pooled.alive)
                if conn is not None:
                    return conn
                if slot.failure is not None and slot.failure[0] >= asked_at:
                    error = slot.failure[1]
                    raise type(error)(str(error))  # the attempt made while we waited just failed
                try:
                    conn = connect(
                        config,
                        settings=self.settings,
                        tls_context=self._tls_context(config.tls_verify) if config.tls else None,
                        address_policy=self.address_policy,
                        deadline=deadline,
                    )
                except DeliveryError as exc:
                    slot.failure = (time.monotonic(), exc)
                    raise
                slot.failure = None
                self._pool.put(key, conn)
                with self._lock:
                    self.connects += 1
                return conn
            finally:
                slot.lock.release()

    @contextlib.contextmanager
    def _connect_slot(self, key: PoolKey) -> Iterator[_ConnectSlot]:
        with self._lock:
            slot = self._slots.setdefault(key, _ConnectSlot())
            slot.waiters += 1
        try:
            yield slot
        finally:
            with self._lock:
                slot.waiters -= 1
                if slot.waiters == 0 and self._slots.get(key) is slot:
                    del self._slots[key]

    def _connect_bound(self) -> float:
        # TCP connect, TLS handshake and CONNACK are each bounded by connect_timeout.
        return 3 * self.settings.connect_timeout + 1

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        with self._lock:
            context = self._contexts.get(verify)
            if context is None:
                try:
                    context = ssl.create_default_context(cafile=self.ca_file)
                except (OSError, ssl.SSLError) as exc:
                    raise PermanentError(f"cannot load [tls] ca_file {self.ca_file}: {exc}") from None
                if not verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self._contexts[verify] = context
            return context

    def _discard(self, config: MqttConfig, conn: BrokerConnection) -> None:
        """Drop a broken client from the pool (if it is still there) and stop it without waiting."""
        self._pool.discard(config.pool_key, conn)

    def pool_size(self) -> int:
        return len(self._pool)

    def close(self) -> None:
        """Disconnect every pooled client and stop its network thread (in background). The channel
        stays usable: a later send connects afresh."""
        self._pool.clear()
