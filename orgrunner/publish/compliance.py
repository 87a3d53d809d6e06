"""`orgrunner report`: the organization's compliance as one document.

The plan phase of each task (run by the pipeline, `Pipeline._survey`) feeds `Matrix.observe`
one result per account x region; the matrix keeps one small cell per account x task, never the
changes themselves. `Document` adds the account inventory (id, name, OU path, tags, state,
enabled regions) and renders Markdown, a self-contained HTML page, CSV, JSON, or Confluence's
storage format. A cell is:

- `compliant`: every target of the account planned without changes
- `pending`: N changes would be made (of which D destructive)
- `failed`: a target could not be planned (the first error is kept)
- `skipped`: nothing was planned (the account is not targeted, or every target was skipped)
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from orgrunner.cli.escape import visible
from orgrunner.engine.accounts import Account, Organization, Selection
from orgrunner.engine.runner import ALL_REGIONS, TargetResult
from orgrunner.records.audit import scrub
from orgrunner.task import GLOBAL_REGION, TaskSpec

FORMAT = "orgrunner-report/1"
FORMATS = ("markdown", "html", "csv", "json")
Status = Literal["compliant", "pending", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("compliant", "pending", "failed", "skipped")
NOT_ENABLED = "region not enabled in this account"
def shown(text: str) -> str:
    """Text from AWS or task code as a document shows it: secrets scrubbed, and characters a
    terminal or viewer would obey instead of showing made visible (the one escape function)."""
    return visible(scrub(text))


@dataclass
class Cell:
    status: Status = "skipped"
    changes: int = 0
    destructive: int = 0
    detail: str = ""  # the first error, or why it was skipped

    def label(self) -> str:
        if self.status == "pending":
            extra = f", {self.destructive} destructive" if self.destructive else ""
            return f"{self.changes} pending change{'s' if self.changes != 1 else ''}{extra}"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "changes": self.changes, "destructive": self.destructive,
                "detail": self.detail}


@dataclass
class _Tally:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    changes: int = 0
    destructive: int = 0
    error: str = ""
    skip: str = ""

    def cell(self) -> Cell:
        if self.failed:
            return Cell("failed", self.changes, self.destructive, self.error)
        if self.changes:
            return Cell("pending", self.changes, self.destructive)
        if self.ok:
            return Cell("compliant")
        return Cell("skipped", detail=self.skip or "not planned")


class Matrix:
    """Accounts x tasks, filled from plan results as they stream by (one small record a cell)."""

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self.regions: dict[str, set[str]] = {}  # account -> regions planned in (enabled ones)

    def observe(self, task: TaskSpec, result: TargetResult) -> None:
        target = result.target
        tally = self._tallies.setdefault((target.account_id, task.name), _Tally())
        if target.region not in (GLOBAL_REGION, ALL_REGIONS) and result.error != NOT_ENABLED:
            self.regions.setdefault(target.account_id, set()).add(target.region)
        if result.status == "failed":
            tally.failed += 1
            tally.error = tally.error or f"{target.region}: {result.error or 'failed'}"
        elif result.status == "skipped":
            tally.skipped += 1
            tally.skip = tally.skip or f"{target.region}: {result.error or 'skipped'}"
        else:
            tally.ok += 1
            tally.changes += len(result.changes)
            tally.destructive += sum(1 for c in result.changes if c.destructive)

    def cell(self, account_id: str, task: str) -> Cell:
        tally = self._tallies.get((account_id, task))
        return tally.cell() if tally is not None else Cell("skipped", detail="not planned")


@dataclass
class Row:
    """One account of the inventory, with its cells (task name -> cell)."""

    id: str
    name: str
    ou_path: str
    state: str
    tags: dict[str, str]
    regions: list[str]
    targeted: bool
    note: str = ""  # why the account is not targeted
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def compliant(self) -> bool:
        return all(c.status == "compliant" for c in self.cells.values())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "ou_path": self.ou_path, "state": self.state, "tags": self.tags,
                "regions": self.regions, "targeted": self.targeted, "note": self.note,
                "tasks": {task: cell.to_dict() for task, cell in self.cells.items()}}


@dataclass
class Document:
    run_id: str
    generated: str  # ISO 8601, UTC
    organization_id: str
    tasks: list[str]
    rows: list[Row]
    status: str = "ok"

    def by_ou(self) -> dict[str, list[Row]]:
        groups: dict[str, list[Row]] = {}
        for row in sorted(self.rows, key=lambda r: (r.ou_path, r.name.lower(), r.id)):
            groups.setdefault(row.ou_path, []).append(row)
        return groups

    def totals(self, rows: Iterable[Row]) -> dict[str, dict[str, int]]:
        """Task -> count of accounts per status, and the changes pending."""
        out: dict[str, Counter[str]] = {t: Counter({s: 0 for s in STATUSES}) for t in self.tasks}
        for row in rows:
            for task, cell in row.cells.items():
                out[task][cell.status] += 1
                out[task]["changes"] += cell.changes
                out[task]["destructive"] += cell.destructive
        return {t: dict(c) for t, c in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "run_id": self.run_id, "generated": self.generated,
                "organization_id": self.organization_id, "status": self.status, "tasks": self.tasks,
                "accounts": [r.to_dict() for r in sorted(self.rows, key=lambda r: (r.ou_path, r.id))],
                "totals": {"tasks": self.totals(self.rows),
                           "ous": {ou: self.totals(rows) for ou, rows in self.by_ou().items()}}}


def inventory(org: Organization, selection: Selection, matrix: Matrix, tasks: list[str],
              tag_workers: int = 4) -> list[Row]:
    """Every account of the selection, targeted or left out, with its OU path, tags and cells."""
    paths = org.ou_paths()
    accounts: list[tuple[Account, str]] = [(a, "") for a in selection.targets] + list(selection.skipped)
    with ThreadPoolExecutor(max_workers=tag_workers, thread_name_prefix="orgrunner-tags") as pool:
        tags = list(pool.map(lambda pair: dict(pair[0].tags) or org.tags(pair[0].id), accounts))
    rows: list[Row] = []
    for (account, reason), account_tags in zip(accounts, tags, strict=True):
        targeted = not reason
        cells = {t: matrix.cell(account.id, t) if targeted else Cell("skipped", detail=reason) for t in tasks}
        rows.append(Row(id=account.id, name=account.name, ou_path=paths.get(account.id, "?"), state=account.state,
                        tags=account_tags, regions=sorted(matrix.regions.get(account.id, ())), targeted=targeted,
                        note=reason, cells=cells))
    return rows


# --- rendering ----------------------------------------------------------------------------------


def render(document: Document, fmt: str) -> str:
    renderers: dict[str, Callable[[Document], str]] = {
        "markdown": markdown, "html": page, "csv": comma_separated, "json": as_json, "storage": storage}
    return renderers[fmt](document)


def as_json(document: Document) -> str:
    """Exact values (secrets scrubbed): JSON escapes control characters itself."""
    return scrub(json.dumps(document.to_dict(), indent=2)) + "\n"


def _tags(tags: dict[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in sorted(tags.items()))


COLUMNS = ("account_id", "name", "ou_path", "state", "regions", "tags")


def comma_separated(document: Document) -> str:
    """One row per account: the inventory, then one column per task (the cell's label)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *document.tasks])
    for rows in document.by_ou().values():
        for row in rows:
            values = [row.id, row.name, row.ou_path, row.state, " ".join(row.regions), _tags(row.tags),
                      *(row.cells[t].label() for t in document.tasks)]
            writer.writerow([_cell_safe(shown(v)) for v in values])
    return out.getvalue()


def _cell_safe(value: str) -> str:
    """A spreadsheet runs a cell that starts with = + - @ as a formula: an account name from AWS
    must not (CSV injection). Such values get a leading apostrophe."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _md(text: str) -> str:
    escaped = re.sub(r"([\\`*_\[\]<>|~])", r"\\\1", shown(text))
    return escaped.replace("\n", " ") or " "


def _summary_lines(document: Document) -> list[str]:
    accounts = len(document.rows)
    targeted = sum(1 for r in document.rows if r.targeted)
    return [f"Generated {document.generated} by run `{document.run_id}`; organization "
            f"`{document.organization_id}`; {accounts} account(s), {targeted} targeted; "
            f"{len(document.tasks)} task(s)."]


def markdown(document: Document) -> str:
    tasks = document.tasks
    lines = ["# Organization compliance", "", *_summary_lines(document), "", "## Totals per task", "",
             "| task | compliant | pending | changes (destructive) | failed | skipped |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for task, t in document.totals(document.rows).items():
        lines.append(f"| {_md(task)} | {t['compliant']} | {t['pending']} | {t['changes']} ({t['destructive']}) "
                     f"| {t['failed']} | {t['skipped']} |")
    lines += ["", "## Totals per OU", "", "| OU | accounts | " + " | ".join(_md(t) for t in tasks) + " |",
              "| --- | ---: |" + " --- |" * len(tasks)]
    groups = document.by_ou()
    for ou, rows in groups.items():
        totals = document.totals(rows)
        lines.append(f"| {_md(ou)} | {len(rows)} | " + " | ".join(_short(totals[t]) for t in tasks) + " |")
    header = "| account | name | state | regions | tags | " + " | ".join(_md(t) for t in tasks) + " |"
    rule = "| --- | --- | --- | --- | --- |" + " --- |" * len(tasks)
    for ou, rows in groups.items():
        compliant = [r for r in rows if r.compliant]
        others = [r for r in rows if not r.compliant]
        lines += ["", f"## {_md(ou)}", "", f"{len(rows)} account(s), {len(compliant)} compliant in every task."]
        if others:
            lines += ["", header, rule]
            for row in others:
                cells = " | ".join(_md(_cell_text(row.cells[t])) for t in tasks)
                lines.append(f"| {row.id} | {_md(row.name)} | {_md(row.state)} | {_md(' '.join(row.regions))} "
                             f"| {_md(_tags(row.tags))} | {cells} |")
        if compliant:
            names = ", ".join(f"{r.id} ({_md(r.name)})" for r in compliant)
            lines += ["", f"Compliant: {names}."]
    return "\n".join(lines) + "\n"


def _short(totals: dict[str, int]) -> str:
    parts = [f"{totals[s]} {s}" for s in STATUSES if totals[s]]
    return ", ".join(parts) or "-"


def _cell_text(cell: Cell) -> str:
    if cell.status in ("failed", "skipped") and cell.detail:
        return f"{cell.label()}: {cell.detail}"
    return cell.label()


def _h(text: str) -> str:
    return html.escape(shown(text), quote=True)


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem;color:#1d1d1f}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none}th[aria-sort]::after{content:" \\2195";color:#999}
td.compliant{background:#e6f4ea}td.pending{background:#fff4ce}td.destructive{background:#fde2cf;font-weight:600}
td.failed{background:#fbd5d5}td.skipped{background:#eee;color:#666}
details{margin:.5rem 0}summary{cursor:pointer;color:#0b57d0}small{color:#666}
"""

_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.setAttribute("aria-sort", "none");
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0], index = th.cellIndex;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (o) { o.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var key = function (row) {
      var cell = row.cells[index];
      return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    };
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? c : -c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""

_RANK = {"failed": 0, "pending": 1, "skipped": 2, "compliant": 3}


def _html_cell(task: str, cell: Cell) -> str:
    classes = cell.status + (" destructive" if cell.destructive else "")
    sort = f"{_RANK[cell.status]}{-cell.changes:08d}"
    title = f' title="{_h(cell.detail)}"' if cell.detail else ""
    return (f'<td class="{classes}" data-task="{_h(task)}" data-status="{cell.status}" data-changes="{cell.changes}" '
            f'data-destructive="{cell.destructive}" data-sort="{sort}"{title}>{_h(cell.label())}</td>')


def _html_table(document: Document, rows: list[Row]) -> list[str]:
    head = "".join(f"<th>{_h(c)}</th>" for c in ("account", "name", "state", "regions", "tags", *document.tasks))
    out = ['<table class="sortable matrix">', f"<thead><tr>{head}</tr></thead>", "<tbody>"]
    for row in rows:
        note = f' title="{_h(row.note)}"' if row.note else ""
        out.append(f'<tr data-account="{_h(row.id)}" data-ou="{_h(row.ou_path)}"{note}>'
                   f"<td>{_h(row.id)}</td><td>{_h(row.name)}</td><td>{_h(row.state)}</td>"
                   f"<td>{_h(' '.join(row.regions))}</td><td>{_h(_tags(row.tags))}</td>"
                   + "".join(_html_cell(t, row.cells[t]) for t in document.tasks) + "</tr>")
    out += ["</tbody>", "</table>"]
    return out


def _totals_tables(document: Document, page: bool) -> list[str]:
    """Totals per task and per OU as two tables: sortable, with a head and data attributes on the
    HTML page; plain rows in Confluence's storage format (which sorts tables itself)."""
    def table(ident: str, heads: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
        head = "<tr>" + "".join(f"<th>{_h(h)}</th>" for h in heads) + "</tr>"
        body = [f'<tr data-{ident}="{_h(key)}">' if page else "<tr>" for key, _ in rows]
        lines = [opening + "".join(f"<td>{_h(v)}</td>" for v in values) + "</tr>"
                 for opening, (_, values) in zip(body, rows, strict=True)]
        if page:
            return [f'<table class="sortable" id="totals-{ident}s"><thead>{head}</thead><tbody>', *lines,
                    "</tbody></table>"]
        return [f"<table><tbody>{head}", *lines, "</tbody></table>"]

    per_task = [(task, [task, *(str(t[s]) for s in STATUSES), str(t["changes"]), str(t["destructive"])])
                for task, t in document.totals(document.rows).items()]
    per_ou = []
    for ou, rows in document.by_ou().items():
        totals = document.totals(rows)
        per_ou.append((ou, [ou, str(len(rows)), *(_short(totals[t]) for t in document.tasks)]))
    return ["<h2>Totals per task</h2>",
            *table("task", ["task", *STATUSES, "changes", "destructive"], per_task),
            "<h2>Totals per OU</h2>", *table("ou", ["OU", "accounts", *document.tasks], per_ou)]


def page(document: Document) -> str:
    """A self-contained HTML page: inline style and script, no external asset of any kind."""
    tasks = document.tasks
    groups = document.by_ou()
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Organization compliance {_h(document.organization_id)}</title>",
           f"<style>{_STYLE}</style></head><body>", "<h1>Organization compliance</h1>",
           f'<p id="generated" data-run-id="{_h(document.run_id)}" data-generated="{_h(document.generated)}">'
           f"Generated {_h(document.generated)} by run <code>{_h(document.run_id)}</code>; organization "
           f"<code>{_h(document.organization_id)}</code>; {len(document.rows)} account(s); "
           f"{len(tasks)} task(s).</p>",
           *_totals_tables(document, page=True)]
    for ou, rows in groups.items():
        compliant = [r for r in rows if r.compliant]
        others = [r for r in rows if not r.compliant]
        out.append(f'<section class="ou" data-ou="{_h(ou)}"><h2>{_h(ou)}</h2>'
                   f"<p><small>{len(rows)} account(s), {len(compliant)} compliant in every task</small></p>")
        if others:
            out += _html_table(document, others)
        if compliant:
            out.append(f'<details class="compliant"><summary>{len(compliant)} compliant account(s)</summary>')
            out += _html_table(document, compliant)
            out.append("</details>")
        out.append("</section>")
    out += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(out) + "\n"


_COLOUR = {"compliant": "Green", "pending": "Yellow", "failed": "Red", "skipped": "Grey"}


def _status_macro(cell: Cell) -> str:
    colour = "Red" if cell.destructive else _COLOUR[cell.status]
    return ('<ac:structured-macro ac:name="status">'
            f'<ac:parameter ac:name="colour">{colour}</ac:parameter>'
            f'<ac:parameter ac:name="title">{_h(cell.label())}</ac:parameter></ac:structured-macro>')


def _storage_table(document: Document, rows: list[Row]) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in ("account", "name", "state", "regions", "tags", *document.tasks))
    body = "".join(
        f"<tr><td>{_h(r.id)}</td><td>{_h(r.name)}</td><td>{_h(r.state)}</td><td>{_h(' '.join(r.regions))}</td>"
        f"<td>{_h(_tags(r.tags))}</td>" + "".join(f"<td>{_status_macro(r.cells[t])}</td>" for t in document.tasks)
        + "</tr>" for r in rows)
    return f"<table><tbody><tr>{head}</tr>{body}</tbody></table>"


def storage(document: Document) -> str:
    """Confluence storage format (XHTML with Confluence macros): the page `--publish` writes.
    Tables are sortable in Confluence itself; compliant accounts sit in an expand macro."""
    groups = document.by_ou()
    out = [f"<p>Generated {_h(document.generated)} by orgrunner run <code>{_h(document.run_id)}</code>; "
           f"organization <code>{_h(document.organization_id)}</code>; {len(document.rows)} account(s).</p>",
           *_totals_tables(document, page=False)]
    for ou, rows in groups.items():
        compliant = [r for r in rows if r.compliant]
        others = [r for r in rows if not r.compliant]
        out.append(f"<h2>{_h(ou)}</h2>")
        if others:
            out.append(_storage_table(document, others))
        if compliant:
            out.append('<ac:structured-macro ac:name="expand">'
                       f'<ac:parameter ac:name="title">{len(compliant)} compliant account(s)</ac:parameter>'
                       f"<ac:rich-text-body>{_storage_table(document, compliant)}</ac:rich-text-body>"
                       "</ac:structured-macro>")
    return "".join(out)
