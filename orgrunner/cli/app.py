"""The command line: parsing, printing and exit codes. No AWS calls of its own.

Exit codes: 0 success; 1 one or more targets failed; 2 bad usage or input; 3 refused by a safety
rule; 4 changes pending; 70 an internal error (a bug: please report it); 75 the lock is held;
130 interrupted; 143 terminated. Each command's help lists the ones it can give.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from botocore.exceptions import BotoCoreError, ClientError

try:  # typer >= 0.22 carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_errors  # type: ignore[no-redef]

from orgrunner import __version__, aws
from orgrunner.cli.doctor import check_roles
from orgrunner.cli.escape import visible
from orgrunner.cli.present import DETAILS
from orgrunner.config import environment
from orgrunner.config.settings import Settings, config_dir, load_settings, state_dir
from orgrunner.engine import interrupt
from orgrunner.engine import workers as task_workers
from orgrunner.engine.accounts import ACCOUNT_ID, Account, Organization, OrgUnit, Selection, Selectors, parse_tags
from orgrunner.engine.credentials import operator_session, session_name, source_identity
from orgrunner.engine.identity import Caller, base_session, resolve_caller
from orgrunner.engine.pipeline import Confirmation, Pipeline, RunOptions, err
from orgrunner.engine.runner import describe_error
from orgrunner.engine.workers import Launch, Workers
from orgrunner.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_SAFETY,
    EXIT_TARGETS_FAILED,
    EXIT_TERMINATED,
    InputError,
    OrgrunnerError,
    SafetyRefusal,
    TaskLoadError,
    Terminated,
)
from orgrunner.records import evidence, journal
from orgrunner.records import runs as runs_module
from orgrunner.records.audit import read_events
from orgrunner.records.report import Tally, summarize
from orgrunner.records.statefiles import StateFolder, check_output_path, open_file
from orgrunner.safety import fence
from orgrunner.safety.confirm import parse_account_list, parse_names
from orgrunner.safety.planfile import bound, parse_digest
from orgrunner.safety.planfile import load as load_plan
from orgrunner.safety.policy import session_policy
from orgrunner.task import GLOBAL_REGION, TaskSpec

ROLE_ARN = re.compile(r"\Aarn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}\Z")
EXIT_MEANING = {
    0: "success", 1: "one or more targets failed", 2: "bad usage or input", 3: "refused by a safety rule",
    4: "changes pending (--fail-on-changes)", 70: "internal error (a bug)", 75: "another run holds the lock",
    130: "interrupted", 143: "terminated",
}
EXIT_CODES_HELP = "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANING.items()) + "."
# What each kind of command can exit with: reads (organization, no lock), local (no AWS), runs.
READ_EXITS = (0, 1, 2, 3, 70, 130, 143)
LOCAL_EXITS = (0, 2, 70)
RUN_EXITS = (0, 1, 2, 3, 70, 75, 130, 143)


def epilog(codes: tuple[int, ...], *examples: str) -> str:
    """A command's help footer: its examples (kept as written) and every exit code it can give."""
    lines = "\n".join(f"  {e}" for e in examples)
    exits = "; ".join(f"{code} {EXIT_MEANING[code]}" for code in codes)
    return f"\b\nExamples:\n{lines}\n\nExit codes: {exits}."

app = typer.Typer(
    name="orgrunner",
    help="Run one guarded, scripted change across every account of an AWS Organization.\n\n"
         "Dry run is the default; writes need --arm and a typed confirmation naming the accounts.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,
    epilog=epilog((0, 1, 2, 3, 4, 70, 75, 130, 143), "orgrunner --sandbox run strip-default-sg",
                  "orgrunner run strip-default-sg --arm --region eu-west-1", "orgrunner runs"),
)
sandbox_app = typer.Typer(help="A local emulated organization for trying orgrunner without AWS.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")
runs_app = typer.Typer(help="Recent runs, from the audit log; `runs show RUN_ID`: what one run changed.")
app.add_typer(runs_app, name="runs")


# --- shared options ---------------------------------------------------------------------------

Profile = Annotated[str | None, typer.Option("--profile", metavar="NAME", help="AWS profile of the management account "
                                             "(or AWS_PROFILE); the default profile is never used implicitly.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", metavar="FILE", dir_okay=False,
                                                help="Settings file [default: config/orgrunner.yaml if present].")]
AccountOpt = Annotated[list[str] | None, typer.Option("--account", metavar="ID",
                                                      help="Only this account id (repeatable).")]
OuOpt = Annotated[list[str] | None, typer.Option("--ou", metavar="OU_ID", help="Only accounts under this OU, nested "
                                                 "OUs included (repeatable).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", metavar="ID",
                                                      help="Leave out this account id (repeatable).")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="Only accounts with tag KEY=VALUE "
                                                  "(repeatable; all must match).")]
MgmtOpt = Annotated[bool, typer.Option("--include-management", help="Also target the management account.")]
ProtOpt = Annotated[bool, typer.Option("--include-protected", help="Also target accounts protected by a name "
                                       "pattern (never those protected by id).")]
TasksDirOpt = Annotated[Path | None, typer.Option("--tasks-dir", metavar="DIR", file_okay=False,
                                                  help="Also load the task modules of this folder.")]


def selectors(account: list[str] | None, ou: list[str] | None, exclude: list[str] | None,
              tag: list[str] | None, include_management: bool, include_protected: bool = False) -> Selectors:
    chosen = Selectors(accounts=account or [], ous=ou or [], exclude=exclude or [], tags=parse_tags(tag or []),
                       include_management=include_management, include_protected=include_protected)
    chosen.validate()
    return chosen


OperatorRoleOpt = Annotated[str | None, typer.Option(
    "--operator-role-arn", metavar="ARN",
    help="First assume this role of yours in the management account (the first hop).")]
MfaSerialOpt = Annotated[str | None, typer.Option("--mfa-serial", metavar="SERIAL", help="MFA device serial or ARN "
                                                  "for the first hop; the token is prompted for unless --mfa-token.")]
MfaTokenOpt = Annotated[str | None, typer.Option("--mfa-token", metavar="CODE",
                                                 help="The current MFA code (non-interactive).")]


@dataclass
class Hop:
    """How the caller's management session is made: a profile or the environment, optionally
    followed by the operator's own role (with MFA)."""

    profile: str | None = None
    operator_role_arn: str | None = None
    mfa_serial: str | None = None
    mfa_token: str | None = None
    duration: int = 3600


