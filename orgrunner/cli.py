"""The command line: parsing, printing and exit codes. No AWS calls of its own.

Exit codes: 0 success; 1 one or more targets failed; 2 bad usage or input; 3 refused by a safety
rule; 70 an internal error (a bug: please report it); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from orgrunner import __version__, aws
from orgrunner.accounts import Organization, Selection, Selectors, parse_tags
from orgrunner.audit import AuditLog, default_path, scrub
from orgrunner.confirm import (
    Armed,
    confirm_interactive,
    confirm_listed,
    confirm_protected,
    confirm_unguarded,
    parse_account_list,
)
from orgrunner.credentials import (
    RoleAssumer,
    RoleRequest,
    operator_name,
    operator_session,
    session_name,
    source_identity,
)
from orgrunner.errors import EXIT_INTERRUPTED, InputError, OrgrunnerError, SafetyRefusal
from orgrunner.identity import Caller, base_session, resolve_caller
from orgrunner.policy import render, session_policy
from orgrunner.report import Reporter
from orgrunner.runner import Outcome, Runner
from orgrunner.settings import Settings, config_dir, load_settings
from orgrunner.task import Change, Target, Task, configure, load_tasks

ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
EXIT_CODES_HELP = (
    "Exit codes: 0 success; 1 one or more targets failed; 2 bad usage or input; "
    "3 refused by a safety rule; 70 internal error; 130 interrupted."
)

app = typer.Typer(
    name="orgrunner",
    help="Run one guarded, scripted change across every account of an AWS Organization.\n\n"
         "Dry run is the default; writes need --arm and a typed confirmation naming the accounts.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
sandbox_app = typer.Typer(help="A local emulated organization for trying orgrunner without AWS.",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


def err(line: str) -> None:
    print(scrub(line), file=sys.stderr, flush=True)


# --- shared options ---------------------------------------------------------------------------

Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile of the management account "
                                             "(or AWS_PROFILE); the default profile is never used implicitly.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Settings file [default: config/orgrunner.yaml "
                                                "if present].", dir_okay=False)]
AccountOpt = Annotated[list[str] | None, typer.Option("--account", help="Only this account id (repeatable).")]
OuOpt = Annotated[list[str] | None, typer.Option("--ou", help="Only accounts under this OU, nested OUs "
                                                 "included (repeatable).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Leave out this account id (repeatable).")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only accounts with tag KEY=VALUE "
                                                  "(repeatable; all must match).")]
MgmtOpt = Annotated[bool, typer.Option("--include-management", help="Also target the management account.")]
ProtOpt = Annotated[bool, typer.Option("--include-protected", help="Also target accounts protected by a name "
                                       "pattern (never those protected by id).")]
TasksDirOpt = Annotated[Path | None, typer.Option("--tasks-dir", help="Also load the task modules of this folder.",
                                                  file_okay=False)]


def selectors(account: list[str] | None, ou: list[str] | None, exclude: list[str] | None,
              tag: list[str] | None, include_management: bool, include_protected: bool = False) -> Selectors:
    chosen = Selectors(accounts=account or [], ous=ou or [], exclude=exclude or [], tags=parse_tags(tag or []),
                       include_management=include_management, include_protected=include_protected)
    chosen.validate()
    return chosen


OperatorRoleOpt = Annotated[str | None, typer.Option(
    "--operator-role-arn", help="First assume this role of yours in the management account (the first hop).")]
MfaSerialOpt = Annotated[str | None, typer.Option("--mfa-serial", help="MFA device serial or ARN for the "
                                                  "first hop; the token is prompted for unless --mfa-token.")]
MfaTokenOpt = Annotated[str | None, typer.Option("--mfa-token", help="The current MFA code (non-interactive).")]


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

        session = operator_session(session, hop.operator_role_arn, session_name(operator_name(first.arn), "operator"),
                                   hop.duration, hop.mfa_serial, token)
        source = f"{source} via {hop.operator_role_arn}" + (" with MFA" if hop.mfa_serial else "")
    caller = resolve_caller(session, source)
    err(f"caller: {caller.describe()}")
    return session, caller


def validate_regions(regions: list[str]) -> list[str]:
    known = aws.known_regions()
    for region in regions:
        if region not in known:
            raise InputError(f"--region {region!r}: unknown region")
    return list(dict.fromkeys(regions))


def print_selection(selection: Selection) -> None:
    for account, reason in selection.skipped:
        err(f"skipped {account.id} ({account.name}): {reason}")


@app.callback()
def main_options(
    sandbox: Annotated[bool, typer.Option("--sandbox", help="Run against a local emulated organization "
                                          "(needs the 'sandbox' extra): the one `orgrunner sandbox serve` "
                                          "runs, or a fresh one for this command.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        print(__version__)
        raise typer.Exit()
    if sandbox:
        from orgrunner import sandbox as sb

        sb.activate()


# --- commands ---------------------------------------------------------------------------------

@app.command()
def whoami(profile: Profile = None, operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None,
           mfa_token: MfaTokenOpt = None) -> None:
    """Show the caller: ARN, account, credential kind and organization id."""
    session, caller = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token))
    try:
        org_id = Organization(session).describe()["Id"]
    except InputError:
        org_id = "(not in an organization)"
    print(f"arn:          {caller.arn}")
    print(f"account:      {caller.account_id}")
    print(f"credentials:  {caller.kind} ({caller.key_prefix}..., from {caller.source})")
    print(f"organization: {org_id}")


@app.command()
def accounts(
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    profile: Profile = None, operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None,
    mfa_token: MfaTokenOpt = None, config: ConfigOpt = None,
) -> None:
    """List the accounts a run with these selectors would target, and those left out and why."""
    if output not in ("table", "json"):
        raise InputError(f"--format {output!r}: expected table or json")
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    settings = load_settings(config)
    session, _ = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token, settings.session_duration))
    selection = Organization(session).select(chosen, settings.protection())
    if output == "json":
        print(json.dumps({
            "management_account_id": selection.management_account_id,
            "targets": [a.to_dict() for a in selection.targets],
            "skipped": [{**a.to_dict(), "reason": r} for a, r in selection.skipped],
        }, indent=2))
        return
    print_selection(selection)
    for a in selection.targets:
        print(f"{a.id}  {a.name:<30} {a.state:<10} {a.email}")
    print(f"{len(selection.targets)} target account(s), {len(selection.skipped)} left out.")


@app.command("tasks")
def list_tasks(tasks_dir: TasksDirOpt = None) -> None:
    """List the registered tasks: name, destructive or not, global or regional, description."""
    loaded = load_tasks(tasks_dir)
    for task in loaded.tasks.values():
        kind = "destructive" if task.destructive else "tightening"
        scope = "regional" if task.regional else "global"
        print(f"{task.name:<32} {kind:<12} {scope:<9} {task.description}")
    for error in loaded.errors:
        err(f"failed to load: {error}")


@app.command()
def policy(
    task: Annotated[str, typer.Argument(help="Task name.")],
    phase: Annotated[str, typer.Option("--phase", help="plan (reads only) or apply.")] = "plan",
    tasks_dir: TasksDirOpt = None,
) -> None:
    """Print the session policy JSON that AssumeRole will carry for a task's phase."""
    if phase not in ("plan", "apply"):
        raise InputError(f"--phase {phase!r}: expected plan or apply")
    cls = load_tasks(tasks_dir).get(task)
    print(json.dumps(session_policy(cls, "apply" if phase == "apply" else "plan"), indent=2))


