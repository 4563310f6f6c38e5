"""Worker configuration: one INI file plus environment overrides, parsed once into frozen dataclasses.

Precedence, lowest first: built-in defaults, the INI file, the legacy variables the platform already
uses (``DATABASE_URL``, ``WORKER_MAX_ATTEMPTS``, ``WORKER_BACKOFF_BASE_SECONDS``,
``WORKER_BACKOFF_MAX_SECONDS``), then the general form ``DELIVERY_WORKER_<SECTION>_<KEY>`` for every
key (e.g. ``DELIVERY_WORKER_WORKER_THREADS=16``). Any other ``DELIVERY_WORKER_*`` variable is an error
(a typo would otherwise be silently ignored), except ``DELIVERY_WORKER_CONFIG`` and the service links
Kubernetes injects for a Service named ``delivery-worker…``. Nothing below this module reads the
environment or the file again.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from channels.settings import (
    HttpSettings,
    IPNetwork,
    MqttSettings,
    PagerDutySettings,
    SmtpSettings,
    SnmpSettings,
    TlsSettings,
)

DEFAULT_CONFIG_PATH = Path("config/worker.ini")
CONFIG_PATH_ENV = "DELIVERY_WORKER_CONFIG"
GENERAL_ENV_PREFIX = "DELIVERY_WORKER_"
# DELIVERY_WORKER_* variables that are read but name no setting.
OTHER_ENV = frozenset({CONFIG_PATH_ENV})
# What Kubernetes injects for a Service (after the service's name, upper-cased, "-" as "_").
SERVICE_LINK_SUFFIX = re.compile(
    r"_SERVICE_HOST|_SERVICE_PORT(?:_\w+)?|_PORT(?:_\d+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)?"
)
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"

LEGACY_ENV = {
    "DATABASE_URL": ("database", "dsn"),
    "WORKER_MAX_ATTEMPTS": ("worker", "max_attempts"),
    "WORKER_BACKOFF_BASE_SECONDS": ("worker", "backoff_base_seconds"),
    "WORKER_BACKOFF_MAX_SECONDS": ("worker", "backoff_max_seconds"),
}


class ConfigError(Exception):
    """Raised when the configuration is invalid; the message names the section and key."""


@dataclass(frozen=True)
class DatabaseSettings:
    dsn: str
    migrate_dsn: str
    # How long `migrate` waits for a table lock before it gives up and tries again (docs/upgrading.md).
    migrate_lock_timeout: float = 3.0
    # How long `run` waits at start for missing migrations (a release running beside it); 0: exit 1 at once.
    schema_wait_seconds: float = 300.0


@dataclass(frozen=True)
class WorkerSettings:
    threads: int
    batch_size: int
    poll_interval: float
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    quick_retries: int
    quick_retry_budget_seconds: float
    job_timeout_seconds: float
    lease_seconds: float
    shutdown_timeout: float
    state_dir: str  # the spool's directory; "" picks /var/lib/delivery-worker if writable, else ./state
    # A job due for longer than this ranks with the most severe (no starvation); see docs/storms-claim.md.
    max_priority_wait_seconds: float = 60.0
    # Most jobs one channel/integration may have running in this worker; 0 means `threads`.
    max_in_flight_per_destination: int = 4
    # Worker processes under one `run`, sharing threads, caps and rate limits (delivery_worker/supervisor.py).
    processes: int = 1


@dataclass(frozen=True)
class MetricsSettings:
    port: int  # 0: no listener (unless $PORT is set)
    host: str
    queue_sample_seconds: float
    failed_window_seconds: float = 900.0  # delivery_worker_queue_failed_recent_jobs counts FAILED this recent


@dataclass(frozen=True)
class RateLimitSettings:
    """Deliveries per second to one destination, by channel type; 0 means no limit."""

    slack: float
    teams: float
    pagerduty: float
    webhook: float
    email: float
    snmp: float
    mqtt: float

    def for_type(self, channel_type: str) -> float:
        kind = "webhook" if channel_type == "http" else channel_type
        return float(getattr(self, kind, 0.0))


@dataclass(frozen=True)
class CircuitBreakerSettings:
    failure_threshold: int  # consecutive failed attempts that open a destination's circuit; 0 disables
    cooldown_seconds: float


@dataclass(frozen=True)
class DigestSettings:
    """Storm digests for rate-limited chat destinations (see docs/digests.md)."""

    enabled: bool
    max_listed: int  # open alerts named individually in one digest, most severe first
    max_jobs: int  # most jobs one digest covers


@dataclass(frozen=True)
class LoggingSettings:
    level: str


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings
    worker: WorkerSettings
    http: HttpSettings
    tls: TlsSettings
    pagerduty: PagerDutySettings
    smtp: SmtpSettings
    snmp: SnmpSettings
    mqtt: MqttSettings
    metrics: MetricsSettings
    rate_limits: RateLimitSettings
    circuit_breaker: CircuitBreakerSettings
    logging: LoggingSettings
    digest: DigestSettings
    source: str  # where the file came from, for messages


# --- value parsers -------------------------------------------------------------------------------


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _float(minimum: float, *, exclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {text!r}")
        if value < minimum or (exclusive and value == minimum):
            raise ValueError(f"must be {'>' if exclusive else '>='} {minimum:g}, got {value:g}")
        return value

    return parse


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _optional_text(text: str) -> str:
    return text.strip()


def _http_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"expected an http(s) URL, got {value!r}")
    return value


def _ca_file(text: str) -> str:
    value = text.strip()
    if value and not Path(value).is_file():
        raise ValueError(f"no such file: {value}")
    return value


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _networks(text: str) -> tuple[IPNetwork, ...]:
    """Networks as written. ``10.0.0.1/8`` is refused, not read as ``10.0.0.0/8``: it may as well
    have meant the one host ``10.0.0.1/32``, and opening 16M addresses by a guess is not safe."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            try:
                widened = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {item!r}") from None
            host = ipaddress.ip_interface(item).ip
            raise ValueError(
                f"{item} has host bits set: write {widened} for the network, or {host}/{host.max_prefixlen} "
                "for the one host"
            ) from None
    return tuple(networks)