def caller_session(hop: Hop) -> tuple[aws.Session, Caller]:
    if hop.mfa_serial and not hop.operator_role_arn:
        raise InputError("--mfa-serial needs --operator-role-arn (MFA is used on the first hop)")
    if hop.operator_role_arn and not ROLE_ARN.match(hop.operator_role_arn):
        raise InputError(f"--operator-role-arn {hop.operator_role_arn!r}: expected arn:aws:iam::ACCOUNT:role/NAME")
    if hop.mfa_serial and not hop.mfa_token and not sys.stdin.isatty():
        raise InputError("--mfa-serial without a terminal needs --mfa-token")
    session, source = base_session(hop.profile)
    if hop.operator_role_arn:
        first = resolve_caller(session, source)

        def token() -> str:
            return hop.mfa_token or typer.prompt("MFA code", err=True).strip()

        session = operator_session(session, hop.operator_role_arn, session_name(first.operator, "operator"),
                                   hop.duration, hop.mfa_serial, token, source_identity(first.operator))
        source = f"{source} via {hop.operator_role_arn}" + (" with MFA" if hop.mfa_serial else "")
        caller = dataclasses.replace(resolve_caller(session, source), operator=first.operator,
                                     long_term_first_hop=first.long_term and not hop.mfa_serial)
    else:
        caller = resolve_caller(session, source)
    err(f"caller: {caller.describe()}")
    return session, caller


def validate_regions(regions: list[str], where: str = "--region") -> list[str]:
    known = aws.known_regions()
    for region in regions:
        if region not in known:
            raise InputError(f"{where} {region!r}: unknown region")
    return list(dict.fromkeys(regions))


def writable_file(flag: str, path: Path, create_parents: bool = True, follow_symlinks: bool = False) -> None:
    """Refuse, before any AWS call, a file path orgrunner could not write when results arrive
    (logs and reports create their missing folders; a plan file's folder must exist), a FIFO or a
    device, and a symbolic link unless --follow-symlinks."""
    check_output_path(flag, path, follow_symlinks=follow_symlinks, create_parents=create_parents)


def print_selection(selection: Selection) -> None:
    for account, reason in selection.skipped:
        err(f"skipped {account.id} ({account.name}): {reason}")


def _show_version(value: bool) -> None:
    if value:
        print(f"orgrunner {__version__}")
        raise typer.Exit()


_sandbox_active: list[bool] = []


def _use_sandbox(value: bool) -> bool:
    """`--sandbox`, before or after the command: point this process at the emulated organization."""
    if value and not _sandbox_active:
        from orgrunner.sandbox import org as sb
        sb.activate()
        _sandbox_active.append(True)  # once, even when given before and after the command
    return value


SANDBOX_HELP = ("Run against a local emulated organization (needs the 'sandbox' extra): the one "
                "`orgrunner sandbox serve` runs, or a fresh one for this command.")
SandboxOpt = Annotated[bool, typer.Option("--sandbox", help=SANDBOX_HELP, callback=_use_sandbox)]


@app.callback()
def main_options(
    sandbox: Annotated[bool, typer.Option("--sandbox", help=SANDBOX_HELP, callback=_use_sandbox)] = False,
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.", is_eager=True,
                                          callback=_show_version)] = False,
) -> None:
    pass


# --- commands ---------------------------------------------------------------------------------

@app.command(epilog=epilog(READ_EXITS, "orgrunner whoami --profile mgmt",
                           "orgrunner whoami --operator-role-arn arn:aws:iam::111122223333:role/Ops "
                           "--mfa-serial arn:aws:iam::111122223333:mfa/alice"))
def whoami(profile: Profile = None, operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None,
           mfa_token: MfaTokenOpt = None, sandbox: SandboxOpt = False) -> None:
    """Show the caller: ARN, account, credential kind and organization id."""
    session, caller = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token))
    try:
        org_id = Organization(session).describe()["Id"]
    except InputError:
        org_id = "(not in an organization)"
    print(visible(f"arn:          {caller.arn}"))
    print(visible(f"account:      {caller.account_id}"))
    print(visible(f"credentials:  {caller.kind} ({caller.key_prefix}..., from {caller.source})"))
    print(visible(f"organization: {org_id}"))


@app.command(epilog=epilog(READ_EXITS, "orgrunner accounts", "orgrunner accounts --ou ou-ab12-cd34ef56 --tag env=prod",
                           "orgrunner accounts --format json"))
def accounts(
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    output: Annotated[str, _format("text", "json", "table")] = "text",  # table: its name before formats were one
    with_tags: Annotated[bool, typer.Option("--tags", help="Also read and show each account's tags "
                                            "(one call per account).")] = False,
    profile: Profile = None, operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None,
    mfa_token: MfaTokenOpt = None, config: ConfigOpt = None, sandbox: SandboxOpt = False,
) -> None:
    """List the accounts a run with these selectors would target, with their OU path (and tags
    with --tags), and those left out and why."""
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    settings = load_settings(config)
    session, _ = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token, settings.session_duration))
    org = Organization(session)
    selection = org.select(chosen, settings.protection())
    place = {a: (u.id, u.path) for u in org.tree() for a in u.accounts}
    listed = [a for a in selection.targets] + [a for a, _ in selection.skipped]
    tags = _read_tags(org, listed) if with_tags else {a.id: dict(a.tags) for a in listed} if tag else None

    def row(a: Account) -> dict[str, object]:
        ou_id, path = place.get(a.id, ("", ""))
        data = {**a.to_dict(), "ou_id": ou_id, "ou_path": path}
        if tags is None:
            data.pop("tags")  # not read: say nothing rather than an empty {}
        else:
            data["tags"] = tags.get(a.id, {})
        return data

    if output == "json":
        print(json.dumps({
            "management_account_id": selection.management_account_id,
            "targets": [row(a) for a in selection.targets],
            "skipped": [{**row(a), "reason": r} for a, r in selection.skipped],
        }, indent=2))
        return
    print_selection(selection)
    for a in selection.targets:
        shown = f"{a.id}  {a.name:<24} {a.state:<8} {place.get(a.id, ('', ''))[1]:<32} {a.email}"
        if tags is not None:
            shown += "  " + " ".join(f"{k}={v}" for k, v in sorted(tags.get(a.id, {}).items()))
        print(visible(shown))
    print(f"{len(selection.targets)} target account(s), {len(selection.skipped)} left out."
          + ("" if tags is not None else " (--tags shows their tags)"))


