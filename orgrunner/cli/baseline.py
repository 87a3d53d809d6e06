"""`orgrunner baseline`: every task of the baseline (config/baseline.yaml) as one guarded change
(orgrunner.engine.series); `then_baseline` is the same for exactly the accounts a run just
created (`run org-accounts --arm --then-baseline`), waiting for their role."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from orgrunner.cli.app import (
    RUN_EXITS,
    AccountOpt,
    AuditOpt,
    Common,
    ConcurrencyOpt,
    ConfigOpt,
    ConfirmOpt,
    ConfirmProtOpt,
    DetailsOpt,
    ExcludeOpt,
    FollowOpt,
    Hop,
    LockOpt,
    LongTermOpt,
    MfaSerialOpt,
    MfaTokenOpt,
    MgmtOpt,
    OperatorRoleOpt,
    OuOpt,
    ProcessesOpt,
    Profile,
    ProtOpt,
    RegionOpt,
    ReportOpt,
    RoleNameOpt,
    SandboxOpt,
    TagOpt,
    TasksDirOpt,
    app,
    common,
    config_note,
    epilog,
    selectors,
)
from orgrunner.config import baseline as baseline_file
from orgrunner.config.settings import config_dir
from orgrunner.engine import workers as task_workers
from orgrunner.engine.pipeline import Confirmation, Pipeline, err
from orgrunner.engine.series import Baseline
from orgrunner.engine.workers import Launch
from orgrunner.errors import EXIT_OK, InputError, OrgrunnerError, SafetyRefusal

BaselineFileOpt = Annotated[Path | None, typer.Option(
    "--baseline", metavar="FILE", help="The baseline file [default: baseline.yaml beside the settings].",
    dir_okay=False)]
WaitForRoleOpt = Annotated[float, typer.Option(
    "--wait-for-role", metavar="SECONDS", min=0, help="For accounts just created: retry AssumeRole while AWS "
    "propagates their role (AccessDenied for a while after CreateAccount), up to SECONDS; then stop, having "
    "planned nothing (0: no waiting).")]


def task_names(config: Path | None, tasks_dir: Path | None, path: Path | None) -> list[str]:
    """The baseline's tasks, in order, each checked against the registered tasks (one line, exit 2)."""
    specs, _errors = task_workers.list_tasks(Launch(None, tasks_dir, config_dir(config)))
    source = path or baseline_file.path_in(config_dir(config))
    if not source.is_file():
        raise InputError(f"{source}: no baseline file (it lists the tasks to run, in order: see docs/operations.md)")
    names = list(baseline_file.load(source, {s.name for s in specs}).tasks)
    org_tasks = [s.name for s in specs if s.name in names and s.scope == "organization"]
    if org_tasks:
        raise InputError(f"{source}: {org_tasks[0]} runs on the organization, not in each account: it cannot be a "
                         f"task of the baseline (orgrunner run {org_tasks[0]})")
    return names


def run_baseline(shared: Common, names: list[str], tasks_dir: Path | None, config: Path | None,
                 wait_for_role: float = 0, confirm_names: set[str] | None = None, new: bool = False) -> int:
    """Load every task in its own workers (a broken task or config file stops here, before any AWS
    call), select the accounts, and run the baseline; its exit code. `confirm_names`: the accounts'
    names, which must be exactly those selected, confirming the baseline as --confirm-accounts would;
    `new`: the accounts a run just created (--then-baseline)."""
    with contextlib.ExitStack() as stack:
        tasks = []
        for name in names:
            launch = Launch(name, tasks_dir, config_dir(config))
            workers = stack.enter_context(shared.workers(launch))
            spec = workers.start(1)
            for line in config_note(spec, launch.config_dir):
                err(line)
            tasks.append((spec, workers))
        session, caller, selection = shared.prepare()
        if not selection.targets:
            err("no accounts match the selectors; nothing to do")
            return 0
        if confirm_names is not None:
            named = {a.name for a in selection.targets}
            if named != confirm_names:
                raise SafetyRefusal(f"--confirm-new-accounts must name exactly the new accounts: "
                                    f"{', '.join(sorted(named))}; nothing applied")
            shared.options.stated = Confirmation(accounts={a.id for a in selection.targets})
        return Baseline(tasks, shared.settings, session, caller, selection, shared.selectors, shared.regions,
                        shared.options, wait_for_role,
                        "--confirm-new-accounts" if new else "--confirm-accounts").execute()


@app.command(epilog=epilog(RUN_EXITS, "orgrunner baseline --ou ou-ab12-cd34ef56            # the plan of every task",
                           "orgrunner baseline --account 111122223333 --arm      # plan, type the ids, apply in order",
                           "orgrunner baseline --account 111122223333 --arm --confirm-accounts 111122223333 "
                           "--wait-for-role 600   # an account just created"))
