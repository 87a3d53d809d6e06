"""Every environment variable orgrunner reads, parsed once at start, checked, and kept.

A bad value is one line naming the variable, the value and what is allowed, and exit 2, before
anything else happens: never a traceback, never a silent default, never a value that only fails
later with a misleading error (a timeout of `nan` blamed on credentials). Paths (`ORGRUNNER_CONFIG`,
`ORGRUNNER_STATE_DIR`) are taken as given here and checked where they are used.
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass

from orgrunner.errors import InputError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class Environment:
    retry_attempts: int = 4  # ORGRUNNER_RETRY_ATTEMPTS: orgrunner's own retries of a throttled call
    max_attempts: int = 5  # AWS_MAX_ATTEMPTS: botocore's attempts per call (standard retry mode)
    connect_timeout: float = 10.0  # ORGRUNNER_CONNECT_TIMEOUT, seconds
    read_timeout: float = 30.0  # ORGRUNNER_READ_TIMEOUT, seconds
    debug: bool = False  # ORGRUNNER_DEBUG: tracebacks for internal errors
    config: str | None = None  # ORGRUNNER_CONFIG
    state_dir: str | None = None  # ORGRUNNER_STATE_DIR
    emulator: bool = False  # ORGRUNNER_EMULATOR: set by the sandbox and the tests' emulator (aws.py's rewrites)
    # Test-only switches, inert unless set, refused when malformed (a typo must not turn one on):
    unfenced_workers: bool = False  # ORGRUNNER_TEST_ONLY_UNFENCED_WORKERS: task workers without fences
    fail_record_write: tuple[int, bool] | None = None  # ORGRUNNER_TEST_FAIL_RECORD_WRITE=N[+]: the Nth write fails
    bug_at: str | None = None  # ORGRUNNER_TEST_BUG_AT=POINT: a bug (RuntimeError) in the parent at that point

# Where ORGRUNNER_TEST_BUG_AT can put a bug: a fault nothing else catches must end the run as an
# `error` (exit 70), never as `interrupted` and never with a write after it.
BUG_POINTS = ("after-plan", "after-confirm")


def _integer(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise InputError(f"{name}={raw!r}: expected a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise InputError(f"{name}={raw!r}: expected a whole number from {low} to {high}")
    return value


def _seconds(name: str, default: float, high: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 < value <= high:
        raise InputError(f"{name}={raw!r}: expected a number of seconds above 0 and at most {high:g}")
    return value


def _flag(name: str) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InputError(f"{name}={raw!r}: expected 1 or 0 (or true/false, yes/no, on/off)")


def _path(name: str) -> str | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if "\x00" in raw:
        raise InputError(f"{name}: a path cannot hold a NUL character")
    return raw


def _choice(name: str, allowed: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    if raw.strip() not in allowed:
        raise InputError(f"{name}={raw!r}: expected one of {', '.join(allowed)}")
    return raw.strip()


def _nth_write(name: str) -> tuple[int, bool] | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    match = re.fullmatch(r"([1-9][0-9]{0,6})(\+?)", raw.strip())
    if match is None:
        raise InputError(f"{name}={raw!r}: expected N or N+ (the record write that fails, counting from 1)")
    return int(match.group(1)), bool(match.group(2))


@functools.cache
def current() -> Environment:
    """The environment as orgrunner reads it; parsed on the first call (at start, by the CLI)."""
    return Environment(
        retry_attempts=_integer("ORGRUNNER_RETRY_ATTEMPTS", 4, 1, 20),
        max_attempts=_integer("AWS_MAX_ATTEMPTS", 5, 1, 20),
        connect_timeout=_seconds("ORGRUNNER_CONNECT_TIMEOUT", 10.0, 600),
        read_timeout=_seconds("ORGRUNNER_READ_TIMEOUT", 30.0, 3600),
        debug=_flag("ORGRUNNER_DEBUG"),
        config=_path("ORGRUNNER_CONFIG"),
        state_dir=_path("ORGRUNNER_STATE_DIR"),
        emulator=_flag("ORGRUNNER_EMULATOR"),
        unfenced_workers=_flag("ORGRUNNER_TEST_ONLY_UNFENCED_WORKERS"),
        fail_record_write=_nth_write("ORGRUNNER_TEST_FAIL_RECORD_WRITE"),
        bug_at=_choice("ORGRUNNER_TEST_BUG_AT", BUG_POINTS),
    )


def injected_bug(point: str) -> None:
    """Raise the bug ORGRUNNER_TEST_BUG_AT puts at `point`, if it names it (inert unless set)."""
    if current().bug_at == point:
        raise RuntimeError(f"injected bug at {point} (ORGRUNNER_TEST_BUG_AT)")


def debug_requested() -> bool:
    """ORGRUNNER_DEBUG for the last-resort error handler: never raises (a bad value means off)."""
    try:
        return current().debug
    except InputError:
        return False
