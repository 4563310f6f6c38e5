"""Where the test PostgreSQL server is, read from ``TEST_ADMIN_DSN`` in this one place.

Tests that put a proxy between a worker and the database (to cut, refuse or freeze its connections)
take the server's address from here and route a test database's DSN through the proxy with
``through``, so the suite runs against a server on any host and port.
"""

from __future__ import annotations

import os

import psycopg2.extensions

from tests.servers.tcp_proxy import TcpProxy

ADMIN_DSN = os.environ.get("TEST_ADMIN_DSN", "postgresql://127.0.0.1:5432/postgres")


def server_address() -> tuple[str, int]:
    """(host, port) of the test server; a proxy needs TCP, so a Unix-socket DSN is refused."""
    params = psycopg2.extensions.parse_dsn(ADMIN_DSN)
    host = params.get("host") or "127.0.0.1"
    if host.startswith("/") or "," in host:
        raise RuntimeError(f"TEST_ADMIN_DSN must name one TCP host for the proxy tests, got host={host!r}")
    return host, int(params.get("port") or 5432)


def proxy_to_database(kind: type[TcpProxy] = TcpProxy) -> TcpProxy:
    """A started proxy (a TcpProxy, or the subclass ``kind``) in front of the test server."""
    return kind(*server_address()).start()


def through(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    return psycopg2.extensions.make_dsn(dsn, host="127.0.0.1", port=str(proxy.port))
