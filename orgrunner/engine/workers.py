"""The parent's side of the task workers: the monitor.

This process holds the operator's credentials and never imports task code. It starts N worker
processes (orgrunner.engine.worker: fresh interpreters, a clean environment, Landlock), each running a
thread pool for the targets it is handed. Per account, a thread here assumes the role with the
phase's session policy and resolves the enabled regions (DescribeRegions is the engine's own
call), then hands the account's targets and its scoped credentials to the least busy worker.
Account jobs are fed through a window (as many unfinished accounts as there are workers' threads),
so memory stays flat however large the organization.

Everything a worker sends is data, checked against what this process handed it: results only for
its own unreported targets, credentials only for their accounts, intents only for planned changes
(made durable in the journal before the worker is told to go ahead), outcomes only for changes of
its targets. A worker that breaks the protocol, dies, or makes no progress for `worker_timeout`
seconds (SIGTERM, then SIGKILL after a grace period) has each target it had not reported failed by
name, so `--retry-failed` covers exactly those. Every handed target ends with exactly one result.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

import botocore.credentials

from orgrunner import aws
from orgrunner.engine.accounts import Account
from orgrunner.engine.credentials import RoleAssumer
from orgrunner.engine.protocol import Channel, ProtocolError, change_of, outcome_of, result_of
from orgrunner.engine.runner import ALL_REGIONS, NOT_STARTED, Outcome, TargetResult, describe_error
from orgrunner.errors import InputError, OrgrunnerError, TaskLoadError
from orgrunner.safety import fence
from orgrunner.safety.confirm import Armed
from orgrunner.safety.guard import CallGuard, install_shared
from orgrunner.safety.policy import ENGINE_REGIONAL_ACTIONS
from orgrunner.task import GLOBAL_REGION, Change, Phase, Target, TaskSpec, builtin_package_paths

# Below this many accounts per process, more processes are not worth their start.
MIN_ACCOUNTS_PER_PROCESS = 50
MAX_AUTO_PROCESSES = 4
KILL_GRACE_SECONDS = 5.0
START_TIMEOUT_SECONDS = 120.0


def auto_processes(accounts: int) -> int:
    """One process per CPU this process may use (at most 4), each with at least 50 accounts."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_AUTO_PROCESSES, accounts // MIN_ACCOUNTS_PER_PROCESS))


@dataclass(frozen=True)
class Launch:
    """What a worker loads: the task (None: every task, for `orgrunner tasks`), where task files
    and config files are, and for undo the journal's applied changes it reverses."""

    task: str | None
    tasks_dir: Path | None
    config_dir: Path
    undo: list[dict[str, Any]] | None = None
    duration: int = 3600

    def __post_init__(self) -> None:
        # A worker runs in its own scratch folder: it is handed absolute paths, never ones that only
        # mean something from this process's current folder (`./config`, `--tasks-dir mytasks`).
        object.__setattr__(self, "config_dir", self.config_dir.absolute())
        if self.tasks_dir is not None:
            object.__setattr__(self, "tasks_dir", self.tasks_dir.absolute())

    def readable(self) -> list[Path]:
        paths = [self.config_dir, *builtin_package_paths()]
        return paths + ([self.tasks_dir] if self.tasks_dir is not None else [])


def within(reported: Any, planned: Any) -> bool:
    """A change a task reports it really did (`ApplyContext.narrow`) is the planned change or less:
    the same values, with lists holding only items of the planned lists (strip-default-sg narrows
    to the rules it still found). Anything more was never planned, shown nor confirmed."""
    if isinstance(planned, dict):
        return isinstance(reported, dict) and reported.keys() == planned.keys() \
            and all(within(reported[k], planned[k]) for k in planned)
    if isinstance(planned, list | tuple):
        return isinstance(reported, list | tuple) and all(item in planned for item in reported)
    return bool(reported == planned)


