"""MQTT channel config: the ``notification_channels.config`` object parsed into a frozen MqttConfig.

Keys are documented in ``channels/mqtt.py``; the web UI's ``broker_host`` / ``broker_port`` /
``tls`` spelling is mapped onto ``broker_url`` by ``normalise_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from channels.base import config_object, optional_str
from channels.errors import InvalidChannelConfig
from channels.mqtt_topic import DEFAULT_TOPIC, check_topic_template

DEFAULT_QOS = 1
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


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


def parse_config(raw: Any) -> MqttConfig:
    """Validate a raw config object; every error names the key and never repeats the password."""
    raw = normalise_config(config_object(raw))
    url = optional_str(raw, "broker_url")
    if url is None:
        raise InvalidChannelConfig("config.broker_url is missing (or broker_host)")
    host, port, tls, url_user, url_password = _parse_broker_url(url)
    topic = optional_str(raw, "topic") or DEFAULT_TOPIC
    check_topic_template(topic)
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
