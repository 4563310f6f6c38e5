"""MQTT channel against real Mosquitto brokers on 127.0.0.1 (the system one on 1883, plus throwaway
TLS / password brokers) and a fake broker that never acknowledges."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from channels import mqtt_connection
from channels.context import ChannelContext
from channels.errors import DeadlineExceeded, InvalidChannelConfig, PermanentError, TransientError
from channels.http import HttpClient
from channels.mqtt import (
    DEFAULT_TOPIC,
    MqttChannel,
    MqttConfig,
    encode_payload,
    normalise_config,
    render_topic,
    sanitise_topic_value,
)
from delivery_worker.config import Settings
from tests.servers.mqtt_subscriber import WAIT, Subscriber
from tests.servers.mqtt_tls_broker import (
    CONNACK_ACCEPTED,
    CONNACK_BAD_CREDENTIALS,
    CONNACK_NOT_AUTHORISED,
    CONNACK_SERVER_UNAVAILABLE,
    Broker,
    FakeBroker,
    free_port,
    mosquitto_binary,
    mosquitto_password_broker,
    mosquitto_tls_broker,
)
from tests.support import SAMPLE_PAYLOAD, make_delivery, make_settings

HOST = "127.0.0.1"
PORT = 1883
BROKER_URL = f"mqtt://{HOST}:{PORT}"


def _system_broker_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=1):
            return True
    except OSError:
        return False


needs_broker = pytest.mark.skipif(not _system_broker_up(), reason=f"no MQTT broker on {HOST}:{PORT}")
needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto binary not installed")


# --- helpers -------------------------------------------------------------------------------------


def channel_for(settings: Settings | None = None) -> MqttChannel:
    settings = settings or make_settings(mqtt={"connect_timeout": 2.0, "publish_timeout": 3.0})
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="test", pool_size=1)
    return MqttChannel(ChannelContext(settings=settings, http=http))


def unique_prefix() -> str:
    return f"dw-test/{uuid.uuid4().hex}"


def wait_until(predicate: Any, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def channel() -> Iterator[MqttChannel]:
    ch = channel_for()
    yield ch
    ch.close()


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    sub = Subscriber()
    yield sub
    sub.close()


# --- config --------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = channel_for().parse_config({"broker_url": BROKER_URL})
    assert config == MqttConfig(host=HOST, port=1883, tls=False, topic=DEFAULT_TOPIC, qos=1, retain=False)
    assert config.tls_verify is True
    assert config.secrets() == ()


def test_mqtts_default_port_and_secrets() -> None:
    config = channel_for().parse_config(
        {"broker_url": "mqtts://broker.example", "username": "u", "password": "pw-123"}
    )
    assert (config.host, config.port, config.tls) == ("broker.example", 8883, True)
    assert config.secrets() == ("pw-123",)
    assert "pw-123" not in repr(config)


def test_credentials_in_url_are_used_and_secret() -> None:
    config = channel_for().parse_config({"broker_url": "mqtt://bob:p%40ss@h:1884"})
    assert (config.username, config.password, config.port) == ("bob", "p@ss", 1884)
    assert config.secrets() == ("p@ss",)


def test_lenient_scalars() -> None:
    config = channel_for().parse_config(
        {"broker_url": BROKER_URL, "qos": "2", "retain": "true", "tls_verify": "false"}
    )
    assert (config.qos, config.retain, config.tls_verify) == (2, True, False)


def test_alternate_spelling_is_normalised_to_broker_url() -> None:
    assert normalise_config({"broker_host": "h", "broker_port": 1884, "topic": "t"}) == {
        "broker_url": "mqtt://h:1884",
        "topic": "t",
    }
    assert normalise_config({"broker_host": "h", "use_tls": True}) == {"broker_url": "mqtts://h:8883"}
    assert normalise_config({"broker_host": "h", "tls": "true", "broker_port": "9999"}) == {
        "broker_url": "mqtts://h:9999"
    }
    assert normalise_config({"broker_host": "::1"}) == {"broker_url": "mqtt://[::1]:1883"}
    config = channel_for().parse_config({"broker_host": "::1"})
    assert (config.host, config.port, config.broker) == ("::1", 1883, "[::1]:1883")


def test_broker_url_wins_over_alternate_spelling() -> None:
    config = channel_for().parse_config(
        {"broker_url": "mqtt://primary:1883", "broker_host": "other", "broker_port": 99999, "tls": True}
    )
    assert (config.host, config.port, config.tls) == ("primary", 1883, False)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({}, "broker_url"),
        ({"broker_url": "http://h:1883"}, "broker_url"),
        ({"broker_url": "h:1883"}, "broker_url"),
        ({"broker_url": "mqtt://h:70000"}, "broker_url"),
        ({"broker_url": "mqtt://h:0"}, "broker_url"),
        ({"broker_url": "mqtt://"}, "broker_url"),
        ({"broker_url": "mqtt://h:1883/some/path"}, "broker_url"),
        ({"broker_url": 1883}, "broker_url"),
        ({"broker_host": 5}, "broker_host"),
        ({"broker_host": "mqtt://h"}, "broker_host"),
        ({"broker_host": "h", "broker_port": "abc"}, "broker_port"),
        ({"broker_host": "h", "broker_port": 0}, "broker_port"),
        ({"broker_host": "h", "broker_port": 65536}, "broker_port"),
        ({"broker_host": "h", "broker_port": True}, "broker_port"),
        ({"broker_host": "h", "use_tls": "maybe"}, "use_tls"),
        ({"broker_url": BROKER_URL, "qos": 3}, "qos"),
        ({"broker_url": BROKER_URL, "qos": -1}, "qos"),
        ({"broker_url": BROKER_URL, "qos": "high"}, "qos"),
        ({"broker_url": BROKER_URL, "qos": True}, "qos"),
        ({"broker_url": BROKER_URL, "qos": 1.5}, "qos"),
        ({"broker_url": BROKER_URL, "retain": "maybe"}, "retain"),
        ({"broker_url": BROKER_URL, "retain": 2}, "retain"),
        ({"broker_url": BROKER_URL, "tls_verify": "nah"}, "tls_verify"),
        ({"broker_url": BROKER_URL, "topic": "alerts/#"}, "topic"),
        ({"broker_url": BROKER_URL, "topic": "alerts/+/x"}, "topic"),
        ({"broker_url": BROKER_URL, "topic": "a\x00b"}, "topic"),
        ({"broker_url": BROKER_URL, "topic": 5}, "topic"),
        ({"broker_url": BROKER_URL, "topic": "a/{0}"}, "topic"),
        ({"broker_url": BROKER_URL, "topic": "a/{device_id"}, "topic"),
        ({"broker_url": BROKER_URL, "username": 5}, "username"),
        ({"broker_url": BROKER_URL, "password": "pw"}, "password"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(InvalidChannelConfig) as info:
        channel_for().parse_config(raw)
    assert key in str(info.value)
    assert "pw" not in str(info.value).replace("password", "")


def test_config_must_be_an_object() -> None:
    with pytest.raises(InvalidChannelConfig, match="config must be a JSON object"):
        channel_for().parse_config("mqtt://h")  # type: ignore[arg-type]


# --- topic and body ------------------------------------------------------------------------------


def test_placeholder_values_cannot_add_levels_or_wildcards() -> None:
    assert sanitise_topic_value("a/b#c+d\x00e") == "a_b_c_d_e"
    values = {"tenant_id": "t", "device_id": "../x/#", "site_id": "+"}
    assert render_topic("alerts/{tenant_id}/{site_id}/{device_id}", values) == "alerts/t/_/.._x__"


def test_topic_that_renders_empty_is_permanent() -> None:
    with pytest.raises(PermanentError, match="empty"):
        render_topic("{device_id}", {"device_id": ""})


def test_body_is_compact_utf8_json() -> None:
    payload = {"message": "Température > 85°C", "n": 1, "nested": {"a": [1, 2]}}
    assert encode_payload(payload) == '{"message":"Température > 85°C","n":1,"nested":{"a":[1,2]}}'.encode()
    assert json.loads(encode_payload({"bad": "\ud800"})) == {"bad": "\ud800"}


# --- publishing to the real broker ---------------------------------------------------------------


@needs_broker
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_arrives_with_topic_payload_and_qos(
    channel: MqttChannel, subscriber: Subscriber, qos: int
) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    template = f"{prefix}/{{tenant_id}}/{{site_id}}/{{device_id}}/{{alert_type}}/{{severity}}/{{alert_id}}"
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": template, "qos": qos})
    delivery = make_delivery()

    receipt = channel.send(config, delivery)

    msg = subscriber.get()
    assert msg.topic == f"{prefix}/tenant-a/plant-3/sensor-17/THRESHOLD/CRITICAL/1001"
    assert msg.payload == json.dumps(SAMPLE_PAYLOAD, separators=(",", ":")).encode()
    assert json.loads(msg.payload) == SAMPLE_PAYLOAD
    assert msg.qos == qos
    assert msg.retain is False
    assert receipt.http_status is None
    assert msg.topic in receipt.detail


@needs_broker
def test_default_qos_is_one(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    channel.send(channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/a"}), make_delivery())
    assert subscriber.get().qos == 1


@needs_broker
def test_retained_message_reaches_a_later_subscriber(channel: MqttChannel) -> None:
    topic = f"{unique_prefix()}/retained"
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": topic, "retain": True})
    channel.send(config, make_delivery())

    late = Subscriber()
    try:
        late.subscribe(topic)
        msg = late.get()
        assert msg.retain is True
        assert json.loads(msg.payload) == SAMPLE_PAYLOAD
    finally:
        late.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(WAIT)  # clear it
        late.close()


@needs_broker
def test_device_id_cannot_redirect_the_topic(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/{{device_id}}/alert"})
    payload = {**SAMPLE_PAYLOAD, "device_id": "../../other/tree/#"}
    channel.send(config, make_delivery(payload))
    msg = subscriber.get()
    assert msg.topic == f"{prefix}/.._.._other_tree__/alert"
    assert json.loads(msg.payload)["device_id"] == "../../other/tree/#"


@needs_broker
def test_alternate_spelling_publishes(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_host": HOST, "broker_port": PORT, "topic": f"{prefix}/x"})
    channel.send(config, make_delivery())
    assert subscriber.get().topic == f"{prefix}/x"


@needs_broker
def test_sends_reuse_one_connection(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/{{alert_id}}"})
    channel.send(config, make_delivery({**SAMPLE_PAYLOAD, "alert_id": 1}))
    # a config parsed again (same broker and credentials) shares the pooled connection
    again = channel.parse_config({"broker_host": HOST, "broker_port": str(PORT), "topic": f"{prefix}/x"})
    channel.send(again, make_delivery({**SAMPLE_PAYLOAD, "alert_id": 2}))
    assert {subscriber.get().topic, subscriber.get().topic} == {f"{prefix}/1", f"{prefix}/x"}
    assert channel.connects == 1
    assert channel.pool_size() == 1


@needs_broker
def test_different_credentials_get_their_own_connection(channel: MqttChannel) -> None:
    topic = f"{unique_prefix()}/x"
    channel.send(channel.parse_config({"broker_url": BROKER_URL, "topic": topic}), make_delivery())
    with_user = channel.parse_config({"broker_url": BROKER_URL, "topic": topic, "username": "someone"})
    channel.send(with_user, make_delivery())
    assert channel.connects == 2
    assert channel.pool_size() == 2


@needs_broker
def test_concurrent_sends_share_the_connection(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/{{alert_id}}", "qos": 1})
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                channel.send(config, make_delivery({**SAMPLE_PAYLOAD, "alert_id": n * 100 + i}))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    topics = {subscriber.get().topic for _ in range(40)}
    assert topics == {f"{prefix}/{n * 100 + i}" for n in range(8) for i in range(5)}
    assert channel.connects == 1


@needs_broker
def test_close_disconnects_and_next_send_reconnects(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/x"})
    channel.send(config, make_delivery())
    (conn,) = channel._pool.values()

    channel.close()

    assert channel.pool_size() == 0
    assert wait_until(lambda: not conn.client.is_connected())
    assert wait_until(lambda: conn.client._thread is None), "network thread still running"
    channel.send(config, make_delivery())
    assert channel.connects == 2
    assert subscriber.get().topic == subscriber.get().topic == f"{prefix}/x"


@needs_broker
def test_dropped_connection_is_replaced(channel: MqttChannel, subscriber: Subscriber) -> None:
    prefix = unique_prefix()
    subscriber.subscribe(f"{prefix}/#")
    config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{prefix}/x"})
    channel.send(config, make_delivery())
    (conn,) = channel._pool.values()

    # Another client with the same id makes the broker drop ours (a broker restart looks alike).
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=conn.client_id)
    intruder.connect(HOST, PORT)
    intruder.loop_start()
    try:
        assert wait_until(lambda: conn.lost.is_set()), "broker did not drop the pooled client"
        channel.send(config, make_delivery())
    finally:
        intruder.disconnect()
        intruder.loop_stop()
    assert channel.connects == 2
    assert [subscriber.get().topic, subscriber.get().topic] == [f"{prefix}/x"] * 2


@needs_broker
def test_client_ids_are_unique(channel: MqttChannel) -> None:
    topic = f"{unique_prefix()}/x"
    channel.send(channel.parse_config({"broker_url": BROKER_URL, "topic": topic}), make_delivery())
    other = channel_for()
    try:
        other.send(other.parse_config({"broker_url": BROKER_URL, "topic": topic}), make_delivery())
        ids = [c.client_id for c in (*channel._pool.values(), *other._pool.values())]
        assert len(set(ids)) == 2
        assert all(i.startswith("delivery-worker-") for i in ids)
    finally:
        other.close()


# --- failures ------------------------------------------------------------------------------------


def test_closed_port_is_transient_and_quick() -> None:
    port = free_port()
    channel = channel_for()
    config = channel.parse_config(
        {"broker_url": f"mqtt://{HOST}:{port}", "username": "u", "password": "hunter2-secret"}
    )
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        channel.send(config, make_delivery())
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert f"{HOST}:{port}" in message
    assert "refused" in message
    assert "hunter2-secret" not in message
    assert channel.pool_size() == 0


def test_silent_broker_times_out_waiting_for_connack() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 0.5, "publish_timeout": 0.5}))
    with FakeBroker(connack=None) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}"})
        started = time.monotonic()
        with pytest.raises(TransientError, match="CONNACK") as info:
            channel.send(config, make_delivery())
        assert time.monotonic() - started < 2
        assert f"{HOST}:{fake.port}" in str(info.value)


def test_missing_puback_is_transient_after_publish_timeout() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 1.0, "publish_timeout": 0.5}))
    with FakeBroker(connack=CONNACK_ACCEPTED) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": 1})
        started = time.monotonic()
        with pytest.raises(TransientError, match="no PUBACK within 0.5s"):
            channel.send(config, make_delivery())
        assert 0.4 < time.monotonic() - started < 3
        assert channel.pool_size() == 0  # the unresponsive connection was dropped
        config2 = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": 2})
        with pytest.raises(TransientError, match="no PUBCOMP"):
            channel.send(config2, make_delivery())
    channel.close()


def test_qos0_is_sent_once_the_broker_answers_a_ping_after_it() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 1.0, "publish_timeout": 0.5}))
    with FakeBroker(connack=CONNACK_ACCEPTED, answer_pings=True) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": 0})
        assert "sent" in channel.send(config, make_delivery()).detail
        assert fake.publishes == 1
    channel.close()


def test_qos0_without_an_answer_after_it_is_not_sent() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 1.0, "publish_timeout": 0.5}))
    with FakeBroker(connack=CONNACK_ACCEPTED) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": 0})
        with pytest.raises(TransientError, match="no PINGRESP after the message within 0.5s"):
            channel.send(config, make_delivery())
    channel.close()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_broker_dropping_the_connection_over_a_publish_is_a_slow_transient_failure(qos: int) -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 1.0, "publish_timeout": 3.0}))
    with FakeBroker(connack=CONNACK_ACCEPTED, answer_pings=True, drop_on_publish=True) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": qos})
        with pytest.raises(TransientError, match="connection lost before the .*may have refused") as info:
            channel.send(config, make_delivery())
        assert info.value.slow  # no in-process quick retries: each would reconnect and be dropped again
        assert fake.connections == 1 and fake.publishes == 1
        assert channel.pool_size() == 0
    channel.close()


@pytest.mark.parametrize("connack", [CONNACK_BAD_CREDENTIALS, CONNACK_NOT_AUTHORISED])
def test_rejected_credentials_are_permanent(connack: bytes) -> None:
    channel = channel_for()
    with FakeBroker(connack=connack) as fake:
        config = channel.parse_config(
            {"broker_url": f"mqtt://{HOST}:{fake.port}", "username": "u", "password": "pw-XYZ-987"}
        )
        with pytest.raises(PermanentError) as info:
            channel.send(config, make_delivery())
    assert not isinstance(info.value, TransientError)
    assert "pw-XYZ-987" not in str(info.value)
    assert f"{HOST}:{fake.port}" in str(info.value)


def test_server_unavailable_is_transient() -> None:
    channel = channel_for()
    with FakeBroker(connack=CONNACK_SERVER_UNAVAILABLE) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}"})
        with pytest.raises(TransientError, match="Server unavailable"):
            channel.send(config, make_delivery())


def test_threads_waiting_behind_a_failed_connect_share_its_error() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 0.5, "publish_timeout": 0.5}))
    with FakeBroker(connack=None) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}"})
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                channel.send(config, make_delivery())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(6)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert time.monotonic() - started < 2  # not 6 x connect_timeout
        assert len(errors) == 6
        assert all(isinstance(e, TransientError) for e in errors)
        assert fake.connections == 1


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    with mosquitto_tls_broker(tmp_path_factory.mktemp("mqtt-tls")) as broker:
        yield broker


@needs_mosquitto
def test_mqtts_with_configured_ca(tls_broker: Broker) -> None:
    assert tls_broker.ca_path
    channel = channel_for(make_settings(tls={"ca_file": tls_broker.ca_path}, mqtt={"connect_timeout": 2.0}))
    sub = Subscriber(tls_broker.plain_port)
    try:
        topic = f"{unique_prefix()}/tls"
        sub.subscribe(topic)
        config = channel.parse_config({"broker_url": f"mqtts://{HOST}:{tls_broker.port}", "topic": topic})
        channel.send(config, make_delivery())
        msg = sub.get()
        assert json.loads(msg.payload) == SAMPLE_PAYLOAD
        # the alternate spelling with tls, and a host name the certificate also names
        alt = channel.parse_config(
            {"broker_host": "localhost", "broker_port": tls_broker.port, "use_tls": True, "topic": topic}
        )
        channel.send(alt, make_delivery())
        assert sub.get().topic == topic
    finally:
        sub.close()
        channel.close()


@needs_mosquitto
def test_mqtts_without_ca_fails_verification(tls_broker: Broker) -> None:
    channel = channel_for()
    config = channel.parse_config(
        {"broker_url": f"mqtts://{HOST}:{tls_broker.port}", "username": "u", "password": "tls-pw-555"}
    )
    with pytest.raises(PermanentError, match="certificate verification failed") as info:
        channel.send(config, make_delivery())
    assert not isinstance(info.value, TransientError)
    assert "tls-pw-555" not in str(info.value)
    assert f"{HOST}:{tls_broker.port}" in str(info.value)


@needs_mosquitto
def test_mqtts_tls_verify_false_accepts_unknown_ca(tls_broker: Broker) -> None:
    channel = channel_for()
    sub = Subscriber(tls_broker.plain_port)
    try:
        topic = f"{unique_prefix()}/insecure"
        sub.subscribe(topic)
        config = channel.parse_config(
            {"broker_url": f"mqtts://{HOST}:{tls_broker.port}", "topic": topic, "tls_verify": False}
        )
        channel.send(config, make_delivery())
        assert sub.get().topic == topic
    finally:
        sub.close()
        channel.close()


@needs_mosquitto
def test_plain_mqtt_to_a_tls_port_is_transient_and_bounded(tls_broker: Broker) -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 0.5}))
    config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{tls_broker.port}"})
    started = time.monotonic()
    with pytest.raises(TransientError):
        channel.send(config, make_delivery())
    assert time.monotonic() - started < 3


# --- username / password -------------------------------------------------------------------------

USERS = {"alice": "al1ce-pw", "watcher": "w4tch-pw"}


@pytest.fixture(scope="module")
def password_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if mosquitto_binary() is None:
        pytest.skip("mosquitto binary not installed")
    try:
        with mosquitto_password_broker(tmp_path_factory.mktemp("mqtt-auth"), USERS) as broker:
            yield broker
    except RuntimeError as exc:
        pytest.skip(str(exc))


@needs_mosquitto
def test_username_password(password_broker: Broker) -> None:
    channel = channel_for()
    sub = Subscriber(password_broker.port, username="watcher", password=USERS["watcher"])
    try:
        topic = f"{unique_prefix()}/auth"
        sub.subscribe(topic)
        url = f"mqtt://{HOST}:{password_broker.port}"
        config = channel.parse_config(
            {"broker_url": url, "topic": topic, "username": "alice", "password": USERS["alice"]}
        )
        channel.send(config, make_delivery())
        assert sub.get().topic == topic
        alt = channel.parse_config(
            {
                "broker_host": HOST,
                "broker_port": password_broker.port,
                "topic": topic,
                "username": "alice",
                "password": USERS["alice"],
            }
        )
        channel.send(alt, make_delivery())
        assert sub.get().topic == topic
        assert channel.connects == 1
    finally:
        sub.close()
        channel.close()


@needs_mosquitto
@pytest.mark.parametrize(
    "credentials",
    [{"username": "alice", "password": "wrong-pw-000"}, {"username": "mallory", "password": "wrong-pw-000"}],
)
def test_wrong_password_is_permanent(password_broker: Broker, credentials: dict[str, str]) -> None:
    channel = channel_for()
    config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{password_broker.port}", **credentials})
    with pytest.raises(PermanentError) as info:
        channel.send(config, make_delivery())
    assert not isinstance(info.value, TransientError)
    assert "wrong-pw-000" not in str(info.value)
    assert channel.pool_size() == 0


@needs_mosquitto
def test_anonymous_on_password_broker_is_permanent(password_broker: Broker) -> None:
    channel = channel_for()
    config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{password_broker.port}"})
    with pytest.raises(PermanentError, match="authori[sz]ed|user name or password"):
        channel.send(config, make_delivery())


# --- hostile values in topics (issue 13) ---------------------------------------------------------

HOSTILE = {
    "tab": ("a\tb", "a_b"),
    "newline": ("line1\nline2\r\n", "line1_line2__"),
    "nel": ("x\u0085y", "x_y"),
    "line separator": ("x\u2028y\u2029z", "x_y_z"),
    "c1 and del": ("\x7f\x9b", "__"),
    "wildcards": ("+#", "__"),
    "levels": ("a/b", "a_b"),
    "nul": ("a\x00b", "a_b"),
    "noncharacter": ("a\ufffeb\U0001ffff", "a_b_"),
}


@pytest.mark.parametrize(("value", "expected"), list(HOSTILE.values()), ids=list(HOSTILE))
def test_placeholder_values_lose_control_characters_and_separators(value: str, expected: str) -> None:
    assert sanitise_topic_value(value) == expected
    assert render_topic("alerts/{device_id}", {"device_id": value}) == f"alerts/{expected}"


@pytest.mark.parametrize("value", ["$SYS", "$share/g", "$"])
def test_a_placeholder_never_makes_a_dollar_topic(value: str) -> None:
    topic = render_topic("{device_id}/alerts", {"device_id": value})
    assert topic == "_" + value[1:].replace("/", "_") + "/alerts"
    assert render_topic("alerts/{device_id}", {"device_id": value}).startswith("alerts/$")  # only level 1


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("$SYS/broker/alerts", "must not start with \\$"),
        ("$aws/things/x", "must not start with \\$"),
        ("alerts\t/x", "U\\+0009"),
        ("alerts/\u2028", "U\\+2028"),
        ("alerts/\x85", "U\\+0085"),
    ],
)
def test_unsafe_configured_topics_are_refused_at_parse(topic: str, message: str) -> None:
    with pytest.raises(InvalidChannelConfig, match=message) as info:
        channel_for().parse_config({"broker_url": BROKER_URL, "topic": topic})
    assert "config.topic" in str(info.value)


def dollar_free(topic: str) -> str:
    return "_" + topic[1:] if topic.startswith("$") else topic


@needs_broker
def test_hostile_values_reach_a_subscriber_on_hash(channel: MqttChannel, subscriber: Subscriber) -> None:
    """Every hostile value yields a topic the broker accepts and a '#' subscriber receives; the
    connection survives all of them (one connect)."""
    marker = uuid.uuid4().hex
    subscriber.subscribe("#", qos=1)
    config = channel.parse_config(
        {"broker_url": BROKER_URL, "topic": "{device_id}/" + marker + "/{site_id}", "qos": 1}
    )
    hostile = ["$SYS", "a\tb", "line1\nline2", "x\u2028y", "+", "#", "$SYS/x/#"]
    for number, value in enumerate(hostile):
        payload = {**SAMPLE_PAYLOAD, "alert_id": number, "device_id": value, "site_id": value}
        channel.send(config, make_delivery(payload))

    expected = {f"{dollar_free(sanitise_topic_value(v))}/{marker}/{sanitise_topic_value(v)}" for v in hostile}
    received: set[str] = set()
    deadline = time.monotonic() + WAIT
    while received != expected and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            msg = subscriber.get(timeout=max(0.1, deadline - time.monotonic()))
            if marker in msg.topic:
                received.add(msg.topic)
    assert received == expected
    assert not any(topic.startswith("$") for topic in received)
    assert channel.connects == 1


# --- deadlines (issue 12) ------------------------------------------------------------------------


def test_silent_broker_is_cut_at_the_attempt_deadline() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 5.0, "publish_timeout": 5.0}))
    with FakeBroker(connack=None) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}"})
        delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + 0.5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            channel.send(config, delivery)
        assert time.monotonic() - started < 2.5  # not connect_timeout (5 s)
    channel.close()


def test_tls_handshake_that_never_finishes_is_cut_at_the_deadline() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 5.0, "publish_timeout": 5.0}))
    with FakeBroker(connack=None) as fake:  # accepts TCP, never speaks TLS
        config = channel.parse_config({"broker_url": f"mqtts://{HOST}:{fake.port}"})
        delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + 0.5)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline"):
            channel.send(config, delivery)
        assert time.monotonic() - started < 2.5
    channel.close()


def test_missing_puback_is_cut_at_the_deadline_and_the_link_dropped() -> None:
    channel = channel_for(make_settings(mqtt={"connect_timeout": 2.0, "publish_timeout": 5.0}))
    with FakeBroker(connack=CONNACK_ACCEPTED) as fake:
        config = channel.parse_config({"broker_url": f"mqtt://{HOST}:{fake.port}", "qos": 1})
        delivery = dataclasses.replace(make_delivery(), deadline=time.monotonic() + 0.8)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="waiting for the PUBACK"):
            channel.send(config, delivery)
        assert time.monotonic() - started < 2.5
        assert channel.pool_size() == 0
    channel.close()


# --- bounded connections (issue 12) --------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@needs_broker
def test_two_hundred_credentials_keep_connections_and_fds_bounded() -> None:
    channel = channel_for(
        make_settings(mqtt={"connect_timeout": 2.0, "publish_timeout": 3.0, "max_connections": 8})
    )
    topic = f"{unique_prefix()}/fd"
    try:
        channel.send(channel.parse_config({"broker_url": BROKER_URL, "topic": topic}), make_delivery())
        before = open_fds()
        for number in range(200):
            config = channel.parse_config(
                {"broker_url": BROKER_URL, "topic": topic, "username": f"tenant-{number}"}
            )
            channel.send(config, make_delivery())
            assert channel.pool_size() <= 8
        assert channel.connects == 201
        # Evicted clients finish closing in background: wait (generously) for their fds to go.
        assert wait_until(lambda: open_fds() - before <= 8 * 3 + 4, timeout=20), open_fds() - before
        paho_threads = [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")]
        assert len(paho_threads) <= 9
    finally:
        channel.close()


@needs_broker
def test_idle_connections_are_closed_without_traffic() -> None:
    channel = channel_for(make_settings(mqtt={"connection_idle_seconds": 0.3}))
    try:
        config = channel.parse_config({"broker_url": BROKER_URL, "topic": f"{unique_prefix()}/idle"})
        channel.send(config, make_delivery())
        (conn,) = channel._pool.values()
        assert wait_until(lambda: channel.pool_size() == 0, timeout=10)
        assert wait_until(lambda: conn.client._thread is None and conn.client._sockpairR is None, timeout=10)
        channel.send(config, make_delivery())
        assert channel.connects == 2
    finally:
        channel.close()


@pytest.mark.parametrize("with_deadline", [True, False])
def test_a_hanging_name_lookup_is_cut(monkeypatch: pytest.MonkeyPatch, with_deadline: bool) -> None:
    release = threading.Event()

    def hanging_lookup(*_args: Any) -> str:
        release.wait(10)
        return HOST

    monkeypatch.setattr(mqtt_connection, "check_host", hanging_lookup)
    timeout = 5.0 if with_deadline else 0.3
    channel = channel_for(make_settings(mqtt={"connect_timeout": timeout}))
    delivery = make_delivery()
    if with_deadline:
        delivery = dataclasses.replace(delivery, deadline=time.monotonic() + 0.3)
    expected = DeadlineExceeded if with_deadline else TransientError
    try:
        started = time.monotonic()
        with pytest.raises(expected, match="resolving the host name"):
            channel.send(channel.parse_config({"broker_url": "mqtt://broker.example.test"}), delivery)
        assert time.monotonic() - started < 2.5
    finally:
        release.set()
        channel.close()