def _read_tags(org: Organization, listed: list[Account]) -> dict[str, dict[str, str]]:
    """Every listed account's tags, with a progress display on a terminal for large organizations."""
    found: dict[str, dict[str, str]] = {}
    if len(listed) < 50 or not sys.stderr.isatty():
        return {a.id: org.tags(a.id) for a in listed}
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("tags"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        job = bar.add_task("tags", total=len(listed))
        for a in listed:
            found[a.id] = org.tags(a.id)
            bar.advance(job)
    return found


@app.command(epilog=epilog(READ_EXITS, "orgrunner ous", "orgrunner ous --format json"))
def ous(
    output: Annotated[str, _format("text", "json")] = "text",
    profile: Profile = None, operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None,
    mfa_token: MfaTokenOpt = None, config: ConfigOpt = None, sandbox: SandboxOpt = False,
) -> None:
    """The organization's OU tree: each root and OU with its id, its accounts directly in it and
    in all (the ids `--ou` takes)."""
    settings = load_settings(config)
    session, _ = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token, settings.session_duration))
    units = Organization(session).tree()
    if output == "json":
        print(json.dumps([{"id": u.id, "name": u.name, "parent": u.parent, "path": u.path,
                           "accounts": len(u.accounts), "accounts_in_all": u.total(units)} for u in units], indent=2))
        return
    def show(unit: OrgUnit, depth: int) -> None:
        print(visible(f"{'  ' * depth}{unit.name}  {unit.id}  {len(unit.accounts)} account(s) directly, "
                      f"{unit.total(units)} in all"))
        for child in (u for u in units if u.parent == unit.id):
            show(child, depth + 1)

    for root in (u for u in units if u.parent is None):
        show(root, 0)


@app.command("tasks", epilog=epilog(LOCAL_EXITS, "orgrunner tasks", "orgrunner tasks --tasks-dir mytasks"))
def list_tasks(tasks_dir: TasksDirOpt = None) -> None:
    """List the registered tasks: name, destructive or not, global or regional, description."""
    specs, errors = task_workers.list_tasks(Launch(None, tasks_dir, config_dir(None)))
    for task in specs:
        kind = "destructive" if task.destructive else "by plan"
        scope = "org" if task.scope == "organization" else "regional" if task.regional else "global"
        print(f"{visible(task.name):<32} {kind:<12} {scope:<9} {visible(task.description)}")
    if any(not t.destructive for t in specs):
        print("(by plan: --arm alone applies changes that only tighten; any change that relaxes security is "
              "destructive and needs the typed confirmation)")
    for error in errors:
        err(f"failed to load: {error}")


def declaration(task: str, tasks_dir: Path | None) -> TaskSpec:
    """A task's declaration, loaded in a worker process (this one never imports task code)."""
    specs, errors = task_workers.list_tasks(Launch(None, tasks_dir, config_dir(None)))
    return find_declaration(specs, errors, task)


def find_declaration(specs: list[TaskSpec], errors: list[str], task: str) -> TaskSpec:
    for spec in specs:
        if spec.name == task:
            return spec
    broken = [e for e in errors if repr(task) in e]
    if broken:
        raise TaskLoadError(broken[0])
    known = ", ".join(sorted(s.name for s in specs)) or "none"
    raise InputError(f"unknown task {task!r} (known tasks: {known})")


@app.command(epilog=epilog(LOCAL_EXITS, "orgrunner policy strip-default-sg",
                           "orgrunner policy iam-password-policy --phase apply"))
def policy(
    task: Annotated[str, typer.Argument(metavar="TASK", help="Task name.")],
    phase: Annotated[str, typer.Option("--phase", metavar="[plan|apply]", help="plan (reads only) or apply.")] = "plan",
    tasks_dir: TasksDirOpt = None,
) -> None:
    """Print the session policy JSON that AssumeRole will carry for a task's phase."""
    if phase not in ("plan", "apply"):
        raise InputError(f"--phase {phase!r}: expected plan or apply")
    cls = declaration(task, tasks_dir)
    print(json.dumps(session_policy(cls, "apply" if phase == "apply" else "plan"), indent=2))


@app.command(epilog=epilog(LOCAL_EXITS, "orgrunner describe strip-default-sg",
                           "orgrunner describe kms-key-rotation --tasks-dir mytasks"))