def _home() -> Path:
    try:
        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        return Path(os.path.expanduser("~"))


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    channel: Channel
    scratch: Path
    phase: Phase = "plan"
    outstanding: dict[tuple[str, str], Target] = field(default_factory=dict)
    planned: dict[tuple[str, str], list[Change]] = field(default_factory=dict)  # apply: what may be intended
    intended: dict[tuple[str, str], list[Change]] = field(default_factory=dict)
    unrecorded: dict[tuple[str, str], str] = field(default_factory=dict)  # apply: a record that failed
    accounts: dict[str, int] = field(default_factory=dict)  # account -> its unreported targets here
    last_heard: float = field(default_factory=time.monotonic)
    ended: str | None = None  # why it is gone
    ending: str | None = None  # why this process is ending it
    reader: threading.Thread | None = None

    def busy(self) -> int:
        return len(self.outstanding)


class WorkerError(OrgrunnerError):
    """A worker could not start or load the task."""


def _start(index: int, launch: Launch, hello: dict[str, Any]) -> _Worker:
    scratch = Path(tempfile.mkdtemp(prefix=f"orgrunner-worker-{index}-"))
    parent_end, child_end = socket.socketpair()
    env = fence.worker_environment(scratch)
    allowed = fence.allowances(launch.readable(), scratch, _home())
    try:
        with open(scratch / "stderr", "wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-I", "-m", "orgrunner.engine.worker", str(child_end.fileno())],
                pass_fds=(child_end.fileno(),), env=env, cwd=scratch, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True, close_fds=True)
    finally:
        child_end.close()
    channel = Channel(parent_end)
    channel.send({**hello, "path": [p for p in sys.path if p],  # what PYTHONPATH added here, -I dropped there
                  "allowed": {"read": list(allowed.read), "write": list(allowed.write), "ports": list(allowed.ports)}})
    return _Worker(index, process, channel, scratch)


