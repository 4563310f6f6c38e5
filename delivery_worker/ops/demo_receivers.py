"""The receivers `delivery-worker demo` sends to: an HTTP server on loopback and an MQTT subscriber.

Both only record what arrives, so the demo can print what a real Slack, Teams or webhook endpoint
(or an MQTT consumer) would have been given. Loopback only: the HTTP server binds 127.0.0.1 on a
port the kernel picks, and the MQTT subscriber talks to a broker on 127.0.0.1 if one answers.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"
MQTT_PORT = 1883
MQTT_WAIT_SECONDS = 3.0
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Received:
    """One request (or MQTT message) as it arrived."""

    method: str  # "PUBLISH" for MQTT
    path: str  # the URL path, or the MQTT topic
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class HttpReceiver:
    """A threaded HTTP server on 127.0.0.1 that answers every POST with 200 and records it."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.received.append(Received("POST", self.path, dict(self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                pass  # what arrived is printed by the demo itself

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-receiver", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests_to(self, path: str) -> list[Received]:
        with self.lock:
            return [request for request in self.received if request.path == path]


def broker_answers(host: str = LOOPBACK, port: int = MQTT_PORT, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on the MQTT port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class MqttSubscriber:
    """A paho client subscribed to ``topic_filter`` on the local broker, recording each message."""

    def __init__(self, topic_filter: str, host: str = LOOPBACK, port: int = MQTT_PORT) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.topic_filter = topic_filter
        self.host, self.port = host, port
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dw-demo-{uuid.uuid4().hex[:12]}")
        self.client.on_connect = lambda client, *_args: client.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = lambda _client, _data, message: self._record(
            message.topic, bytes(message.payload)
        )

    def _record(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.received.append(Received("PUBLISH", topic, {}, payload))

    def start(self) -> bool:
        """Connect and subscribe; False if the broker did not let it within a few seconds."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError:
            return False
        self.client.loop_start()
        if self.subscribed.wait(MQTT_WAIT_SECONDS):
            return True
        self.stop()
        return False

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout: float = MQTT_WAIT_SECONDS) -> None:
        """Until ``count`` messages arrived or ``timeout`` passed: the broker acknowledges a publish
        to the worker and forwards it to this subscriber at about the same time, not in order."""
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)
