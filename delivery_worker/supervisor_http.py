"""The one metrics and health listener of a ``run`` with several worker processes (supervisor.py).

Each worker process runs the ordinary listener of service.py on a loopback port of its own (any
free port); this one, on the configured address, answers from theirs:

* ``/metrics``: every process's exposition merged by metrics_merge.py, plus the supervisor's own
  series (``delivery_worker_processes``, ``delivery_worker_processes_running``,
  ``delivery_worker_process_restarts_total``).
* any other path (``/healthz`` and whatever health paths health.py serves): asked of every process;
  200 only when every process answers 2xx, else 503, with each process's answer in the JSON body.
  The checks themselves are health.py's, run in each process; nothing is re-implemented here.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest

from delivery_worker.bounded_http import BoundedHTTPServer, send_reply
from delivery_worker.metrics_merge import merge_expositions

log = structlog.get_logger("delivery_worker.supervisor_http")

HANDLER_THREADS = 4
MAX_CONNECTIONS = 64
IDLE_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 5.0
ASK_TIMEOUT_SECONDS = 5.0  # a process's own health check answers within ~2 s (health.py)
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Answer:
    process: int
    status: int | None  # None: the process could not be asked (starting, restarting, stuck)
    content_type: str = ""
    body: bytes = b""
    error: str = ""


def ask(process: int, port: int | None, method: str, path: str) -> Answer:
    """``method path`` of one worker process's listener."""
    if port is None:
        return Answer(process, None, error="not listening (starting or restarting)")
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=ASK_TIMEOUT_SECONDS)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return Answer(process, reply.status, reply.getheader("Content-Type", ""), reply.read())
    except (OSError, http.client.HTTPException) as exc:
        return Answer(process, None, error=f"no answer: {type(exc).__name__}")
    finally:
        conn.close()


class ProcessesListener:
    """A BoundedHTTPServer on a daemon thread; ``ports()`` gives each process's port (None: none yet)."""

    def __init__(
        self,
        host: str,
        port: int,
        ports: Callable[[], Sequence[int | None]],
        registry: CollectorRegistry,
        *,
        sampling_process: int = 0,
    ) -> None:
        self.ports = ports
        self.registry = registry
        self.sampling_process = sampling_process
        self.askers = ThreadPoolExecutor(8, thread_name_prefix="ask-process")
        self.httpd = BoundedHTTPServer(
            (host, port),
            _handler(self),
            threads=HANDLER_THREADS,
            max_connections=MAX_CONNECTIONS,
            idle_timeout=IDLE_SECONDS,
        )
        self.host = host
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve, name="processes-http", daemon=True)

    def start(self) -> ProcessesListener:
        self._thread.start()
        log.info("metrics.listening", host=self.host, port=self.port, processes=len(self.ports()))
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.stop()
        else:
            self.httpd.server_close()
        self.askers.shutdown(wait=False, cancel_futures=True)

    def ask_all(self, method: str, path: str) -> list[Answer]:
        ports = list(self.ports())
        return list(self.askers.map(lambda item: ask(item[0], item[1], method, path), enumerate(ports)))

    def metrics(self) -> bytes:
        answers = self.ask_all("GET", "/metrics")
        texts = [(a.process, a.body.decode("utf-8", "replace")) for a in answers if a.status == 200]
        merged = merge_expositions(texts, sampling_process=self.sampling_process)
        return merged.encode("utf-8") + generate_latest(self.registry)

    def health(self, path: str) -> tuple[int, bytes]:
        """Every process's answer to the same request: 200 only if all are 2xx."""
        answers = self.ask_all("GET", path)
        if answers and all(a.status == 404 for a in answers):
            return 404, answers[0].body
        healthy = bool(answers) and all(a.status is not None and 200 <= a.status < 300 for a in answers)
        body = {
            "status": "ok" if healthy else "unhealthy",
            "processes": [_described(a) for a in answers],
        }
        return (200 if healthy else 503), json.dumps(body).encode("utf-8")


def _described(answer: Answer) -> dict[str, Any]:
    described: dict[str, Any] = {"process": answer.process, "http_status": answer.status}
    if answer.error:
        described["error"] = answer.error
    elif answer.content_type.startswith("application/json"):
        try:
            described["answer"] = json.loads(answer.body)
        except ValueError:
            described["answer"] = answer.body.decode("utf-8", "replace")[:200]
    return described


def _handler(listener: ProcessesListener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "delivery-worker"
        timeout = READ_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _not_allowed(self) -> None:  # as one worker process's listener answers (health.py)
            self._reply(405, "text/plain; charset=utf-8", b"method not allowed: use GET or HEAD\n", True)

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

        def _answer(self, *, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                status, content_type, body = 200, CONTENT_TYPE_PLAIN_0_0_4, listener.metrics()
            else:
                status, body = listener.health(path)
                content_type = "application/json" if status != 404 else "text/plain; charset=utf-8"
            self._reply(status, content_type, body, send_body)

        def _reply(self, status: int, content_type: str, body: bytes, send_body: bool) -> None:
            send_reply(self, status, content_type, body, send_body=send_body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
