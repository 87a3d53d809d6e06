"""The audit log: JSON lines through concurrent-log-handler, rotating by size, safe when several
orgrunner processes write at once. One line per run start and end, and per planned and applied
change with its outcome. Nothing secret is ever written; a scrubber guards that in depth.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from concurrent_log_handler import ConcurrentRotatingFileHandler

from orgrunner.errors import InputError

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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class AuditLog:
    def __init__(self, path: Path, run_id: str, max_bytes: int = 20 * 1024 * 1024, backups: int = 10) -> None:
        self.path = path
        self.run_id = run_id
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handler = ConcurrentRotatingFileHandler(
                str(path), mode="a", maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"audit log {path}: {exc.strerror or exc}") from None
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger = logging.getLogger(f"orgrunner.audit.{run_id}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._logger.addHandler(self._handler)
        self._lock = threading.Lock()

    def event(self, event: str, **fields: Any) -> None:
        record = {"ts": now(), "run_id": self.run_id, "event": event, **fields}
        line = scrub(json.dumps(record, default=str, sort_keys=False))
        with self._lock:
            self._logger.info(line)

    def close(self) -> None:
        self._logger.removeHandler(self._handler)
        self._handler.close()
