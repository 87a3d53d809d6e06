"""Results as they arrive: the terminal, the JSON lines report (`--report`) and the audit log.

Nothing is accumulated here but counters (and the plan's details, spooled to a file by
`present.PlanView`), so memory does not grow with the number of targets.

One console owns the terminal while a progress display is live: every line is printed through
it, above the display, so a result line is never glued onto a fragment of the display.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orgrunner.aws import RETRIES
from orgrunner.cli.escape import visible
from orgrunner.cli.present import PlanView
from orgrunner.engine.runner import TargetResult
from orgrunner.errors import InputError
from orgrunner.records.audit import AuditLog, scrub
from orgrunner.records.statefiles import open_file


@dataclass
class Tally:
    targets: int = 0
    failed: int = 0
    skipped: int = 0
    changes: int = 0
    accounts: set[str] = field(default_factory=set)
    regions: set[str] = field(default_factory=set)
    accounts_with_changes: set[str] = field(default_factory=set)
    failed_accounts: set[str] = field(default_factory=set)
    outcomes: dict[str, int] = field(default_factory=dict)


def merged(a: Tally, b: Tally) -> Tally:
    """Two phases' counters as one (the tasks of a report, counted together)."""
    return Tally(targets=a.targets + b.targets, failed=a.failed + b.failed, skipped=a.skipped + b.skipped,
                 changes=a.changes + b.changes, accounts=a.accounts | b.accounts, regions=a.regions | b.regions,
                 accounts_with_changes=a.accounts_with_changes | b.accounts_with_changes,
                 failed_accounts=a.failed_accounts | b.failed_accounts,
                 outcomes={k: a.outcomes.get(k, 0) + b.outcomes.get(k, 0) for k in {*a.outcomes, *b.outcomes}})


def summarize(t: Tally) -> dict[str, object]:
    """A phase's counters as the JSON summary and the audit log's run-end show them."""
    return {"targets": t.targets, "changes": t.changes, "failed": t.failed, "skipped": t.skipped,
            "accounts": len(t.accounts), "accounts_with_changes": len(t.accounts_with_changes),
            "outcomes": dict(t.outcomes), "retries_so_far": RETRIES.total}


