"""A task worker process: where task code runs, and the only place it runs.

Started by the parent (orgrunner.engine.workers) as `python -I -m orgrunner.engine.worker FD`, fresh (never a
fork of the process holding the operator's credentials), with an environment that names no
credential source, the socket FD as its only inherited descriptor, in a session of its own (no
terminal). It reads the parent's hello, fences itself (orgrunner.safety.fence), and only then imports
task code. From then on it holds only what the parent hands it: one account's scoped member
credentials with that account's targets, refreshed by asking the parent.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import botocore.credentials

from orgrunner import aws
from orgrunner.engine.credentials import refreshable_credentials
from orgrunner.engine.protocol import Channel, outcome_data, result_message
from orgrunner.engine.runner import Outcome, Runner, _Pool, describe_error
from orgrunner.errors import InputError, TaskLoadError
from orgrunner.records.audit import forget_secret, register_secret
from orgrunner.safety import fence
from orgrunner.safety.confirm import relayed
from orgrunner.task import Change, Target, Task, TaskSpec, configure, load_tasks

BEAT_SECONDS = 1.0


class ParentCredentials:
    """The credentials the parent handed over, per account; a refresh asks the parent."""

    def __init__(self, channel: Channel, duration: int) -> None:
        self._channel = channel
        self._duration = duration
        self._held: dict[str, botocore.credentials.Credentials] = {}
        self._values: dict[str, list[str]] = {}
        self._waiting: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def receive(self, account_id: str, creds: dict[str, Any]) -> None:
        """Credentials sent with work for `account_id`."""
        with self._lock:
            self._keep(account_id, creds)
            self._held[account_id] = refreshable_credentials(creds, self._duration,
                                                             lambda: self._refresh(account_id))

    def _keep(self, account_id: str, creds: dict[str, Any]) -> None:
        values = [creds["access_key"], creds["secret_key"], creds["token"]]
        register_secret(*values)
        self._values.setdefault(account_id, []).extend(values)

    def answered(self, account_id: str, message: dict[str, Any]) -> None:
        with self._lock:
            waiting = self._waiting.pop(account_id, None)
        if waiting is not None:
            waiting.set_result(message)

    def _refresh(self, account_id: str) -> dict[str, Any]:
        with self._lock:
            waiting = self._waiting.get(account_id)
            if waiting is None:
                waiting = self._waiting[account_id] = Future()
                self._channel.send({"op": "creds?", "account": account_id})
        answer = waiting.result()
        if answer.get("error"):
            raise RuntimeError(f"credentials for {account_id}: {answer['error']}")
        creds: dict[str, Any] = answer["creds"]
        with self._lock:
            self._keep(account_id, creds)
        return creds

    def credentials(self, account_id: str) -> botocore.credentials.Credentials:
        held = self._held.get(account_id)
        if held is None:
            raise RuntimeError(f"no credentials for account {account_id} in this worker")
        return held

    def forget(self, account_id: str) -> None:
        with self._lock:
            self._held.pop(account_id, None)
            values = self._values.pop(account_id, [])
        forget_secret(*values)


class Acks:
    """Answers the parent owes: the durable record of an intent or an outcome."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._waiting: dict[int, Future[str | None]] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def ask(self, message: dict[str, Any]) -> None:
        """Send and wait for the parent's acknowledgement; raise if the parent refused."""
        future: Future[str | None] = Future()
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._waiting[seq] = future
        self._channel.send({**message, "seq": seq})
        error = future.result()
        if error is not None:
            raise RuntimeError(error)

    def answered(self, seq: Any, error: Any) -> None:
        with self._lock:
            future = self._waiting.pop(seq, None) if isinstance(seq, int) else None
        if future is not None:
            future.set_result(str(error) if error is not None else None)

    def abandon(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            future.set_result("the parent process is gone")


def _send_results(channel: Channel, pool: _Pool) -> None:
    while True:
        result = pool.results.get()
        channel.send(result_message(result))


def _beat(channel: Channel, progress: Callable[[], int]) -> None:
    """Tell the parent, once a second at most, that AWS calls are completing: a worker whose task
    hangs stops beating, and the parent ends it (orgrunner.engine.workers)."""
    seen = progress()
    while True:
        time.sleep(BEAT_SECONDS)
        now = progress()
        if now != seen:
            seen = now
            channel.send({"op": "beat", "retries": [aws.RETRIES.botocore, aws.RETRIES.backoff]})


def _load(hello: dict[str, Any]) -> Task:
    tasks_dir = Path(hello["tasks_dir"]) if hello.get("tasks_dir") else None
    loaded = load_tasks(tasks_dir)
    cls = loaded.get(str(hello["task"]))
    if hello.get("undo") is not None:  # an undo works from the run's journal, never from today's config file
        from orgrunner.engine.undo import reversal

        return reversal(cls(), [Change.from_dict(c) for c in hello["undo"]])
    return configure(cls, Path(hello["config_dir"]))


def serve(channel: Channel) -> None:
    hello = channel.receive()
    if hello is None or hello.get("op") != "hello":
        return
    fences = "OFF: " + fence.UNFENCED_ENV + " is set (test-only)"
    try:
        if not fence.unfenced():
            allowed = fence.Allowances(tuple(hello["allowed"]["read"]), tuple(hello["allowed"]["write"]),
                                       tuple(hello["allowed"]["ports"]))
            fences = fence.restrict(allowed)
    except OSError as exc:  # Landlock is there but could not be set up: refuse rather than run unfenced
        channel.send({"op": "error", "kind": "fence", "message": f"worker fence: {exc}"})
        return
    # task code from here on, found where this process's parent finds it
    missing = [p for p in hello.get("path", []) if isinstance(p, str) and p not in sys.path]
    sys.path[:0] = missing
    try:
        if hello.get("mode") == "list":
            tasks_dir = Path(hello["tasks_dir"]) if hello.get("tasks_dir") else None
            loaded = load_tasks(tasks_dir)
            channel.send({"op": "tasks", "tasks": [TaskSpec.of(t).to_dict() for t in loaded.tasks.values()],
                          "errors": loaded.errors})
            return
        task = _load(hello)
    except TaskLoadError as exc:
        channel.send({"op": "error", "kind": "load", "message": str(exc)})
        return
    except InputError as exc:
        channel.send({"op": "error", "kind": "input", "message": str(exc)})
        return
    channel.send({"op": "ready", "spec": TaskSpec.of(type(task)).to_dict(), "fences": fences})
    work(channel, task, int(hello["duration"]))


def work(channel: Channel, task: Task, duration: int) -> None:
    """Take work until the parent closes the stream. The thread pool is made with the first work,
    sized as the parent says (its share of the run's concurrency, known once all workers started)."""
    stop = threading.Event()
    source = ParentCredentials(channel, duration)
    acks = Acks(channel)

    def intent(target: Target, change: Change) -> None:
        acks.ask({"op": "intent", "account": target.account_id, "region": target.region,
                  "change": change.to_dict()})

    def outcome(target: Target, done: Outcome) -> None:
        acks.ask({"op": "outcome", "account": target.account_id, "region": target.region, **outcome_data(done)})

    calls = [0]

    def count(**_: Any) -> None:
        calls[0] += 1

    engine: tuple[Runner, _Pool] | None = None
    while True:
        message = channel.receive()
        if message is None:  # the parent is gone (or done with us): nothing here is worth finishing
            acks.abandon()
            os._exit(0)
        op = message["op"]
        if op == "work":
            if engine is None:
                threads = max(1, int(message["threads"]))
                runner = Runner(task, source, threads, stop, on_outcome=outcome, on_intent=intent,
                                partition=str(message.get("partition", "aws")))
                runner.session.botocore_session.register("after-call.*.*", count)
                engine = (runner, _Pool(threads, stop))
                _start_thread(functools.partial(_send_results, channel, engine[1]), "results")
                _start_thread(lambda: _beat(channel, lambda: calls[0]), "beat")
            runner, pool = engine
            account, name = str(message["account"]), str(message.get("name", ""))
            source.receive(account, message["creds"])
            if message["phase"] == "plan":
                runner.plan_targets(pool, [Target(account, str(r), name) for r in message["regions"]])
            else:
                armed = relayed(str(message["armed"]["task"]), [account])
                runner.apply_targets(pool, [(Target(account, str(t["region"]), name),
                                             [Change.from_dict(c) for c in t["changes"]])
                                            for t in message["targets"]], armed)
        elif op == "creds":
            source.answered(str(message["account"]), message)
        elif op == "ack":
            acks.answered(message.get("seq"), message.get("error"))
        elif op == "stop":
            stop.set()


def _start_thread(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=target, name=f"orgrunner-{name}", daemon=True).start()


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    channel = Channel(sock)
    try:
        serve(channel)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except Exception as exc:  # a bug of ours: one line to the parent, which fails this worker's targets
        with contextlib.suppress(OSError):
            channel.send({"op": "error", "kind": "internal", "message": describe_error(exc)})
    os._exit(0)


if __name__ == "__main__":
    main()
