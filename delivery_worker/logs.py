"""structlog set-up: one JSON object per line on stdout, ISO timestamps, named events."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog


class LineWriter:
    """The last step of every log call: the rendered line and its newline in ONE write.

    structlog's PrintLogger prints the line, then the newline, then flushes: two write(2) calls per
    line when stdout is unbuffered (PYTHONUNBUFFERED=1, as the systemd unit sets), each a GIL
    hand-off for a worker logging a line per job. One write per line also keeps every line whole
    in a pipe shared with other worker processes (``[worker] processes``). ``file`` None means the
    current ``sys.stdout`` at each line."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        file = self._file if self._file is not None else sys.stdout
        with self._lock:
            file.write(message + "\n")
            file.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


def line_writer_factory(file: TextIO | None = None) -> Any:
    writer = LineWriter(file)
    return lambda *_args: writer


def configure_logging(level: str = "INFO") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=line_writer_factory(),
        cache_logger_on_first_use=True,
    )