def _sender_address(text: str) -> str:
    """[smtp] from_address: empty (the channel's host-name default) or one email address."""
    from channels.email import check_sender_address  # only the email channel knows address syntax

    value = text.strip()
    return check_sender_address(value) if value else ""


def _sender_name(text: str) -> str:
    from channels.email import check_sender_name

    return check_sender_name(text.strip())


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected one of DEBUG, INFO, WARNING, ERROR, got {text!r}")
    return value


# section -> key -> (default, parser). The INI example in config/worker.ini documents each key.
SCHEMA: dict[str, dict[str, tuple[str, Callable[[str], Any]]]] = {
    "database": {
        "dsn": ("postgresql://127.0.0.1:5432/delivery_worker", _text),
        "migrate_dsn": ("", _optional_text),
        "migrate_lock_timeout": ("3", _float(0, exclusive=True)),
        "schema_wait_seconds": ("300", _float(0)),
    },
    "worker": {
        "threads": ("16", _int(1, 512)),
        "batch_size": ("50", _int(1, 10_000)),
        "poll_interval": ("1.0", _float(0.01)),
        "max_attempts": ("5", _int(1)),
        "backoff_base_seconds": ("30", _float(0)),
        "backoff_max_seconds": ("7200", _float(0)),
        "quick_retries": ("2", _int(0, 10)),
        "quick_retry_budget_seconds": ("10", _float(0)),
        "job_timeout_seconds": ("60", _float(1)),
        "lease_seconds": ("300", _float(1)),
        "shutdown_timeout": ("25", _float(0)),
        "state_dir": ("", _optional_text),
        "max_priority_wait_seconds": ("60", _float(0)),
        "max_in_flight_per_destination": ("4", _int(0, 512)),
        "processes": ("1", _int(1, 32)),
    },
    "http": {
        "connect_timeout": ("5", _float(0, exclusive=True)),
        "read_timeout": ("15", _float(0, exclusive=True)),
        "user_agent": ("delivery-worker/0.1", _text),
        "allow_private_networks": ("false", _bool),
        "allowed_networks": ("", _networks),
    },
    "tls": {
        "ca_file": ("", _ca_file),
    },
    "pagerduty": {
        "events_url": (PAGERDUTY_EVENTS_URL, _http_url),
    },
    "smtp": {
        "timeout": ("15", _float(0, exclusive=True)),
        "from_address": ("", _sender_address),
        "from_name": ("Pulse Alerts", _sender_name),
    },
    "snmp": {
        "timeout": ("3", _float(0, exclusive=True)),
        "retries": ("1", _int(0, 5)),
        "max_engines": ("64", _int(1, 4096)),
        "engine_idle_seconds": ("600", _float(0, exclusive=True)),
    },
    "mqtt": {
        "connect_timeout": ("5", _float(0, exclusive=True)),
        "publish_timeout": ("10", _float(0, exclusive=True)),
        "keepalive": ("60", _int(5, 3600)),
        "max_connections": ("32", _int(1, 4096)),
        "connection_idle_seconds": ("60", _float(0, exclusive=True)),
    },
    "metrics": {
        "port": ("0", _int(0, 65535)),
        "host": ("127.0.0.1", _text),
        "queue_sample_seconds": ("15", _float(1)),
        "failed_window_seconds": ("900", _float(1)),
    },
    "rate_limits": {
        "slack": ("1", _float(0)),
        "teams": ("4", _float(0)),
        "pagerduty": ("0", _float(0)),
        "webhook": ("0", _float(0)),
        "email": ("0", _float(0)),
        "snmp": ("0", _float(0)),
        "mqtt": ("0", _float(0)),
    },
    "circuit_breaker": {
        "failure_threshold": ("5", _int(0)),
        "cooldown_seconds": ("30", _float(0)),
    },
    "logging": {
        "level": ("INFO", _log_level),
    },
    "digest": {
        "enabled": ("true", _bool),
        "max_listed": ("10", _int(1, 40)),  # Slack takes at most 50 blocks per message
        "max_jobs": ("500", _int(2, 10_000)),
    },
}


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """Return the config path and whether the operator named it explicitly (then it must exist)."""
    if cli_path:
        return Path(cli_path), True
    if environ.get(CONFIG_PATH_ENV):
        return Path(environ[CONFIG_PATH_ENV]), True
    return DEFAULT_CONFIG_PATH, False


