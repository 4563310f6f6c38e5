"""`check-config`: the effective configuration, the metrics listener it leads to, and deployment warnings.

Parsing (config.py) already refuses what is wrong for every deployment (exit 2). What is only wrong
for *some* deployments cannot be refused, because the worker cannot see how it is deployed: it is
printed as a warning on stderr (and logged by `run` as ``config.warning``), with what to change.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from delivery_worker.config import Settings, redacted_view
from delivery_worker.health import ENDPOINTS
from delivery_worker.service import CannotListen, ProcessEnvironment, listen_address

# After shutdown_timeout the worker has written or spooled everything (docs/reliability.md), then
# closes the listener (up to 2 s) and its channel connections and exits: this much on top.
SHUTDOWN_MARGIN_SECONDS = 5.0
# config/delivery-worker.service (a test keeps the two equal).
EXAMPLE_UNIT_TIMEOUT_STOP_SEC = 40.0
# Heroku sends SIGKILL 30 s after SIGTERM; Kubernetes' default terminationGracePeriodSeconds is 30.
PORT_PLATFORM_STOP_SECONDS = 30.0


def metrics_listener(settings: Settings, environment: ProcessEnvironment) -> dict[str, Any] | None:
    """Where `run` will serve /metrics and the probes, and which setting decided it."""
    address = listen_address(settings, environment)
    if address is None:
        return None
    host, port = address
    source = "[metrics] port" if settings.metrics.port > 0 else "$PORT"
    return {"host": host, "port": port, "from": source, "paths": list(ENDPOINTS)}


def deployment_warnings(settings: Settings, environment: ProcessEnvironment) -> list[str]:
    """What is valid in itself but wrong for the deployment this configuration most likely has."""
    warnings = []
    timeout = settings.worker.shutdown_timeout
    stop_takes = timeout + SHUTDOWN_MARGIN_SECONDS
    if environment.port is not None:
        kill_after, killer = PORT_PLATFORM_STOP_SECONDS, "a $PORT platform (Heroku) sends SIGKILL after 30 s"
        remedy = ""
    else:
        kill_after = EXAMPLE_UNIT_TIMEOUT_STOP_SEC
        killer = "the example systemd unit sends SIGKILL after TimeoutStopSec=40"
        remedy = f", or raise TimeoutStopSec (Kubernetes: terminationGracePeriodSeconds) to {stop_takes:g}"
    if stop_takes > kill_after:
        warnings.append(
            f"[worker] shutdown_timeout = {timeout:g}: a graceful stop takes up to {stop_takes:g} s "
            f"(shutdown_timeout + {SHUTDOWN_MARGIN_SECONDS:g} s to close connections and exit), "
            f"but {killer}, "
            "before the last outcomes are written or spooled (those jobs are sent again once their lease "
            f"expires): lower shutdown_timeout to at most {kill_after - SHUTDOWN_MARGIN_SECONDS:g}{remedy}"
        )
    if environment.port is not None and settings.metrics.port > 0:
        warnings.append(
            f"$PORT={environment.port} is set but [metrics] port = {settings.metrics.port} wins: nothing "
            "answers on $PORT, so a platform health check there fails; set [metrics] port = 0 to use $PORT"
        )
    return warnings


def check_config(settings: Settings, environ: Mapping[str, str], *, as_json: bool) -> int:
    """Print the result; 0 (warnings go to stderr), or 2 for a $PORT that is not a port."""
    try:
        environment = ProcessEnvironment.read(environ)
    except CannotListen as exc:  # $PORT set to something that is not a port: wrong everywhere
        print(f"delivery-worker: config error: {exc}", file=sys.stderr)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    listener = metrics_listener(settings, environment)
    warnings = deployment_warnings(settings, environment)
    for warning in warnings:
        print(f"delivery-worker: warning: {warning}", file=sys.stderr)
    view = redacted_view(settings)
    if as_json:
        report = {"ok": True, "source": settings.source, "metrics_listener": listener, "warnings": warnings}
        print(json.dumps({**report, "settings": view}, indent=2))
        return 0
    print(f"config OK ({settings.source})")
    if listener is None:
        print("metrics listener: none ([metrics] port = 0 and no $PORT)")
    else:
        paths = " ".join(listener["paths"])
        print(f"metrics listener: {listener['host']}:{listener['port']} (from {listener['from']}): {paths}")
    print(json.dumps(view, indent=2))
    return 0
