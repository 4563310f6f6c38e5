"""One Prometheus exposition from several worker processes' (``[worker] processes``, supervisor.py).

Generic by metric type, so a series added to metrics.py is aggregated without a change here:

| what | across the processes |
|---|---|
| counters, histograms, summaries (every ``_total``, ``_bucket``, ``_sum``, ``_count`` sample) | summed |
| gauges named ``delivery_worker_queue_*`` (database-side) | process 0's only (it runs the QueueSampler) |
| gauges ending ``_created`` or ``_start_time_seconds`` | the smallest (the oldest start) |
| gauges ending ``_up`` | the smallest: 0 if any process is down |
| gauges ending ``_timestamp_seconds`` | the largest (the latest) |
| gauges ending ``_info``, ``_max_fds``, ``_max_bytes`` (constants, limits) | the largest |
| every other gauge (jobs in flight, circuits open, resident memory, open fds...) | summed |

A series is keyed by its name and labels; one missing from a process counts as absent there (not
as 0), so a min is never pulled down by a process that does not export the series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

SAMPLED_GAUGE_PREFIX = "delivery_worker_queue_"
SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

Combine = Callable[[float, float], float]


def gauge_rule(name: str) -> Combine:
    """How the values of one gauge from two processes combine (the table above)."""
    if name.endswith(("_created", "_start_time_seconds", "_up")):
        return min
    if name.endswith(("_timestamp_seconds", "_info", "_max_fds", "_max_bytes")):
        return max
    return _sum


def _sum(a: float, b: float) -> float:
    return a + b


@dataclass
class _Family:
    name: str
    kind: str
    documentation: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def merge_expositions(expositions: Sequence[tuple[int, str]], *, sampling_process: int = 0) -> str:
    """``(process index, text exposition)`` pairs → one text exposition (format 0.0.4)."""
    families: dict[str, _Family] = {}
    for index, text in expositions:
        for parsed in text_string_to_metric_families(text):
            sampled = parsed.type == "gauge" and parsed.name.startswith(SAMPLED_GAUGE_PREFIX)
            if sampled and index != sampling_process:
                continue
            family = families.setdefault(parsed.name, _Family(parsed.name, parsed.type, parsed.documentation))
            combine = _sum if parsed.type in SUMMED_TYPES else gauge_rule(parsed.name)
            for sample in parsed.samples:
                if sample.name.endswith("_created"):
                    combine_sample: Combine = min
                else:
                    combine_sample = combine
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = family.samples.get(key)
                family.samples[key] = sample.value if seen is None else combine_sample(seen, sample.value)
    return render(families.values())


def render(families: Iterable[_Family]) -> str:
    lines: list[str] = []
    for family in families:
        shown = family.name + "_total" if family.kind == "counter" else family.name
        kind = family.kind if family.kind in SUMMED_TYPES | {"gauge", "info", "stateset"} else "untyped"
        lines.append(f"# HELP {shown} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {shown} {kind}")
        for (name, labels), value in family.samples.items():
            label_text = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels)
            lines.append(f"{name}{{{label_text}}} {_value(value)}" if labels else f"{name} {_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
