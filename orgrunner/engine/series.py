"""A baseline: the tasks of config/baseline.yaml as one change, planned together, confirmed once,
applied in order.

Each task is a run of its own, exactly as `orgrunner run` makes it (orgrunner.engine.pipeline):
its own lock, run id, session name, session policies (plan, then apply), fenced workers, journal
and audit events. What ties them together is the baseline id: a field on every audit event of
each of its runs, between the baseline's own `baseline-start` and `baseline-end` events (which
carry the baseline id as their run id, and the confirmation attempts).

The order of things, and what a failure means (fail closed):

1. For accounts just created (`--wait-for-role`), AssumeRole is retried while AWS propagates
   their role; an account whose role never becomes assumable in time stops the baseline before
   anything is planned.
2. Every task is planned, in order, before anything is applied. One plan is shown.
3. A target that could not be planned, in any task, applies nothing at all: the plan is
   incomplete, so no confirmation could cover what would happen.
4. One confirmation covers every task: the union of the accounts with planned changes, typed
   (or `--confirm-accounts`) whenever any task's plan holds a destructive change; `--arm` alone
   when every change of every task only tightens a setting. Protected accounts need their own
   confirmation as in a run. A refusal applies nothing.
5. Tasks are applied one after another in the baseline's order. A task with a failed target (or
   an interrupt) stops the baseline before the next task: the runs after it end "not applied",
   the exit code is 1 (130/143 for an interrupt), and the summary names each run and what it
   applied. Running the same baseline again plans what was applied as nothing to do.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field

from orgrunner import aws
from orgrunner.cli.escape import visible
from orgrunner.cli.present import PlanView
from orgrunner.config.settings import Settings
from orgrunner.engine import interrupt
from orgrunner.engine.accounts import Selection, Selectors
from orgrunner.engine.credentials import RoleRequest, session_name, source_identity, wait_until_assumable
from orgrunner.engine.identity import Caller
from orgrunner.engine.pipeline import Pipeline, RunOptions, ask, audit_log, ending, err, new_run_id
from orgrunner.engine.workers import Workers
from orgrunner.errors import EXIT_OK, EXIT_TARGETS_FAILED, SafetyRefusal
from orgrunner.records.audit import scrub
from orgrunner.records.report import Tally, merged
from orgrunner.safety.confirm import (
    Armed,
    confirm_interactive,
    confirm_listed,
    confirm_protected,
    confirm_unguarded,
    share_of,
)
from orgrunner.task import Change, Target, TaskSpec

NAME = "baseline"  # what the typed confirmation names with more than ten accounts ('<count> baseline')


@dataclass
class Step:
    """One task of the baseline: its run, its plan, and how it ended."""

    spec: TaskSpec
    workers: Workers
    run: Pipeline | None = None
    plan: dict[Target, list[Change]] = field(default_factory=dict)
    status: str = "not started"
    ended: bool = False
    outcome: str = ""  # the summary line's text

    def end(self, status: str, code: int) -> int:
        """End the task's run (its `run-end`, its records closed, its lock released)."""
        self.status, self.ended = status, True
        assert self.run is not None
        return self.run.end(status, code)


