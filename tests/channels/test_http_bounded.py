"""The HTTP helper against peers that misbehave after (or while) answering, on real loopback sockets.

The status decides: a 2xx is a delivery whatever follows it; a body is read up to BODY_CAP only;
a peer trickling its answer is cut at the attempt deadline.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Iterator

import pytest
import trustme

from channels.errors import DeadlineExceeded, PermanentError, TransientError
from channels.http import BODY_CAP, parse_retry_after
from channels.registry import ChannelRegistry, build_registry
from channels.webhook import WebhookChannel
from tests.servers.raw_http import RawConnection, endless, raw_http_server
from tests.support import make_delivery, make_settings

CHUNK = b"x" * 65536
CHUNKED_200 = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.fixture
def registry() -> Iterator[ChannelRegistry]:
    registry = build_registry(make_settings(http={"read_timeout": 5.0}))
    yield registry
    registry.close()


def send(registry: ChannelRegistry, url: str, *, deadline_in: float | None = None) -> object:
    channel = WebhookChannel(registry.context)
    delivery = make_delivery()
    if deadline_in is not None:
        delivery = dataclasses.replace(delivery, deadline=time.monotonic() + deadline_in)
    return channel.send(channel.parse_config({"url": url}), delivery)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_endless_chunked_200_is_a_delivery_and_is_not_read(registry):
    with raw_http_server(lambda c: endless(c, CHUNKED_200, chunk(CHUNK))) as server:
        receipt = send(registry, server.url())
        assert receipt.http_status == 200  # type: ignore[attr-defined]
        assert server.closed.wait(30)  # we hung up on it
    assert server.sent[0] < 64 * 1024 * 1024  # socket buffers' worth, not the stream


@pytest.mark.parametrize("status", [500, 404])
def test_huge_error_body_is_read_only_up_to_the_cap(registry, status):
    head = f"HTTP/1.1 {status} Oops\r\nContent-Length: {300 * 1024 * 1024}\r\n\r\n".encode()
    error = TransientError if status == 500 else PermanentError
    with raw_http_server(lambda c: endless(c, head, b"err " * 16384)) as server:
        with pytest.raises(error) as caught:
            send(registry, server.url())
        assert server.closed.wait(30)
    assert caught.value.http_status == status
    assert str(caught.value).startswith(f"webhook returned HTTP {status}: err err")
    assert len(str(caught.value)) < 260
    assert server.sent[0] < 64 * 1024 * 1024


def test_200_with_broken_gzip_is_a_delivery(registry):
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n"
    with raw_http_server(lambda c: c.send(head + b"\x1f\x8bnot-gzip-at-all!!!!")) as server:
        assert send(registry, server.url()).http_status == 200  # type: ignore[attr-defined]


def test_500_with_broken_gzip_still_reports_the_status(registry):
    head = b"HTTP/1.1 500 Oops\r\nContent-Encoding: gzip\r\nContent-Length: 20\r\n\r\n"
    reply = head + b"\x1f\x8bnot-gzip-at-all!!!!"
    with raw_http_server(lambda c: c.send(reply)) as server, pytest.raises(TransientError) as caught:
        send(registry, server.url())
    assert caught.value.http_status == 500


@pytest.mark.parametrize("status", [200, 503])
def test_bad_chunking_after_the_status_line(registry, status):
    answer = f"HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\nzz-not-hex\r\nbody\r\n".encode()
    with raw_http_server(lambda c: c.send(answer)) as server:
        if status == 200:
            assert send(registry, server.url()).http_status == 200  # type: ignore[attr-defined]
            return
        with pytest.raises(TransientError) as caught:
            send(registry, server.url())
    assert caught.value.http_status == status


@pytest.mark.parametrize(
    ("status", "error"), [(200, None), (204, None), (404, PermanentError), (502, TransientError)]
)
def test_more_than_100_headers_the_status_decides(registry, status, error):
    headers = b"".join(f"X-H{i}: {i}\r\n".encode() for i in range(150))
    answer = f"HTTP/1.1 {status} X\r\n".encode() + headers + b"Content-Length: 0\r\n\r\n"
    with raw_http_server(lambda c: c.send(answer)) as server:
        if error is None:
            assert send(registry, server.url()).http_status == status  # type: ignore[attr-defined]
            return
        with pytest.raises(error) as caught:
            send(registry, server.url())
    assert caught.value.http_status == status


def test_a_peer_trickling_its_status_line_is_cut_at_the_deadline(registry):
    def trickle(conn: RawConnection) -> None:
        conn.trickle(b"HTTP/1.1 200 OK\r\n" * 100, every=0.3)  # ~1 byte per read timeout / 16

    with raw_http_server(trickle) as server:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="cut off at the attempt deadline"):
            send(registry, server.url(), deadline_in=1.5)
        assert time.monotonic() - started < 30  # the trickle alone would last 8 minutes
        assert server.closed.wait(30)


def test_a_tls_peer_trickling_its_answer_is_cut_at_the_deadline(tmp_path):
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    registry = build_registry(make_settings(http={"read_timeout": 5.0}, tls={"ca_file": str(ca_file)}))

    def trickle(conn: RawConnection) -> None:
        conn.trickle(b"HTTP/1.1 200 OK\r\n" * 100, every=0.3)

    try:
        with raw_http_server(trickle, tls=context) as server:
            started = time.monotonic()
            channel = WebhookChannel(registry.context)
            delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + 1.5)
            with pytest.raises(DeadlineExceeded):
                channel.send(channel.parse_config({"url": server.url(host="localhost")}), delivery)
            assert time.monotonic() - started < 30
            assert server.closed.wait(30)
    finally:
        registry.close()


def test_a_peer_trickling_an_error_body_is_cut_and_keeps_its_status(registry):
    def trickle(conn: RawConnection) -> None:
        conn.send(b"HTTP/1.1 503 Busy\r\nContent-Length: 100000\r\n\r\nbusy ")
        conn.trickle(b"." * 100000, every=0.3)

    with raw_http_server(trickle) as server:
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            send(registry, server.url(), deadline_in=1.5)
        assert time.monotonic() - started < 30
    assert caught.value.http_status == 503
    assert "busy" in str(caught.value)


def test_an_attempt_past_its_deadline_does_not_connect(registry):
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with raw_http_server(lambda c: c.send(reply)) as server, pytest.raises(DeadlineExceeded):
        send(registry, server.url(), deadline_in=-1)
    assert server.requests == []


def test_small_2xx_bodies_are_read_so_the_connection_is_reused(registry):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def two_answers(conn: RawConnection) -> None:
        conn.send(answer)
        conn.sock.recv(65536)  # the second request on the same connection
        conn.send(answer)

    with raw_http_server(two_answers) as server:
        send(registry, server.url())
        send(registry, server.url())
        assert server.closed.wait(30)
    assert len(server.requests) == 1  # the second request came over the first connection


@pytest.mark.parametrize(
    "value", ["²", "١٢", "12.5", "-3", "soon", "9" * 400, "Wed, 99 Foo 99999 99:99:99 GMT", ""]
)
def test_unusable_retry_after_values_are_ignored(value):
    assert parse_retry_after(value) is None


def test_retry_after_superscript_from_a_real_server_is_ignored(registry):
    answer = "HTTP/1.1 429 Slow\r\nRetry-After: ²\r\nContent-Length: 4\r\n\r\nslow".encode()
    with raw_http_server(lambda c: c.send(answer)) as server, pytest.raises(TransientError) as caught:
        send(registry, server.url())
    assert caught.value.http_status == 429 and caught.value.retry_after is None


def test_body_cap_is_small():
    assert BODY_CAP <= 64 * 1024


def test_a_late_cut_never_touches_a_connection_another_send_now_uses():
    import socket
    import types

    from channels.wire import AttemptConnection, note_in_use, watching

    mine, peer = socket.socketpair()
    connection = types.SimpleNamespace(sock=mine)
    first, second = AttemptConnection(), AttemptConnection()
    with watching(first):
        note_in_use(connection)
    first.cut()  # released when its send ended: a late deadline does nothing
    with watching(first):
        note_in_use(connection)
        with watching(second):  # the pool handed the connection to another send
            note_in_use(connection)
        first.cut()  # no longer the owner
        peer.sendall(b"x")
        assert mine.recv(1) == b"x"  # still open
        second.connection = connection
        with watching(second):
            note_in_use(connection)
            second.cut()
            assert mine.recv(1) == b""  # the owner's cut shuts it
    mine.close()
    peer.close()