@app.command()
def describe(
    task: Annotated[str, typer.Argument(help="Task name.")],
    tasks_dir: TasksDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show a task: its documentation, kind, config file and both session policies."""
    cls = load_tasks(tasks_dir).get(task)
    module = sys.modules.get(cls.__module__)
    print(f"{cls.name}: {cls.description}")
    print(f"kind: {'destructive' if cls.destructive else 'tightening'}, {'regional' if cls.regional else 'global'}")
    if cls.config_file:
        print(f"config file: {config_dir(config) / cls.config_file}")
    doc = (module.__doc__ or "").strip() if module else ""
    if doc:
        print()
        print(doc)
    for phase in ("plan", "apply"):
        print()
        print(f"{phase} session policy:")
        print(json.dumps(session_policy(cls, phase), indent=2))


@app.command()
def run(
    task: Annotated[str, typer.Argument(help="Task name (see `orgrunner tasks`).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; nothing is written. The default.")] = False,
    arm: Annotated[bool, typer.Option("--arm", help="Plan, confirm, then apply exactly the planned changes.")] = False,
    confirm_accounts: Annotated[str | None, typer.Option(
        "--confirm-accounts", help="Confirm non-interactively: the account ids (comma separated) you approve; "
        "must include every account with planned changes.")] = None,
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    region: Annotated[list[str] | None, typer.Option("--region", help="Only this region (repeatable) "
                                                     "[default: every region enabled in each account].")] = None,
    role_name: Annotated[str | None, typer.Option("--role-name", help="Role to assume in each account "
                                                  "[default: OrganizationAccountAccessRole].")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Parallel workers [default: 16].")] = None,
    profile: Profile = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write one JSON line per account x region.",
                                                dir_okay=False)] = None,
    audit_log: Annotated[Path | None, typer.Option("--audit-log", help="Audit log file "
                                                   "[default: ~/.local/state/orgrunner/audit.jsonl].")] = None,
    allow_long_term: Annotated[bool, typer.Option("--allow-long-term-credentials",
                                                  help="Allow an armed run with long-term access keys.")] = False,
    confirm_protected: Annotated[str | None, typer.Option(
        "--confirm-protected", help="With --include-protected, non-interactively: the ids of the protected "
        "accounts with planned changes.")] = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
) -> None:
    """Plan a task across the organization (dry run), or with --arm apply it after confirmation."""
    if dry_run and arm:
        raise InputError("--dry-run and --arm exclude each other")
    # Everything the user typed is checked before any AWS call.
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    confirmed = parse_account_list(confirm_accounts) if confirm_accounts is not None else None
    protected_ok = parse_account_list(confirm_protected, "--confirm-protected") if confirm_protected else None
    if (confirmed is not None or protected_ok is not None) and not arm:
        raise InputError("--confirm-accounts and --confirm-protected only make sense with --arm")
    settings = load_settings(config, role_name=role_name, concurrency=concurrency, audit_log=audit_log)
    regions = validate_regions(region) if region else (
        validate_regions(settings.regions) if settings.regions else None)
    task_cls = load_tasks(tasks_dir).get(task)
    instance = configure(task_cls, config_dir(config))

    session, caller = caller_session(Hop(profile, operator_role_arn, mfa_serial, mfa_token,
                                         settings.session_duration))
    if caller.long_term:
        if arm and not allow_long_term:
            raise SafetyRefusal("armed runs refuse long-term access keys (AKIA...); use temporary credentials "
                                "(SSO, an assumed role) or pass --allow-long-term-credentials")
        err("warning: long-term access keys (AKIA...) in use; prefer temporary credentials")
    selection = Organization(session).select(chosen, settings.protection())
    print_selection(selection)
    if not selection.targets:
        err("no accounts match the selectors; nothing to do")
        return

    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    audit = AuditLog(settings.audit_log or default_path(), run_id)
    reporter = Reporter(task_cls.name, run_id, sys.stdout, audit, report)
    mode = "armed" if arm else "dry-run"
    operator = operator_name(caller.arn)
    identity = RunIdentity(run_id, session_name(operator, task_cls.name, run_id), source_identity(operator))
    audit.event("run-start", task=task_cls.name, mode=mode, operator=caller.arn, account=caller.account_id,
                credentials=caller.kind, selectors=chosen.to_dict(), regions=regions,
                role_name=settings.role_name, role_session_name=identity.session_name,
                source_identity=identity.source_identity, targets=[a.id for a in selection.targets])
    err(f"run {run_id}: {task_cls.name} ({mode}) over {len(selection.targets)} account(s), "
        f"role {settings.role_name}")
    status = "interrupted"
    stop = threading.Event()
    try:
        failed = execute(instance, settings, session, identity, selection, regions, arm,
                         Confirmation(confirmed, protected_ok), reporter, stop)
        status = "failed" if failed else "ok"
        if failed:
            raise typer.Exit(1)
    except KeyboardInterrupt:
        stop.set()
        err("interrupted: no new targets started; results so far are in the report and audit log")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OrgrunnerError as exc:
        status = f"refused: {exc}" if isinstance(exc, SafetyRefusal) else f"error: {exc}"
        raise
    finally:
        audit.event("run-end", task=task_cls.name, mode=mode, status=status,
                    plan=_tally(reporter, "plan"), apply=_tally(reporter, "apply"))
        reporter.close()
        audit.close()


def _tally(reporter: Reporter, phase: str) -> dict[str, Any]:
    t = reporter.tallies[phase]
    return {"targets": t.targets, "changes": t.changes, "failed": t.failed, "skipped": t.skipped,
            "accounts_with_changes": len(t.accounts_with_changes), "outcomes": t.outcomes}


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    session_name: str
    source_identity: str


@dataclass(frozen=True)
class Confirmation:
    """What the operator stated on the command line (None: not given)."""

    accounts: set[str] | None
    protected: set[str] | None


def execute(task: Task, settings: Settings, session: aws.Session, identity: RunIdentity, selection: Selection,
            regions: list[str] | None, arm: bool, stated: Confirmation, reporter: Reporter,
            stop: threading.Event) -> bool:
    """Plan, and if armed confirm and apply. Returns True when any target failed."""
    cls = type(task)

    def assumer(phase: str) -> RoleAssumer:
        request = RoleRequest(
            role_name=settings.role_name,
            session_name=identity.session_name,
            source_identity=identity.source_identity,
            policy=render(session_policy(cls, "apply" if phase == "apply" else "plan")),
            duration=settings.session_duration,
            external_id=settings.external_id,
        )
        return RoleAssumer(session, request)

    plan: dict[Target, list[Change]] = {}
    planner = Runner(task, assumer("plan"), settings.concurrency, stop)
    for result in planner.plan(selection.targets, regions):
        reporter.result(result)
        if arm and result.changes:
            plan[result.target] = list(result.changes)
    reporter.echo(reporter.plan_summary())
    plan_failed = reporter.tallies["plan"].failed > 0
    if not arm:
        reporter.echo("Dry run: nothing was changed. Run again with --arm to apply.")
        return plan_failed
    if not plan:
        reporter.echo("No planned changes: nothing to apply.")
        return plan_failed

    armed = confirm(cls, plan, selection, stated)
    reporter.audit.event("confirmed", task=cls.name, accounts=sorted(armed.accounts))

    def record(target: Target, outcome: Outcome) -> None:
        reporter.applied({"account": target.account_id, "region": target.region, "status": outcome.status,
                          "error": outcome.error, "change": outcome.change.to_dict()})

    applier = Runner(task, assumer("apply"), settings.concurrency, stop, on_outcome=record)
    for result in applier.apply(plan, armed):
        reporter.result(result)
    reporter.echo(reporter.apply_summary())
    return plan_failed or reporter.tallies["apply"].failed > 0


def _ask(prompt: str) -> str:
    print(prompt, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline()


def confirm(cls: type[Task], plan: dict[Target, list[Change]], selection: Selection, stated: Confirmation) -> Armed:
    """The confirmation the plan calls for; raises SafetyRefusal, having applied nothing, otherwise."""
    accounts = {t.account_id for t, changes in plan.items() if changes}
    interactive = sys.stdin.isatty()
    protected = {i: n for i, n in selection.protected.items() if i in accounts}
    confirm_protected(protected, _ask if interactive else None, stated.protected)
    destructive = any(c.destructive for changes in plan.values() for c in changes)
    if not destructive:
        err(f"{cls.name}: every planned change only tightens a setting; --arm is confirmation enough")
        return confirm_unguarded(cls.name, accounts)
    if stated.accounts is not None:
        return confirm_listed(cls.name, accounts, {a.id for a in selection.targets}, stated.accounts)
    if not interactive:
        raise SafetyRefusal("an armed run without a terminal needs --confirm-accounts naming the accounts "
                            f"with planned changes ({len(accounts)}); nothing applied")
    err(f"{cls.name} will change {len(accounts)} account(s): {', '.join(sorted(accounts))}")
    return confirm_interactive(cls.name, accounts, _ask)


# --- sandbox ----------------------------------------------------------------------------------

@sandbox_app.command("serve")
def sandbox_serve(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 [default: a free one].")] = 0,
) -> None:
    """Start the emulated organization and keep it running; print the environment to use it."""
    from orgrunner import sandbox as sb

    sb.serve(port)


def main() -> None:
    try:
        app()
    except OrgrunnerError as exc:
        err(f"orgrunner: {exc}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err("orgrunner: interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: one line, not a traceback, unless asked for
        if os.environ.get("ORGRUNNER_DEBUG"):
            raise
        err(f"orgrunner: internal error: {type(exc).__name__}: {exc} (ORGRUNNER_DEBUG=1 shows the traceback)")
        sys.exit(70)
