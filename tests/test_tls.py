"""HTTPS is verified: a self-signed endpoint is refused until its CA is configured with [tls] ca_file.

(SMTP STARTTLS and MQTTS are covered the same way in tests/channels/test_email.py and test_mqtt.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.servers.http import RecordingServer


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[RecordingServer]:
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    server = RecordingServer(tls=context).start()
    yield server
    server.stop()


def test_self_signed_https_endpoint_is_refused(database, https_server):
    channel = insert_channel(database, "webhook", {"url": https_server.url("/secure", host="localhost")})
    job_id = insert_notification_job(database, channel)

    drain(database)

    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"] == f"TLS certificate verification failed for localhost:{https_server.port}"
    assert https_server.received() == []


def test_https_endpoint_is_accepted_once_its_ca_is_configured(database, https_server, ca, tmp_path: Path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    channel = insert_channel(database, "webhook", {"url": https_server.url("/secure", host="localhost")})
    job_id = insert_notification_job(database, channel)

    drain(database, tls={"ca_file": str(ca_file)})

    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
    assert len(https_server.received("/secure")) == 1


def test_certificate_for_another_name_is_refused_even_with_the_ca(database, ca, tmp_path: Path):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("other.example.test").configure_cert(context)
    server = RecordingServer(tls=context).start()
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        channel = insert_channel(database, "webhook", {"url": server.url("/x", host="localhost")})
        job_id = insert_notification_job(database, channel)

        drain(database, tls={"ca_file": str(ca_file)})

        assert job(database, "notification_jobs", job_id)["status"] == "FAILED"
        assert (
            "TLS certificate verification failed" in job(database, "notification_jobs", job_id)["last_error"]
        )
        assert server.received() == []
    finally:
        server.stop()