def describe(
    task: Annotated[str, typer.Argument(metavar="TASK", help="Task name.")],
    tasks_dir: TasksDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show a task: its documentation, kind, config file and both session policies."""
    cls = declaration(task, tasks_dir)
    print(visible(f"{cls.name}: {cls.description}"))
    kind = "destructive" if cls.destructive else "by plan (relaxing changes are destructive)"
    where = "organization (the management account)" if cls.scope == "organization" else \
        "regional" if cls.regional else "global"
    print(f"kind: {kind}, {where}")
    for line in config_note(cls, config_dir(config)):
        print(visible(line))
    doc = cls.doc
    if doc:
        print()
        for line in doc.splitlines():  # the task's docstring: its own lines kept, nothing else obeyed
            print(visible(line))
    for phase in ("plan", "apply"):
        print()
        print(f"{phase} session policy:")
        print(json.dumps(session_policy(cls, phase), indent=2))


def config_note(spec: TaskSpec, folder: Path) -> list[str]:
    """Which config file a task reads, or that there is none and its built-in defaults apply."""
    if not spec.config_file:
        return []
    path = folder / spec.config_file
    if path.is_file():
        return [f"config file: {path}"]
    if not spec.defaults:
        return [f"config file: {path} not found: the task's built-in defaults apply"]
    return [f"config file: {path} not found: the task's built-in defaults apply:",
            *(f"  {line}" for line in spec.defaults.splitlines())]


def _format(*allowed: str, help: str | None = None) -> Any:
    """`--format`, checked while the command line is parsed (before anything is read)."""

    def check(value: str) -> str:
        if value not in allowed:
            words = [w for w in allowed if w != "table"]
            raise InputError(f"--format {value!r}: expected {', '.join(words[:-1])} or {words[-1]}")
        return value

    help_text = {"run": "text; json: one machine-readable summary on stdout; markdown: the plan as a Markdown "
                 "document on stdout, for a change ticket (with json and markdown, the per-target lines go to "
                 "stderr).", "accounts": "text: a table; json: one document on stdout."}
    return typer.Option("--format", metavar="[" + "|".join(w for w in allowed if w != "table") + "]", callback=check,
                        help=help or help_text["accounts" if "table" in allowed else "run"])


FormatOpt = Annotated[str, _format("text", "json", "markdown")]


def _details(value: str) -> str:
    if value not in DETAILS:
        raise InputError(f"--details {value!r}: expected none, risky or all")
    return value


DetailsOpt = Annotated[str, typer.Option(
    "--details", metavar="[none|risky|all]", callback=_details,
    help="Which changes the plan lists under its summary: none, risky (those that need a look first: the task "
    "flags them, or they relax security) or all.")]
ReportOpt = Annotated[Path | None, typer.Option("--report", metavar="FILE", dir_okay=False,
                                                help="Write one JSON line per account x region.")]
AuditOpt = Annotated[Path | None, typer.Option("--audit-log", metavar="FILE", help="Audit log file "
                                               "[default: ~/.local/state/orgrunner/audit.jsonl].")]
ConfirmOpt = Annotated[str | None, typer.Option(
    "--confirm-accounts", metavar="IDS", help="Confirm non-interactively: the account ids (comma separated) you "
    "approve; must include every account with planned changes, and only targets of the run.")]
ConfirmProtOpt = Annotated[str | None, typer.Option(
    "--confirm-protected", metavar="IDS", help="With --include-protected, non-interactively: the ids of the protected "
    "accounts with planned changes.")]
ConfirmCloseOpt = Annotated[str | None, typer.Option(
    "--confirm-close", metavar="NAMES", help="Confirm closing accounts non-interactively: the NAMES (comma "
    "separated, as the organization lists them) of exactly the accounts the plan closes (org-accounts).")]
FollowOpt = Annotated[bool, typer.Option("--follow-symlinks", help="Write --report, --audit-log and --plan-out "
                                         "through a symbolic link (refused otherwise).")]
LongTermOpt = Annotated[bool, typer.Option("--allow-long-term-credentials",
                                           help="Allow an armed run with long-term access keys.")]
LockOpt = Annotated[float, typer.Option("--wait-for-lock", metavar="SECONDS", min=0,
                                        help="Wait up to SECONDS for another run of the same task and "
                                        "organization to finish (0: exit 75 at once).")]
RoleNameOpt = Annotated[str | None, typer.Option("--role-name", metavar="NAME", help="Role to assume in each account "
                                                 "[default: OrganizationAccountAccessRole].")]
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", metavar="N",
                                                    help="Parallel workers [default: 16].")]
ProcessesOpt = Annotated[int | None, typer.Option(
    "--processes", metavar="N", help="Task worker processes (task code runs only there), the workers split among "
    "them [default: one per CPU, at most 4, each with 50+ accounts].")]
RegionOpt = Annotated[list[str] | None, typer.Option("--region", metavar="REGION", help="Only this region (repeatable) "
                                                     "[default: every region enabled in each account].")]


@dataclass
class Common:
    """What `run`, `apply` and `undo` share: settings, credentials, selection, options."""

    settings: Settings
    hop: Hop
    selectors: Selectors
    regions: list[str] | None
    options: RunOptions
    allow_long_term: bool
    required: set[str] | None = None  # `apply`: every account of the saved plan must be a target
    # `run --then-baseline`: called with the run and its exit code once it ended; its exit code
    then: Callable[[Pipeline, int], int] | None = None

    def prepare(self, scope: str = "account") -> tuple[aws.Session, Caller, Selection]:
        """The caller (checked) and the accounts the selectors choose (those left out printed);
        for the organization scope, the management account alone."""
        session, caller = caller_session(self.hop)
        if caller.long_term:
            if self.options.arm and not self.allow_long_term:
                raise SafetyRefusal("armed runs refuse long-term access keys (AKIA...); use temporary credentials "
                                    "(SSO, an assumed role) or pass --allow-long-term-credentials")
            err("warning: long-term access keys (AKIA...) in use; prefer temporary credentials")
        organization = Organization(session)
        if self.required is not None:
            unknown = sorted(self.required - {a.id for a in organization.accounts()})
            if unknown:
                raise SafetyRefusal(f"the plan targets {len(unknown)} account(s) that are not in this organization: "
                                    f"{', '.join(unknown[:10])}; nothing applied")
        if scope == "organization":
            selection = organization.management_target(self.selectors, self.settings.protection())
            others = sorted(set(self.selectors.accounts) - {selection.management_account_id})
            if others:  # a saved plan or a journal naming member accounts as targets of this scope
                raise SafetyRefusal(f"an organization-scope task runs in the management account only, not in "
                                    f"{', '.join(others[:10])}; nothing applied")
            return session, caller, selection
        selection = organization.select(self.selectors, self.settings.protection())
        print_selection(selection)
        if self.required is not None:
            # the target rules of `run`, applied again: management, protected, suspended accounts
            reasons = {a.id: reason for a, reason in selection.skipped}
            left = sorted(self.required - {a.id for a in selection.targets})
            if left:
                raise SafetyRefusal("the plan targets " + "; ".join(
                    f"{i}, {reasons.get(i, 'not selected')}" for i in left[:10]) + "; nothing applied")
        return session, caller, selection

    def execute(self, launch: Launch) -> None:
        """Load the task in a worker (a broken task or config file stops here, before any AWS
        call), then run it."""
        launch = dataclasses.replace(launch, duration=self.settings.session_duration)
        with self.workers(launch) as workers:
            spec = workers.start(1)
            for line in config_note(spec, launch.config_dir):
                err(line)
            self._execute(spec, workers)

    def workers(self, launch: Launch) -> Workers:
        return Workers(dataclasses.replace(launch, duration=self.settings.session_duration), self.settings.concurrency,
                       self.settings.worker_timeout)

    def _execute(self, task: TaskSpec, workers: Workers) -> None:
        if task.scope == "organization":
            chosen = self.selectors
            given = chosen.ous or chosen.tags or chosen.exclude or (
                chosen.accounts and self.options.command == "run" and self.options.only is None)
            if given:
                raise InputError(f"{task.name} runs on the organization (one target: the management account, "
                                 "global); --account, --ou, --tag and --exclude do not apply")
        session, caller, selection = self.prepare(task.scope)
        if not selection.targets:
            err("no accounts match the selectors; nothing to do")
            if self.options.output_format == "json":
                print(json.dumps({"run_id": None, "task": task.name, "status": "nothing to do", "exit_code": 0,
                                  "plan": summarize(Tally()), "apply": summarize(Tally()), "failed_targets": []},
                                 indent=2))
            return
        pipeline = Pipeline(task, workers, self.settings, session, caller, selection, self.selectors, self.regions,
                            self.options)
        code = pipeline.execute()
        if self.then is not None:
            code = self.then(pipeline, code)
        if code:
            raise typer.Exit(code)


def common(*, arm: bool, confirm_accounts: str | None, confirm_protected: str | None, chosen: Selectors,
           confirm_close: str | None = None,
           region: list[str] | None, config: Path | None, hop: Hop, output: str, details: str, report: Path | None,
           audit_log: Path | None, wait_for_lock: float, allow_long_term: bool, command: str,
           role_name: str | None = None, concurrency: int | None = None, processes: int | None = None,
           follow_symlinks: bool = False) -> Common:
    """Check everything the user typed, before any AWS call."""
    confirmed = parse_account_list(confirm_accounts) if confirm_accounts is not None else None
    protected_ok = parse_account_list(confirm_protected, "--confirm-protected") if confirm_protected else None
    closing = parse_names(confirm_close) if confirm_close is not None else None
    if (confirmed is not None or protected_ok is not None or closing is not None) and not arm:
        raise InputError("--confirm-accounts, --confirm-protected and --confirm-close only make sense with --arm")
    settings = load_settings(config, role_name=role_name, concurrency=concurrency, processes=processes,
                             audit_log=audit_log)
    regions = validate_regions(region) if region else (
        validate_regions(settings.regions, "regions in the settings file") if settings.regions else None)
    for flag, path in (("--report", report), ("--audit-log", settings.audit_log)):
        if path is not None:
            writable_file(flag, path, follow_symlinks=follow_symlinks)
    StateFolder(state_dir())  # ours alone, or refused now, before any AWS call
    hop.duration = settings.session_duration
    options = RunOptions(arm=arm, stated=Confirmation(confirmed, protected_ok, close=closing), report=report,
                         output_format="json" if output == "json" else "markdown" if output == "markdown" else "text",
                         details="all" if details == "all" else "none" if details == "none" else "risky",
                         wait_for_lock=wait_for_lock, command=command, follow_symlinks=follow_symlinks)
    return Common(settings, hop, chosen, regions, options, allow_long_term)


def failed_targets(report: Path, task: str) -> dict[str, list[str] | None]:
    """The targets of `task` whose last record in a --report file is `failed`: account -> regions
    (None: the whole account failed before its regions were known)."""
    last: dict[tuple[str, str], str] = {}
    try:
        lines = report.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"--retry-failed {report}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            account_id, region = str(record["account"]), str(record["region"])
            if record["task"] == task:
                last[(account_id, region)] = str(record["status"])
        except (ValueError, KeyError, TypeError):
            raise InputError(f"--retry-failed {report}:{number}: not a report line") from None
        if not ACCOUNT_ID.match(account_id) or not (region in ("*", GLOBAL_REGION) or region in aws.known_regions()):
            raise InputError(f"--retry-failed {report}:{number}: invalid account {account_id!r} or region {region!r}")
    only: dict[str, list[str] | None] = {}
    for (account_id, region), status in sorted(last.items()):
        if status != "failed":
            continue
        if region in ("*", GLOBAL_REGION):
            only[account_id] = None
            continue
        regions = only.setdefault(account_id, [])
        if regions is not None:
            regions.append(region)
    return only


@app.command(epilog=epilog((*RUN_EXITS[:4], 4, *RUN_EXITS[4:]),
                           "orgrunner run strip-default-sg --region eu-west-1",
                           "orgrunner run strip-default-sg --arm --ou ou-ab12-cd34ef56",
                           "orgrunner run strip-default-sg --plan-out plan.json   # then: orgrunner apply plan.json"))
def run(
    task: Annotated[str, typer.Argument(metavar="TASK", help="Task name (see `orgrunner tasks`).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; nothing is written. The default.")] = False,
    arm: Annotated[bool, typer.Option("--arm", help="Plan, confirm, then apply exactly the planned changes.")] = False,
    confirm_accounts: ConfirmOpt = None,
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    region: RegionOpt = None,
    role_name: RoleNameOpt = None,
    concurrency: ConcurrencyOpt = None,
    processes: ProcessesOpt = None,
    output: FormatOpt = "text",
    details: DetailsOpt = "risky",
    report: ReportOpt = None,
    plan_out: Annotated[Path | None, typer.Option("--plan-out", metavar="FILE", dir_okay=False,
                                                  help="Save the plan (dry run) for review and "
                                                  "`orgrunner apply`.")] = None,
    fail_on_changes: Annotated[bool, typer.Option("--fail-on-changes", help="A dry run exits 4 when anything "
                                                  "would change (drift detection).")] = False,
    retry_failed: Annotated[Path | None, typer.Option("--retry-failed", metavar="FILE", dir_okay=False,
                                                      help="Run exactly the targets that failed in this earlier "
                                                      "--report.")] = None,
    wait_for_lock: LockOpt = 0,
    audit_log: AuditOpt = None,
    allow_long_term: LongTermOpt = False,
    follow_symlinks: FollowOpt = False,
    confirm_protected: ConfirmProtOpt = None,
    confirm_close: ConfirmCloseOpt = None,
    then_baseline: Annotated[bool, typer.Option(
        "--then-baseline", help="org-accounts, armed: then run the baseline (config/baseline.yaml) for exactly the "
        "accounts the run created, in the same invocation, once their role can be assumed (see --wait-for-role); "
        "its own plan and confirmation.")] = False,
    wait_for_role: Annotated[float | None, typer.Option(
        "--wait-for-role", metavar="SECONDS", min=0, help="With --then-baseline: how long to retry AssumeRole while "
        "AWS propagates the new accounts' role (900 unless given).")] = None,
    confirm_new_accounts: Annotated[str | None, typer.Option(
        "--confirm-new-accounts", metavar="NAMES", help="With --then-baseline, without a terminal: the names (comma "
        "separated) of exactly the accounts the run creates, confirming their baseline.")] = None,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Plan a task across the organization (dry run, the default), or with --arm apply it after
    the typed confirmation."""
    if (confirm_new_accounts is not None or wait_for_role is not None) and not then_baseline:
        raise InputError("--wait-for-role and --confirm-new-accounts go with --then-baseline")
    if then_baseline and not arm:
        raise InputError("--then-baseline baselines the accounts an armed run creates: add --arm")
    if dry_run and arm:
        raise InputError("--dry-run and --arm exclude each other")
    if plan_out is not None and arm:
        raise InputError("--plan-out saves a dry run's plan; apply it later with `orgrunner apply`")
    if fail_on_changes and arm:
        raise InputError("--fail-on-changes is for dry runs")
    if plan_out is not None:
        writable_file("--plan-out", plan_out, create_parents=False, follow_symlinks=follow_symlinks)
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    only = None
    if retry_failed is not None:
        if account or ou or tag or region:
            raise InputError("--retry-failed chooses the targets itself; drop --account, --ou, --tag and --region")
        only = failed_targets(retry_failed, task)
        if not only:
            err(f"no failed targets of {task} in {retry_failed}; nothing to do")
            return
        chosen.accounts = sorted(only)
        # the target rules of `run` still hold: a report line naming the management account (or a
        # protected one) is left out, with the reason, unless the flag is given again
    shared = common(arm=arm, confirm_accounts=confirm_accounts, confirm_protected=confirm_protected,
                    confirm_close=confirm_close, chosen=chosen,
                    region=region, config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token),
                    output=output, details=details, report=report, audit_log=audit_log, wait_for_lock=wait_for_lock,
                    allow_long_term=allow_long_term,
                    follow_symlinks=follow_symlinks, command="run", role_name=role_name, concurrency=concurrency,
                    processes=processes)
    shared.options.plan_out = plan_out
    shared.options.fail_on_changes = fail_on_changes
    shared.options.only = only
    if then_baseline:
        from orgrunner.cli.baseline import then_baseline as after

        shared.then = after(task, common(
            arm=True, confirm_accounts=None, confirm_protected=None, chosen=selectors([], None, None, None, False),
            region=region, config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token), output="text",
            details=details, report=None, audit_log=audit_log, wait_for_lock=wait_for_lock,
            allow_long_term=allow_long_term, follow_symlinks=follow_symlinks, command="baseline",
            role_name=role_name, concurrency=concurrency, processes=processes),
            tasks_dir, config, 900 if wait_for_role is None else wait_for_role, confirm_new_accounts)
    shared.execute(Launch(task, tasks_dir, config_dir(config)))


