"""The per-target engine: a bounded thread pool running a task's plan and apply over targets.

It runs in a task worker process (orgrunner.engine.worker): the parent process resolves accounts,
regions and credentials and hands each worker one account's targets at a time
(orgrunner.engine.workers). Results are put on the pool's queue as they complete: streamed, never
accumulated here. The engine knows nothing about any particular task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import botocore.credentials
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from orgrunner import aws
from orgrunner.errors import ConfigMismatch, OrgrunnerError
from orgrunner.records.audit import scrub
from orgrunner.safety.confirm import Armed
from orgrunner.safety.guard import CallGuard, install_shared
from orgrunner.safety.policy import phase_actions
from orgrunner.task import GLOBAL_REGION, ApplyContext, Change, Drift, Phase, Skip, Target, Task, TaskContext

Status = Literal["ok", "failed", "skipped"]
ALL_REGIONS = "*"
STATUSES = ("ok", "failed", "skipped")
NOT_STARTED = "interrupted before start"
OUTCOMES = ("applied", "already done", "drifted", "failed")


@dataclass(frozen=True)
class Outcome:
    """What became of one change in the apply phase."""

    change: Change
    status: Literal["applied", "already done", "drifted", "failed"]
    error: str | None = None


@dataclass(frozen=True)
class TargetResult:
    target: Target
    phase: Phase
    status: Status
    changes: tuple[Change, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()
    created: tuple[str, ...] = ()  # apply: member accounts an organization-scope task created
    input_error: bool = False  # plan: the task's config file does not match the live organization

    def record(self, task: str, run_id: str) -> dict[str, Any]:
        """The JSON report line for this target."""
        return {
            "run_id": run_id,
            "account": self.target.account_id,
            "account_name": self.target.account_name,
            "region": self.target.region,
            "task": task,
            "phase": self.phase,
            "status": self.status,
            "changes": [c.to_dict() for c in self.changes],
            "outcomes": [{"resource": o.change.resource, "action": o.change.action, "status": o.status,
                          "error": o.error} for o in self.outcomes],
            "error": self.error,
            "notes": list(self.notes),
            **({"created": list(self.created)} if self.created else {}),
            **({"input_error": True} if self.input_error else {}),
        }


def describe_error(exc: BaseException) -> str:
    """One line for a target's failure; never a traceback, never a secret."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "")
        text = f"{op}: {err.get('Code', 'Error')}: {err.get('Message', '')}".strip(": ")
    elif isinstance(exc, ResponseParserError):  # its text quotes the raw answer, credentials and all
        text = f"unreadable answer from AWS: {str(exc).splitlines()[0][:200]}"
    elif isinstance(exc, OrgrunnerError | BotoCoreError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return scrub(" ".join(text.split()))


def _notes(ctx: TaskContext) -> tuple[str, ...]:
    """A task's notes, scrubbed here, where the account's credentials are still known."""
    return tuple(scrub(note) for note in ctx.notes)


@dataclass
class _Pool:
    """A thread pool whose jobs put their results on a queue (a worker's sender thread sends them on)."""

    workers: int
    stop: threading.Event
    results: queue.Queue[TargetResult] = field(default_factory=queue.Queue)
    _pending: dict[Future[None], tuple[Target, Phase]] = field(default_factory=dict)  # job -> whose it is
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="orgrunner")

    def submit(self, fn: Callable[..., None], pool: _Pool, target: Target, *args: Any, phase: Phase = "plan") -> bool:
        """Schedule a job working for `target`; False once the pool is stopping (nothing new starts
        after an interrupt)."""
        with self._lock:
            if self.stop.is_set():
                return False
            try:
                future = self._executor.submit(fn, pool, target, *args)
            except RuntimeError:  # shut down between the check and the submit
                return False
            self._pending[future] = (target, phase)
        future.add_done_callback(self._done)
        return True

    def _done(self, future: Future[None]) -> None:
        """A job ended. One that raised instead of reporting (a bug) fails its own target, never a
        phantom `?`; its result is queued before it leaves `_pending`, so a drain never finds the
        pool idle with a result still to come."""
        with self._lock:
            target, phase = self._pending[future]
        exc = None if future.cancelled() else future.exception()  # cancelled: by an interrupt, before it started
        if exc is not None:
            self.results.put(TargetResult(target, phase, "failed", error=describe_error(exc)))
        with self._lock:
            del self._pending[future]