class Baseline:
    def __init__(self, tasks: list[tuple[TaskSpec, Workers]], settings: Settings, session: aws.Session,
                 caller: Caller, selection: Selection, selectors: Selectors, regions: list[str] | None,
                 options: RunOptions, wait_for_role: float = 0, confirm_flag: str = "--confirm-accounts") -> None:
        """`confirm_flag`: what confirms it without a terminal (named when it is missing)."""
        self.steps = [Step(spec, workers) for spec, workers in tasks]
        self.settings = settings
        self.session = session
        self.caller = caller
        self.selection = selection
        self.selectors = selectors
        self.regions = regions
        self.options = options
        self.wait_for_role = wait_for_role
        self.confirm_flag = confirm_flag
        self.baseline_id = new_run_id()
        self.mode = "armed" if options.arm else "dry-run"
        self.view = PlanView(task_destructive=True, details=options.details)
        self.out = sys.stdout

    def echo(self, line: str = "") -> None:
        """One line of the baseline's own on stdout: secrets scrubbed, control characters made visible."""
        print(visible(scrub(line)), file=self.out, flush=True)

    # --- the baseline as a whole --------------------------------------------------------------------

    def execute(self) -> int:
        """Run the baseline; return the exit code (refusals and input errors are raised, after
        every run and the baseline itself have been recorded as ended)."""
        names = [s.spec.name for s in self.steps]
        self.audit = audit = audit_log(self.settings, self.baseline_id, self.options.follow_symlinks,
                                       {"baseline_id": self.baseline_id})
        audit.event("baseline-start", tasks=names, mode=self.mode, operator=self.caller.arn,
                    account=self.caller.account_id, selectors=self.selectors.to_dict(), regions=self.regions,
                    targets=[a.id for a in self.selection.targets], wait_for_role=self.wait_for_role or None)
        err(f"baseline {self.baseline_id}: {len(names)} task(s) in order ({', '.join(names)}), {self.mode}, "
            f"over {len(self.selection.targets)} account(s)")
        status, code = "interrupted", EXIT_OK
        raised: BaseException | None = None
        try:
            if self.wait_for_role:
                self._wait_for_roles()
            code, status = self._plan_confirm_apply()
        except (KeyboardInterrupt, Exception) as exc:
            status, code, raised = ending(exc, *(s.workers.stop for s in self.steps))
            for step in self.steps:  # every run opened and not yet ended ends with the same cause
                if step.run is not None and not step.ended:
                    step.end(status, code)
            if any(s.outcome for s in self.steps):
                self._applied_lines(stopped=None)
        finally:
            self.view.close()
        try:
            audit.event("baseline-end", status=status,
                        runs=[{"task": s.spec.name, "run_id": s.run.run_id, "status": s.status}
                              for s in self.steps if s.run is not None],
                        applied=[s.spec.name for s in self.steps if s.outcome.startswith("applied")])
        finally:
            audit.close()
        if raised is not None:
            raise raised
        return code

    def _wait_for_roles(self) -> None:
        request = RoleRequest(role_name=self.settings.role_name,
                              session_name=session_name(self.caller.operator or self.caller.arn, "baseline",
                                                        self.baseline_id),
                              source_identity=source_identity(self.caller.operator or self.caller.arn),
                              policy=None, duration=self.settings.session_duration,
                              external_id=self.settings.external_id)
        wait_until_assumable(self.session, request, [a.id for a in self.selection.targets], self.wait_for_role, err)

    def _options(self) -> RunOptions:
        return dataclasses.replace(self.options, view=self.view, baseline_id=self.baseline_id,
                                   command=f"baseline {self.baseline_id}")

    def _plan_confirm_apply(self) -> tuple[int, str]:
        """(exit code, the baseline's status)."""
        for step in self.steps:
            interrupt.check()
            self.view.label, self.view.task_destructive = step.spec.name, step.spec.destructive
            step.run = Pipeline(step.spec, step.workers, self.settings, self.session, self.caller, self.selection,
                                self.selectors, self.regions, self._options())
            step.run.open()
            step.plan = step.run.plan(keep=self.options.arm)
        interrupt.check()
        plan = self._tally()
        self._show(plan)
        changes = {t.account_id for s in self.steps for t, c in s.plan.items() if c}
        if not self.options.arm or plan.failed or not plan.changes:
            return self._unapplied(plan)
        armed = self._confirm(changes)
        interrupt.check()
        return self._apply(armed)

    def _tally(self) -> Tally:
        total = Tally()
        for step in self.steps:
            assert step.run is not None
            total = merged(total, step.run.reporter.tallies["plan"])
        return total

    # --- the plan ---------------------------------------------------------------------------------------

    def _show(self, plan: Tally) -> None:
        """One plan for every task: the headline, a line per task, then the summary and details of
        every change (each labelled with its task)."""
        self.echo(f"Baseline plan: {len(self.steps)} task(s), {len(plan.accounts)} account(s): {plan.changes} "
                  f"change(s) in {len(plan.accounts_with_changes)} account(s); {plan.failed} failed, "
                  f"{plan.skipped} skipped.")
        self.echo(f"  {'task':<38} {'run':<24} {'changes':>8} {'accounts':>9} {'failed':>7} {'skipped':>8}")
        for step in self.steps:
            assert step.run is not None
            t = step.run.reporter.tallies["plan"]
            self.echo(f"  {step.spec.name:<38} {step.run.run_id:<24} {t.changes:>8} "
                      f"{len(t.accounts_with_changes):>9} {t.failed:>7} {t.skipped:>8}")
        for line in self.view.summary_lines():
            self.echo(line)
        for line in self.view.detail_lines():
            self.echo(line)

    def _unapplied(self, plan: Tally) -> tuple[int, str]:
        """A dry run, an incomplete plan, or nothing to apply: every run ends, nothing applied."""
        failed = f"; {plan.failed} target(s) failed" if plan.failed else ""
        incomplete = self.options.arm and plan.failed
        for step in self.steps:
            planned_failed = step.run is not None and step.run.reporter.tallies["plan"].failed
            if incomplete:
                step.end(f"not applied: the baseline's plan is incomplete ({plan.failed} target(s) failed)",
                         EXIT_TARGETS_FAILED)
            else:
                step.end("failed" if planned_failed else "ok", EXIT_TARGETS_FAILED if planned_failed else EXIT_OK)
        self.echo()
        if not self.options.arm:
            what = (f"{plan.changes} change(s) planned in {len(plan.accounts_with_changes)} account(s) by "
                    f"{len(self.steps)} task(s)" if plan.changes else "nothing to do, no target needs a change")
            self.echo(f"Dry run: nothing was changed. Baseline {self.baseline_id}: {what}{failed}.")
        elif not plan.failed:
            self.echo(f"Baseline {self.baseline_id}: no planned changes: nothing to apply.")
        if plan.failed:
            self._incomplete(plan)
            return EXIT_TARGETS_FAILED, "failed" if not self.options.arm else "not applied: incomplete plan"
        if plan.changes and not self.options.arm:
            self.echo("Next: to apply, run the same command with --arm instead of --dry-run.")
        return EXIT_OK, "ok"

    def _incomplete(self, plan: Tally) -> None:
        errors = [str(f.get("error") or "") for s in self.steps if s.run is not None
                  for f in s.run.reporter.failed_targets]
        role = any("cannot assume" in e and "AccessDenied" in e for e in errors)
        hint = (" (accounts just created: AWS takes a while to make their role assumable; --wait-for-role "
                "SECONDS retries AssumeRole until it is)") if role and not self.wait_for_role else ""
        if self.options.arm:
            err(f"{plan.failed} target(s) could not be planned (above){hint}; a baseline applies only a complete "
                "plan: nothing applied. Fix them, or leave those accounts out (--exclude), then run again.")
        else:
            err(f"{plan.failed} target(s) could not be planned (above){hint}; an armed baseline would apply nothing "
                "until every target plans.")

    # --- one confirmation ----------------------------------------------------------------------------------

    def _confirm(self, accounts: set[str]) -> Armed:
        """The confirmation the combined plan calls for (as a run's, over every task's changes)."""
        stated = self.options.stated
        interactive = sys.stdin.isatty()
        protected = {i: n for i, n in self.selection.protected.items() if i in accounts}
        confirm_protected(protected, ask if interactive else None, stated.protected)
        if stated.accounts is not None:
            return confirm_listed(NAME, accounts, {a.id for a in self.selection.targets}, stated.accounts)
        destructive = any(c.destructive for s in self.steps for changes in s.plan.values() for c in changes)
        if not destructive:
            err("baseline: every planned change of every task only tightens a setting; --arm is confirmation enough")
            return confirm_unguarded(NAME, accounts)
        if not interactive:
            raise SafetyRefusal(f"an armed baseline without a terminal needs {self.confirm_flag} naming the accounts "
                                f"with planned changes ({len(accounts)}); nothing applied")
        err(f"baseline ({len(self.steps)} task(s)) will change {len(accounts)} account(s):")
        for account_id in sorted(accounts):
            c = self.view.accounts.get(account_id)
            if c is not None:
                err(f"  {account_id} {visible(c.name or '-'):<30} {c.changes} change(s), {c.destructive} destructive, "
                    f"{c.risky} need a look")

        def attempt(number: int, problem: str | None) -> None:
            self.audit.event("confirmation-attempt", task=NAME, attempt=number, matched=problem is None,
                             problem=problem)

        return confirm_interactive(NAME, accounts, ask, tell=err, on_attempt=attempt)

    # --- apply, task by task -------------------------------------------------------------------------------

    def _apply(self, armed: Armed) -> tuple[int, str]:
        stopped: str | None = None
        code = EXIT_OK
        for step in self.steps:
            run = step.run
            assert run is not None
            if stopped is not None:
                step.outcome = f"not applied ({stopped} failed before it)"
                step.end(f"not applied: {stopped} failed before it", EXIT_TARGETS_FAILED)
                continue
            accounts = {t.account_id for t, changes in step.plan.items() if changes}
            if not accounts:
                step.outcome = "nothing to apply"
                code = max(code, step.end("ok", EXIT_OK))
                continue
            interrupt.check()
            self.echo()
            self.echo(f"Applying {step.spec.name} (run {run.run_id}):")
            step.outcome = "applying"
            run.apply_confirmed(step.plan, share_of(armed, step.spec.name, accounts))
            apply = run.reporter.tallies["apply"]
            done = apply.outcomes.get("applied", 0)
            step.outcome = f"applied: {done} change(s) applied in {len(apply.accounts)} account(s)" + (
                f"; {apply.failed} target(s) failed" if apply.failed else "")
            ended = step.end("failed" if apply.failed else "ok", EXIT_TARGETS_FAILED if apply.failed else EXIT_OK)
            code = max(code, ended)
            if apply.failed:
                stopped = step.spec.name
        self._applied_lines(stopped)
        if stopped is not None:
            return max(code, EXIT_TARGETS_FAILED), f"stopped: {stopped} failed"
        return code, "ok" if code == EXIT_OK else "failed"

    def _applied_lines(self, stopped: str | None) -> None:
        """What each run applied, in order; the next step."""
        self.echo()
        if stopped is not None:
            self.echo(f"Baseline {self.baseline_id} stopped after {stopped} failed: the tasks after it were not "
                      "applied.")
        else:
            self.echo(f"Baseline {self.baseline_id}:")
        for step in self.steps:
            if step.run is None:
                continue
            outcome = step.outcome.removeprefix("applied: ") or "not applied"
            if outcome == "applying":
                done = step.run.reporter.tallies["apply"].outcomes.get("applied", 0)
                outcome = f"interrupted while applying ({done} change(s) applied)"
            self.echo(f"  {step.spec.name:<28} run {step.run.run_id}: {outcome}")
        if stopped is not None:
            self.echo("Next: fix what failed above, then run the same command again (what was applied plans as "
                      "nothing to do).")
        self.echo(f"Review: orgrunner runs --baseline {self.baseline_id}")
