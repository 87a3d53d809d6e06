"""The plan as a person reads it: a summary first (per account, per kind of change), then the
details grouped by account and region, the changes that need a look first.

A change needs a look first when its task says so (`Change.risk`, e.g. "ingress open to the
internet") or when it is destructive in a task that is not (it relaxes security). The engine
never guesses this from the text. `--details none|risky|all` chooses which details are printed;
the summary is always printed. The same plan renders as text for the terminal and as Markdown
for a change ticket (`--format markdown`).

Counters are kept per account and per kind; the details to print are spooled to a temporary
file, so memory does not grow with the number of changes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Literal

from orgrunner.cli.escape import visible
from orgrunner.task import Change, Target

Details = Literal["none", "risky", "all"]
DETAILS: tuple[Details, ...] = ("none", "risky", "all")
MAX_SUMMARY_ACCOUNTS = 50  # text summary rows; the Markdown ticket lists every account


@dataclass
class Counts:
    name: str = ""
    changes: int = 0
    destructive: int = 0
    risky: int = 0
    failed: int = 0


class PlanView:
    """Collects a plan as it streams in; renders its summary and details afterwards."""

    def __init__(self, task_destructive: bool, details: Details = "risky") -> None:
        self.task_destructive = task_destructive
        self.details = details
        # a baseline adds every task's changes to one view: the task being planned, named on each
        # of its kinds of change and on each of its changes listed (set with `task_destructive`)
        self.label = ""
        self.accounts: dict[str, Counts] = {}
        self.kinds: dict[str, Counts] = {}
        self._spool: IO[str] | None = None
        self._index: list[tuple[bool, str, str, int, int]] = []  # (ordinary, account, region, seq, offset)

    def needs_a_look(self, change: Change) -> bool:
        return bool(change.risk) or (change.destructive and not self.task_destructive)

    def _account(self, target: Target) -> Counts:
        counts = self.accounts.setdefault(target.account_id, Counts(target.account_name))
        counts.name = counts.name or target.account_name
        return counts

    def add(self, target: Target, changes: tuple[Change, ...] | list[Change]) -> None:
        account = self._account(target)
        for change in changes:
            risky = self.needs_a_look(change)
            action = f"{self.label}: {change.action}" if self.label else change.action
            kind = self.kinds.setdefault(action, Counts(action))
            for counts in (account, kind):
                counts.changes += 1
                counts.destructive += change.destructive
                counts.risky += risky
            if self.details == "all" or (self.details == "risky" and risky):
                self._keep(target, change, risky)

    def failed(self, target: Target) -> None:
        self._account(target).failed += 1

    def _keep(self, target: Target, change: Change, risky: bool) -> None:
        if self._spool is None:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if self.label:
            change = dataclasses.replace(change, summary=f"{self.label}: {change.summary}")
        offset = self._spool.seek(0, 2)
        self._spool.write(json.dumps({"name": target.account_name, "change": change.to_dict()}, default=str) + "\n")
        self._index.append((not risky, target.account_id, target.region, len(self._index), offset))

    @property
    def total(self) -> int:
        return sum(c.changes for c in self.accounts.values())

    @property
    def risky(self) -> int:
        return sum(c.risky for c in self.accounts.values())

    def _kept(self) -> Iterator[tuple[bool, str, str, Change]]:
        """(needs a look, account name, account id, change) in reading order."""
        if self._spool is None:
            return
        self._spool.flush()
        for ordinary, _account, _region, _seq, offset in sorted(self._index):
            self._spool.seek(offset)
            entry = json.loads(self._spool.readline())
            yield not ordinary, str(entry["name"]), _account, Change.from_dict(entry["change"])

    def _grouped(self) -> Iterator[tuple[str, bool, str, str, Change]]:
        """The kept changes in reading order, each with what starts before it: "section" (risky
        first), "account", "region" or "" (nothing new). Both renderers walk this one grouping."""
        section: bool | None = None
        place: tuple[str, str] | None = None
        for risky, name, account_id, change in self._kept():
            if risky != section:
                section, place = risky, None
                yield "section", risky, name, account_id, change
            elif place is None or place[0] != account_id:
                yield "account", risky, name, account_id, change
            elif place != (account_id, change.region):
                yield "region", risky, name, account_id, change
            else:
                yield "", risky, name, account_id, change
            place = (account_id, change.region)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    # --- text ---------------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        """Per account (those with changes or failures) and per kind of change."""
        rows = [(i, c) for i, c in sorted(self.accounts.items()) if c.changes or c.failed]
        if not rows:
            return []
        lines = [f"  {'account':<38} {'changes':>8} {'destructive':>12} {'need a look':>12} {'failed':>7}"]
        for account_id, c in rows[:MAX_SUMMARY_ACCOUNTS]:
            label = f"{account_id} {visible(c.name or '-')}"
            lines.append(f"  {label:<38} {c.changes:>8} {c.destructive:>12} {c.risky:>12} {c.failed:>7}")
        if len(rows) > MAX_SUMMARY_ACCOUNTS:
            lines.append(f"  ... and {len(rows) - MAX_SUMMARY_ACCOUNTS} more account(s) (--format markdown lists all)")
        if self.kinds:
            width = max(38, *(len(visible(kind)) for kind in self.kinds))  # a baseline's kinds carry their task
            lines.append(f"  {'kind of change':<{width}} {'changes':>8} {'destructive':>12} {'need a look':>12}")
            for kind, c in sorted(self.kinds.items()):
                lines.append(f"  {visible(kind):<{width}} {c.changes:>8} {c.destructive:>12} {c.risky:>12}")
        return lines

    def detail_lines(self) -> Iterator[str]:
        """The kept details, grouped by account and region, the ones that need a look first."""
        for starts, risky, name, account_id, change in self._grouped():
            if starts == "section":
                count = self.risky if risky else self.total - self.risky
                yield ""
                yield (f"Needs a look first ({count} change(s)):" if risky else f"Other changes ({count}):")
            if starts in ("section", "account"):
                yield f"{account_id} {visible(name or '-')}"
            if starts:
                yield f"  {change.region}"
            marks = [m for m in ("destructive" if change.destructive else "", change.risk) if m]
            mark = f" [{'; '.join(visible(m) for m in marks)}]" if marks else ""
            yield f"    {'!' if risky else '~'} {visible(change.summary)}{mark}"
            for detail in change.details:
                yield f"        - {visible(detail)}"
        shown = len(self._index)
        if self.details == "none" and self.total:
            yield f"({self.total} change(s) not shown: --details risky or --details all shows them)"
        elif self.details == "risky" and shown < self.total:
            yield ""
            yield (f"{self.total - shown} other change(s) not shown (--details all shows every change)"
                   if shown else f"No change needs a look first; {self.total} change(s) not shown "
                   "(--details all shows them)")

    # --- Markdown -----------------------------------------------------------------------------

    def markdown(self, title: str, headline: str, final: list[str]) -> Iterator[str]:
        """The plan as a Markdown document: for a change ticket or a pull-request comment."""
        yield f"## {md(title)}"
        yield ""
        yield md(headline)
        rows = [(i, c) for i, c in sorted(self.accounts.items()) if c.changes or c.failed]
        if rows:
            yield ""
            yield "| account | name | changes | destructive | need a look | failed |"
            yield "| --- | --- | ---: | ---: | ---: | ---: |"
            for account_id, c in rows:
                yield f"| {account_id} | {md(c.name or '-')} | {c.changes} | {c.destructive} | {c.risky} | {c.failed} |"
        if self.kinds:
            yield ""
            yield "| kind of change | changes | destructive | need a look |"
            yield "| --- | ---: | ---: | ---: |"
            for kind, c in sorted(self.kinds.items()):
                yield f"| {md(kind)} | {c.changes} | {c.destructive} | {c.risky} |"
        for starts, risky, name, account_id, change in self._grouped():
            if starts == "section":
                yield ""
                yield "### Needs a look first" if risky else "### Other changes"
            if starts in ("section", "account"):
                yield ""
                yield f"#### {account_id} {md(name or '-')}"
                yield ""
            if starts:
                yield f"- **{md(change.region)}**"
            marks = [m for m in ("destructive" if change.destructive else "", change.risk) if m]
            mark = f" _({md('; '.join(marks))})_" if marks else ""
            yield f"  - {md(change.summary)}{mark}"
            for detail in change.details:
                yield f"    - {md(detail)}"
        hidden = self.total - len(self._index)
        if hidden:
            yield ""
            yield f"_{hidden} change(s) not listed (`--details all` lists every change)._"
        if final:
            yield ""
            for line in final:
                yield md(line)
                yield ""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # what changes inline text; a line never starts with #


def md(text: str) -> str:
    """Untrusted text as literal Markdown: special characters escaped, controls made visible."""
    return _MD_SPECIAL.sub(r"\\\1", visible(text))
