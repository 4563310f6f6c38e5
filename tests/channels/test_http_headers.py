"""Operator-written webhook headers are refused at config parse unless they are valid on the wire."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from channels.errors import InvalidChannelConfig
from channels.registry import ChannelRegistry, build_registry
from channels.webhook import WebhookChannel
from tests.servers.raw_http import raw_http_server
from tests.support import make_delivery, make_settings

SECRET_VALUE = "hdr-secret-value-31337"


@pytest.fixture
def registry() -> Iterator[ChannelRegistry]:
    registry = build_registry(make_settings())
    yield registry
    registry.close()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X Bad": SECRET_VALUE}, "config.headers.'X Bad': not a valid header name"),
        ({"X-Bad:": SECRET_VALUE}, "not a valid header name"),
        ({"": SECRET_VALUE}, "not a valid header name"),
        ({"X-Ünï": SECRET_VALUE}, "not a valid header name"),
        ({"Host": SECRET_VALUE}, "config.headers.Host: the Host header is set by the worker"),
        ({"content-length": "5"}, "the content-length header is set by the worker"),
        ({"Transfer-Encoding": "chunked"}, "the Transfer-Encoding header is set by the worker"),
        ({"Connection": "close"}, "the Connection header is set by the worker"),
        ({"X-A": SECRET_VALUE, "x-a": SECRET_VALUE}, "config.headers.x-a: the header is given twice"),
        ({"X-Key": f"{SECRET_VALUE}\r\nX-Injected: 1"}, "config.headers.X-Key contains a line break"),
        ({"X-Key": f"{SECRET_VALUE}\n"}, "contains a line break or control character"),
        ({"X-Key": f"{SECRET_VALUE}\x00"}, "contains a line break or control character"),
        ({"X-Key": f"{SECRET_VALUE}\x1b[31m"}, "contains a line break or control character"),
        ({"X-Key": f"{SECRET_VALUE}\x85"}, "contains a line break or control character"),
        ({"X-Key": f" {SECRET_VALUE}"}, "config.headers.X-Key has leading or trailing whitespace"),
        ({"X-Key": f"{SECRET_VALUE}\t"}, "has leading or trailing whitespace"),
        ({"X-Key": f"{SECRET_VALUE}\u2028"}, "contains characters a header cannot carry"),
        ({"X-Key": True}, "config.headers.X-Key must be a string"),
        ({"X-Key": {"a": SECRET_VALUE}}, "must be a string"),
    ],
)
def test_bad_headers_are_refused_naming_the_header_never_the_value(registry, headers, message):
    with pytest.raises(InvalidChannelConfig) as caught:
        WebhookChannel(registry.context).parse_config({"url": "https://h.test/x", "headers": headers})
    assert message in str(caught.value)
    assert SECRET_VALUE not in str(caught.value)


def test_good_headers_are_sent_as_given_and_framing_is_ours(registry):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    headers = {
        "X-Api-Key": "k 1\t2",
        "Authorization": "Bearer abc",
        "Content-Type": "application/x-custom",
        "N": 5,
    }
    with raw_http_server(lambda c: c.send(answer)) as server:
        channel = WebhookChannel(registry.context)
        config = channel.parse_config({"url": server.url(), "headers": headers})
        channel.send(config, make_delivery())
    head = server.requests[0].partition(b"\r\n\r\n")[0].decode("latin-1").lower().split("\r\n")
    assert "x-api-key: k 1\t2" in head and "authorization: bearer abc" in head and "n: 5" in head
    assert "content-type: application/x-custom" in head
    assert sum(line.startswith("content-length:") for line in head) == 1
    assert not any(line.startswith("transfer-encoding:") for line in head)
    assert sum(line.startswith("host:") for line in head) == 1


def test_a_cookie_one_receiver_sets_never_travels_with_the_next_post(registry):
    """One session serves every tenant: a Set-Cookie from one tenant's receiver must not be sent with
    another tenant's alert to the same host."""
    answer = b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=tenant-a-cookie; Path=/\r\nContent-Length: 0\r\n\r\n"
    with raw_http_server(lambda c: c.send(answer)) as server:
        channel = WebhookChannel(registry.context)
        for path in ("/tenant-a", "/tenant-b"):
            channel.send(channel.parse_config({"url": server.url(path)}), make_delivery())
    assert len(server.requests) == 2
    assert b"tenant-a-cookie" not in server.requests[1]
    assert b"\r\ncookie:" not in server.requests[1].lower()


def test_configured_headers_replace_the_defaults_whatever_their_case(registry):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    headers = {"user-agent": "receiver-wants-this/1", "ACCEPT": "application/json"}
    with raw_http_server(lambda c: c.send(answer)) as server:
        channel = WebhookChannel(registry.context)
        channel.send(channel.parse_config({"url": server.url(), "headers": headers}), make_delivery())
    head = server.requests[0].partition(b"\r\n\r\n")[0].decode("latin-1").lower().split("\r\n")
    assert [line for line in head if line.startswith("user-agent:")] == ["user-agent: receiver-wants-this/1"]
    assert [line for line in head if line.startswith("accept:")] == ["accept: application/json"]


def test_credentials_in_the_url_are_sent_as_basic_auth(registry):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with raw_http_server(lambda c: c.send(answer)) as server:
        channel = WebhookChannel(registry.context)
        url = server.url("/hook?x=1").replace("http://", "http://alice:s%20cret@")
        channel.send(channel.parse_config({"url": url}), make_delivery())
    request_line, _, rest = server.requests[0].partition(b"\r\n")
    assert request_line == b"POST /hook?x=1 HTTP/1.1"
    # base64 of "alice:s cret": the userinfo is unquoted, as requests always did
    assert b"\r\nAuthorization: Basic YWxpY2U6cyBjcmV0\r\n" in b"\r\n" + rest
