"""Issue 12 item 7 through the worker: a 2xx is a delivery, sent once, whatever follows its status line;
bad headers and unusable Retry-After values never become "internal error" retries."""

from __future__ import annotations

import pytest

from tests.rows import drain, insert_channel, insert_notification_job, job, log_rows
from tests.servers.raw_http import RawConnection, endless, raw_http_server

BROKEN_2XX = {
    "broken gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\n"
    + b"\x1f\x8bnot-gzip!!",
    "bad chunking": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n",
    "150 headers": b"HTTP/1.1 202 Accepted\r\n"
    + b"".join(f"X-H{i}: {i}\r\n".encode() for i in range(150))
    + b"Content-Length: 0\r\n\r\n",
    "truncated body": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly a bit",
}


@pytest.mark.parametrize("answer", BROKEN_2XX.values(), ids=BROKEN_2XX.keys())
def test_a_2xx_with_an_unreadable_rest_is_delivered_once(database, answer):
    with raw_http_server(lambda conn: conn.send(answer)) as server:
        job_id = insert_notification_job(database, insert_channel(database, "webhook", {"url": server.url()}))
        drain(database, worker={"quick_retries": 2})
        assert len(server.requests) == 1  # no quick retry, no durable retry
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "COMPLETED", row["last_error"]
    assert [r["success"] for r in log_rows(database, job_id)] == [True]


def test_an_endless_chunked_200_is_delivered_once(database):
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with raw_http_server(lambda conn: endless(conn, head, b"10000\r\n" + b"x" * 65536 + b"\r\n")) as server:
        job_id = insert_notification_job(database, insert_channel(database, "webhook", {"url": server.url()}))
        drain(database)
        assert len(server.requests) == 1
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"


def test_bad_headers_fail_at_once_with_a_clear_error(database):
    with raw_http_server(lambda conn: conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) as server:
        config = {"url": server.url(), "headers": {"X-Key": " padded-value"}}
        job_id = insert_notification_job(database, insert_channel(database, "webhook", config))
        drain(database)
        assert server.requests == []
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["attempts"] == 1
    assert row["last_error"] == "config.headers.X-Key has leading or trailing whitespace"


def test_a_superscript_retry_after_is_an_ordinary_retry(database):
    def busy(conn: RawConnection) -> None:
        conn.send("HTTP/1.1 503 Busy\r\nRetry-After: ²\r\nContent-Length: 4\r\n\r\nbusy".encode())

    with raw_http_server(busy) as server:
        job_id = insert_notification_job(database, insert_channel(database, "webhook", {"url": server.url()}))
        drain(database, worker={"max_attempts": 2})
        assert len(server.requests) == 2
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED" and row["last_error"] == "webhook returned HTTP 503: busy"
