"""The audit log: JSON lines through concurrent-log-handler, rotating by size, safe when several
orgrunner processes write at once. One line per run start and end, per confirmation attempt, and
per planned and applied change: where, what (its one-line summary), its outcome, and the SHA-256
of the change's canonical JSON (`Change.digest`); the change in full (every removed rule) is in
the run's journal, where undo reads it. Nothing secret is ever written; a scrubber guards that in
depth.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from concurrent_log_handler import ConcurrentRotatingFileHandler

from orgrunner.config import environment
from orgrunner.errors import InputError, RecordError
from orgrunner.records.evidence import Chain
from orgrunner.records.statefiles import Mode, StateFolder, open_file

# Access key ids look alike; secret keys and session tokens do not, so every one this process
# holds is registered (`register_secret`) and removed wherever it would appear.
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b")
# Credentials quoted from an answer that could not be parsed (so never registered).
_QUOTED = re.compile(r"(<(SecretAccessKey|SessionToken)>)[^<]*(</\2>)"
                     r"|(\"(SecretAccessKey|SessionToken)\"\s*:\s*\")[^\"]*")
# A long base64 run with digits and both cases, as session tokens are (prose and URLs rarely are).
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9/+=]{80,}")
_secrets: Counter[str] = Counter()  # value -> holders (a value may be issued twice, as the emulator does)
_secrets_lock = threading.Lock()


def register_secret(*values: str | None) -> None:
    """Remember credentials this process holds, so that no output can ever contain them."""
    with _secrets_lock:
        _secrets.update(v for v in values if v and len(v) >= 8)


def forget_secret(*values: str | None) -> None:
    """Credentials one holder no longer keeps (an account's work is done): scrubbing stays
    proportional to the accounts in flight, not to every account the run has covered."""
    with _secrets_lock:
        _secrets.subtract(v for v in values if v and len(v) >= 8)
        for value in [v for v in values if v and _secrets.get(v, 1) <= 0]:
            del _secrets[value]


def scrub(text: str) -> str:
    """Text with every access key id and every registered secret replaced by [redacted]."""
    with _secrets_lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    text = _QUOTED.sub(lambda m: (m.group(1) or m.group(4)) + "[redacted]" + (m.group(3) or ""), text)
    text = _TOKEN_LIKE.sub(_token_like, text)
    return _KEY_ID.sub("[redacted]", text)


def _token_like(match: re.Match[str]) -> str:
    run = match.group(0)
    digits = sum(c.isdigit() for c in run)
    looks_random = digits >= 2 and any(c.isupper() for c in run) and any(c.islower() for c in run)
    return "[redacted]" if looks_random else run


# Test-only fault injection, inert unless set: ORGRUNNER_TEST_FAIL_RECORD_WRITE=N makes the Nth
# record write of this process (journal lines and audit events, counted together in the order they
# are made) fail with ENOSPC, as a full disk would; `N+` fails that one and every later one. The
# write is replaced where it would reach the file, so everything above it runs as in a real fault.
# Parsed once, at start, with every other variable (orgrunner/config/environment.py).
_writes = 0
_writes_lock = threading.Lock()


def injected_fault(path: Path) -> None:
    """Raise the injected ENOSPC if this record write is the one ORGRUNNER_TEST_FAIL_RECORD_WRITE names."""
    global _writes
    fault = environment.current().fail_record_write
    if fault is None:
        return
    with _writes_lock:
        _writes += 1
        number = _writes
    first, and_later = fault
    if number == first or (and_later and number > first):
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected: record write {number})", str(path))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _line(record: dict[str, Any]) -> str:
    return scrub(json.dumps(record, default=str, sort_keys=False))


class _SafeHandler(ConcurrentRotatingFileHandler):
    """concurrent-log-handler with every file it opens (the log, its lock file) opened through
    orgrunner.records.statefiles: never through a symbolic link, never a FIFO or a device."""

    failure: BaseException | None = None  # the error of the last write that failed, kept, not printed

    def handleError(self, record: logging.LogRecord) -> None:
        self.failure = sys.exc_info()[1] or OSError("write failed")

    def __init__(self, path: Path, state: StateFolder | None, follow_symlinks: bool, **kwargs: Any) -> None:
        self._state = state
        self._follow = follow_symlinks
        super().__init__(str(path), **kwargs)

    def _safe_open(self, file_path: str, mode: str) -> IO[str]:
        path = Path(file_path)
        opened: Mode = "w" if mode == "w" else "r+" if mode == "r+" else "a"
        if self._state is not None:
            return self._state.open(path, opened)
        return open_file(path, opened, follow_symlinks=self._follow, flag="--audit-log")

    def do_open(self, mode: str | None = None) -> Any:
        return self._safe_open(self.baseFilename, mode or "a")

    def atomic_open(self, file_path: str) -> Any:
        return self._safe_open(file_path, "r+")


class AuditLog:
    def __init__(self, path: Path, run_id: str, max_bytes: int = 20 * 1024 * 1024, backups: int = 10,
                 *, state: StateFolder | None = None, follow_symlinks: bool = False,
                 context: dict[str, str] | None = None) -> None:
        """`state`: the state folder, when the log is its audit.jsonl (state-file rules); otherwise
        `path` came from --audit-log or the settings (output-path rules, `--follow-symlinks`).
        `context`: fields on every event (a baseline's task: the baseline id)."""
        self.path = path
        self.run_id = run_id
        self.context = dict(context or {})
        try:
            if state is None:
                path.parent.mkdir(parents=True, exist_ok=True)
            # Checked now: a planted link or a FIFO fails before the run starts, not in a log call.
            probe = state.open(path, "a") if state is not None else \
                open_file(path, "a", follow_symlinks=follow_symlinks, flag="--audit-log")
            probe.close()
            self._handler = _SafeHandler(path, state, follow_symlinks, mode="a", maxBytes=max_bytes,
                                         backupCount=backups, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"audit log {path}: {exc.strerror or exc}") from None
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"orgrunner.records.audit.{run_id}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._lock = threading.Lock()
        self._chain = Chain("audit", run_id)  # one chain per run: see orgrunner.records.evidence

    def event(self, event: str, **fields: Any) -> None:
        """One line; it carries the hash of this run's line before it (orgrunner.records.evidence). Raises
        RecordError if it could not be written (never silently)."""
        record = {"ts": now(), "run_id": self.run_id, "event": event, **self.context, **fields}
        with self._lock:
            line = self._chain.line(record, _line)
            self._handler.failure = None
            try:
                injected_fault(self.path)
                self._logger.info(line)
            except OSError as exc:
                self._handler.failure = exc
            if self._handler.failure is not None:
                failure = self._handler.failure
                reason = failure.strerror if isinstance(failure, OSError) and failure.strerror else failure
                raise RecordError(f"audit log {self.path}: {event} could not be written: {reason}")
            self._chain.written(line)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()


def read_events(path: Path, event: str, backups: int = 10) -> Iterator[dict[str, Any]]:
    """Every `event` record of the audit log at `path` and its rotated files, oldest first.
    Lines that do not parse (torn by a crash) are passed over: this only finds records."""
    needle = f'"event": "{event}"'
    for candidate in [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)] + [path]:
        try:
            with candidate.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if needle not in line:
                        continue
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("event") == event:
                        yield record
        except OSError:
            continue