class CredentialSource(Protocol):
    """Where a runner gets an account's credentials: in a worker process, those the parent sent."""

    def credentials(self, account_id: str) -> botocore.credentials.Credentials: ...

    def forget(self, account_id: str) -> None: ...


class Runner:
    """Runs a task's plan and apply for the targets handed to it; in a worker process (the parent
    resolves accounts, regions and credentials: orgrunner.engine.workers)."""

    def __init__(self, task: Task, assumer: CredentialSource, concurrency: int,
                 stop: threading.Event | None = None,
                 on_outcome: Callable[[Target, Outcome], None] | None = None,
                 on_intent: Callable[[Target, Change], None] | None = None, partition: str = "aws") -> None:
        """`partition` (the caller's, from the parent) decides the region of global targets.
        `on_intent` is called from the job just before each change is applied, and the change is
        applied only if it returns (the intent is durable); `on_outcome` the moment it was applied
        (or failed): a journal written from them holds every change AWS may have applied, even if a
        process dies between the call and the record."""
        self.task = task
        self.on_outcome = on_outcome
        self.on_intent = on_intent
        # One session signing as the current job's account, one guarded client per service and
        # region, shared by every job (see aws.AccountCredentials).
        self.session = aws.Session.from_credentials(aws.AccountCredentials(),
                                                    aws.client_config(max_pool_connections=concurrency),
                                                    partition=partition)
        self._shared: dict[tuple[str, str], Any] = {}
        self._open: dict[str, int] = {}  # targets of each account not yet done
        self.assumer = assumer
        self.concurrency = concurrency
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()

    # --- plumbing shared by both phases ----------------------------------------------------

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        client = self._shared.get(key)
        if client is None:
            with self._lock:
                client = self._shared.get(key)
                if client is None:
                    client = self._shared[key] = install_shared(self.session.client(service, region))
        return client

    def _clients(self, target: Target, phase: Phase) -> tuple[Callable[[str, Phase], Any], CallGuard]:
        guard = CallGuard(self.task.name, phase, phase_actions(type(self.task), phase))
        region = self.session.home_region if target.region == GLOBAL_REGION else target.region

        def make(service: str, _phase: Phase) -> Any:
            return self._client(service, region)

        return make, guard

    @contextlib.contextmanager
    def _job(self, account_id: str, guard: CallGuard) -> Iterator[None]:
        """This thread now works for `account_id`, under `guard`."""
        with aws.acting_for(lambda: self.assumer.credentials(account_id)), guard.active():
            yield

    def _opened(self, account_id: str, targets: int) -> None:
        with self._lock:
            self._open[account_id] = self._open.get(account_id, 0) + targets

    def _close(self, account_id: str) -> None:
        """One target of the account is done; after its last, drop its credentials, so memory
        does not grow with the number of accounts a run has covered."""
        with self._lock:
            left = self._open.get(account_id, 1) - 1
            if left > 0:
                self._open[account_id] = left
                return
            self._open.pop(account_id, None)
        self.assumer.forget(account_id)

    # --- plan --------------------------------------------------------------------------------

    def plan_targets(self, pool: _Pool, targets: list[Target]) -> None:
        """Plan these targets (one account's regions) in the pool; every one yields one result."""
        if not targets:
            return
        self._opened(targets[0].account_id, len(targets))
        for target in targets:
            if not pool.submit(self._plan_target, pool, target):
                pool.results.put(TargetResult(target, "plan", "skipped", error=NOT_STARTED))
                self._close(target.account_id)

    def _plan_target(self, pool: _Pool, target: Target) -> None:
        if self.stop.is_set():  # queued before an interrupt
            pool.results.put(TargetResult(target, "plan", "skipped", error=NOT_STARTED))
            self._close(target.account_id)
            return
        clients, guard = self._clients(target, "plan")
        ctx = TaskContext(self.task, target, clients)
        try:
            with self._job(target.account_id, guard):
                changes = tuple(self.task.plan(ctx))
            guard.raise_if_refused()  # a task that swallowed the guard's refusal still fails
            result = TargetResult(target, "plan", "ok", changes=changes, notes=_notes(ctx))
        except Skip as exc:
            result = TargetResult(target, "plan", "skipped", error=str(exc), notes=_notes(ctx))
        except ConfigMismatch as exc:
            result = TargetResult(target, "plan", "failed", error=describe_error(exc), notes=_notes(ctx),
                                  input_error=True)
        except Exception as exc:
            result = TargetResult(target, "plan", "failed", error=describe_error(exc), notes=_notes(ctx))
        pool.results.put(result)
        self._close(target.account_id)

    # --- apply -------------------------------------------------------------------------------

    def apply_targets(self, pool: _Pool, work: list[tuple[Target, list[Change]]], armed: Armed) -> None:
        """Apply exactly these planned changes (one account's targets), one job per target."""
        if not work:
            return
        self._opened(work[0][0].account_id, len(work))
        for target, changes in work:
            if not pool.submit(self._apply_target, pool, target, changes, armed, phase="apply"):
                pool.results.put(TargetResult(target, "apply", "skipped", changes=tuple(changes), error=NOT_STARTED))
                self._close(target.account_id)

    def _apply_target(self, pool: _Pool, target: Target, changes: list[Change], armed: Armed) -> None:
        try:
            pool.results.put(self._apply_changes(target, changes, armed))
        finally:
            self._close(target.account_id)

    def _apply_changes(self, target: Target, changes: list[Change], armed: Armed) -> TargetResult:
        if self.stop.is_set():  # queued before an interrupt: nothing of it was attempted
            return TargetResult(target, "apply", "skipped", changes=tuple(changes), error=NOT_STARTED)
        clients, guard = self._clients(target, "apply")
        try:
            ctx = ApplyContext(self.task, target, clients, armed)
        except Exception as exc:
            return TargetResult(target, "apply", "failed", changes=tuple(changes), error=describe_error(exc))
        result = self._apply_each(ctx, guard, target, changes)
        # what the task noted while applying, and the accounts it created (organization scope)
        return dataclasses.replace(result, notes=_notes(ctx), created=tuple(ctx.created))

    def _apply_each(self, ctx: ApplyContext, guard: CallGuard, target: Target, changes: list[Change]) -> TargetResult:
        outcomes: list[Outcome] = []
        for change in changes:
            if self.stop.is_set():
                break
            try:
                if self.on_intent is not None:
                    self.on_intent(target, change)
            except Exception as exc:  # not recorded as intended: not applied, and nothing after it
                return TargetResult(target, "apply", "failed", changes=tuple(changes), outcomes=tuple(outcomes),
                                    error=f"not applied: {change.summary}: {describe_error(exc)}")
            try:
                ctx.applied = None
                with self._job(target.account_id, guard):
                    status = self.task.apply(ctx, change)
                guard.raise_if_refused()
                done = ctx.applied or change  # what the task says it really did, if narrower
                outcome = Outcome(done, "already done" if status == "already done" else "applied")
            except Drift as exc:
                outcome = Outcome(change, "drifted", describe_error(exc))
            except Exception as exc:
                outcome = Outcome(change, "failed", describe_error(exc))
            outcomes.append(outcome)
            try:
                if self.on_outcome is not None:
                    self.on_outcome(target, outcome)
            except Exception as exc:  # AWS may have applied it: say which, and attempt nothing more
                return TargetResult(target, "apply", "failed", changes=tuple(changes), outcomes=tuple(outcomes),
                                    error=f"{outcome.status} but not recorded: {change.summary}: "
                                          f"{describe_error(exc)}")
        failed = [o for o in outcomes if o.status in ("failed", "drifted")]
        verdict: Status = "failed" if failed or len(outcomes) < len(changes) else "ok"
        error = failed[0].error if failed else (None if verdict == "ok" else "interrupted")
        return TargetResult(target, "apply", verdict, changes=tuple(changes), outcomes=tuple(outcomes), error=error)