def baseline(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan only; nothing is written. The default.")] = False,
    arm: Annotated[bool, typer.Option("--arm", help="Plan every task, confirm once, then apply task by task.")] = False,
    confirm_accounts: ConfirmOpt = None,
    account: AccountOpt = None, ou: OuOpt = None, exclude: ExcludeOpt = None, tag: TagOpt = None,
    include_management: MgmtOpt = False, include_protected: ProtOpt = False,
    region: RegionOpt = None,
    baseline_path: BaselineFileOpt = None,
    wait_for_role: WaitForRoleOpt = 0,
    role_name: RoleNameOpt = None,
    concurrency: ConcurrencyOpt = None,
    processes: ProcessesOpt = None,
    details: DetailsOpt = "risky",
    report: ReportOpt = None,
    wait_for_lock: LockOpt = 0,
    audit_log: AuditOpt = None,
    allow_long_term: LongTermOpt = False,
    follow_symlinks: FollowOpt = False,
    confirm_protected: ConfirmProtOpt = None,
    profile: Profile = None,
    operator_role_arn: OperatorRoleOpt = None, mfa_serial: MfaSerialOpt = None, mfa_token: MfaTokenOpt = None,
    config: ConfigOpt = None,
    tasks_dir: TasksDirOpt = None,
    sandbox: SandboxOpt = False,
) -> None:
    """Plan every task of the baseline (config/baseline.yaml, in its order) for the selected
    accounts, each task under its own session policies as `run` does, and show one plan (dry run,
    the default). With --arm: one confirmation covering every task (typed account ids when any
    change is destructive, or --confirm-accounts), then each task applied in turn, one run id
    each, linked by the baseline id in the audit log (`orgrunner runs --baseline ID`). Nothing is
    applied unless every target of every task planned; a task that fails stops the baseline
    before the next one (exit 1)."""
    if dry_run and arm:
        raise InputError("--dry-run and --arm exclude each other")
    chosen = selectors(account, ou, exclude, tag, include_management, include_protected)
    shared = common(arm=arm, confirm_accounts=confirm_accounts, confirm_protected=confirm_protected, chosen=chosen,
                    region=region, config=config, hop=Hop(profile, operator_role_arn, mfa_serial, mfa_token),
                    output="text", details=details, report=report, audit_log=audit_log, wait_for_lock=wait_for_lock,
                    allow_long_term=allow_long_term, follow_symlinks=follow_symlinks, command="baseline",
                    role_name=role_name, concurrency=concurrency, processes=processes)
    names = task_names(config, tasks_dir, baseline_path)
    code = run_baseline(shared, names, tasks_dir, config, wait_for_role)
    if code:
        raise typer.Exit(code)


def then_baseline(task: str, shared: Common, tasks_dir: Path | None, config: Path | None, wait_for_role: float,
                  confirm_new_accounts: str | None) -> Callable[[Pipeline, int], int]:
    """`run TASK --arm --then-baseline`: the baseline's tasks checked now (before any AWS call);
    once the run has ended, the baseline for exactly the accounts it created, waiting for their
    role. Nothing is baselined after a run that did not end cleanly; the command to do it later
    is said whenever the baseline is not run or does not end cleanly."""
    names = task_names(config, tasks_dir, None)
    confirm_names = {n for n in re.split(r"\s*,\s*", confirm_new_accounts.strip()) if n} \
        if confirm_new_accounts is not None else None
    if confirm_names is not None and not confirm_names:
        raise InputError("--confirm-new-accounts: no account names given")

    def after(run: Pipeline, code: int) -> int:
        if run.cls.scope != "organization":
            raise InputError(f"--then-baseline goes with a task that creates accounts (org-accounts), not {task}")
        created = sorted(run.created)
        later = ("orgrunner baseline " + " ".join(f"--account {i}" for i in created)
                 + f" --arm --wait-for-role {wait_for_role:g}")
        if not created:
            err("--then-baseline: the run created no account: no baseline to run")
            return code
        if code != EXIT_OK:
            err(f"--then-baseline: the run did not end cleanly (exit {code}), so the {len(created)} new account(s) "
                f"were not baselined; when ready: {later}")
            return code
        err(f"--then-baseline: the baseline ({', '.join(names)}) for the {len(created)} new account(s): "
            f"{', '.join(created)}")
        shared.selectors.accounts = created  # exactly these (never empty here: no selector would mean every account)
        try:
            baselined = run_baseline(shared, names, tasks_dir, config, wait_for_role, confirm_names, new=True)
        except (OrgrunnerError, KeyboardInterrupt):
            err(f"the new account(s) were created and not baselined; when ready: {later}")
            raise
        if baselined:
            err(f"the new account(s) were created; the baseline did not complete: {later}")
        return baselined

    return after
