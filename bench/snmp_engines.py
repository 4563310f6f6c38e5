"""Memory of SNMPv3 engine state: RSS before and after traps from 200 distinct engine IDs.

Each configuration runs in a fresh Python process: one SnmpChannel sends one SNMPv3 authPriv trap
(SHA/AES) per engine ID to a UDP socket on 127.0.0.1 that never answers (traps need no answer),
then reports its resident set size (``/proc/self/statm``) and how many engines the pool holds. The
"unbounded" row sets ``[snmp] max_engines`` above the number of engine IDs, as the worker behaved
before the pool; the "idle" row also waits for ``engine_idle_seconds`` to pass.

    .venv/bin/python -m bench.snmp_engines               # 200 engine IDs
    .venv/bin/python -m bench.snmp_engines --engines 50  # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 1e6


def child(engines: int, max_engines: int, idle: float, wait: float) -> dict[str, float]:
    from bench.sample import sample_delivery
    from channels.context import ChannelContext
    from channels.http import HttpClient
    from channels.snmp import SnmpChannel
    from delivery_worker.config import load_settings

    settings = load_settings("/dev/null", environ={})
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    settings = dataclasses.replace(
        settings,
        http=dataclasses.replace(settings.http, allowed_networks=loopback),
        snmp=dataclasses.replace(settings.snmp, max_engines=max_engines, engine_idle_seconds=idle),
    )
    http = HttpClient(connect_timeout=1, read_timeout=1, user_agent="bench", pool_size=1)
    channel = SnmpChannel(ChannelContext(settings=settings, http=http))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))

    def config(engine_id: str) -> object:
        return channel.parse_config(
            {
                "host": "127.0.0.1",
                "port": sink.getsockname()[1],
                "version": "3",
                "username": "bench",
                "auth_password": "auth-pa55phrase",
                "priv_password": "priv-pa55phrase",
                "engine_id": engine_id,
            }
        )

    delivery = sample_delivery()
    channel.send(config("0x80001f8804ffffffff"), delivery)  # warm: loop thread, MIBs, one engine
    gc.collect()
    before = rss_mb()
    started = time.monotonic()
    for number in range(engines):
        channel.send(config(f"0x80001f8804{number:08x}"), delivery)
    elapsed = time.monotonic() - started
    gc.collect()
    after = rss_mb()
    if wait:
        time.sleep(wait)
        gc.collect()
    pooled = len(channel.notifier().engines)
    result = {"before": before, "after": after, "end": rss_mb(), "pooled": pooled, "seconds": elapsed}
    channel.close()
    sink.close()
    return result


def run(label: str, engines: int, max_engines: int, idle: float, wait: float) -> dict[str, float | str]:
    args = [
        sys.executable,
        "-m",
        "bench.snmp_engines",
        "--child",
        json.dumps([engines, max_engines, idle, wait]),
    ]
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return {"label": label, **json.loads(output.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engines", type=int, default=200)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(child(*json.loads(options.child))))
        return
    n = options.engines
    rows = [
        run("unbounded (max_engines > ids)", n, n + 10, 600.0, 0.0),
        run("pool, defaults (64, 600 s)", n, 64, 600.0, 0.0),
        run("pool 64, idle 2 s, after 4 s", n, 64, 2.0, 4.0),
    ]
    print(f"SNMPv3 authPriv traps from {n} engine IDs, one process each (RSS in MB)")
    print(
        f"{'configuration':34} {'before':>8} {'after':>8} {'growth':>8} {'at end':>8} {'engines':>8} {'s':>6}"
    )
    for row in rows:
        growth = float(row["after"]) - float(row["before"])
        print(
            f"{row['label']:34} {row['before']:8.1f} {row['after']:8.1f} {growth:+8.1f}"
            f" {row['end']:8.1f} {int(row['pooled']):8d} {row['seconds']:6.1f}"
        )


if __name__ == "__main__":
    main()
