"""One run of a task from start to end: records, lock, plan, confirmation, apply.

`run`, `apply PLAN` and `undo RUN_ID` are all this pipeline with different inputs: what to plan,
and (for `apply`) the saved plan the live one must equal. A baseline (orgrunner.engine.series)
drives one pipeline per task through the same steps, one at a time: `open`, `plan`,
`apply_confirmed` (after its one confirmation covering every task), `end`.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from orgrunner import aws
from orgrunner.cli.escape import visible
from orgrunner.cli.present import Details, PlanView
from orgrunner.config import environment
from orgrunner.config.settings import Settings, state_dir
from orgrunner.engine import interrupt
from orgrunner.engine.accounts import Account, Organization, Selection, Selectors
from orgrunner.engine.credentials import RoleAssumer, RoleRequest, session_name, source_identity
from orgrunner.engine.identity import Caller
from orgrunner.engine.runner import Outcome, TargetResult
from orgrunner.engine.workers import Workers, auto_processes
from orgrunner.errors import (
    EXIT_CHANGES_PENDING,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TARGETS_FAILED,
    EXIT_TERMINATED,
    ConfigMismatch,
    OrgrunnerError,
    RecordError,
    SafetyRefusal,
    Terminated,
)
from orgrunner.records.audit import AuditLog, scrub
from orgrunner.records.journal import Journal
from orgrunner.records.report import Reporter, merged
from orgrunner.records.statefiles import StateFolder
from orgrunner.safety.confirm import (
    Armed,
    confirm_closures,
    confirm_interactive,
    confirm_listed,
    confirm_plan,
    confirm_protected,
    confirm_unguarded,
)
from orgrunner.safety.lock import RunLock
from orgrunner.safety.planfile import SavedPlan, drift
from orgrunner.safety.policy import MAX_POLICY_CHARS, render, session_policy
from orgrunner.task import Change, Target, TaskSpec

Mode = Literal["dry-run", "armed"]
CLOSE_ACCOUNT = "organizations:CloseAccount"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def err(line: str) -> None:
    """One line on stderr: secrets scrubbed, control characters made visible."""
    print(visible(scrub(line)), file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Confirmation:
    """What the operator stated on the command line (None: not given)."""

    accounts: set[str] | None = None
    protected: set[str] | None = None
    plan: str | None = None  # `apply --confirm-plan`: the reviewed plan's digest, checked against the file
    close: list[str] | None = None  # `--confirm-close`: the names of the accounts the plan closes


@dataclass
class RunOptions:
    arm: bool = False
    stated: Confirmation = field(default_factory=Confirmation)
    report: Path | None = None
    output_format: Literal["text", "json", "markdown"] = "text"
    details: Details = "risky"
    fail_on_changes: bool = False
    plan_out: Path | None = None
    wait_for_lock: float = 0
    expected: SavedPlan | None = None  # `apply PLAN`: the live plan must equal this one
    only: dict[str, list[str] | None] | None = None  # `--retry-failed`: exactly these targets
    lock_name: str | None = None  # the task whose runs must not overlap (undo locks its task's runs)
    command: str = "run"
    # `orgrunner report`: plan each of these tasks in this one run (a dry run), each result handed
    # to `observe`; nothing is applied or saved (see Pipeline._survey)
    survey: tuple[tuple[TaskSpec, Workers], ...] = ()  # each task's declaration and its workers
    observe: Callable[[TaskSpec, TargetResult], None] | None = None
    follow_symlinks: bool = False  # --follow-symlinks: output paths may be symbolic links
    # a baseline's task: the baseline id on every audit event of the run, and the one plan view
    # every task of the baseline adds its changes to
    baseline_id: str | None = None
    view: PlanView | None = None


def audit_log(settings: Settings, run_id: str, follow_symlinks: bool,
              context: dict[str, str] | None = None) -> AuditLog:
    """The audit log of one run (or of a baseline): --audit-log or the settings' file, else the
    state folder's audit.jsonl. `context` fields go on every event it writes."""
    if settings.audit_log is not None:
        return AuditLog(settings.audit_log, run_id, follow_symlinks=follow_symlinks, context=context)
    state = state_dir()
    return AuditLog(state / "audit.jsonl", run_id, state=StateFolder(state), context=context)