class Reporter:
    def __init__(self, task: str, run_id: str, out: IO[str], audit: AuditLog, report_path: Path | None,
                 follow_symlinks: bool = False, view: PlanView | None = None, owns_view: bool = True) -> None:
        """`owns_view`: False when the view is shared (a baseline's tasks add to one), so closing this
        reporter leaves it open."""
        self.task = task
        self.run_id = run_id
        self.out = out
        self.audit = audit
        self.view = view or PlanView(task_destructive=True)
        self._owns_view = owns_view
        self.tallies: dict[str, Tally] = {"plan": Tally(), "apply": Tally()}
        self._report: IO[str] | None = None
        self.failed_targets: list[dict[str, str | None]] = []
        self._advance: Callable[[TargetResult], None] = lambda _: None
        self.report_path = report_path
        self.report_error: str | None = None  # the report could not be written: the run cannot exit 0
        self._console: Any = None  # the live display's console, while it owns the terminal
        if report_path is not None:
            try:
                report_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"--report {report_path}: {exc.strerror or exc}") from None
            self._report = open_file(report_path, "a", follow_symlinks=follow_symlinks, flag="--report")

    def echo(self, line: str = "") -> None:
        text = visible(scrub(line))
        console = self._console
        if console is not None and console.file is self.out:  # above the live display, never into it
            console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def result(self, result: TargetResult) -> None:
        if self._report is not None:  # the file first: an interrupt while printing must not lose it
            try:
                self._report.write(scrub(json.dumps(result.record(self.task, self.run_id), default=str)) + "\n")
                self._report.flush()
            except OSError as exc:  # a full disk: said once, the run goes on and cannot exit 0
                self.report_error = f"--report {self.report_path}: {exc.strerror or exc}; the report is incomplete"
                self._report = None
                print(visible(self.report_error), file=sys.stderr, flush=True)
        tally = self.tallies[result.phase]
        target = result.target
        tally.targets += 1
        tally.accounts.add(target.account_id)
        tally.regions.add(target.region)
        head = f"{target.account_id} {target.account_name or '-':<20} {target.region:<15}"
        self._advance(result)
        if result.status == "failed":
            tally.failed += 1
            tally.failed_accounts.add(target.account_id)
            self.failed_targets.append({"account": target.account_id, "region": target.region,
                                        "phase": result.phase, "error": result.error})
            if result.phase == "plan":
                self.view.failed(target)
            self.echo(f"{head} FAILED: {result.error}")
        elif result.status == "skipped":
            tally.skipped += 1
            self.echo(f"{head} skipped: {result.error}")
        for note in result.notes:
            self.echo(f"{head} note: {note}")
        if result.phase == "plan":
            self._planned(result, tally, head)
        else:
            self._applied(result, tally, head)

    def _planned(self, result: TargetResult, tally: Tally, head: str) -> None:
        if result.status != "ok":
            self.audit.event("target", phase="plan", account=result.target.account_id,
                             region=result.target.region, status=result.status, error=result.error)
            return
        tally.changes += len(result.changes)
        if result.changes:
            tally.accounts_with_changes.add(result.target.account_id)
        self.view.add(result.target, result.changes)  # printed when the plan is complete: summary first
        for change in result.changes:
            self.audit.event("planned", task=self.task, **change.brief())

    def _applied(self, result: TargetResult, tally: Tally, head: str) -> None:
        for outcome in result.outcomes:
            tally.outcomes[outcome.status] = tally.outcomes.get(outcome.status, 0) + 1
            note = f": {outcome.error}" if outcome.error else ""
            self.echo(f"{head} {outcome.status}: {outcome.change.resource} {outcome.change.action}"
                      f"{note}")
        if result.status == "ok":
            tally.changes += len(result.outcomes)

    def applied(self, record: dict[str, Any]) -> None:
        """One applied change, written to the audit log the moment it happens; its `sha256` (the
        change's canonical JSON) is what `orgrunner verify` compares the journal with."""
        self.audit.event("applied", task=self.task, **record)

    def tally_dict(self, phase: str) -> dict[str, object]:
        return summarize(self.tallies[phase])

    def show_plan(self, headline: str) -> None:
        """The complete plan for the terminal: the headline, the summary, then the details."""
        self.echo(headline)
        for line in self.view.summary_lines():
            self.echo(line)
        for line in self.view.detail_lines():
            self.echo(line)

    @contextlib.contextmanager
    def progress(self, phase: str, estimate: int, discovered: Callable[[], int] | None = None) -> Iterator[None]:
        """A live progress display on the terminal the results go to (or else on stderr when it is
        one). Its console owns that terminal meanwhile: `echo` and anything written to
        sys.stdout/sys.stderr there is printed above the display; the display is gone at the end."""
        streams = [s for s in (self.out, sys.stderr) if _is_terminal(s)]
        if not streams:
            yield
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        tally = self.tallies[phase]
        columns = (TextColumn(f"{phase}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[failed]} failed, {task.fields[rate]}/s"), TimeRemainingColumn())
        console = Console(file=streams[0], markup=False, highlight=False, emoji=False)
        # Only streams on the display's terminal are redirected through its console.
        same = {id(s) for s in (sys.stdout, sys.stderr) if _is_terminal(s) and _same_terminal(s, streams[0])}
        with Progress(*columns, console=console, transient=True, redirect_stdout=id(sys.stdout) in same,
                      redirect_stderr=id(sys.stderr) in same) as bar:
            self._console = console
            job = bar.add_task(phase, total=max(estimate, 1), failed=0, rate="-")

            def advance(_: TargetResult) -> None:
                total = discovered() if discovered else estimate
                elapsed = bar.tasks[0].elapsed or 0
                rate = f"{tally.targets / elapsed:.1f}" if elapsed > 0 else "-"
                bar.update(job, completed=tally.targets + 1, total=max(total, tally.targets + 1),
                           failed=tally.failed, rate=rate)

            self._advance = advance
            try:
                yield
            finally:
                self._advance = lambda _: None
                self._console = None

    def plan_summary(self) -> str:
        t = self.tallies["plan"]
        return (f"Plan: {len(t.accounts)} account(s), {len(t.regions)} region(s), {t.targets} target(s): "
                f"{t.changes} change(s) in {len(t.accounts_with_changes)} account(s); "
                f"{t.failed} failed, {t.skipped} skipped{self._retries()}.")

    @staticmethod
    def _retries() -> str:
        if not RETRIES.total:
            return ""
        return f"; {RETRIES.total} retries ({RETRIES.botocore} by botocore, {RETRIES.backoff} backoffs)"

    def apply_summary(self) -> str:
        t = self.tallies["apply"]
        counts = ", ".join(f"{n} {status}" for status, n in sorted(t.outcomes.items())) or "nothing"
        return (f"Apply: {t.targets} target(s) in {len(t.accounts)} account(s): {counts}; "
                f"{t.failed} target(s) failed{self._retries()}.")

    def close(self) -> None:
        if self._owns_view:
            self.view.close()
        if self._report is not None:
            report, self._report = self._report, None
            try:
                report.close()
            except OSError as exc:
                self.report_error = f"--report {self.report_path}: {exc.strerror or exc}; the report is incomplete"
                print(visible(self.report_error), file=sys.stderr, flush=True)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _same_terminal(a: IO[str], b: IO[str]) -> bool:
    import os

    try:
        return os.path.samestat(os.fstat(a.fileno()), os.fstat(b.fileno()))
    except (AttributeError, OSError, ValueError):
        return a is b