@app.command(epilog=epilog(RUN_EXITS, "orgrunner apply plan.json",
                           "orgrunner apply plan.json --confirm-accounts 111122223333,444455556666",
                           "orgrunner apply plan.json --confirm-plan DIGEST"))
def apply(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN_FILE", dir_okay=False,
                                              help="A plan saved by `run --dry-run --plan-out`.")],
    confirm_plan: Annotated[str | None, typer.Option(
        "--confirm-plan", metavar="DIGEST", help="Confirm non-interactively by the reviewed plan's digest "
        "(SHA-256, as the saving dry run printed it); also the way to apply a plan saved on another machine.")] = None,
    confirm_accounts: ConfirmOpt = None,
    confirm_protected: ConfirmProtOpt = None,
    confirm_close: ConfirmCloseOpt = None,
    include_management: MgmtOpt = False,
    include_protected: ProtOpt = False,
    concurrency: ConcurrencyOpt = None,
    processes: ProcessesOpt = None,
    output: FormatOpt = "text",
    details: DetailsOpt = "risky",
    report: ReportOpt = None,
    wait_for_lock: LockOpt = 0,
    audit_log: AuditOpt = None,
    allow_long_term: LongTermOpt = False,
    follow_symlinks: FollowOpt = False,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Apply a saved plan: plan again live, and apply only if the live plan equals the saved one
    for every target (any drift refuses the whole apply, exit 3), after a confirmation (typed,
    --confirm-accounts or --confirm-plan), destructive or not. The file must be the plan a dry run
    saved here (its digest in the audit log) or the one --confirm-plan names; the target rules of
    `run` hold again (--include-management, --include-protected)."""
    saved = load_plan(plan_file)
    digest = parse_digest(confirm_plan) if confirm_plan is not None else None
    targets = saved.accounts
    if not targets:
        raise InputError(f"{plan_file}: the plan has no targets")
    chosen = selectors(targets, None, None, None, include_management=include_management,
                       include_protected=include_protected)
    shared = common(arm=True, confirm_accounts=confirm_accounts, confirm_protected=confirm_protected,
                    confirm_close=confirm_close, chosen=chosen,
                    region=saved.regions, config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token),
                    output=output, details=details, report=report, audit_log=audit_log,
                    wait_for_lock=wait_for_lock, allow_long_term=allow_long_term,
                    follow_symlinks=follow_symlinks, command="apply", role_name=saved.role_name,
                    concurrency=concurrency, processes=processes)
    bound(plan_file, saved, digest, read_events(shared.settings.audit_log or state_dir() / "audit.jsonl",
                                                "plan-saved"))
    shared.options.expected = saved
    shared.options.stated = dataclasses.replace(shared.options.stated, plan=digest)
    shared.required = set(targets)
    shared.execute(Launch(saved.task, tasks_dir, config_dir(config)))


@app.command(epilog=epilog(RUN_EXITS, "orgrunner runs                      # find the run id",
                           "orgrunner undo 20261129T190242Z-d25652",
                           "orgrunner undo 20261129T190242Z-d25652 --arm --account 111122223333"))
def undo(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run whose applied changes to reverse "
                                          "(`orgrunner runs` lists them; `orgrunner runs show RUN_ID`).")],
    arm: Annotated[bool, typer.Option("--arm", help="Apply the reversal after the typed confirmation.")] = False,
    account: AccountOpt = None,
    confirm_accounts: ConfirmOpt = None,
    confirm_protected: ConfirmProtOpt = None,
    confirm_close: ConfirmCloseOpt = None,
    include_management: MgmtOpt = False,
    include_protected: ProtOpt = False,
    output: FormatOpt = "text",
    details: DetailsOpt = "risky",
    report: ReportOpt = None,
    wait_for_lock: LockOpt = 0,
    audit_log: AuditOpt = None,
    allow_long_term: LongTermOpt = False,
    follow_symlinks: FollowOpt = False,
    role_name: RoleNameOpt = None,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Reverse what a run applied, from its journal: a dry run by default; with --arm, restore
    after the typed confirmation. What has changed again since the run is left alone, and said.
    The journal must first verify against the audit log (as `orgrunner verify RUN_ID`), and the
    target rules of `run` hold: the management account needs --include-management, protected
    accounts --include-protected and their own confirmation."""
    task_name, _version, applied = journal.read(state_dir(), run_id)  # exit 2 when there is no such journal
    verdict = verified(run_id, config, audit_log)
    if verdict.breaks:
        raise SafetyRefusal(f"run {run_id}: its journal does not verify against the audit log "
                            f"({len(verdict.breaks)} break(s), above); undo refused, nothing applied")
    chosen = selectors(account, None, None, None, include_management=include_management,
                       include_protected=include_protected)
    applied = [c for c in applied if not chosen.accounts or c.account_id in chosen.accounts]
    if not applied:
        raise InputError(f"run {run_id}: applied nothing" + (" in the given accounts" if chosen.accounts else ""))
    chosen.accounts = sorted({c.account_id for c in applied})
    regions = sorted({c.region for c in applied if c.region != GLOBAL_REGION}) or None
    shared = common(arm=arm, confirm_accounts=confirm_accounts, confirm_protected=confirm_protected,
                    confirm_close=confirm_close, chosen=chosen,
                    region=regions, config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token),
                    output=output, details=details, report=report, audit_log=audit_log,
                    wait_for_lock=wait_for_lock, allow_long_term=allow_long_term,
                    follow_symlinks=follow_symlinks, command=f"undo {run_id}", role_name=role_name)
    shared.options.lock_name = task_name
    shared.execute(Launch(task_name, tasks_dir, config_dir(config), undo=[c.to_dict() for c in applied]))


