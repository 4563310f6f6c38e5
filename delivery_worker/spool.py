"""The spool: outcomes the worker could not write to the database before it stopped, kept on local disk.

At exit, outcomes still unwritten (the database down or refusing them) are saved as JSON lines,
fsync'd, in ``[worker] state_dir``; the next start writes them first, before any claim or reap, so
the jobs they describe are not sent again. A line only holds what writing the outcome needs (ids,
attempts, lease, verdict, the redacted error): no payload and no channel config, so no secret.

Several workers may share a state directory: a worker takes a file by renaming it (atomic), so two
starting workers never replay the same file. Lines name their database and are replayed only there.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from delivery_worker.jobs import Job, Outcome, Table, Verdict

log = structlog.get_logger("delivery_worker.spool")

FORMAT_VERSION = 1
DEFAULT_STATE_DIR = Path("/var/lib/delivery-worker")
FALLBACK_STATE_DIR = Path("state")
PREFIX = "outcomes-"
SUFFIX = ".jsonl"
TAKEN = ".taken-"  # + the pid of the worker replaying the file


class SpoolError(Exception):
    """Raised when a spool line cannot be read back into an outcome."""


@dataclass(frozen=True)
class SpooledOutcome:
    database: str  # current_database() the outcome belongs to
    outcome: Outcome


def resolve_state_dir(configured: str) -> Path:
    """``[worker] state_dir``, or /var/lib/delivery-worker when it is a writable directory, else ./state."""
    if configured:
        return Path(configured)
    if DEFAULT_STATE_DIR.is_dir() and os.access(DEFAULT_STATE_DIR, os.W_OK | os.X_OK):
        return DEFAULT_STATE_DIR
    return FALLBACK_STATE_DIR


def to_line(entry: SpooledOutcome) -> str:
    o, job = entry.outcome, entry.outcome.job
    record: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "database": entry.database,
        "table": job.table.value,
        "job_id": job.job_id,
        "tenant_id": job.tenant_id,
        "alert_id": job.alert_id,
        "event": job.event,
        "attempts": job.attempts,
        "channel_id": job.channel_id,
        "lease": job.lease.isoformat() if job.lease is not None else None,
        "verdict": o.verdict.value,
        "started_at": o.started_at.isoformat(),
        "finished_at": o.finished_at.isoformat(),
        "error": o.error,
        "http_status": o.http_status,
        "retry_delay_seconds": o.retry_delay_seconds,
    }
    return json.dumps(record, ensure_ascii=True, allow_nan=False)


def from_line(line: str) -> SpooledOutcome:
    """One spool line back into an outcome; SpoolError says what is wrong with it."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("v") != FORMAT_VERSION:
            raise SpoolError(f"not a version {FORMAT_VERSION} spool record")
        lease = record["lease"]
        job = Job(
            table=Table(record["table"]),
            job_id=_int(record["job_id"]),
            tenant_id=str(record["tenant_id"]),
            alert_id=_int(record["alert_id"]),
            event=str(record["event"]),
            attempts=_int(record["attempts"]),
            payload=None,
            destination=None,
            channel_id=None if record["channel_id"] is None else _int(record["channel_id"]),
            lease=None if lease is None else datetime.fromisoformat(lease),
        )
        outcome = Outcome(
            job=job,
            verdict=Verdict(record["verdict"]),
            started_at=datetime.fromisoformat(record["started_at"]),
            finished_at=datetime.fromisoformat(record["finished_at"]),
            error=None if record["error"] is None else str(record["error"]),
            http_status=None if record["http_status"] is None else _int(record["http_status"]),
            retry_delay_seconds=float(record["retry_delay_seconds"]),
        )
        return SpooledOutcome(database=str(record["database"]), outcome=outcome)
    except SpoolError:
        raise
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise SpoolError(f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpoolError(f"expected an integer, got {str(value)[:50]!r}")
    return value


class Spool:
    """The spool files of one worker process: those it took at start and the one it saved last.

    ``save`` replaces them all with one new file (or none when nothing is left), so what is on disk is
    always exactly what this worker still owes the database.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.owned: list[Path] = []

    def take(self) -> list[SpooledOutcome]:
        """Take every spool file in the directory (renamed to this process) and read its outcomes;
        also the files a worker took and died holding (its process is gone).

        A line that cannot be read is logged and skipped; it never stops the start.
        """
        entries: list[SpooledOutcome] = []
        try:
            found = sorted(self.directory.glob(f"{PREFIX}*{SUFFIX}*")) if self.directory.is_dir() else []
        except OSError as exc:
            log.error("spool.unreadable", dir=str(self.directory), error=str(exc))
            return entries
        for path in found:
            base, _, holder = path.name.partition(TAKEN)
            if not base.endswith(SUFFIX) or (holder and not holder.isdigit()):
                continue
            if holder and int(holder) != os.getpid() and _alive(int(holder)):
                continue  # a running worker's
            taken = path.with_name(f"{base}{TAKEN}{os.getpid()}")
            try:
                path.rename(taken)
            except FileNotFoundError:
                continue  # another worker took it first
            except OSError as exc:
                log.error("spool.unreadable", file=str(path), error=str(exc))
                continue
            self.owned.append(taken)
            entries.extend(self._read(taken))
        if entries:
            log.info("spool.loaded", outcomes=len(entries), files=len(self.owned), dir=str(self.directory))
        return entries

    def _read(self, path: Path) -> Iterable[SpooledOutcome]:
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            log.error("spool.unreadable", file=str(path), error=str(exc))
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield from_line(line)
            except SpoolError as exc:
                log.error("spool.corrupt_line", file=str(path), line=number, error=str(exc))

    def save(self, entries: Sequence[SpooledOutcome]) -> bool:
        """Make ``entries`` the whole of this worker's spool (fsync'd); False if it could not be saved
        (then the previous files stay)."""
        new: Path | None = None
        if entries:
            try:
                new = self._write(entries)
            except (OSError, ValueError) as exc:  # ValueError: a value JSON cannot hold (NaN)
                log.error("spool.failed", dir=str(self.directory), error=str(exc), outcomes=len(entries))
                return False
        for path in self.owned:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.owned = [new] if new is not None else []
        if new is not None:
            log.warning("spool.saved", file=str(new), outcomes=len(entries))
        return True

    def _write(self, entries: Sequence[SpooledOutcome]) -> Path:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{PREFIX}{os.getpid()}-{time.time_ns()}{SUFFIX}"
        partial = self.directory / f".{name}.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.writelines(to_line(entry) + "\n" for entry in entries)
                handle.flush()
                os.fsync(handle.fileno())
            final = self.directory / name
            os.replace(partial, final)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final
