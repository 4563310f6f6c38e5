"""Benchmarks: throughput, isolation from a hanging endpoint, pickup latency, claim cost vs history.

Each is a module run from the repository root, e.g. ``.venv/bin/python -m bench.throughput --quick``.
Every script creates its own scratch database, drops it at the end, sends traffic only to a sink on
127.0.0.1 and prints a small table. Figures are reported, never asserted.
"""