def verified(run_id: str, config: Path | None, audit_log: Path | None) -> evidence.Verdict:
    """Run `run_id`'s journal checked against its audit-log record; breaks and notes printed."""
    if not journal.RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r}: expected the form 20261129T190000Z-1a2b3c (see `orgrunner runs`)")
    settings = load_settings(config, audit_log=audit_log)
    state = StateFolder(state_dir())
    verdict = evidence.verify(state, journal.journal_dir(state.root) / f"{run_id}.jsonl",
                              settings.audit_log or state.root / "audit.jsonl", run_id)
    for note in verdict.notes:
        err(f"note: {note}")
    for line in verdict.breaks:
        err(f"BROKEN: {line}")
    return verdict


@app.command()
def verify(
    run_id: Annotated[str | None, typer.Argument(metavar="[RUN_ID]", help="The run to check [default: every run "
                                                 "with a journal].")] = None,
    audit_log: AuditOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Check runs' journals against the audit log: each record's hash chain, each run's chain head,
    and that the journal's changes are exactly those the audit log recorded as applied. No AWS
    call. Exit 0 when every run verifies, 3 otherwise (one line per break)."""
    if run_id is None:
        folder = journal.journal_dir(StateFolder(state_dir()).root)
        runs = sorted(p.stem for p in folder.glob("*.jsonl") if journal.RUN_ID.match(p.stem)) if folder.is_dir() else []
        if not runs:
            err("no journals to verify")
            return
    else:
        runs = [run_id]
    broken = 0
    for run in runs:
        verdict = verified(run, config, audit_log)
        if verdict.breaks:
            broken += 1
        else:
            print(f"run {run}: verified ({verdict.changes} change outcome(s) in the journal, "
                  f"{verdict.audit_records} audit record(s))")
    if broken:
        err(f"{broken} of {len(runs)} run(s) do not verify")
        raise typer.Exit(EXIT_SAFETY)


@app.command(epilog=epilog((0, 1, 2, 3, 70, 75, 130, 143), "orgrunner report",
                           "orgrunner report strip-default-sg --ou ou-ab12-cd34ef56 --format html --output report.html",
                           "orgrunner report --publish confluence --confluence-url https://example.atlassian.net "
                           "--confluence-user ops@example.com --page-id 123456"))
def report(
    tasks: Annotated[list[str] | None, typer.Argument(help="Tasks to report on [default: every task of the "
                                                      "baseline, config/baseline.yaml].", show_default=False)] = None,
    output_format: Annotated[str, _format("markdown", "html", "csv", "json",
                                          help="markdown, html (one self-contained page), csv or json.")] = "markdown",
    output: Annotated[Path | None, typer.Option("--output", metavar="FILE", help="Write the document to this file "
                                                "[default: stdout].", dir_okay=False)] = None,
    baseline_file: Annotated[Path | None, typer.Option(
        "--baseline", metavar="FILE", help="The baseline file [default: baseline.yaml beside the settings].",
        dir_okay=False)] = None,
    publish: Annotated[str | None, typer.Option("--publish", metavar="confluence",
                                                help="Also publish the report to a Confluence page.")] = None,
    page_id: Annotated[str | None, typer.Option("--page-id", metavar="ID", help="The Confluence page to replace.")
                       ] = None,
    confluence_url: Annotated[str | None, typer.Option(
        "--confluence-url", metavar="URL", help="https://SITE.atlassian.net (Cloud) or the Data Center server's URL "
        "[default: $ORGRUNNER_CONFLUENCE_URL].")] = None,
    confluence_user: Annotated[str | None, typer.Option(
        "--confluence-user", metavar="EMAIL", help="Cloud: the account email the API token belongs to (basic auth); "
        "without it the token is sent as a bearer token (a Data Center personal access token).")] = None,
    confluence_token_file: Annotated[Path | None, typer.Option(
        "--confluence-token-file", metavar="FILE", help="A file holding the token [default: "
        "$ORGRUNNER_CONFLUENCE_TOKEN]; the token is never taken from the command line.", dir_okay=False)] = None,
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    region: RegionOpt = None,
    role_name: RoleNameOpt = None,
    concurrency: ConcurrencyOpt = None,
    processes: ProcessesOpt = None,
    wait_for_lock: LockOpt = 0,
    audit_log: AuditOpt = None,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Compliance of the organization, read-only: the plan phase of every baseline task (or the
    tasks named) across the selected accounts, as one document: the account inventory and an
    accounts x tasks matrix (compliant, N pending changes, failed, skipped), with totals per
    task and per OU. One dry run in the audit log. Exit 1 when a target could not be planned
    (the document is still written)."""
    from orgrunner.config import baseline
    from orgrunner.publish import compliance, confluence
    if output is not None:
        writable_file("--output", output)
    target_page = None
    if publish is not None:
        if publish != "confluence":
            raise InputError(f"--publish {publish!r}: expected confluence")
        url = confluence_url or os.environ.get("ORGRUNNER_CONFLUENCE_URL", "")
        if not url or not page_id:
            raise InputError("--publish confluence needs --page-id and --confluence-url (or $ORGRUNNER_CONFLUENCE_URL)")
        target_page = confluence.page(url, page_id, confluence.read_token(confluence_token_file), confluence_user)
    elif page_id or confluence_url or confluence_user or confluence_token_file:
        raise InputError("--page-id and the --confluence-* options go with --publish confluence")
    specs, errors = task_workers.list_tasks(Launch(None, tasks_dir, config_dir(config)))
    if tasks:
        names = list(dict.fromkeys(tasks))
        for name in names:
            find_declaration(specs, errors, name)  # an unknown name is one line, before any AWS call
    else:
        names = list(baseline.load(baseline_file or baseline.path_in(config_dir(config)),
                                   {s.name for s in specs}).tasks)
    org_scope = sorted(s.name for s in specs if s.name in names and s.scope == "organization")
    if org_scope:
        raise InputError(f"report covers the accounts' tasks; {', '.join(org_scope)} runs on the organization: "
                         f"orgrunner run {org_scope[0]} --dry-run")
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    shared = common(arm=False, confirm_accounts=None, confirm_protected=None, chosen=chosen, region=region,
                    config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token), output="text",
                    details="risky", report=None, audit_log=audit_log, wait_for_lock=wait_for_lock,
                    allow_long_term=False, command="report " + ",".join(names), role_name=role_name,
                    concurrency=concurrency, processes=processes)
    with contextlib.ExitStack() as stack:  # each task loaded (and its config checked) in its own workers
        survey = []
        for name in names:
            workers = stack.enter_context(shared.workers(Launch(name, tasks_dir, config_dir(config))))
            survey.append((workers.start(1), workers))
        session, caller, selection = shared.prepare()
        if not selection.targets:
            err("no accounts match the selectors; nothing to report")
            return
        matrix = compliance.Matrix()
        shared.options.lock_name = "report"
        shared.options.survey = tuple(survey)
        shared.options.observe = matrix.observe
        pipeline = Pipeline(survey[0][0], survey[0][1], shared.settings, session, caller, selection, chosen,
                            shared.regions, shared.options)
        code = pipeline.execute()
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        raise typer.Exit(code)
    organization = Organization(session)
    document = compliance.Document(
        run_id=pipeline.run_id, generated=datetime.now(UTC).isoformat(timespec="seconds"),
        organization_id=selection.organization_id, tasks=names,
        rows=compliance.inventory(organization, selection, matrix, names),
        status="ok" if code == 0 else "some targets failed")
    rendered = compliance.render(document, output_format)
    if output is None:
        sys.stdout.write(rendered)
        sys.stdout.flush()
    else:
        try:
            with open_file(output, "w", flag="--output") as handle:  # never through a link, a FIFO, a device
                handle.write(rendered)
        except OSError as exc:
            raise InputError(f"--output {output}: {exc.strerror or exc}") from None
        err(f"report written to {output}")
    if target_page is not None:
        version = confluence.publish(target_page, compliance.render(document, "storage"),
                                     f"orgrunner report {pipeline.run_id}")
        err(f"published to Confluence page {target_page.page_id} (version {version})")
    if code:
        raise typer.Exit(code)


