"""SNMP channel config: the ``notification_channels.config`` object parsed into a frozen SnmpConfig.

Every error names the key it is about and never repeats a secret. The keys are documented in
``channels/snmp.py``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pysnmp.entity import config as lcd

from channels.base import config_object, optional_str, require_str
from channels.errors import InvalidChannelConfig
from channels.snmp_trap import DEFAULT_OID_PREFIX

DEFAULT_PORT = 162
DEFAULT_COMMUNITY = "public"
REQUIRED_OID_ROOT = (1, 3, 6, 1)  # pysnmp's notification view covers 1.3.6; we keep to internet(1)
MIN_PASSWORD_LENGTH = 8  # RFC 3414 11.2; Net-SNMP refuses shorter pass phrases
MAX_OID_ARCS = 100  # prefix + .1.10 stays far below SNMP's limit of 128 sub-identifiers

VERSIONS = {"2c": "2c", "v2c": "2c", "2": "2c", "3": "3", "v3": "3"}

# Canonical name -> pysnmp protocol OID. Lookup keys drop case, "-", "_" and spaces.
AUTH_PROTOCOLS: dict[str, Any] = {
    "MD5": lcd.USM_AUTH_HMAC96_MD5,
    "SHA": lcd.USM_AUTH_HMAC96_SHA,
    "SHA-224": lcd.USM_AUTH_HMAC128_SHA224,
    "SHA-256": lcd.USM_AUTH_HMAC192_SHA256,
    "SHA-384": lcd.USM_AUTH_HMAC256_SHA384,
    "SHA-512": lcd.USM_AUTH_HMAC384_SHA512,
}
AUTH_ALIASES = {"SHA1": "SHA"}
PRIV_PROTOCOLS: dict[str, Any] = {
    "AES": lcd.USM_PRIV_CFB128_AES,
    "AES-192": lcd.USM_PRIV_CFB192_AES_BLUMENTHAL,
    "AES-256": lcd.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "AES-192-C": lcd.USM_PRIV_CFB192_AES,
    "AES-256-C": lcd.USM_PRIV_CFB256_AES,
    "DES": lcd.USM_PRIV_CBC56_DES,
    "3DES": lcd.USM_PRIV_CBC168_3DES,
}
PRIV_ALIASES = {"AES128": "AES", "3DESEDE": "3DES", "DES3": "3DES"}


@dataclass(frozen=True)
class SnmpConfig:
    host: str
    port: int = DEFAULT_PORT
    version: str = "2c"  # "2c" or "3"
    community: str = field(default=DEFAULT_COMMUNITY, repr=False)
    username: str | None = None
    auth_protocol: str | None = None  # a key of AUTH_PROTOCOLS, None for noAuth
    auth_password: str | None = field(default=None, repr=False)
    priv_protocol: str | None = None  # a key of PRIV_PROTOCOLS, None for noPriv
    priv_password: str | None = field(default=None, repr=False)
    engine_id: bytes | None = None
    oid_prefix: tuple[int, ...] = tuple(int(arc) for arc in DEFAULT_OID_PREFIX.split("."))
    inform: bool = False

    def secrets(self) -> tuple[str, ...]:
        values = (self.community if self.version == "2c" else None, self.auth_password, self.priv_password)
        return tuple(value for value in values if value)

    def destination(self) -> str:
        return f"snmp://{self.host}:{self.port}"

    @property
    def security_level(self) -> str:
        if self.version == "2c":
            return "community"
        if self.priv_password:
            return "authPriv"
        return "authNoPriv" if self.auth_password else "noAuthNoPriv"

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_config(raw: Any) -> SnmpConfig:
    """Validate a raw config object; every error names the key (``config.port must be ...``)."""
    raw = config_object(raw)
    host = _host(raw)
    port = _port(raw)
    version = _version(raw)
    oid_prefix = parse_oid_prefix(raw.get("oid_prefix"))
    inform = _flag(raw, "inform")
    if version == "2c":
        community = optional_str(raw, "community") or DEFAULT_COMMUNITY
        return SnmpConfig(
            host=host, port=port, version=version, community=community, oid_prefix=oid_prefix, inform=inform
        )
    username = require_str(raw, "username")
    auth_password = _password(raw, "auth_password")
    priv_password = _password(raw, "priv_password")
    auth_protocol = _protocol(raw, "auth_protocol", AUTH_PROTOCOLS, AUTH_ALIASES)
    priv_protocol = _protocol(raw, "priv_protocol", PRIV_PROTOCOLS, PRIV_ALIASES)
    if auth_protocol and not auth_password:
        raise InvalidChannelConfig(
            f"config.auth_password is missing (config.auth_protocol is {auth_protocol})"
        )
    if priv_protocol and not priv_password:
        raise InvalidChannelConfig(
            f"config.priv_password is missing (config.priv_protocol is {priv_protocol})"
        )
    if priv_password and not auth_password:
        raise InvalidChannelConfig(
            "config.priv_password needs config.auth_password: SNMPv3 has no privacy without authentication"
        )
    return SnmpConfig(
        host=host,
        port=port,
        version=version,
        username=username,
        auth_protocol=(auth_protocol or "SHA") if auth_password else None,
        auth_password=auth_password,
        priv_protocol=(priv_protocol or "AES") if priv_password else None,
        priv_password=priv_password,
        engine_id=_engine_id(raw),
        oid_prefix=oid_prefix,
        inform=inform,
    )


def parse_oid_prefix(value: Any, *, where: str = "config.oid_prefix") -> tuple[int, ...]:
    """A dotted numeric OID under 1.3.6.1 (a leading dot is allowed), as a tuple of sub-identifiers."""
    if value is None or value == "":
        value = DEFAULT_OID_PREFIX
    if not isinstance(value, str):
        raise InvalidChannelConfig(f"{where} must be a dotted numeric OID string, got {type(value).__name__}")
    text = value.strip().removeprefix(".")
    if not re.fullmatch(r"\d+(\.\d+)+", text):
        raise InvalidChannelConfig(f"{where} must be a dotted numeric OID like {DEFAULT_OID_PREFIX}")
    arcs = tuple(int(arc) for arc in text.split("."))
    if any(arc > 2**32 - 1 for arc in arcs):
        raise InvalidChannelConfig(f"{where} has a sub-identifier above 4294967295")
    if len(arcs) > MAX_OID_ARCS:
        raise InvalidChannelConfig(f"{where} has more than {MAX_OID_ARCS} sub-identifiers")
    if arcs[: len(REQUIRED_OID_ROOT)] != REQUIRED_OID_ROOT or len(arcs) <= len(REQUIRED_OID_ROOT):
        raise InvalidChannelConfig(f"{where} must be under 1.3.6.1 (e.g. 1.3.6.1.4.1.<enterprise number>)")
    return arcs


def _host(raw: Mapping[str, Any]) -> str:
    host = require_str(raw, "host").strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch.isspace() or ch in "/@" for ch in host):
        raise InvalidChannelConfig("config.host must be a host name or IP address")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidChannelConfig(
                "config.host must be a host name or IP address (give the port in config.port)"
            ) from None
    return host


def _port(raw: Mapping[str, Any]) -> int:
    value = raw.get("port")
    if value is None or value == "":
        return DEFAULT_PORT
    port: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.strip().isdigit():
        port = int(value.strip())
    if port is None or not 1 <= port <= 65535:
        raise InvalidChannelConfig("config.port must be an integer between 1 and 65535")
    return port


def _version(raw: Mapping[str, Any]) -> str:
    value = raw.get("version")
    if value is None or value == "":
        return "2c"
    key = str(value).strip().lower() if isinstance(value, str | int) and not isinstance(value, bool) else None
    if key is None or key not in VERSIONS:
        raise InvalidChannelConfig(f"config.version must be '2c' or '3', got {value!r}")
    return VERSIONS[key]


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key)
    if value is None or value == "":
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise InvalidChannelConfig(f"config.{key} must be true or false")


def _password(raw: Mapping[str, Any], key: str) -> str | None:
    value = optional_str(raw, key)
    if value is not None and len(value) < MIN_PASSWORD_LENGTH:
        raise InvalidChannelConfig(f"config.{key} must be at least {MIN_PASSWORD_LENGTH} characters")
    return value


def _protocol(
    raw: Mapping[str, Any], key: str, known: Mapping[str, Any], aliases: Mapping[str, str]
) -> str | None:
    value = optional_str(raw, key)
    if value is None:
        return None
    squashed = re.sub(r"[-_\s]", "", value).upper()
    if squashed == "NONE":
        return None
    by_squashed = {name.replace("-", ""): name for name in known}
    name = by_squashed.get(squashed) or aliases.get(squashed)
    if name is None:
        raise InvalidChannelConfig(f"config.{key} must be one of {', '.join(known)}, got {value!r}")
    return name


def _engine_id(raw: Mapping[str, Any]) -> bytes | None:
    value = optional_str(raw, "engine_id")
    if value is None:
        return None
    text = value.strip().lower().removeprefix("0x").replace(":", "")
    try:
        engine_id = bytes.fromhex(text)
    except ValueError:
        raise InvalidChannelConfig("config.engine_id must be a hex string like 0x80001f8804...") from None
    if not 5 <= len(engine_id) <= 32 or engine_id in (bytes(len(engine_id)), b"\xff" * len(engine_id)):
        raise InvalidChannelConfig("config.engine_id must be 5 to 32 octets, not all zeros or all ff")
    return engine_id
