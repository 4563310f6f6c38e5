"""The one HTTP helper every HTTP channel uses: pooled session, timeouts, status classification.

Error messages name the host but never the URL path or query, because Slack/Teams webhook paths and
some customers' URLs carry credentials; a body excerpt has the channel's secrets masked before it is cut.

Bounded: the response is streamed and at most ``BODY_CAP`` bytes of its body are ever read. The
status decides the outcome; the body only feeds the error message. A 2xx is a delivery even when its
body is broken (bad gzip, bad chunking) or its headers cannot be parsed (more than 100 lines): the
receiver has the request. With a ``Delivery`` carrying a deadline, every wait is cut to the time left
and the watchdog of channels/deadline.py shuts the socket at the deadline, so a peer trickling its
headers or body is cut: ``DeadlineExceeded`` (transient).

Every connection goes through the SSRF guard (channels/netguard.py): the host is resolved once, every
address is checked against the ``AddressPolicy``, and the socket connects to a checked address. A
refused address raises ``BlockedAddress`` (permanent). Redirects are never followed and proxies from
the environment are ignored, since either would lead somewhere the guard did not check. Cookies are
neither sent nor kept (channels/http_request.py): one session serves every tenant.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import re
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import HTTPError

from channels.base import AttemptClock, Receipt
from channels.deadline import closing_at
from channels.errors import (
    DeadlineExceeded,
    DeliveryError,
    InvalidChannelConfig,
    PermanentError,
    TransientError,
)
from channels.http_request import prepare_request
from channels.netguard import AddressPolicy, GuardedAdapter, Resolver
from channels.presentation import cut, one_line
from channels.secrets import redact
from channels.wire import AttemptConnection, HeadersUnreadable, watching

E = TypeVar("E", bound=BaseException)

EXCERPT_CHARS = 200
BODY_CAP = 64 * 1024  # bytes of a response body ever read: the status decides, the body feeds last_error
READ_CHUNK = 16 * 1024
TRANSIENT_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
MAX_RETRY_AFTER_DIGITS = 9  # more is not a delay anyone meant

# RFC 9110 token characters: what a header name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters (HTAB is allowed inside a value), DEL and the C1 controls.
_BAD_VALUE_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Framing and hop-by-hop headers the HTTP client owns: a tenant setting one could smuggle a request
# (Transfer-Encoding beside Content-Length) or reach another virtual host (Host).
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
     "expect", "proxy-authorization", "proxy-connection"}
)  # fmt: skip


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


def check_headers(raw: Any, *, where: str = "config.headers") -> dict[str, str]:
    """Operator-written headers, valid on the wire; InvalidChannelConfig names the header (never its value).

    Refused: names that are not RFC 9110 tokens, the same name twice, reserved framing/hop-by-hop
    headers (RESERVED_HEADERS), values with control characters, leading/trailing whitespace or
    characters outside Latin-1 (http.client could not send them)."""
    if raw in (None, ""):
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidChannelConfig(f"{where} must be an object of header names to strings")
    headers: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in raw.items():
        label = f"{where}.{str(name)[:60]!r}" if not _TOKEN.fullmatch(str(name)) else f"{where}.{name}"
        if not isinstance(name, str) or not _TOKEN.fullmatch(name) or len(name) > 100:
            raise InvalidChannelConfig(f"{label}: not a valid header name")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidChannelConfig(
                f"{label}: the {name} header is set by the worker and cannot be configured"
            )
        if name.lower() in seen:
            raise InvalidChannelConfig(f"{label}: the header is given twice")
        seen.add(name.lower())
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidChannelConfig(f"{label} must be a string")
        text = str(value)
        if _BAD_VALUE_CHAR.search(text):
            raise InvalidChannelConfig(f"{label} contains a line break or control character")
        if text != text.strip(" \t"):
            raise InvalidChannelConfig(f"{label} has leading or trailing whitespace")
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise InvalidChannelConfig(f"{label} contains characters a header cannot carry") from None
        headers[name] = text
    return headers


def host_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or "?"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when unusable.

    Only ASCII digits count as delta-seconds ("²".isdigit() is True); anything unparseable is ignored,
    so the retry policy's own backoff applies."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= MAX_RETRY_AFTER_DIGITS else None
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def excerpt(text: str) -> str:
    """One line of at most EXCERPT_CHARS characters: control characters and line breaks flattened."""
    return cut(one_line(text), EXCERPT_CHARS)


class HttpClient:
    """A shared requests.Session sized for the worker's threads; thread-safe for concurrent posts.

    Requests are prepared by channels/http_request.py and sent by the session's adapter (what
    ``Session.request`` would send, without its per-request merging and without cookies)."""

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
        delivery: AttemptClock | None = None,
        secrets: Iterable[str] = (),
    ) -> Receipt:
        """Send body to url; return a Receipt on 2xx, raise Transient/PermanentError otherwise.

        With a delivery, every wait is bounded by its attempt deadline and the connection is cut when
        the deadline passes (DeadlineExceeded). ``secrets`` are masked in the body excerpt before it
        is cut, so no part of one reaches an error message."""
        host = host_of(url)
        deadline = delivery.deadline if delivery is not None else None
        attempt = AttemptConnection()
        with closing_at(deadline, attempt.cut) as armed, watching(attempt):
            try:
                return self._exchange(url, body, headers, method, service, delivery, secrets)
            except TransientError as exc:
                if armed.fired and exc.http_status is None:
                    raise DeadlineExceeded(
                        f"{service} at {host} was cut off at the attempt deadline"
                    ) from None
                raise

    def _exchange(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        method: str,
        service: str,
        delivery: AttemptClock | None,
        secrets: Iterable[str],
    ) -> Receipt:
        host = host_of(url)
        connect, read = self.timeout
        if delivery is not None:
            connect, read = delivery.time_left(connect), delivery.time_left(read)
        try:
            request = prepare_request(method, url, body, headers, self.session.headers)
            response = self.session.get_adapter(request.url or url).send(
                request,
                timeout=(connect, read),
                verify=self.verify,
                stream=True,  # the body is read here, at most BODY_CAP bytes of it
                proxies={},
                cert=None,
            )
        except requests.exceptions.SSLError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc) or "doesn't match" in str(exc):
                raise PermanentError(f"TLS certificate verification failed for {host}") from None
            raise TransientError(f"TLS handshake with {host} failed") from None
        except requests.Timeout as exc:
            raise TransientError(timeout_message(exc, host, connect, read), slow=True) from None
        except requests.ConnectionError as exc:
            unreadable = _nested(exc, HeadersUnreadable)
            if unreadable is not None:  # the status line arrived: it decides
                return _judge(unreadable.status, service, "", None, detail="headers not readable")
            guard_error = _nested(exc, DeliveryError)  # BlockedAddress or a failed lookup, if wrapped
            if guard_error is not None:
                raise guard_error from None
            raise TransientError(f"cannot connect to {host}: {_root_reason(exc)}") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema) as exc:
            raise InvalidChannelConfig(f"invalid URL for {host}: {type(exc).__name__}") from None
        with response:
            status = response.status_code
            if 200 <= status < 300:
                if _small_body(response):  # read, so that the connection goes back to the pool
                    read_capped(response)
                return Receipt(http_status=status)  # a large body is not read: closing drops the connection
            text = redact(read_capped(response).decode("utf-8", "replace"), secrets)
            return _judge(status, service, text, response.headers.get("Retry-After"))

    def post_json(
        self,
        url: str,
        document: Any,
        *,
        service: str,
        delivery: AttemptClock,
        secrets: Iterable[str] = (),
    ) -> Receipt:
        """POST ``document`` as JSON (what Slack, Teams and PagerDuty take), bounded by ``delivery``."""
        body = json.dumps(document, default=str).encode()
        headers = {"Content-Type": "application/json"}
        return self.send(url, body, headers=headers, service=service, delivery=delivery, secrets=secrets)

    def close(self) -> None:
        self.session.close()


def timeout_message(exc: requests.Timeout, host: str, connect: float, read: float) -> str:
    """Which timeout fired and how long it was (the one this request had: the attempt deadline may
    have cut it short), e.g. "read timeout after 10.0 s waiting for hooks.example.com"."""
    if isinstance(exc, requests.ConnectTimeout):
        return f"connect timeout after {connect:.1f} s connecting to {host}"
    return f"read timeout after {read:.1f} s waiting for {host}"


def _small_body(response: requests.Response) -> bool:
    """A 2xx body is read (so its connection can be reused) only if it says it is small."""
    length = response.headers.get("Content-Length", "")
    return length.isascii() and length.isdigit() and int(length) <= BODY_CAP


def read_capped(response: requests.Response) -> bytes:
    """At most BODY_CAP bytes of the decoded body; whatever arrived if it breaks off or is malformed."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < BODY_CAP:
            chunk = response.raw.read1(min(READ_CHUNK, BODY_CAP - size), decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (OSError, HTTPError, http.client.HTTPException):
        pass  # the status already decided; the body only feeds an error message
    return b"".join(chunks)


def _judge(status: int, service: str, text: str, retry_after: str | None, *, detail: str = "") -> Receipt:
    """A Receipt for a 2xx; the matching Transient/PermanentError otherwise."""
    if 200 <= status < 300:
        return Receipt(http_status=status, detail=detail)
    shown = excerpt(text)
    message = f"{service} returned HTTP {status}" + (f": {shown}" if shown else "")
    if status in TRANSIENT_STATUSES:
        raise TransientError(message, http_status=status, retry_after=parse_retry_after(retry_after))
    if 300 <= status < 400:
        message = f"{service} answered with a redirect (HTTP {status}); redirects are not followed"
    raise PermanentError(message, http_status=status)


def _nested(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` that requests/urllib3 wrapped inside exc, if any."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending and len(seen) < 20:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        nested = [getattr(current, "reason", None), *current.args, current.__cause__, current.__context__]
        pending.extend(item for item in nested if isinstance(item, BaseException))
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
