"""Descriptors and threads held by MQTT connections: 200 channels with distinct credentials.

Each configuration runs in a fresh Python process: one MqttChannel publishes one QoS 1 message per
user name (``tenant-<n>``: distinct credentials, so distinct pooled connections) to the Mosquitto
broker on 127.0.0.1:1883 (anonymous access: any user name is accepted), then reports the open file
descriptors (``/proc/self/fd``), paho network threads and pooled connections. The "unbounded" row
sets ``[mqtt] max_connections`` above the number of channels, as the worker behaved before the pool.

    .venv/bin/python -m bench.mqtt_connections               # 200 channels
    .venv/bin/python -m bench.mqtt_connections --channels 50
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
import uuid

BROKER_URL = "mqtt://127.0.0.1:1883"


def counts() -> tuple[int, int]:
    paho = [t for t in threading.enumerate() if t.name.startswith("paho-mqtt-client-")]
    return len(os.listdir("/proc/self/fd")), len(paho)


def child(channels: int, max_connections: int, idle: float, wait: float) -> dict[str, float]:
    from bench.sample import sample_delivery
    from channels.context import ChannelContext
    from channels.http import HttpClient
    from channels.mqtt import MqttChannel
    from delivery_worker.config import load_settings

    settings = load_settings("/dev/null", environ={})
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    settings = dataclasses.replace(
        settings,
        http=dataclasses.replace(settings.http, allowed_networks=loopback),
        mqtt=dataclasses.replace(
            settings.mqtt, max_connections=max_connections, connection_idle_seconds=idle
        ),
    )
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="bench", pool_size=1)
    channel = MqttChannel(ChannelContext(settings=settings, http=http))
    topic = f"dw-bench/{uuid.uuid4().hex}"
    delivery = sample_delivery()
    channel.send(channel.parse_config({"broker_url": BROKER_URL, "topic": topic}), delivery)  # warm
    fds_before, threads_before = counts()
    started = time.monotonic()
    for number in range(channels):
        raw = {"broker_url": BROKER_URL, "topic": topic, "username": f"tenant-{number}"}
        channel.send(channel.parse_config(raw), delivery)
    elapsed = time.monotonic() - started
    time.sleep(1.0 + wait)  # evicted connections finish closing in background
    fds_after, threads_after = counts()
    result = {
        "fds_before": fds_before,
        "fds_after": fds_after,
        "threads_before": threads_before,
        "threads_after": threads_after,
        "pooled": channel.pool_size(),
        "seconds": elapsed,
    }
    channel.close()
    return result


def run(label: str, channels: int, max_connections: int, idle: float, wait: float) -> dict[str, float | str]:
    spec = json.dumps([channels, max_connections, idle, wait])
    args = [sys.executable, "-m", "bench.mqtt_connections", "--child", spec]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return {"label": label, **json.loads(output.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(*json.loads(options.child))))
        return
    n = options.channels
    rows = [
        run("unbounded (max_connections > n)", n, n + 10, 600.0, 0.0),
        run("pool, defaults (32, 60 s)", n, 32, 60.0, 0.0),
        run("pool 32, idle 2 s, after 3 s", n, 32, 2.0, 3.0),
    ]
    print(f"MQTT: {n} channels with distinct credentials, one process each")
    header = ("fds +", "threads +", "pooled", "s")
    print(f"{'configuration':34} " + " ".join(f"{name:>9}" for name in header))
    for row in rows:
        fds = int(row["fds_after"]) - int(row["fds_before"])
        threads = int(row["threads_after"]) - int(row["threads_before"])
        print(
            f"{row['label']:34} {fds:+9d} {threads:+9d} {int(row['pooled']):9d} {float(row['seconds']):9.1f}"
        )


if __name__ == "__main__":
    main()