def load_settings(cli_path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration. Raises ConfigError with a one-line message."""
    env = os.environ if environ is None else environ
    path, explicit = resolve_config_path(cli_path, env)
    raw: dict[str, dict[str, str]] = {section: {} for section in SCHEMA}
    origin: dict[tuple[str, str], str] = {}

    if path.exists():
        _merge_file(path, raw, origin)
    elif explicit:
        raise ConfigError(f"{path}: config file not found")

    for variable, (section, key) in LEGACY_ENV.items():
        if env.get(variable, "").strip():
            raw[section][key] = env[variable]
            origin[(section, key)] = f"${variable}"
    _merge_general_env(env, raw, origin)

    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, (default, parse) in keys.items():
            text = raw[section].get(key, default)
            try:
                values[section][key] = parse(text)
            except ValueError as exc:
                where = origin.get((section, key), "default")
                raise ConfigError(f"[{section}] {key}: {exc} (from {where})") from None

    worker = values["worker"]
    if worker["backoff_max_seconds"] < worker["backoff_base_seconds"]:
        raise ConfigError(
            "[worker] backoff_max_seconds: must be >= backoff_base_seconds "
            f"({worker['backoff_max_seconds']:g} < {worker['backoff_base_seconds']:g})"
        )
    if worker["processes"] > worker["threads"]:
        raise ConfigError(
            "[worker] processes: must be <= threads, which they share "
            f"({worker['processes']} > {worker['threads']})"
        )
    database = values["database"]
    database["migrate_dsn"] = database["migrate_dsn"] or database["dsn"]

    return Settings(
        database=DatabaseSettings(**database),
        worker=WorkerSettings(**worker),
        http=HttpSettings(**values["http"]),
        tls=TlsSettings(**values["tls"]),
        pagerduty=PagerDutySettings(**values["pagerduty"]),
        smtp=SmtpSettings(**values["smtp"]),
        snmp=SnmpSettings(**values["snmp"]),
        mqtt=MqttSettings(**values["mqtt"]),
        metrics=MetricsSettings(**values["metrics"]),
        rate_limits=RateLimitSettings(**values["rate_limits"]),
        circuit_breaker=CircuitBreakerSettings(**values["circuit_breaker"]),
        logging=LoggingSettings(**values["logging"]),
        digest=DigestSettings(**values["digest"]),
        source=str(path) if path.exists() else "defaults",
    )


def _merge_file(path: Path, raw: dict[str, dict[str, str]], origin: dict[tuple[str, str], str]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except (configparser.Error, UnicodeDecodeError, OSError) as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: cannot parse: {first_line}") from None
    for section in parser.sections():
        if section not in SCHEMA:
            known = ", ".join(SCHEMA)
            raise ConfigError(f"{path}: unknown section [{section}] (known: {known})")
        for key, value in parser.items(section):
            if key not in SCHEMA[section]:
                known = ", ".join(SCHEMA[section])
                raise ConfigError(f"{path}: [{section}] {key}: unknown key (known: {known})")
            raw[section][key] = value
            origin[(section, key)] = str(path)


def _merge_general_env(
    env: Mapping[str, str], raw: dict[str, dict[str, str]], origin: dict[tuple[str, str], str]
) -> None:
    links = kubernetes_service_links(env)
    for variable, value in env.items():
        if not variable.startswith(GENERAL_ENV_PREFIX):
            continue
        rest = variable[len(GENERAL_ENV_PREFIX) :].lower()
        sections = [name for name in SCHEMA if rest.startswith(f"{name}_")]
        section = max(sections, key=len) if sections else None
        key = rest[len(section) + 1 :] if section else ""
        if section is not None and key in SCHEMA[section]:
            raw[section][key] = value
            origin[(section, key)] = f"${variable}"
        elif variable not in OTHER_ENV and variable not in links:
            raise ConfigError(_unknown_variable(variable, section, key))


def _unknown_variable(variable: str, section: str | None, key: str) -> str:
    """One line naming the variable, the nearest real one, and what would be valid."""
    sections = [section] if section is not None else list(SCHEMA)
    candidates = [f"{GENERAL_ENV_PREFIX}{s}_{k}".upper() for s in sections for k in SCHEMA[s]]
    if section is None:
        candidates += OTHER_ENV
    close = difflib.get_close_matches(variable, candidates, n=1, cutoff=0.8)
    hint = f"; did you mean ${close[0]}?" if close else ""
    if section is not None:
        return f"${variable}: [{section}] {key}: unknown key{hint} (known: {', '.join(SCHEMA[section])})"
    return (
        f"${variable}: unknown variable{hint} (expected {GENERAL_ENV_PREFIX}<SECTION>_<KEY>, "
        f"sections: {', '.join(SCHEMA)})"
    )


def kubernetes_service_links(env: Mapping[str, str]) -> set[str]:
    """The variables Kubernetes injects for Services named ``delivery-worker…`` (e.g.
    ``DELIVERY_WORKER_SERVICE_HOST``, ``DELIVERY_WORKER_PORT``): ignored, not typos. A Service is
    recognised by its ``<NAME>_SERVICE_HOST``, which Kubernetes always sets."""
    services = [
        name.removesuffix("_SERVICE_HOST")
        for name in env
        if name.startswith(GENERAL_ENV_PREFIX[:-1]) and name.endswith("_SERVICE_HOST")
    ]
    return {
        name
        for name in env
        for service in services
        if name.startswith(service) and SERVICE_LINK_SUFFIX.fullmatch(name[len(service) :])
    }


def redacted_view(settings: Settings) -> dict[str, dict[str, Any]]:
    """The effective settings with credentials in DSNs masked, for `check-config`."""
    from dataclasses import asdict

    view = asdict(settings)
    view.pop("source")
    for key in ("dsn", "migrate_dsn"):
        view["database"][key] = redact_dsn(view["database"][key])
    view["http"]["allowed_networks"] = [str(n) for n in settings.http.allowed_networks]
    return view


def redact_dsn(dsn: str) -> str:
    """Mask the password in a URL or key=value DSN, whatever characters it holds.

    URL form: everything between ``user:`` and the last ``@`` (a password may hold an unencoded
    ``@``, ``/`` or space). key=value form and URL query: a quoted value (libpq's ``'...'`` with
    backslash escapes, spaces included) or the rest of the word."""
    import re

    masked = re.sub(r"(://[^:/@]*:).*@", r"\1***@", dsn, flags=re.S)
    return re.sub(
        r"""(password\s*=\s*)('(?:[^'\\]|\\.)*'?|"(?:[^"\\]|\\.)*"?|[^\s&]+)""", r"\1***", masked, flags=re.I
    )
