"""The narrow, typed protocol between the parent (the monitor) and a task worker process.

One JSON object per line over a unix socket pair; data only, never pickle (unpickling what a
worker sent would be code execution in the process that holds the operator's credentials).
The parent validates every message against its own state: a worker may report only on targets
it was handed, ask credentials only for their accounts, and announce only changes that were
planned for them (orgrunner.engine.workers).

```
parent -> worker                                   worker -> parent
  hello   {mode, task, tasks_dir, config_dir,        ready   {spec, fences} | tasks {tasks, errors}
           undo, threads, duration, allowed}          error   {kind, message}
  work    {phase, account, name, creds,              result  {account, region, phase, status, ...}
           regions | targets + armed}                 creds?  {account}
  creds   {account, creds} | {account, error}        intent  {seq, account, region, change}
  ack     {seq, error}                               outcome {seq, account, region, change, status, error}
  stop    (finish what is in flight)                 beat    {retries}  (progress since the last)
```
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

from orgrunner.engine.accounts import ACCOUNT_ID
from orgrunner.engine.runner import OUTCOMES, STATUSES, Outcome, TargetResult
from orgrunner.task import Change, Phase, Target

MAX_LINE = 64 * 1024 * 1024  # one message; a longer one is a broken or hostile worker


class ProtocolError(Exception):
    """A message that breaks the protocol: the worker is ended and its targets failed."""


class Channel:
    """JSON lines over a socket; `send` is safe from many threads, `receive` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._reader = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"
        with self._lock:
            self.sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end of the stream. Raises ProtocolError."""
        line = self._reader.readline(MAX_LINE + 1)
        if not line:
            return None
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise ProtocolError("a message longer than the protocol allows")
        try:
            message = json.loads(line)
        except ValueError:
            raise ProtocolError("a message that is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ProtocolError("a message without an op")
        return message

    def close(self) -> None:
        # shutdown first: it wakes a thread blocked reading, which holds the reader's lock
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._reader.close()
        self.sock.close()


# --- targets, changes and results as data ------------------------------------------------------

def result_message(result: TargetResult) -> dict[str, Any]:
    return {"op": "result", "account": result.target.account_id, "region": result.target.region,
            "phase": result.phase, "status": result.status, "changes": [c.to_dict() for c in result.changes],
            "outcomes": [outcome_data(o) for o in result.outcomes], "error": result.error,
            "notes": list(result.notes), "created": list(result.created), "input_error": result.input_error}


def outcome_data(outcome: Outcome) -> dict[str, Any]:
    return {"change": outcome.change.to_dict(), "status": outcome.status, "error": outcome.error}


def _text(value: Any, what: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: not text")
    return value


def change_of(data: Any, target: Target) -> Change:
    """A change a worker sent, checked for shape and for belonging to `target`."""
    fields = set(Change.__dataclass_fields__)
    if not isinstance(data, dict) or not set(data) <= fields or not {"account_id", "region", "resource",
                                                                      "action", "summary"} <= set(data):
        raise ProtocolError("a change that is not a change")
    for key in ("account_id", "region", "resource", "action", "summary"):
        _text(data[key], f"change {key}")
    details = data.get("details", [])
    if not isinstance(details, list) or not all(isinstance(d, str) for d in details):
        raise ProtocolError("change details: not a list of lines")
    if not isinstance(data.get("destructive", True), bool):
        raise ProtocolError("change destructive: not true or false")
    if (data["account_id"], data["region"]) != (target.account_id, target.region):
        raise ProtocolError(f"a change for {data['account_id']} {data['region']} reported as one of {target}")
    return Change.from_dict(data)


def result_of(message: dict[str, Any], target: Target, phase: Phase) -> TargetResult:
    """A worker's result for `target` (which the caller checked it was handed), checked for shape."""
    if message.get("phase") != phase or message.get("status") not in STATUSES:
        raise ProtocolError(f"a result for {target} with a wrong phase or status")
    changes, outcomes = message.get("changes", []), message.get("outcomes", [])
    notes, created = message.get("notes", []), message.get("created", [])
    if not isinstance(changes, list) or not isinstance(outcomes, list) or not isinstance(notes, list) \
            or not all(isinstance(n, str) for n in notes):
        raise ProtocolError(f"a result for {target} of the wrong shape")
    if not isinstance(created, list) or not all(isinstance(c, str) and ACCOUNT_ID.match(c) for c in created) \
            or (created and phase != "apply"):
        raise ProtocolError(f"a result for {target} naming created accounts that are not account ids")
    input_error = message.get("input_error", False)
    if not isinstance(input_error, bool) or (input_error and (phase, message["status"]) != ("plan", "failed")):
        raise ProtocolError(f"a result for {target} with a wrong input_error")
    return TargetResult(
        target, phase, message["status"], changes=tuple(change_of(c, target) for c in changes),
        outcomes=tuple(outcome_of(o, target) for o in outcomes), error=_text(message.get("error"), "error", True),
        notes=tuple(notes), created=tuple(created), input_error=input_error)


def outcome_of(data: Any, target: Target) -> Outcome:
    if not isinstance(data, dict) or data.get("status") not in OUTCOMES:
        raise ProtocolError(f"an outcome for {target} of the wrong shape")
    return Outcome(change_of(data.get("change"), target), data["status"], _text(data.get("error"), "error", True))
