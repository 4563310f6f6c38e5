"""A TCP proxy on 127.0.0.1 that can cut every connection and refuse new ones, then recover.

Stands between the worker and PostgreSQL to simulate a failover or a network cut. ``stall()``
simulates a silent partition instead: connections stay open and accepted, but nothing is forwarded.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cutting = threading.Event()
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.stopped = threading.Event()
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def start(self) -> TcpProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cutting.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)  # the 5 s was for connecting: a quiet session is not a dead one
            with self.lock:
                self.sockets.update({client, upstream})
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                self.forwarding.wait()  # stalled: hold the bytes, say nothing
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def cut(self) -> None:
        """Drop every open connection and close new ones at once until restore()."""
        self.cutting.set()
        self._drop_open()

    def _drop_open(self) -> None:
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def stall(self) -> None:
        """Keep every connection open but forward nothing, both ways, until restore()."""
        self.forwarding.clear()

    def restore(self) -> None:
        """Accept and forward again. Connections opened before a stall are dropped: the bytes they
        held must not reach the server long after their client gave up on them."""
        if not self.forwarding.is_set():
            self._drop_open()
        self.cutting.clear()
        self.forwarding.set()

    def stop(self) -> None:
        self.stopped.set()
        self.forwarding.set()
        self.cut()
        self.listener.close()
