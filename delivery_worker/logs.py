"""structlog set-up: one JSON object per line on stdout, ISO timestamps, named events."""

from __future__ import annotations

import atexit
import logging
import sys
import threading
from typing import Any, TextIO

import structlog

MAX_ROUNDS = 8  # writes one thread makes for others before it goes back to its own job
MAX_PENDING_LINES = 10_000  # beyond this (the output is stuck) a logging thread waits, as print would


class LineWriter:
    """The last step of every log call: whole lines, in order, in as few writes as possible.

    structlog's PrintLogger prints the line, then the newline, then flushes: two write(2) calls per
    line when stdout is unbuffered (PYTHONUNBUFFERED=1, as the systemd unit sets), each a GIL
    hand-off, for a worker logging a line per job from hundreds of threads. Here the calling thread
    writes its line at once unless another thread is writing; then the line is queued, and the
    writing thread writes it with every other queued line in its next write (group commit: no timer,
    nothing held back). A thread writes at most MAX_ROUNDS times before it returns to its own job;
    lines still queued then are written by the next log call or by ``write_held_lines``, which the
    poll loop calls every tick. Each line stays whole in a pipe shared with other worker processes
    (``[worker] processes``). ``file`` None means the current ``sys.stdout`` at each write."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file
        self._lock = threading.Condition()
        self._pending: list[str] = []
        self._writing = False

    def msg(self, message: str) -> None:
        with self._lock:
            while len(self._pending) >= MAX_PENDING_LINES:
                self._lock.wait()
            self._pending.append(message)
            if self._writing:
                return  # the writing thread takes it in its next write
            self._writing = True
        self._write_rounds()

    def write_held_lines(self) -> None:
        """Write what is queued, unless a thread is writing it already."""
        with self._lock:
            if self._writing or not self._pending:
                return
            self._writing = True
        self._write_rounds()

    def _write_rounds(self) -> None:
        try:
            for _ in range(MAX_ROUNDS):
                with self._lock:
                    lines, self._pending = self._pending, []
                    self._lock.notify_all()
                    if not lines:
                        break
                file = self._file if self._file is not None else sys.stdout
                file.write("\n".join(lines) + "\n")
                file.flush()
        finally:
            with self._lock:
                self._writing = False

    log = debug = info = warn = warning = error = critical = exception = fatal = failure = err = msg


_writer: LineWriter | None = None


def write_held_log_lines() -> None:
    """Write log lines a busy writer left queued (the poll loop calls it every tick, and at exit)."""
    if _writer is not None:
        _writer.write_held_lines()


def line_writer_factory(file: TextIO | None = None) -> Any:
    global _writer
    if _writer is None:
        atexit.register(write_held_log_lines)
    writer = _writer = LineWriter(file)
    return lambda *_args: writer


def configure_logging(level: str = "INFO", *, process: int | None = None) -> None:
    """``process``: in a worker process of ``[worker] processes``, its index, added to every line
    that does not name a process already (supervisor.py)."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if process is not None:
        processors.append(_naming_process(process))
    structlog.configure(
        processors=[*processors, structlog.processors.JSONRenderer(sort_keys=False)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=line_writer_factory(),
        cache_logger_on_first_use=True,
    )


def _naming_process(index: int) -> Any:
    def add_process(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("process", index)
        return event

    return add_process