class Workers:
    """The worker processes of one command, and the targets each was handed."""

    def __init__(self, launch: Launch, concurrency: int, timeout: float, stop: threading.Event | None = None) -> None:
        self.launch = launch
        self.concurrency = concurrency
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self.spec: TaskSpec | None = None
        self.fences = ""
        self.results: queue.Queue[TargetResult] = queue.Queue()
        self.discovered = 0
        self._retries: dict[int, tuple[int, int]] = {}
        self._on_intent: Callable[[Target, Change], None] | None = None
        self._on_outcome: Callable[[Target, Outcome], None] | None = None
        self._assumer: RoleAssumer | None = None
        self._done_account: Callable[[str], None] = lambda _: None

    # --- starting ------------------------------------------------------------------------------

    def fences_line(self) -> str:
        """Which fences are in force around task code, in one line."""
        if fence.unfenced():
            return (f"OFF: {fence.UNFENCED_ENV} is set (a test-only switch): task code runs with this process's "
                    "environment and no Landlock")
        parent = "this process not dumpable" if fence.UNDUMPABLE else "this process dumpable (prctl failed)"
        return (f"task code in fresh worker processes with no credential source in their environment; "
                f"{self.fences or 'no report from a worker'}; {parent}")

    @property
    def processes(self) -> int:
        return len(self._workers)

    @property
    def threads(self) -> int:
        """Each process's share of the concurrency (rounded up)."""
        return max(1, -(-self.concurrency // max(1, len(self._workers))))

    def _hello(self) -> dict[str, Any]:
        launch = self.launch
        return {"op": "hello", "mode": "task", "task": launch.task,
                "tasks_dir": str(launch.tasks_dir) if launch.tasks_dir else None,
                "config_dir": str(launch.config_dir), "undo": launch.undo, "duration": launch.duration}

    def start(self, processes: int = 1) -> TaskSpec:
        """Start workers until there are `processes`; return the task's declaration they loaded.
        A task that does not load, or a config file that does not validate, raises here, as it
        would have in this process."""
        fresh = [_start(i, self.launch, self._hello()) for i in range(len(self._workers), max(1, processes))]
        for worker in fresh:
            message = self._first(worker)
            spec = TaskSpec.from_dict(message.get("spec"))
            if self.spec is not None and spec != self.spec:
                raise WorkerError("worker processes loaded different declarations of the task")
            self.spec = spec
            self.fences = str(message.get("fences", ""))
            self._workers.append(worker)
            worker.reader = threading.Thread(target=self._read, args=(worker,), name=f"orgrunner-worker-{worker.index}",
                                             daemon=True)
            worker.reader.start()
        assert self.spec is not None
        return self.spec

    def _first(self, worker: _Worker) -> dict[str, Any]:
        """The worker's first message: ready, or the reason it cannot be."""
        worker.channel.sock.settimeout(START_TIMEOUT_SECONDS)
        try:
            message = worker.channel.receive()
        except (OSError, ProtocolError) as exc:
            message = {"op": "error", "kind": "internal", "message": f"no answer: {exc}"}
        worker.channel.sock.settimeout(None)
        if message is None:
            message = {"op": "error", "kind": "internal", "message": self._how(worker)}
        if message["op"] in ("ready", "tasks"):
            return message
        self._end(worker)
        text = str(message.get("message", "?"))
        raise {"load": TaskLoadError, "input": InputError}.get(str(message.get("kind")), WorkerError)(text)

    def _how(self, worker: _Worker) -> str:
        code = worker.process.poll()
        how = "still running" if code is None else \
            f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        tail = ""
        with contextlib.suppress(OSError):
            lines = (worker.scratch / "stderr").read_text(errors="replace").strip().splitlines()
            tail = f": {lines[-1][:300]}" if lines else ""
        return f"worker process {worker.index} ended ({how}){tail}"

    # --- reading what workers send ---------------------------------------------------------------

    def _read(self, worker: _Worker) -> None:
        try:
            while True:
                message = worker.channel.receive()
                if message is None:
                    break
                worker.last_heard = time.monotonic()
                self._handle(worker, message)
        except ProtocolError as exc:
            worker.ending = f"worker process {worker.index} broke the protocol ({exc}); ended"
        except OSError:
            pass
        self._gone(worker)

    def _handle(self, worker: _Worker, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "result":
            self._result(worker, message)
        elif op == "creds?":
            self._credentials(worker, message)
        elif op == "intent":
            self._intent(worker, message)
        elif op == "outcome":
            self._outcome(worker, message)
        elif op == "beat":
            self._count_retries(worker, message.get("retries"))
        elif op == "error":
            raise ProtocolError(f"failed: {str(message.get('message', '?'))[:300]}")
        else:
            raise ProtocolError(f"unknown op {op[:40]!r}")

    def _target(self, worker: _Worker, message: dict[str, Any]) -> Target:
        key = (message.get("account"), message.get("region"))
        with self._lock:
            target = worker.outstanding.get(key)  # type: ignore[arg-type]
        if target is None:
            raise ProtocolError(f"a message about {key[0]!s:.20} {key[1]!s:.20}, which it was not handed "
                                "or had reported")
        return target

    def _result(self, worker: _Worker, message: dict[str, Any]) -> None:
        target = self._target(worker, message)
        result = result_of(message, target, worker.phase)
        key = (target.account_id, target.region)
        with self._lock:
            unrecorded = worker.unrecorded.pop(key, None)
            worker.planned.pop(key, None)
            announced = worker.intended.pop(key, None)
        if unrecorded is not None:
            result = TargetResult(target, result.phase, "failed", result.changes, result.outcomes, unrecorded,
                                  result.notes)
        elif result.phase == "apply" and result.status == "skipped":
            if result.error == NOT_STARTED and not announced:  # after an interrupt: left quietly, as before
                self._report(worker, [result], forward=False)
                return
            result = TargetResult(target, "apply", "failed", result.changes, result.outcomes,
                                  f"reported skipped in apply: {result.error}")
        self._report(worker, [result])

    def _report(self, worker: _Worker, results: list[TargetResult], forward: bool = True) -> None:
        """Hand results on, and release each account whose last target is in."""
        finished: list[str] = []
        with self._lock:
            for result in results:
                key = (result.target.account_id, result.target.region)
                if worker.outstanding.pop(key, None) is None:
                    continue
                left = worker.accounts.get(result.target.account_id, 1) - 1
                if left > 0:
                    worker.accounts[result.target.account_id] = left
                else:
                    worker.accounts.pop(result.target.account_id, None)
                    finished.append(result.target.account_id)
                if forward:
                    self.results.put(result)
        for account_id in finished:
            self._done_account(account_id)

    def _count_retries(self, worker: _Worker, retries: Any) -> None:
        if isinstance(retries, list) and len(retries) == 2 and all(isinstance(r, int) for r in retries):
            before = self._retries.get(worker.index, (0, 0))
            aws.RETRIES.add(botocore=max(0, retries[0] - before[0]), backoff=max(0, retries[1] - before[1]))
            self._retries[worker.index] = (retries[0], retries[1])

    def _credentials(self, worker: _Worker, message: dict[str, Any]) -> None:
        account_id = message.get("account")
        with self._lock:
            handed = isinstance(account_id, str) and account_id in worker.accounts
        if not handed or self._assumer is None:
            raise ProtocolError(f"credentials asked for account {str(account_id)[:20]}, which it was not handed")
        assert isinstance(account_id, str)
        try:
            answer: dict[str, Any] = {"creds": frozen(self._assumer.credentials(account_id))}
        except Exception as exc:
            answer = {"error": describe_error(exc)}
        worker.channel.send({"op": "creds", "account": account_id, **answer})

    def _intent(self, worker: _Worker, message: dict[str, Any]) -> None:
        """The worker is about to apply a change: record it durably, then let it go ahead."""
        target = self._target(worker, message)
        change = change_of(message.get("change"), target)
        key = (target.account_id, target.region)
        with self._lock:
            planned = change in worker.planned.get(key, [])
        error: str | None = None
        if worker.phase != "apply" or not planned:
            error = "this change was not planned and confirmed; not applied"
        elif self._on_intent is not None:
            try:
                self._on_intent(target, change)
            except Exception as exc:  # not durable: the change must not be applied
                error = f"the journal could not record it: {describe_error(exc)}"
        if error is None:
            with self._lock:
                worker.intended.setdefault(key, []).append(change)
        worker.channel.send({"op": "ack", "seq": message.get("seq"), "error": error})

    def _outcome(self, worker: _Worker, message: dict[str, Any]) -> None:
        target = self._target(worker, message)
        outcome = outcome_of(message, target)
        key = (target.account_id, target.region)
        with self._lock:
            announced = next((c for c in worker.intended.get(key, [])
                              if (c.resource, c.action) == (outcome.change.resource, outcome.change.action)), None)
        error: str | None = None
        if announced is not None and not within(outcome.change.to_dict(), announced.to_dict()):
            # the task says it did more than was planned and confirmed (say, an undo holding a rule
            # nobody reviewed): the journal keeps the planned change, and the target fails
            error = f"{outcome.status} but reported as more than the planned change: {announced.summary}"
            outcome = Outcome(announced, outcome.status, outcome.error)
        if self._on_outcome is not None:
            try:
                self._on_outcome(target, outcome)  # recorded even when it was not announced
            except Exception as exc:
                error = f"{outcome.status} but not recorded: {outcome.change.summary}: {describe_error(exc)}"
        if error is None and announced is None:
            error = f"{outcome.status} without an intent announced first: {outcome.change.summary}"
        if error is not None:
            with self._lock:
                worker.unrecorded.setdefault(key, error)
        worker.channel.send({"op": "ack", "seq": message.get("seq"), "error": error})

    def _gone(self, worker: _Worker) -> None:
        """The worker's stream ended (it exited, was killed, or broke the protocol): fail every
        target it had not reported, by name."""
        if worker.ending is not None:
            self._kill(worker)
        worker.channel.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(KILL_GRACE_SECONDS)
        if worker.process.poll() is None:
            self._kill(worker)
        reason = worker.ending or self._how(worker)
        with self._lock:
            worker.ended = reason
            lost = list(worker.outstanding.values())
            unrecorded = dict(worker.unrecorded)
        what = "planning" if worker.phase == "plan" else "applying"
        self._report(worker, [TargetResult(t, worker.phase, "failed",
                                           error=unrecorded.get((t.account_id, t.region),
                                                                f"{reason} before {what} this target"))
                              for t in lost])

    def _kill(self, worker: _Worker) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            worker.process.wait()

    def _end(self, worker: _Worker) -> None:
        worker.channel.close()
        try:
            worker.process.wait(KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self._kill(worker)
        shutil.rmtree(worker.scratch, ignore_errors=True)

    def _watch(self) -> None:
        """End a worker that holds unreported targets and has not been heard from for `timeout`."""
        now = time.monotonic()
        for worker in self._workers:
            with self._lock:
                stuck = worker.ended is None and worker.ending is None and bool(worker.outstanding) \
                    and now - worker.last_heard > self.timeout
            if stuck:
                worker.ending = f"worker process {worker.index} made no progress for {self.timeout:g} s; ended"
                threading.Thread(target=self._kill, args=(worker,), daemon=True).start()

    # --- handing out work ----------------------------------------------------------------------

    def _pick(self) -> _Worker | None:
        live = [w for w in self._workers if w.ended is None and w.ending is None]
        return min(live, key=_Worker.busy) if live else None

    def _hand(self, account: Account, phase: Phase, targets: list[tuple[Target, list[Change]]],
              creds: botocore.credentials.Credentials, extra: dict[str, Any]) -> list[Target]:
        """Hand an account's targets to the least busy live worker; returns the targets no worker
        could take (every worker is gone)."""
        with self._lock:
            worker = self._pick()
            if worker is None:
                return [t for t, _ in targets]
            worker.phase = phase
            for target, changes in targets:
                key = (target.account_id, target.region)
                worker.outstanding[key] = target
                if phase == "apply":
                    worker.planned[key] = changes
            worker.accounts[account.id] = worker.accounts.get(account.id, 0) + len(targets)
            if not worker.outstanding or len(worker.outstanding) == len(targets):
                worker.last_heard = time.monotonic()  # idle until now: the timeout counts from here
        with contextlib.suppress(OSError):  # it is gone: its reader fails what it held, these targets included
            partition = self._assumer.partition if self._assumer is not None else "aws"
            worker.channel.send({"op": "work", "phase": phase, "account": account.id, "name": account.name,
                                 "threads": self.threads, "creds": frozen(creds), "partition": partition, **extra})
        return []

    def _run(self, jobs: Iterator[Callable[[], None]], forget: Callable[[str], None]) -> Iterator[TargetResult]:
        """Run account jobs through a window (an account leaves it when its last result is in, and
        its credentials are forgotten then), and yield every result until each is in."""
        window = threading.Semaphore(max(1, self.concurrency))
        running = [0]
        fed = threading.Event()
        executor = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, 32)), thread_name_prefix="orgrunner")

        def done_account(account_id: str) -> None:
            forget(account_id)
            window.release()

        self._done_account = done_account

        def job(fn: Callable[[], None]) -> None:
            try:
                fn()
            finally:
                with self._lock:
                    running[0] -= 1

        def feed() -> None:
            try:
                for fn in jobs:
                    while not window.acquire(timeout=0.1):
                        if self.stop.is_set():
                            return
                    if self.stop.is_set():
                        return
                    with self._lock:
                        running[0] += 1
                    executor.submit(job, fn)
            finally:
                fed.set()

        def idle() -> bool:
            return fed.is_set() and running[0] == 0

        threading.Thread(target=feed, name="orgrunner-feed", daemon=True).start()
        finished = False
        try:
            yield from self._results_until(idle)
            finished = True
        except KeyboardInterrupt:
            yield from self.finish()
            raise
        finally:
            if not finished:  # the consumer stopped early: hand out nothing more
                self._stop_workers()
            executor.shutdown(wait=True, cancel_futures=True)

    def _stop_workers(self) -> None:
        self.stop.set()
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.channel.send({"op": "stop"})

    def finish(self) -> Iterator[TargetResult]:
        """Stop: hand out nothing new, tell every worker to finish what is in flight, and yield
        what they still report (a worker that stops reporting is ended by the watchdog)."""
        self._stop_workers()
        yield from self._results_until(lambda: True)

    def _results_until(self, idle: Callable[[], bool]) -> Iterator[TargetResult]:
        """Yield results as they arrive until this process is `idle` and no worker holds a target;
        watch for hung workers meanwhile."""
        while True:
            try:
                yield self.results.get(timeout=0.05)
                continue
            except queue.Empty:
                pass
            self._watch()
            with self._lock:
                done = idle() and not any(w.outstanding for w in self._workers)
            if done and self.results.empty():
                return

    # --- the phases ---------------------------------------------------------------------------------

    def plan(self, assumer: RoleAssumer, accounts: list[Account], regions: list[str] | None,
             only: dict[str, list[str] | None] | None = None) -> Iterator[TargetResult]:
        """Plan every account x region (`only` narrows some accounts to their own regions, None:
        all enabled, as `--retry-failed` does for exactly the targets that failed before)."""
        assert self.spec is not None
        spec = self.spec
        self._assumer = assumer
        self.discovered = len(accounts) * (len(regions) if regions else 1)
        session = aws.Session.from_credentials(aws.AccountCredentials(),
                                               aws.client_config(max_pool_connections=self.concurrency),
                                               partition=assumer.partition)
        ec2 = install_shared(session.client("ec2", session.home_region)) if spec.regional else None
        ours = aws.partition_regions(assumer.partition)  # never another partition's, whatever is listed
        guard = CallGuard("orgrunner", "plan", ENGINE_REGIONAL_ACTIONS)

        def prepare(account: Account, wanted: list[str] | None) -> None:
            if self.stop.is_set():  # an interrupt: accounts not reached yet are left quietly
                self._done_account(account.id)
                return
            try:
                creds = assumer.credentials(account.id)
                if spec.regional:
                    with aws.acting_for(lambda: creds), guard.active():
                        described = aws.call(ec2, "describe_regions")["Regions"]
                    enabled = sorted(r["RegionName"] for r in described
                                     if r.get("OptInStatus") != "not-opted-in" and r["RegionName"] in ours)
                    covered = enabled if wanted is None else [r for r in wanted if r in enabled]
                    disabled = [] if wanted is None else [r for r in wanted if r not in enabled]
                else:
                    covered, disabled = [GLOBAL_REGION], []
            except Exception as exc:
                self._put([TargetResult(Target(account.id, r, account.name), "plan", "failed",
                                        error=describe_error(exc)) for r in wanted or [ALL_REGIONS]])
                self._done_account(account.id)
                return
            with self._lock:
                self.discovered += len(covered) + len(disabled) - (len(wanted) if wanted else 1)
            self._put([TargetResult(Target(account.id, r, account.name), "plan", "skipped",
                                    error="region not enabled in this account") for r in disabled])
            targets: list[tuple[Target, list[Change]]] = [(Target(account.id, r, account.name), []) for r in covered]
            if self.stop.is_set():
                targets, skipped = [], targets
                self._put([TargetResult(t, "plan", "skipped", error=NOT_STARTED) for t, _ in skipped])
            self._handed(account, "plan", targets, creds, {"regions": [t.region for t, _ in targets]})

        jobs = (_bind(prepare, account, only.get(account.id, regions) if only is not None else regions)
                for account in accounts)
        yield from self._run(jobs, assumer.forget)

    def apply(self, assumer: RoleAssumer, plan: dict[Target, list[Change]], armed: Armed,
              on_intent: Callable[[Target, Change], None], on_outcome: Callable[[Target, Outcome], None]
              ) -> Iterator[TargetResult]:
        """Apply exactly the planned changes of the confirmed accounts: each worker announces each
        change (made durable here first), applies it, and reports its outcome (recorded here)."""
        assert self.spec is not None
        self._assumer = assumer
        self._on_intent, self._on_outcome = on_intent, on_outcome
        by_account: dict[str, list[tuple[Target, list[Change]]]] = {}
        for target, changes in sorted(plan.items()):
            if changes and armed.covers(target.account_id):
                by_account.setdefault(target.account_id, []).append((target, changes))

        def prepare(work: list[tuple[Target, list[Change]]]) -> None:
            first = work[0][0]
            account = Account(first.account_id, first.account_name, "", "ACTIVE")
            if self.stop.is_set():
                self._done_account(account.id)  # after an interrupt: left quietly
                return
            try:
                creds = assumer.credentials(account.id)
            except Exception as exc:
                self._put([TargetResult(t, "apply", "failed", changes=tuple(c), error=describe_error(exc))
                           for t, c in work])
                self._done_account(account.id)
                return
            self._handed(account, "apply", work, creds, {
                "targets": [{"region": t.region, "changes": [c.to_dict() for c in changes]} for t, changes in work],
                "armed": {"task": armed.task}})

        jobs = (_bind(prepare, work) for work in by_account.values())
        yield from self._run(jobs, assumer.forget)

    def _handed(self, account: Account, phase: Phase, targets: list[tuple[Target, list[Change]]],
                creds: botocore.credentials.Credentials, extra: dict[str, Any]) -> None:
        if not targets:
            self._done_account(account.id)
            return
        orphans = self._hand(account, phase, targets, creds, extra)
        if orphans:
            self._put([TargetResult(t, phase, "failed", error="no worker process left to take this target")
                       for t in orphans])
            self._done_account(account.id)

    def _put(self, results: list[TargetResult]) -> None:
        for result in results:
            self.results.put(result)

    # --- ending ---------------------------------------------------------------------------------

    def close(self) -> None:
        """End every worker (closing its stream ends it) and remove its scratch folder."""
        for worker in self._workers:
            worker.channel.close()
        for worker in self._workers:
            try:
                worker.process.wait(KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self._kill(worker)
            shutil.rmtree(worker.scratch, ignore_errors=True)
        self._workers = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


def frozen(creds: botocore.credentials.Credentials) -> dict[str, Any]:
    """An account's credentials as the worker receives them (refreshed here first if due)."""
    now = creds.get_frozen_credentials()
    expiry = getattr(creds, "_expiry_time", None)
    return {"access_key": now.access_key, "secret_key": now.secret_key, "token": now.token,
            "expiry_time": expiry.astimezone(UTC).isoformat() if expiry is not None else None}


def list_tasks(launch: Launch) -> tuple[list[TaskSpec], list[str]]:
    """Every task's declaration, loaded in a worker: (declarations, load errors)."""
    worker = _start(0, launch, {"op": "hello", "mode": "list", "tasks_dir": str(launch.tasks_dir)
                                if launch.tasks_dir else None, "config_dir": str(launch.config_dir),
                                "duration": launch.duration})
    pool = Workers(launch, 1, 60)
    try:
        message = pool._first(worker)
        specs, errors = message.get("tasks"), message.get("errors")
        if not isinstance(specs, list) or not isinstance(errors, list) or not all(isinstance(e, str) for e in errors):
            raise WorkerError("the task worker sent a malformed task list")
        try:
            return [TaskSpec.from_dict(s) for s in specs], errors
        except (ValueError, OrgrunnerError) as exc:
            raise WorkerError(f"the task worker sent an invalid declaration: {exc}") from None
    finally:
        pool._end(worker)

