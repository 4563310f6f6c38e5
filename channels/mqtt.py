"""MQTT: the alert payload as compact JSON, published to a per-alert topic on the customer's broker.

Config (``notification_channels.config`` for ``mqtt``): ``topic`` (default ``pulse/alerts``, may hold
``{tenant_id}`` ``{site_id}`` ``{device_id}`` ``{alert_id}`` ``{alert_type}`` ``{severity}``), ``qos``
(0/1/2, default 1), ``retain`` (default false), ``broker_url`` (``mqtt://host:1883`` or
``mqtts://host:8883``), ``username``, ``password`` and ``tls_verify`` (default true; false accepts any
server certificate, for lab equipment only). The web UI's spelling ``broker_host`` / ``broker_port``
(+ ``tls`` / ``use_tls``) is mapped onto ``broker_url`` by ``normalise_config``; ``broker_url`` wins
when both are present.

Delivery semantics: at QoS 1 and 2 a send succeeds only once the broker acknowledged the message
(PUBACK / PUBCOMP); at QoS 0 once the message was written to the socket. Every wait is bounded by
``[mqtt] connect_timeout`` / ``publish_timeout``.

Connections are pooled per (host, port, tls, username, password, tls_verify) and shared by all worker
threads: paho's ``publish`` is thread-safe while its network loop runs in its own thread
(``loop_start``). A pooled client that lost its connection is dropped and a new one is made on next use.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets as _secrets
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from channels.base import Delivery, Receipt, config_object, optional_str
from channels.context import ChannelContext
from channels.errors import DeliveryError, InvalidChannelConfig, PermanentError, TransientError
from channels.netguard import check_host
from channels.templating import render

log = structlog.get_logger("channels.mqtt")

DEFAULT_TOPIC = "pulse/alerts"
DEFAULT_QOS = 1
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
MAX_TOPIC_BYTES = 65535
# CONNACK reasons that no retry can fix: bad user name or password (v3.1.1 code 4), not authorised (5).
CREDENTIAL_REASONS = frozenset({134, 135})
# Characters a placeholder value may not bring into a topic: level separator, wildcards, NUL.
_TOPIC_UNSAFE = str.maketrans(dict.fromkeys("/+#\x00", "_"))
_WAIT_SLICE = 0.25  # seconds between checks that the connection is still up while waiting for an ack

_client_numbers = itertools.count(1)
_PROCESS_TOKEN = _secrets.token_hex(3)  # PIDs repeat across containers; the broker kicks duplicate ids


def _new_client_id() -> str:
    return f"delivery-worker-{os.getpid()}-{_PROCESS_TOKEN}-{next(_client_numbers)}"


# --- config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MqttConfig:
    host: str
    port: int
    tls: bool = False
    topic: str = DEFAULT_TOPIC
    qos: int = DEFAULT_QOS
    retain: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls_verify: bool = True

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password else ()

    def destination(self) -> str:
        return f"mqtt://{self.broker}"

    @property
    def broker(self) -> str:
        """``host:port`` for messages (never with credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def pool_key(self) -> tuple[str, int, bool, str | None, str | None, bool]:
        return (self.host.lower(), self.port, self.tls, self.username, self.password, self.tls_verify)


def _bool(raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise InvalidChannelConfig(f"config.{key} must be true or false, got {value!r:.40}")


def _int(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise InvalidChannelConfig(f"config.{key} must be an integer, got {value!r:.40}")


def _port(value: int, key: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidChannelConfig(f"config.{key} must be a port between 1 and 65535, got {value}")
    return value


def normalise_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Map the web UI's ``broker_host`` / ``broker_port`` / ``tls`` onto ``broker_url``.

    The one place the two spellings meet. When ``broker_url`` is present it wins and the alternate
    keys are ignored; the result never holds ``broker_host``, ``broker_port``, ``tls`` or ``use_tls``.
    """
    out = {k: v for k, v in raw.items() if k not in ("broker_host", "broker_port", "tls", "use_tls")}
    if raw.get("broker_url") not in (None, "") or raw.get("broker_host") in (None, ""):
        return out
    host = raw["broker_host"]
    if not isinstance(host, str):
        raise InvalidChannelConfig(f"config.broker_host must be a string, got {type(host).__name__}")
    host = host.strip()
    if "://" in host:
        raise InvalidChannelConfig("config.broker_host must be a host name, not a URL (use broker_url)")
    if not host or any(ch in host for ch in "/@?# \t\r\n\x00"):
        raise InvalidChannelConfig("config.broker_host is not a valid host name")
    tls = _bool(raw, "tls", False) if raw.get("tls") not in (None, "") else _bool(raw, "use_tls", False)
    scheme = "mqtts" if tls else "mqtt"
    port = _port(_int(raw, "broker_port", DEFAULT_PORTS[scheme]), "broker_port")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    out["broker_url"] = f"{scheme}://{host}:{port}"
    return out


def _parse_broker_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """(host, port, tls, username, password) from ``mqtt[s]://[user[:password]@]host[:port]``."""
    if any(ch in url for ch in " \t\r\n\x00"):
        raise InvalidChannelConfig("config.broker_url contains whitespace or control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise InvalidChannelConfig("config.broker_url has an invalid port (expected 1-65535)") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidChannelConfig(
            f"config.broker_url must start with mqtt:// or mqtts://, got scheme {parts.scheme or '(none)'!r}"
        )
    if not parts.hostname:
        raise InvalidChannelConfig("config.broker_url has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidChannelConfig("config.broker_url must not have a path or query (mqtt[s]://host:port)")
    port = _port(DEFAULT_PORTS[scheme] if port is None else port, "broker_url port")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, scheme == "mqtts", username, password


def _check_topic_text(text: str, where: str) -> None:
    if "+" in text or "#" in text:
        raise InvalidChannelConfig(f"{where} must not contain the MQTT wildcards + or #")
    if "\x00" in text:
        raise InvalidChannelConfig(f"{where} contains a NUL byte")


def _check_topic(topic: str, where: str) -> None:
    if not topic:
        raise PermanentError(f"{where} renders an empty MQTT topic for this alert")
    _check_topic_text(topic, where)
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise PermanentError(f"{where} renders a topic longer than {MAX_TOPIC_BYTES} bytes")


def sanitise_topic_value(value: str) -> str:
    """A placeholder value made safe for one topic level: no ``/``, ``+``, ``#``, NUL or bad UTF-8."""
    value = value.translate(_TOPIC_UNSAFE)
    return value.encode("utf-8", "replace").decode("utf-8")  # lone surrogates from JSON become "?"


def render_topic(template: str, values: Mapping[str, str]) -> str:
    """The topic for one alert; values cannot add levels or wildcards."""
    topic = render(template, values, escape=sanitise_topic_value, where="config.topic")
    _check_topic(topic, "config.topic")
    return topic


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of the producer's payload."""
    try:
        text = json.dumps(dict(payload), separators=(",", ":"), ensure_ascii=False, default=str)
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: keep it as a \\u escape, still valid JSON
        return json.dumps(dict(payload), separators=(",", ":"), default=str).encode("ascii")


# --- connections ---------------------------------------------------------------------------------


class _Connection:
    """One connected paho client with its network thread; ``lost`` is set when the link drops."""

    def __init__(self, client: mqtt.Client, client_id: str, broker: str) -> None:
        self.client = client
        self.client_id = client_id
        self.broker = broker
        self.lost = threading.Event()

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and self.client.is_connected()

    def shutdown(self, timeout: float) -> None:
        """Disconnect and stop the network thread, waiting at most ``timeout`` seconds."""
        self.lost.set()
        with contextlib.suppress(Exception):  # best effort; the socket may already be gone
            self.client.disconnect()
        stopper = threading.Thread(target=self.client.loop_stop, name="mqtt-loop-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)


class _PinnedClient(mqtt.Client):
    """Connects to an address checked beforehand; the host name still names the broker for TLS."""

    pinned_address: str | None = None

    def _create_socket_connection(self) -> socket.socket:
        if self.pinned_address is None:
            return super()._create_socket_connection()
        source = (self._bind_address, self._bind_port)
        return socket.create_connection(
            (self.pinned_address, self._port), timeout=self._connect_timeout, source_address=source
        )


class MqttChannel:
    channel_type = "mqtt"

    def __init__(self, context: ChannelContext) -> None:
        self.settings = context.settings.mqtt
        self.address_policy = context.address_policy
        self.ca_file = context.settings.tls.ca_file or None
        self.connects = 0  # successful connections made, for tests and diagnostics
        self._lock = threading.Lock()
        self._pool: dict[tuple[Any, ...], _Connection] = {}
        self._key_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._failures: dict[tuple[Any, ...], tuple[float, DeliveryError]] = {}
        self._contexts: dict[bool, ssl.SSLContext] = {}

    # -- config --

    def parse_config(self, raw: Mapping[str, Any]) -> MqttConfig:
        raw = normalise_config(config_object(raw))
        url = optional_str(raw, "broker_url")
        if url is None:
            raise InvalidChannelConfig("config.broker_url is missing (or broker_host)")
        host, port, tls, url_user, url_password = _parse_broker_url(url)
        topic = optional_str(raw, "topic") or DEFAULT_TOPIC
        _check_topic_text(render(topic, {}, where="config.topic"), "config.topic")  # the literal parts
        qos = _int(raw, "qos", DEFAULT_QOS)
        if qos not in (0, 1, 2):
            raise InvalidChannelConfig(f"config.qos must be 0, 1 or 2, got {qos}")
        username = optional_str(raw, "username") or url_user
        password = optional_str(raw, "password") or url_password
        if password and not username:
            raise InvalidChannelConfig("config.password is set but config.username is missing")
        return MqttConfig(
            host=host,
            port=port,
            tls=tls,
            topic=topic,
            qos=qos,
            retain=_bool(raw, "retain", False),
            username=username,
            password=password,
            tls_verify=_bool(raw, "tls_verify", True),
        )

    # -- sending --

    def send(self, config: MqttConfig, delivery: Delivery) -> Receipt:
        topic = render_topic(config.topic, delivery.alert.placeholders())
        body = encode_payload(delivery.payload)
        conn = self._connection(config)
        try:
            info = conn.client.publish(topic, body, qos=config.qos, retain=config.retain)
        except ValueError as exc:  # invalid topic or a payload over the MQTT limit
            raise PermanentError(f"MQTT broker {config.broker}: cannot publish: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._discard(conn)
            raise TransientError(f"MQTT broker {config.broker}: publish failed: {mqtt.error_string(info.rc)}")
        self._wait_published(conn, info, config)
        what = "acknowledged" if config.qos else "sent"
        return Receipt(detail=f"{what} on {topic} (qos {config.qos}, mid {info.mid})")

    def _wait_published(self, conn: _Connection, info: mqtt.MQTTMessageInfo, config: MqttConfig) -> None:
        timeout = self.settings.publish_timeout
        deadline = time.monotonic() + timeout
        ack = "PUBCOMP" if config.qos == 2 else "PUBACK" if config.qos == 1 else "socket write"
        while True:
            remaining = deadline - time.monotonic()
            try:
                if info.is_published():
                    return
                if remaining <= 0:
                    break
                info.wait_for_publish(min(remaining, _WAIT_SLICE))
                if info.is_published():
                    return
            except (RuntimeError, ValueError) as exc:
                self._discard(conn)
                raise TransientError(f"MQTT broker {config.broker}: publish failed: {exc}") from None
            if conn.lost.is_set():
                self._discard(conn)
                raise TransientError(
                    f"MQTT broker {config.broker}: connection lost before the {ack} for the message"
                )
        # A broker that does not acknowledge in time is treated as a broken link: start afresh.
        self._discard(conn)
        raise TransientError(f"MQTT broker {config.broker}: no {ack} within {timeout:g}s")

    # -- the pool --

    def _connection(self, config: MqttConfig) -> _Connection:
        key = config.pool_key
        asked_at = time.monotonic()
        with self._lock:
            conn = self._pool.get(key)
            if conn is not None and conn.alive:
                return conn
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # One thread per broker connects; the others wait (bounded) and share its result.
        if not key_lock.acquire(timeout=self._connect_bound() * 2):
            raise TransientError(f"MQTT broker {config.broker}: timed out waiting for a connection")
        try:
            with self._lock:
                conn = self._pool.get(key)
                if conn is not None and conn.alive:
                    return conn
                stale = self._pool.pop(key, None)
                failure = self._failures.get(key)
            if stale is not None:
                stale.shutdown(0)
            if failure is not None and failure[0] >= asked_at:
                error = failure[1]
                raise type(error)(str(error))  # the attempt made while we waited just failed
            try:
                conn = self._connect(config)
            except DeliveryError as exc:
                with self._lock:
                    self._failures[key] = (time.monotonic(), exc)
                raise
            with self._lock:
                self._failures.pop(key, None)
                self._pool[key] = conn
                self.connects += 1
            return conn
        finally:
            key_lock.release()

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

    def _connect(self, config: MqttConfig) -> _Connection:
        where = f"MQTT broker {config.broker}"
        timeout = self.settings.connect_timeout
        client_id = _new_client_id()
        client = _PinnedClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            reconnect_on_failure=False,  # a dropped link ends the loop; the pool makes a new client
        )
        client.connect_timeout = timeout
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls:
            client.tls_set_context(self._tls_context(config.tls_verify))
            if not config.tls_verify:
                log.warning("tls.verification_disabled", channel_type="mqtt", broker=config.broker)
        conn = _Connection(client, client_id, config.broker)
        connacked = threading.Event()
        outcome: list[ReasonCode] = []

        def on_connect(
            _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
        ) -> None:
            outcome.append(reason)
            connacked.set()

        def on_disconnect(
            _client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any
        ) -> None:
            conn.lost.set()
            connacked.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect

        # Tenants write broker hosts too: resolve once, check, and connect to the checked address.
        client.pinned_address = check_host(config.host, config.port, self.address_policy)
        try:
            client.connect(config.host, config.port, keepalive=self.settings.keepalive)
        except ssl.SSLCertVerificationError as exc:
            reason = exc.verify_message or exc.reason or "certificate rejected"
            raise PermanentError(f"{where}: TLS certificate verification failed ({reason})") from None
        except ssl.SSLError as exc:
            raise TransientError(f"{where}: TLS handshake failed ({exc.reason or exc})") from None
        except socket.gaierror:
            raise TransientError(f"{where}: cannot resolve host name") from None
        except TimeoutError:
            raise TransientError(f"{where}: connection timed out after {timeout:g}s", slow=True) from None
        except ConnectionRefusedError:
            raise TransientError(f"{where}: connection refused") from None
        except OSError as exc:
            raise TransientError(f"{where}: cannot connect ({exc.strerror or type(exc).__name__})") from None
        except ValueError as exc:
            raise PermanentError(f"{where}: cannot connect ({exc})") from None

        client.loop_start()
        if not connacked.wait(timeout):
            conn.shutdown(0)
            raise TransientError(f"{where}: no CONNACK within {timeout:g}s")
        if not outcome:
            conn.shutdown(0)
            raise TransientError(f"{where}: connection closed before CONNACK")
        connack = outcome[0]
        if connack.is_failure:
            conn.shutdown(0)
            if connack.value in CREDENTIAL_REASONS:
                raise PermanentError(f"{where} refused the connection: {connack} (check username/password)")
            raise TransientError(f"{where} refused the connection: {connack}")
        if conn.lost.is_set():
            conn.shutdown(0)
            raise TransientError(f"{where}: connection closed right after CONNACK")
        return conn

    def _discard(self, conn: _Connection) -> None:
        """Drop a broken client from the pool (if it is still there) and stop it without waiting."""
        with self._lock:
            for key, pooled in list(self._pool.items()):
                if pooled is conn:
                    del self._pool[key]
        conn.shutdown(0)

    def pool_size(self) -> int:
        with self._lock:
            return len(self._pool)

    def close(self) -> None:
        """Disconnect every pooled client and stop its network thread (bounded wait)."""
        with self._lock:
            conns = list(self._pool.values())
            self._pool.clear()
            self._failures.clear()
        deadline = time.monotonic() + self.settings.connect_timeout
        for conn in conns:
            conn.shutdown(max(0.0, deadline - time.monotonic()))
