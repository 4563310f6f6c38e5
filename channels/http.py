"""The one HTTP helper every HTTP channel uses: pooled session, timeouts, status classification.

Error messages name the host but never the URL path or query, because Slack/Teams webhook paths and
some customers' URLs carry credentials.

Every connection goes through the SSRF guard (channels/netguard.py): the host is resolved once, every
address is checked against the ``AddressPolicy``, and the socket connects to a checked address. A
refused address raises ``BlockedAddress`` (permanent). Redirects are never followed and proxies from
the environment are ignored, since either would lead somewhere the guard did not check.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import requests

from channels.base import Receipt
from channels.errors import DeliveryError, InvalidChannelConfig, PermanentError, TransientError
from channels.netguard import AddressPolicy, GuardedAdapter, Resolver

EXCERPT_CHARS = 200
TRANSIENT_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))


def check_url(url: str, *, where: str) -> str:
    """An absolute http(s) URL with a host, or InvalidChannelConfig."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidChannelConfig(f"{where} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidChannelConfig(f"{where} must be an absolute http(s) URL")
    if any(ch in url for ch in "\r\n\x00 "):
        raise InvalidChannelConfig(f"{where} contains whitespace or control characters")
    return url


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "?"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


class HttpClient:
    """A shared requests.Session sized for the worker's threads; thread-safe for concurrent posts."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        user_agent: str,
        pool_size: int,
        ca_file: str = "",
        policy: AddressPolicy | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """policy: the non-public addresses that may be reached (default: none); resolver: for tests."""
        self.timeout = (connect_timeout, read_timeout)
        self.policy = policy if policy is not None else AddressPolicy()
        self.session = requests.Session()
        # Always verified. Passed on each request too: requests lets $REQUESTS_CA_BUNDLE override a
        # session-level bundle, but not one given per request.
        self.verify: str | bool = ca_file or True
        self.session.verify = self.verify
        # No $HTTP(S)_PROXY: a proxy would connect to addresses the guard never saw.
        self.session.trust_env = False
        adapter = GuardedAdapter(
            self.policy,
            pool_connections=32,
            pool_maxsize=max(pool_size, 1),
            max_retries=0,
            resolver=resolver if resolver is not None else socket.getaddrinfo,
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent

    def send(
        self,
        url: str,
        body: bytes,
        *,
        headers: Mapping[str, str],
        method: str = "POST",
        service: str = "endpoint",
    ) -> Receipt:
        """Send body to url; return a Receipt on 2xx, raise Transient/PermanentError otherwise."""
        host = host_of(url)
        try:
            response = self.session.request(
                method,
                url,
                data=body,
                headers=dict(headers),
                timeout=self.timeout,
                allow_redirects=False,
                verify=self.verify,
            )
        except requests.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "doesn't match" in str(exc):
                raise PermanentError(f"TLS certificate verification failed for {host}") from None
            raise TransientError(f"TLS handshake with {host} failed") from None
        except requests.Timeout as exc:
            phase = "connecting to" if isinstance(exc, requests.ConnectTimeout) else "waiting for"
            raise TransientError(f"timed out {phase} {host}", slow=True) from None
        except requests.ConnectionError as exc:
            guard_error = _delivery_error_in(exc)  # BlockedAddress or a failed lookup, if wrapped
            if guard_error is not None:
                raise guard_error from None
            raise TransientError(f"cannot connect to {host}: {_root_reason(exc)}") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            raise InvalidChannelConfig(f"invalid URL for {host}: {type(exc).__name__}") from None
        with response:
            status = response.status_code
            if 200 <= status < 300:
                return Receipt(http_status=status)
            text = excerpt(response.text)
            message = f"{service} returned HTTP {status}" + (f": {text}" if text else "")
            if status in TRANSIENT_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise TransientError(message, http_status=status, retry_after=retry_after)
            if 300 <= status < 400:
                message = f"{service} answered with a redirect (HTTP {status}); redirects are not followed"
            raise PermanentError(message, http_status=status)

    def close(self) -> None:
        self.session.close()


def _delivery_error_in(exc: BaseException) -> DeliveryError | None:
    """The guard's own error (BlockedAddress, TransientError) if requests/urllib3 wrapped it."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, DeliveryError):
            return seen
        nested = getattr(seen, "reason", None)
        if not isinstance(nested, BaseException) and seen.args and isinstance(seen.args[0], BaseException):
            nested = seen.args[0]
        seen = nested if isinstance(nested, BaseException) else (seen.__cause__ or seen.__context__)
    return None


def _root_reason(exc: BaseException) -> str:
    """The innermost OS-level reason ('Connection refused'), without URLs."""
    seen: BaseException | None = exc
    reason = "connection failed"
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            reason = seen.strerror
        nested = getattr(seen, "reason", None)
        seen = nested if isinstance(nested, BaseException) else (seen.__cause__ or seen.__context__)
    if reason == "connection failed":
        text = str(exc)
        for marker in ("Connection refused", "Name or service not known", "No route to host"):
            if marker in text:
                return marker
        if "Failed to resolve" in text or "NameResolutionError" in text:
            return "host name does not resolve"
    return reason
