"""A separate paho client subscribed to the broker under test, recording what arrives."""

from __future__ import annotations

import queue
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

HOST = "127.0.0.1"
PORT = 1883
WAIT = 5.0


class Subscriber:
    """A separate paho client that records what arrives."""

    def __init__(self, port: int = PORT, *, username: str | None = None, password: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-sub-{uuid.uuid4().hex[:12]}")
        if username:
            self.client.username_pw_set(username, password)
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client.on_connect = lambda *_args: self._connected.set()
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.connect(HOST, port, keepalive=30)
        self.client.loop_start()
        assert self._connected.wait(WAIT), "subscriber could not connect"

    def subscribe(self, topic: str, qos: int = 2) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self._subscribed.wait(WAIT), "no SUBACK"

    def get(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def assert_nothing(self, timeout: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