@app.command(epilog=epilog(READ_EXITS, "orgrunner doctor",
                           "orgrunner doctor --role-name OrgRunnerRole --ou ou-ab12-cd34ef56"))
def doctor(
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    role_name: RoleNameOpt = None,
    concurrency: ConcurrencyOpt = None,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Check that the role can be assumed in every targeted account; list where it cannot and why.
    Exit 1 when any account fails."""
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    settings = load_settings(config, role_name=role_name, concurrency=concurrency)
    session, caller = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token,
                                         settings.session_duration))
    selection = Organization(session).select(chosen, settings.protection())
    print_selection(selection)
    operator = caller.operator
    results = check_roles(session, selection.targets, settings, session_name(operator, "doctor"),
                          source_identity(operator))
    failed = 0
    for account_obj, problem in results:
        if problem:
            failed += 1
            print(f"{account_obj.id} {visible(account_obj.name):<30} FAILED: {visible(problem)}")
        else:
            print(f"{account_obj.id} {visible(account_obj.name):<30} ok")
    print(f"{len(results) - failed} of {len(results)} account(s) ok; role {settings.role_name}.")
    if failed:
        raise typer.Exit(1)


# --- runs -------------------------------------------------------------------------------------

RunsFormatOpt = Annotated[str, _format("text", "json")]


def _audit_path(audit_log: Path | None, config: Path | None) -> Path:
    return audit_log or load_settings(config).audit_log or state_dir() / "audit.jsonl"


@runs_app.callback(invoke_without_command=True,
                   epilog=epilog(LOCAL_EXITS, "orgrunner runs --limit 50 --format json",
                                 "orgrunner runs show 20261129T190242Z-d25652",
                                 "orgrunner runs --baseline 20261202T104500Z-a1b2c3   # the tasks of one baseline"))
def runs_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, help="How many runs, newest first.")] = 20,
    baseline_id: Annotated[str | None, typer.Option("--baseline", metavar="BASELINE_ID",
                                                    help="Only the runs (tasks) of this baseline.")] = None,
    output: RunsFormatOpt = "text",
    audit_log: AuditOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Recent runs from the audit log: id, when, operator, task, mode, accounts changed, outcome,
    whether `orgrunner undo` can reverse it, and the baseline it is a task of."""
    if ctx.invoked_subcommand is not None:
        return
    found = runs_module.recent(_audit_path(audit_log, config), state_dir(), limit, baseline_id)
    if output == "json":
        print(json.dumps([r.to_dict() for r in found], indent=2))
        return
    if not found:
        print("no runs in the audit log yet")
        return
    print(f"{'run id':<24} {'started (UTC)':<20} {'task':<28} {'mode':<8} {'changed':>7}  {'undo':<4}  "
          f"{'outcome':<16} operator")
    for r in found:
        print(visible(f"{r.run_id:<24} {r.started[:19].replace('T', ' '):<20} {r.task:<28} {r.mode:<8} "
                      f"{len(r.accounts_changed):>7}  {'yes' if r.undoable else '-':<4}  {r.status[:16]:<16} "
                      f"{r.operator}" + (f"  baseline {r.baseline_id}" if r.baseline_id else "")))
    print("(changed: accounts with applied changes; `orgrunner runs show RUN_ID` lists them)")


@runs_app.command("show", epilog=epilog(LOCAL_EXITS, "orgrunner runs show 20261129T190242Z-d25652",
                                        "orgrunner runs show 20261129T190242Z-d25652 --format json"))
def runs_show(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="A run id (see `orgrunner runs`).")],
    output: RunsFormatOpt = "text",
    audit_log: AuditOpt = None,
    config: ConfigOpt = None,
) -> None:
    """What one run changed: each change with its outcome, from the run's journal."""
    entries = runs_module.changes(state_dir(), run_id)
    run = runs_module.find(_audit_path(audit_log, config), state_dir(), run_id)
    if run is None and not entries:
        raise InputError(f"run {run_id}: not in the audit log and no journal (see `orgrunner runs`)")
    if output == "json":
        print(json.dumps({"run": run.to_dict() if run else None,
                          "changes": [dataclasses.asdict(e) for e in entries]}, indent=2))
        return
    if run is not None:
        print(visible(f"run {run.run_id}: {run.task} ({run.mode}) started {run.started} by {run.operator}; "
                      f"{run.status}" + (f"; a task of baseline {run.baseline_id}" if run.baseline_id else "")))
    for e in entries:
        note = f": {e.error}" if e.error else ""
        print(visible(f"{e.account} {e.region:<15} {e.status:<12} {e.summary}{note}"))
    applied = sum(1 for e in entries if e.status == "applied")
    print(f"{len(entries)} change(s) in the journal, {applied} applied." if entries else
          "no journal: this run applied nothing.")
    if applied:
        print(f"Reverse: orgrunner undo {run_id} (a dry run first; --arm to restore)")


