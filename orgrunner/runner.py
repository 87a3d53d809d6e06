"""The parallel engine: a bounded thread pool over account x region targets.

Per account, one job assumes the role (once, cached) and resolves the enabled regions; it then
fans out one job per region into the same pool, so a slow account never holds workers idle.
Account jobs are fed through a window (as many unfinished as there are workers), so the queue
holds at most window x regions jobs whatever the size of the organization.
Results are yielded to the caller's thread as they complete: streamed, never accumulated here.
The engine knows nothing about any particular task.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from orgrunner import aws
from orgrunner.accounts import Account
from orgrunner.audit import scrub
from orgrunner.confirm import Armed
from orgrunner.credentials import RoleAssumer
from orgrunner.errors import OrgrunnerError
from orgrunner.guard import CallGuard, install_shared
from orgrunner.policy import ENGINE_REGIONAL_ACTIONS, phase_actions
from orgrunner.task import GLOBAL_REGION, ApplyContext, Change, Drift, Phase, Skip, Target, Task, TaskContext

Status = Literal["ok", "failed", "skipped"]
ALL_REGIONS = "*"


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
    """A thread pool whose jobs may submit more jobs, with results drained on the caller's thread."""

    workers: int
    stop: threading.Event
    results: queue.Queue[TargetResult] = field(default_factory=queue.Queue)
    _pending: set[Future[None]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _feed: Iterator[tuple[Callable[..., None], tuple[Any, ...]]] | None = None
    _window: int = 0
    _fed: int = 0  # jobs from the feed started and not yet finished

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="orgrunner")

    def feed(self, jobs: Iterator[tuple[Callable[..., None], tuple[Any, ...]]], window: int) -> None:
        """Run `jobs` with at most `window` of them unfinished at a time: the next is taken from
        the iterator only when one finishes, so the queue (and memory) stays bounded however long
        the iterator is."""
        self._feed, self._window = jobs, window
        self._top_up()

    def _top_up(self) -> None:
        while True:
            with self._lock:
                if self._feed is None or self._fed >= self._window or self.stop.is_set():
                    return
                job = next(self._feed, None)
                if job is None:
                    self._feed = None
                    return
                self._fed += 1
            if not self.submit(self._fed_job, *job):  # stopping: dropped, as queued jobs are cancelled
                with self._lock:
                    self._fed -= 1
                return

    def _fed_job(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        finally:
            with self._lock:
                self._fed -= 1
            self._top_up()  # before this job's future completes, so the pool never looks idle early

    def submit(self, fn: Callable[..., None], *args: Any) -> bool:
        """Schedule a job; False once the pool is stopping (nothing new starts after an interrupt)."""
        with self._lock:
            if self.stop.is_set():
                return False
            try:
                future = self._executor.submit(fn, *args)
            except RuntimeError:  # shut down between the check and the submit
                return False
            self._pending.add(future)
        future.add_done_callback(self._done)
        return True

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.cancelled():  # an interrupt cancelled it before it started
            return
        if future.exception() is not None:  # a job must report through results; this is a bug
            self.results.put(TargetResult(Target("?", "?"), "plan", "failed",
                                          error=describe_error(future.exception())))  # type: ignore[arg-type]

    def drain(self) -> Iterator[TargetResult]:
        """Yield results as they arrive until every job is done. On an interrupt (Ctrl-C, SIGTERM):
        start nothing new, let the jobs in flight finish, yield what they produced, re-raise."""
        finished = False
        try:
            while True:
                try:
                    yield self.results.get(timeout=0.05)
                    continue
                except queue.Empty:
                    pass
                with self._lock:
                    idle = not self._pending and (self._feed is None or self.stop.is_set())
                if idle and self.results.empty():
                    finished = True
                    return
        except KeyboardInterrupt:
            yield from self.finish()
            raise
        finally:
            if not finished:  # the consumer stopped early: stop scheduling new targets
                self.stop.set()
            self._executor.shutdown(wait=True, cancel_futures=True)

    def finish(self) -> Iterator[TargetResult]:
        """Stop: start nothing new, wait for the jobs in flight, and yield what they produced."""
        self.stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        while not self.results.empty():
            yield self.results.get_nowait()


class Runner:
    def __init__(self, task: Task, assumer: RoleAssumer, concurrency: int,
                 stop: threading.Event | None = None,
                 on_outcome: Callable[[Target, Outcome], None] | None = None,
                 on_intent: Callable[[Target, Change], None] | None = None) -> None:
        """`on_intent` is called from the worker just before each change is applied, `on_outcome`
        the moment it was applied (or failed): a journal written from them holds every change AWS
        may have applied, even if the process dies between the call and the record."""
        self.task = task
        self.on_outcome = on_outcome
        self.on_intent = on_intent
        self._pool: _Pool | None = None
        # One session signing as the current job's account, one guarded client per service and
        # region, shared by every job (see aws.AccountCredentials).
        self._session = aws.Session.from_credentials(aws.AccountCredentials(),
                                                     aws.client_config(max_pool_connections=concurrency))
        self._shared: dict[tuple[str, str], Any] = {}
        self._engine_guard = CallGuard("orgrunner", "plan", ENGINE_REGIONAL_ACTIONS)
        self._open: dict[str, int] = {}  # plan: targets of each account not yet done
        self.assumer = assumer
        self.concurrency = concurrency
        self.stop = stop or threading.Event()
        self.discovered = 0  # targets known so far (accounts expand into regions as they go)
        self._lock = threading.Lock()

    def finish(self) -> Iterator[TargetResult]:
        """After an interrupt outside the result loop: stop, and yield what the jobs in flight produced."""
        if self._pool is not None:
            yield from self._pool.finish()

    # --- plumbing shared by both phases ----------------------------------------------------

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        client = self._shared.get(key)
        if client is None:
            with self._lock:
                client = self._shared.get(key)
                if client is None:
                    client = self._shared[key] = install_shared(self._session.client(service, region))
        return client

    def _clients(self, target: Target, phase: Phase) -> tuple[Callable[[str, Phase], Any], CallGuard]:
        guard = CallGuard(self.task.name, phase, phase_actions(type(self.task), phase))
        region = aws.HOME_REGION if target.region == GLOBAL_REGION else target.region

        def make(service: str, _phase: Phase) -> Any:
            return self._client(service, region)

        return make, guard

    @contextlib.contextmanager
    def _job(self, account_id: str, guard: CallGuard) -> Iterator[None]:
        """This thread now works for `account_id`, under `guard`."""
        with aws.acting_for(lambda: self.assumer.credentials(account_id)), guard.active():
            yield

    def _regions(self, account: Account, wanted: list[str] | None) -> tuple[list[str], list[str]]:
        """(regions to cover, requested regions not enabled in the account)."""
        if not type(self.task).regional:
            return [GLOBAL_REGION], []
        ec2 = self._client("ec2", aws.HOME_REGION)
        with self._job(account.id, self._engine_guard):
            described = aws.call(ec2, "describe_regions")["Regions"]
        enabled = sorted(r["RegionName"] for r in described if r.get("OptInStatus") != "not-opted-in")
        if wanted is None:
            return enabled, []
        return [r for r in wanted if r in enabled], [r for r in wanted if r not in enabled]

    # --- plan --------------------------------------------------------------------------------

    def plan(self, accounts: list[Account], regions: list[str] | None,
             only: dict[str, list[str] | None] | None = None) -> Iterator[TargetResult]:
        """Plan every account x region; `only` narrows some accounts to their own regions (None: all
        enabled), as `--retry-failed` does for exactly the targets that failed before."""
        pool = self._pool = _Pool(self.concurrency, self.stop)
        self.discovered = len(accounts) * (len(regions) if regions else 1)
        # after an interrupt, accounts not reached yet are left quietly, as queued jobs are cancelled
        pool.feed(((self._plan_account, (pool, account, only.get(account.id, regions) if only is not None else regions))
                   for account in accounts), window=self.concurrency)
        yield from pool.drain()

    def _plan_account(self, pool: _Pool, account: Account, wanted: list[str] | None) -> None:
        if self.stop.is_set():  # queued before an interrupt: left quietly, like a cancelled job
            return
        try:
            regions, disabled = self._regions(account, wanted)
        except Exception as exc:
            for region in wanted or [ALL_REGIONS]:
                pool.results.put(TargetResult(Target(account.id, region, account.name), "plan", "failed",
                                              error=describe_error(exc)))
            return
        with self._lock:
            self.discovered += len(regions) + len(disabled) - (len(wanted) if wanted else 1)
            self._open[account.id] = len(regions)
        if not regions:
            self._close(account.id)
        for region in disabled:
            pool.results.put(TargetResult(Target(account.id, region, account.name), "plan", "skipped",
                                          error="region not enabled in this account"))
        for region in regions:
            target = Target(account.id, region, account.name)
            if not pool.submit(self._plan_target, pool, target):
                pool.results.put(TargetResult(target, "plan", "skipped", error="interrupted before start"))

    def _plan_target(self, pool: _Pool, target: Target) -> None:
        if self.stop.is_set():  # queued before an interrupt: left quietly, like a cancelled job
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
        except Exception as exc:
            result = TargetResult(target, "plan", "failed", error=describe_error(exc), notes=_notes(ctx))
        pool.results.put(result)
        self._close(target.account_id)

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

    # --- apply -------------------------------------------------------------------------------

    def apply(self, plan: dict[Target, list[Change]], armed: Armed) -> Iterator[TargetResult]:
        """Apply exactly the planned changes of the confirmed accounts, one job per target."""
        pool = self._pool = _Pool(self.concurrency, self.stop)
        for target, changes in sorted(plan.items()):
            if changes and armed.covers(target.account_id):
                pool.submit(self._apply_target, pool, target, changes, armed)
        yield from pool.drain()

    def _apply_target(self, pool: _Pool, target: Target, changes: list[Change], armed: Armed) -> None:
        outcomes: list[Outcome] = []
        clients, guard = self._clients(target, "apply")
        try:
            ctx = ApplyContext(self.task, target, clients, armed)
        except Exception as exc:
            pool.results.put(TargetResult(target, "apply", "failed", changes=tuple(changes),
                                          error=describe_error(exc)))
            return
        for change in changes:
            if self.stop.is_set():
                break
            if self.on_intent is not None:
                self.on_intent(target, change)
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
            if self.on_outcome is not None:
                self.on_outcome(target, outcome)
        failed = [o for o in outcomes if o.status in ("failed", "drifted")]
        verdict: Status = "failed" if failed or len(outcomes) < len(changes) else "ok"
        error = failed[0].error if failed else (None if verdict == "ok" else "interrupted")
        pool.results.put(TargetResult(target, "apply", verdict, changes=tuple(changes),
                                      outcomes=tuple(outcomes), error=error))
