"""The outbound-address guard also covers tenant-written SMTP, MQTT and SNMP hosts.

Loopback stands in for a private address: with loopback not opened, the job fails before any
connection is made, and the local server sees nothing.
"""

from __future__ import annotations

import socket
import threading

from tests.rows import drain, insert_channel, insert_notification_job, job
from tests.servers.smtp import smtp_config, smtp_server
from tests.servers.snmp_receiver import snmp_receiver

CLOSED = {"allowed_networks": ()}  # the production default: no private or loopback address


def test_smtp_host_is_checked(database):
    with smtp_server() as server:
        config = {"smtp": smtp_config(server.port), "recipients": {"to": ["ops@acme.test"]}}
        job_id = insert_notification_job(database, insert_channel(database, "email", config))

        drain(database, http=CLOSED)

        assert server.messages == []
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"].startswith("refusing to connect to 127.0.0.1 (loopback address)")


def test_mqtt_broker_host_is_checked(database):
    accepted = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        listener.settimeout(0.2)

        def watch() -> None:
            try:
                listener.accept()
                accepted.set()
            except OSError:
                pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        job_id = insert_notification_job(
            database, insert_channel(database, "mqtt", {"broker_url": f"mqtt://127.0.0.1:{port}"})
        )
        drain(database, http=CLOSED)
        watcher.join()

    assert not accepted.is_set()
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"].startswith("refusing to connect to 127.0.0.1 (loopback address)")


def test_snmp_host_is_checked(database):
    with snmp_receiver(community="public") as receiver:
        channel = insert_channel(database, "snmp", {"host": "127.0.0.1", "port": receiver.port})
        job_id = insert_notification_job(database, channel)

        drain(database, http=CLOSED)

        assert receiver.traps == []
    row = job(database, "notification_jobs", job_id)
    assert row["status"] == "FAILED"
    assert row["last_error"].startswith("refusing to connect to 127.0.0.1 (loopback address)")


def test_opening_the_network_lets_the_same_delivery_through(database):
    with smtp_server() as server:
        config = {"smtp": smtp_config(server.port), "recipients": {"to": ["ops@acme.test"]}}
        job_id = insert_notification_job(database, insert_channel(database, "email", config))

        drain(database, http={"allowed_networks": (), "allow_private_networks": True})

        assert len(server.messages) == 1
    assert job(database, "notification_jobs", job_id)["status"] == "COMPLETED"