# --- sandbox ----------------------------------------------------------------------------------

@sandbox_app.command("serve", epilog=epilog((0, 2, 70, 130, 143), "orgrunner sandbox serve",
                                             "orgrunner sandbox serve --port 5005"))
def sandbox_serve(
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port on 127.0.0.1 (0: a free one).")] = 0,
) -> None:
    """Start the emulated organization and keep it running; print the environment to use it."""
    from orgrunner.sandbox import org as sb
    sb.serve(port)


def main() -> None:
    fence.make_undumpable()  # before anything holds a credential
    interrupt.install()  # SIGINT and SIGTERM: raised, remembered, never lost
    try:
        environment.current()  # every variable orgrunner reads, checked once before anything happens
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:  # one line naming the problem, not a usage block
        hint = f" (see `orgrunner {exc.ctx.info_name} --help`)" if exc.ctx and exc.ctx.parent else \
            " (see `orgrunner --help`)"
        err(f"orgrunner: {exc.format_message()}{hint}")
        sys.exit(EXIT_INPUT)
    except click_errors.ClickException as exc:
        err(f"orgrunner: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except typer.Abort:
        err("orgrunner: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except OrgrunnerError as exc:
        err(f"orgrunner: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        err("orgrunner: interrupted")
        sys.exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED)
    except (ClientError, BotoCoreError) as exc:  # an AWS failure outside any target (Organizations down)
        err(f"orgrunner: {describe_error(exc)}")
        sys.exit(EXIT_TARGETS_FAILED)
    except Exception as exc:  # a bug: one line, not a traceback, unless asked for
        if environment.debug_requested():
            raise
        err(f"orgrunner: internal error: {type(exc).__name__}: {exc} (ORGRUNNER_DEBUG=1 shows the traceback)")
        sys.exit(70)


from orgrunner.cli import baseline as _baseline  # noqa: E402, F401  (registers `orgrunner baseline` on `app`)