def ending(exc: BaseException, *stops: threading.Event) -> tuple[str, int, BaseException | None]:
    """How a run (or a baseline) ends when `exc` ended it: its status, its exit code, and the error
    to raise once its end is recorded (None: an interrupt, said here on stderr)."""
    if isinstance(exc, KeyboardInterrupt):
        for stop in stops:
            stop.set()
        err("interrupted: no new targets started; results so far are in the report, audit log and journal")
        return "interrupted", EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED, None
    if isinstance(exc, OrgrunnerError):
        return (f"refused: {exc}" if isinstance(exc, SafetyRefusal) else f"error: {exc}"), exc.exit_code, exc
    for stop in stops:  # a bug, or a fault nothing else caught: an error, never "interrupted"
        stop.set()
    return f"error: {type(exc).__name__}: {exc}", EXIT_INTERNAL, exc


class Pipeline:
    def __init__(self, spec: TaskSpec, workers: Workers, settings: Settings, session: aws.Session, caller: Caller,
                 selection: Selection, selectors: Selectors, regions: list[str] | None, options: RunOptions) -> None:
        """`spec` is the task's declaration, as the `workers` (which run its code) loaded it."""
        self.cls = spec
        self.workers = workers
        self.settings = settings
        self.session = session
        self.caller = caller
        self.selection = selection
        self.selectors = selectors
        self.regions = regions
        self.options = options
        self.run_id = new_run_id()
        operator = caller.operator or caller.arn
        self.session_name = session_name(operator, self.cls.name, self.run_id)
        self.source_identity = source_identity(operator)
        self.stop = workers.stop
        self.mode: Mode = "armed" if options.arm else "dry-run"
        self.plan_digest: str | None = None  # of the plan this run saved (--plan-out)
        self.closing: dict[str, Account] = {}  # accounts whose closure was confirmed, by name (organization scope)
        self.created: list[str] = []  # accounts an organization-scope task created (apply)
        self.input_errors: list[str] = []  # plan: where the task's config file does not match the organization

    # --- the run as a whole ------------------------------------------------------------------

    def execute(self) -> int:
        """Run; return the exit code. Safety refusals and input errors are raised."""
        self.open()
        status, code = "interrupted", EXIT_INTERRUPTED
        raised: BaseException | None = None
        try:
            code = self._survey() if self.options.survey else self._plan_confirm_apply()
            if self.reporter.report_error and code == EXIT_OK:
                code = EXIT_TARGETS_FAILED
            status = {EXIT_OK: "ok", EXIT_CHANGES_PENDING: "changes pending"}.get(code, "failed")
        except (KeyboardInterrupt, Exception) as exc:
            status, code, raised = ending(exc, self.stop)
        code = self.end(status, code)
        if raised is not None:
            raise raised
        return code

    def open(self) -> None:
        """Take the run's lock (a writer's when armed), open its records and write `run-start`."""
        state = state_dir()
        lock = self.lock = RunLock(state, self.selection.organization_id or "no-org",
                                   self.options.lock_name or self.cls.name, self.options.wait_for_lock,
                                   writer=self.options.arm)
        lock.__enter__()
        try:
            follow = self.options.follow_symlinks
            baseline = {"baseline_id": self.options.baseline_id} if self.options.baseline_id else None
            audit = self.audit = audit_log(self.settings, self.run_id, follow, baseline)
            out = sys.stdout if self.options.output_format == "text" else sys.stderr
            view = self.options.view or PlanView(task_destructive=self.cls.destructive, details=self.options.details)
            self.reporter = Reporter(self.cls.name, self.run_id, out, audit, self.options.report, follow, view,
                                     owns_view=self.options.view is None)
            self.journal = Journal(state, self.run_id, self.cls.name, self.cls.version)
            audit.event("run-start", task=self.cls.name, command=self.options.command, mode=self.mode,
                        operator=self.caller.arn, account=self.caller.account_id, credentials=self.caller.kind,
                        selectors=self.selectors.to_dict(), regions=self.regions, role_name=self.settings.role_name,
                        role_session_name=self.session_name, source_identity=self.source_identity,
                        targets=[a.id for a in self.selection.targets], fences=self.workers.fences_line(),
                        **({"plan_digest": self.options.expected.digest} if self.options.expected else {}))
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        err(f"fences: {self.workers.fences_line()}")
        err(f"run {self.run_id}: {self.cls.name} ({self.mode}) over {len(self.selection.targets)} account(s), "
            f"role {self.settings.role_name}")

    def end(self, status: str, code: int) -> int:
        """Record the run's end, close its records and release its lock; return the exit code."""
        try:
            return self._end(self.audit, status, code)
        finally:
            self.lock.__exit__(None, None, None)

    def _end(self, audit: AuditLog, status: str, code: int) -> int:
        """Record the run's end, print the JSON summary, close the records; return the exit code,
        never a success when the audit log could not take the `run-end` event (said on stderr)."""
        tallies = {p: self.reporter.tally_dict(p) for p in ("plan", "apply")}
        self.journal.close()  # its head is final: the run-end names it (orgrunner.records.evidence)
        try:
            audit.event("run-end", task=self.cls.name, mode=self.mode, status=status,
                        journal_head=self.journal.head, **tallies)
        except RecordError as exc:
            err(f"orgrunner: {exc}")
            if code in (EXIT_OK, EXIT_CHANGES_PENDING):
                code = EXIT_INTERNAL
        if self.options.output_format == "json":
            print(json.dumps({"run_id": self.run_id, "task": self.cls.name, "mode": self.mode,
                              "status": status, "exit_code": code, **tallies,
                              "failed_targets": self.reporter.failed_targets,
                              **({"plan_digest": self.plan_digest} if self.plan_digest else {})},
                             indent=2), flush=True)
        self.reporter.close()
        self.journal.close()
        audit.close()
        return code

    def _assumer(self, phase: Literal["plan", "apply"]) -> RoleAssumer:
        role = self.settings.role_name
        if self.cls.scope == "organization":
            role = self.settings.organization_role_name or role
        policy = session_policy(self.cls, phase)
        if CLOSE_ACCOUNT in policy["Statement"][0]["Action"]:
            policy["Statement"].append(self._closure_statement())
        if len(render(policy)) > MAX_POLICY_CHARS:
            raise SafetyRefusal(f"the {phase} session policy naming the {len(self.closing)} accounts to close is "
                                f"over AWS's {MAX_POLICY_CHARS} characters: close fewer per run; nothing applied")
        request = RoleRequest(
            role_name=role,
            session_name=self.session_name,
            source_identity=self.source_identity,
            policy=render(policy),
            duration=self.settings.session_duration,
            external_id=self.settings.external_id,
        )
        return RoleAssumer(self.session, request)

    def _plan_confirm_apply(self) -> int:
        keep = self.options.arm or self.options.plan_out is not None or self.options.expected is not None
        plan, planned_ok = self._plan(keep)
        if self.input_errors:  # the config file is wrong: nothing is shown as a plan, saved or applied
            more = f" (and {len(self.input_errors) - 1} more)" if len(self.input_errors) > 1 else ""
            raise ConfigMismatch(f"{self.cls.name}: {self.input_errors[0]}{more}")
        environment.injected_bug("after-plan")
        interrupt.check()  # from here to the start of apply an interrupt is never lost (orgrunner.engine.interrupt)
        reporter = self.reporter
        markdown = self.options.output_format == "markdown"
        if not markdown:
            reporter.show_plan(reporter.plan_summary())
        plan_failed = reporter.tallies["plan"].failed > 0
        if self.options.plan_out is not None:
            self._save(plan, planned_ok)
        if self.options.expected is not None:
            self._check_drift(plan, plan_failed)
        if not self.options.arm or not plan:
            final = self.final_lines(applied=False)
            if markdown:
                self._markdown(final)
            for line in final:
                reporter.echo(line)
            if plan_failed:
                return EXIT_TARGETS_FAILED
            pending = reporter.tallies["plan"].changes > 0
            return EXIT_CHANGES_PENDING if self.options.fail_on_changes and pending else EXIT_OK
        if markdown:
            self._markdown([])
        armed = self._confirm(plan)
        interrupt.check()
        self.apply_confirmed(plan, armed)
        for line in self.final_lines(applied=True):
            reporter.echo(line)
        return EXIT_TARGETS_FAILED if plan_failed or reporter.tallies["apply"].failed else EXIT_OK

    def plan(self, keep: bool) -> dict[Target, list[Change]]:
        """The plan phase alone (a baseline's task): the changes, kept when `keep`."""
        return self._plan(keep)[0]

    def apply_confirmed(self, plan: dict[Target, list[Change]], armed: Armed) -> None:
        """Apply exactly the planned changes of the accounts `armed` covers (made by the confirmation)."""
        reporter = self.reporter
        reporter.audit.event("confirmed", task=self.cls.name, accounts=sorted(armed.accounts))
        with self.lock.applying():  # dry runs of this task wait while changes are applied
            interrupt.check()  # the last instant before apply starts
            environment.injected_bug("after-confirm")
            with reporter.progress("apply", sum(1 for c in plan.values() if c)):
                self._consume(self.workers.apply(self._assumer("apply"), plan, armed, self._intent, self._record),
                              self._applied)
        reporter.echo(reporter.apply_summary())

    def _survey(self) -> int:
        """`orgrunner report`: each task's plan phase in turn, through the same planning path as a
        dry run, under that task's own plan session policy and session name; the per-target lines
        go to stderr (stdout carries the document). Exit 1 when any target failed."""
        audit = self.reporter.audit
        operator = self.caller.operator or self.caller.arn
        total = Reporter("report", self.run_id, sys.stderr, audit, None)
        for spec, workers in self.options.survey:
            if self.stop.is_set():
                break
            workers.stop = self.stop  # one interrupt stops the whole report
            self.cls, self.workers = spec, workers
            self.session_name = session_name(operator, self.cls.name, self.run_id)
            self.reporter = Reporter(self.cls.name, self.run_id, sys.stderr, audit, None)
            self._plan(keep=False, observe=self.options.observe)
            self.reporter.echo(f"{self.cls.name}: {self.reporter.plan_summary()}")
            total.tallies["plan"] = merged(total.tallies["plan"], self.reporter.tallies["plan"])
        self.reporter = total  # the run's end records the tallies of every task together
        return EXIT_TARGETS_FAILED if total.tallies["plan"].failed else EXIT_OK

    def _markdown(self, final: list[str]) -> None:
        """`--format markdown`: the plan as one Markdown document on stdout (for a change ticket)."""
        kind = "armed run" if self.options.arm else "dry run"
        title = f"orgrunner plan: {self.cls.name} ({kind} {self.run_id})"
        for line in self.reporter.view.markdown(title, self.reporter.plan_summary(), final):
            print(scrub(line), flush=True)

    def final_lines(self, applied: bool) -> list[str]:
        """What happened, with the run id, and the true next step (after a blank line)."""
        plan, apply = self.reporter.tallies["plan"], self.reporter.tallies["apply"]
        run = f"Run {self.run_id}"
        retry = self._retry_hint()
        if applied:
            done = apply.outcomes.get("applied", 0)
            lines = ["", f"{run}: {done} change(s) applied in {len(apply.accounts)} account(s)."]
            if apply.failed or plan.failed:
                lines.append(f"Next: fix what failed above, then {retry}.")
            if self.created:
                lines.append(f"New account(s): {', '.join(self.created)}. Next: baseline them:")
                lines.append("  orgrunner baseline " + " ".join(f"--account {i}" for i in sorted(self.created))
                             + " --wait-for-role 900")  # AWS propagates a new account's role for a while
            if done:
                supports_undo = self.cls.undoable
                lines.append(f"Review: orgrunner runs show {self.run_id}" + (
                    f"; reverse: orgrunner undo {self.run_id}" if supports_undo else ""))
            return lines
        failed = f"; {plan.failed} target(s) failed" if plan.failed else ""
        if self.options.arm:
            lines = ["", f"{run}: no planned changes: nothing to apply{failed}."]
        elif not plan.changes:
            lines = ["", f"Dry run: nothing was changed. {run}: nothing to do, no target needs a change{failed}."]
        else:
            lines = ["", f"Dry run: nothing was changed. {run}: {plan.changes} change(s) planned in "
                     f"{len(plan.accounts_with_changes)} account(s){failed}."]
        if plan.failed:
            lines.append(f"Next: fix what failed above, then {retry}.")
        elif plan.changes and self.options.plan_out is not None:
            lines.append(f"Next: review {self.options.plan_out}, then: orgrunner apply {self.options.plan_out}")
        elif plan.changes and self.options.expected is None:
            lines.append("Next: to apply, run the same command with --arm instead of --dry-run.")
        return lines

    def _retry_hint(self) -> str:
        if self.options.report is not None:
            return f"orgrunner run {self.cls.name} --retry-failed {self.options.report}" + (
                " --arm" if self.options.arm else "")
        return "run the same command again (with --report FILE, --retry-failed FILE reruns only the failed targets)"

    def _plan(self, keep: bool, observe: Callable[[TaskSpec, TargetResult], None] | None = None,
              ) -> tuple[dict[Target, list[Change]], list[Target]]:
        """Stream the plan; keep the changes only when they will be needed (armed, saved, compared)."""
        plan: dict[Target, list[Change]] = {}
        planned_ok: list[Target] = []
        accounts = self.selection.targets
        processes = max(1, min(self.settings.processes or auto_processes(len(accounts)), len(accounts)))
        planner = self.workers
        planner.start(processes)
        if planner.processes > 1:
            err(f"planning in {planner.processes} processes of {planner.threads} workers each")
        estimate = len(accounts) * (len(self.regions) if self.regions else 1)
        def take(result: TargetResult) -> None:
            self.reporter.result(result)
            if result.input_error and result.error is not None:
                self.input_errors.append(result.error)
            if observe is not None:
                observe(self.cls, result)
            if keep and result.status == "ok":
                planned_ok.append(result.target)
                if result.changes:
                    plan[result.target] = list(result.changes)

        with self.reporter.progress("plan", estimate, discovered=lambda: planner.discovered):
            self._consume(planner.plan(self._assumer("plan"), accounts, self.regions, self.options.only), take)
        return plan, planned_ok

    def _consume(self, results: Iterator[TargetResult], take: Callable[[TargetResult], None]) -> None:
        """Hand every result to `take`; an interrupt landing anywhere (even while a result is being
        printed) stops new work and still hands over what the jobs in flight completed."""
        try:
            for result in results:
                take(result)
        except KeyboardInterrupt:
            for result in self.workers.finish():
                take(result)
            raise
        finally:  # `take` raised (a record could not be written): stop the pool here, not in whichever
            close = getattr(results, "close", None)  # thread the garbage collector finalizes it on
            if close is not None:
                close()

    def _applied(self, result: TargetResult) -> None:
        """An apply result; the accounts an organization-scope task says it created are kept when a
        create-account change of that target was applied (the summary names them)."""
        self.reporter.result(result)
        if self.cls.scope == "organization" and any(o.change.action == "create-account" and o.status == "applied"
                                                    for o in result.outcomes):
            self.created.extend(i for i in result.created if i not in self.created)

    def _intent(self, target: Target, change: Change) -> None:
        """Called (from the thread reading a worker) before the worker may apply `change`; it
        applies only once this returned: the intent is durable (written and fsynced)."""
        self.journal.record("applying", change)

    def _record(self, target: Target, outcome: Outcome) -> None:
        """Called (from the thread reading a worker) the moment a change was applied (or failed)."""
        self.journal.record(outcome.status, outcome.change, outcome.error)
        # the audit log keeps a summary and the digest; the change in full is in the journal
        self.reporter.applied({**outcome.change.brief(), "account": target.account_id, "region": target.region,
                               "status": outcome.status, "error": outcome.error})

    def _save(self, plan: dict[Target, list[Change]], planned_ok: list[Target]) -> None:
        """Write the plan file and bind it to this run: its digest and what it targets go to the
        audit log (`plan-saved`), where `apply` looks for them."""
        path = self.options.plan_out
        assert path is not None
        saved = SavedPlan(
            run_id=self.run_id, task=self.cls.name, task_version=self.cls.version, caller=self.caller.arn,
            role_name=self.settings.role_name, regions=self.regions,
            policies={p: session_policy(self.cls, p) for p in ("plan", "apply")},
            targets=planned_ok, changes=plan,
        )
        digest = self.plan_digest = saved.write(path, self.options.follow_symlinks)
        self.reporter.audit.event("plan-saved", path=str(path.resolve()), digest=digest, **saved.binding())
        err(f"plan written to {path}, digest {digest}")
        err(f"apply it here with `orgrunner apply {path}`; elsewhere (a pipeline) with --confirm-plan {digest}")

    def _check_drift(self, live: dict[Target, list[Change]], plan_failed: bool) -> None:
        saved = self.options.expected
        assert saved is not None
        if saved.task_version != self.cls.version:
            raise SafetyRefusal(f"the plan was made with {saved.task} version {saved.task_version}; "
                                f"this is version {self.cls.version}: plan again; nothing applied")
        if plan_failed:
            raise SafetyRefusal("some targets could not be planned again, so the live plan cannot be compared "
                                "with the saved one; nothing applied")
        lines = drift(saved.changes, live)
        if lines:
            for line in lines:
                err(f"drift: {line}")
            raise SafetyRefusal(f"the live plan differs from the saved plan {saved.run_id} in {len(lines)} "
                                "change(s); nothing applied. Plan again and review.")
        err(f"the live plan equals the saved plan {saved.run_id}")

    def _closure_statement(self) -> dict[str, object]:
        """CloseAccount only on the accounts whose closure was confirmed by name: the session policy
        denies it on every other account (on all, when none was), so a task cannot close an account
        under another change's name, and AWS itself refuses what the confirmation did not cover."""
        deny: dict[str, object] = {"Sid": "orgrunnerCloseOnlyConfirmed", "Effect": "Deny", "Action": CLOSE_ACCOUNT}
        if not self.closing:
            return {**deny, "Resource": "*"}
        partition, management = self.session.partition, self.selection.management_account_id
        arns = [f"arn:{partition}:organizations::{management}:account/{self.selection.organization_id}/{i}"
                for i in sorted(self.closing)]
        return {**deny, "NotResource": arns}

    def _closures(self, plan: dict[Target, list[Change]]) -> dict[str, Account]:
        """The accounts an organization-scope plan closes, checked here against the organization as
        this process read it (never as the task describes it). The management account and protected
        accounts are never closed; no more than `max_closures_per_run`. Raises SafetyRefusal."""
        planned = [c for changes in plan.values() for c in changes if c.action == "close-account"]
        if self.cls.scope != "organization" or not planned:
            return {}
        members, management = self.selection.members, self.selection.management_account_id
        paths = {a: "/" + p.partition("/")[2] for a, p in Organization(self.session).ou_paths().items()}
        closing: dict[str, Account] = {}
        for change in planned:
            account = members.get(change.resource)
            if account is None:
                raise SafetyRefusal(f"the plan closes {visible(change.resource)!r}, which is not an account of this "
                                    "organization; nothing applied")
            label = f"{account.id} ({visible(account.name)})"
            if account.id == management:
                raise SafetyRefusal(f"the plan closes {label}, the management account: it is never closed; "
                                    "nothing applied")
            reason = self.settings.protection().reason(account)
            if reason is not None:
                raise SafetyRefusal(f"the plan closes {label}, a protected account ({reason}): protected accounts "
                                    "are never closed, --include-protected or not; nothing applied")
            seen = change.before if isinstance(change.before, dict) else {}
            record = {"account_id": account.id, "name": account.name, "email": account.email,
                      "ou": paths.get(account.id)}
            if {k: seen.get(k) for k in record} != record:
                raise SafetyRefusal(f"the plan's record of the account it closes does not match the organization: "
                                    f"{label}, {visible(account.email)}, {record['ou']}; nothing applied")
            closing[account.id] = account
        limit = self.settings.max_closures_per_run
        if len(closing) > limit:
            members_now = sum(1 for a in members.values() if a.id != management)
            quota = min(1000, max(10, members_now // 10))
            raise SafetyRefusal(
                f"{len(closing)} account closures planned; the settings allow at most {limit} per run "
                f"(max_closures_per_run). AWS's own quota: an organization closes at most 10% of its member "
                f"accounts (at least 10, at most 1000) in a rolling 30 days, here {quota}; beyond it CloseAccount "
                "fails with CLOSE_ACCOUNT_QUOTA_EXCEEDED. Close fewer per run or raise max_closures_per_run; "
                "nothing applied")
        return closing

    def _confirm(self, plan: dict[Target, list[Change]]) -> Armed:
        """The confirmation the plan calls for; raises SafetyRefusal, having applied nothing, otherwise.

        `--confirm-accounts`, whenever given, must name exactly the accounts with planned changes.
        `apply` (a saved plan) always needs a confirmation, destructive or not: the typed answer,
        `--confirm-accounts`, or `--confirm-plan` (whose digest the CLI has checked against the file).
        """
        name = self.cls.name
        stated = self.options.stated
        accounts = {t.account_id for t, changes in plan.items() if changes}
        interactive = sys.stdin.isatty()
        protected = {i: n for i, n in self.selection.protected.items() if i in accounts}
        closing = self._closures(plan)  # refusals first: a protected account is never closed
        if self.cls.scope == "organization":  # a change to a protected member account: its own confirmation
            guard = self.settings.protection()
            for change in (c for changes in plan.values() for c in changes):
                member = self.selection.members.get(change.resource)
                if member is not None and guard.reason(member):
                    protected[member.id] = member.name
        confirm_protected(protected, ask if interactive else None, stated.protected)
        confirm_closures({i: a.name for i, a in closing.items()}, ask if interactive else None, stated.close)
        if closing:
            self.reporter.audit.event("closures-confirmed", task=name,
                                      accounts=[{"id": a.id, "name": a.name, "email": a.email} for a in
                                                closing.values()])
        self.closing = closing
        if stated.accounts is not None:
            return confirm_listed(name, accounts, {a.id for a in self.selection.targets}, stated.accounts)
        saved = self.options.expected
        if saved is not None and stated.plan is not None and stated.plan == saved.digest:
            err(f"{name}: confirmed by --confirm-plan {stated.plan}")
            return confirm_plan(name, accounts, stated.plan)
        destructive = any(c.destructive for changes in plan.values() for c in changes)
        if not destructive and saved is None:
            err(f"{name}: every planned change only tightens a setting; --arm is confirmation enough")
            return confirm_unguarded(name, accounts)
        if not interactive:
            how = "--confirm-accounts or --confirm-plan" if saved is not None else "--confirm-accounts"
            raise SafetyRefusal(f"an armed run without a terminal needs {how} naming the accounts "
                                f"with planned changes ({len(accounts)}); nothing applied")
        err(f"{name} will change {len(accounts)} account(s):")
        view = self.reporter.view
        for account_id in sorted(accounts):
            c = view.accounts.get(account_id)
            if c is not None:
                err(f"  {account_id} {visible(c.name or '-'):<30} {c.changes} change(s), {c.destructive} destructive, "
                    f"{c.risky} need a look")
        def attempt(number: int, problem: str | None) -> None:
            self.reporter.audit.event("confirmation-attempt", task=name, attempt=number, matched=problem is None,
                                      problem=problem)

        return confirm_interactive(name, accounts, ask, tell=err, on_attempt=attempt)


def ask(prompt: str) -> str:
    """Ask at the terminal; an interrupt before or while waiting ends the wait (raised)."""
    interrupt.check()
    print(visible(prompt), end="", file=sys.stderr, flush=True)
    return interrupt.readline(sys.stdin)

