"""One writer at a time per task and organization: a second armed run exits 75 naming the lock, or
waits with `--wait-for-lock SECONDS`; dry runs are not blocked by a writer that plans or waits at
its prompt; another task is not blocked; a killed run's lock blocks nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pexpect

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli, orgrunner_command
from tests.emulator.client import EmulatorClient, member_client

PROBE_TASK = '''
    """lock-probe: reads the VPCs of each region and changes nothing (a test task)."""

    from orgrunner.aws import paginate
    from orgrunner.task import ApplyContext, Change, Task, TaskContext, register


    @register
    class LockProbe(Task):
        name = "lock-probe"
        description = "Read the VPCs; change nothing."
        destructive = False
        regional = True
        plan_actions = ("ec2:DescribeVpcs",)
        apply_actions = ()

        def plan(self, ctx: TaskContext) -> list[Change]:
            paginate(ctx.client("ec2"), "describe_vpcs", "Vpcs")
            return []

        def apply(self, ctx: ApplyContext, change: Change) -> str:
            raise NotImplementedError
'''


def writer(account: str) -> tuple[str, ...]:
    """The arguments (beside `run strip-default-sg --arm`) of an unattended writer of one account."""
    return ("--confirm-accounts", account, "--account", account)


def check(result: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr
    return result


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def lock_file(cli: Cli, org: SandboxOrg, task: str = "strip-default-sg") -> Path:
    return cli.home / "state" / "orgrunner" / "locks" / f"{org.organization_id}.{task}.lock"


@dataclass
class Holder:
    """An armed run waiting at its confirmation prompt: it holds the writers' lock until answered."""

    child: pexpect.spawn
    account: str

    @property
    def pid(self) -> int:
        return int(self.child.pid)

    def running(self) -> bool:
        return bool(self.child.isalive())

    def finish(self, timeout: float = 120) -> int:
        """Confirm (if it still waits), then its exit code (minus the signal that ended it)."""
        if self.child.isalive():
            self.child.sendline(self.account)
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.child.close()
        return int(self.child.exitstatus) if self.child.exitstatus is not None else -int(self.child.signalstatus)


@contextlib.contextmanager
def holding_the_lock(cli: Cli, org: SandboxOrg, account: str, *args: str) -> Iterator[Holder]:
    """`orgrunner run strip-default-sg --arm --account ACCOUNT ARGS` at a terminal; yields once it
    waits at its prompt (an event, not a delay: it holds the writers' lock until `finish` answers)."""
    child = cli.spawn("run", "strip-default-sg", "--arm", "--account", account, *args, timeout=120)
    holder = Holder(child, account)
    try:
        child.expect(r"To apply, type [^\n]*: ")
        assert f"pid {holder.pid} " in lock_file(cli, org).read_text()
        yield holder
    finally:
        if child.isalive():
            child.kill(signal.SIGKILL)
        child.close(force=True)


def probe_tasks(tmp_path: Path) -> Path:
    folder = tmp_path / "probe-tasks"
    folder.mkdir(exist_ok=True)
    (folder / "lock_probe.py").write_text(textwrap.dedent(PROBE_TASK))
    return folder


def run_starts(cli: Cli) -> dict[str, datetime]:
    return {e["run_id"]: datetime.fromisoformat(e["ts"]) for e in cli.audit() if e["event"] == "run-start"}


def run_ends(cli: Cli) -> dict[str, datetime]:
    return {e["run_id"]: datetime.fromisoformat(e["ts"]) for e in cli.audit() if e["event"] == "run-end"}


def rule_count(url: str, account: str, region: str) -> int:
    ec2 = member_client(url, account, "ec2", region)
    ids = [g["GroupId"] for g in ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]}])["SecurityGroups"]]
    return len(ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])["SecurityGroupRules"])


# --- the tests ---------------------------------------------------------------------------------

def test_a_second_run_exits_75_naming_the_lock(cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        started = time.monotonic()
        second = check(cli.run("run", "strip-default-sg", "--arm", *writer(account), "--region", "us-east-1"), 75)
        assert first.running(), "the first run ended before the second was refused: make it slower"
        assert time.monotonic() - started < 60
        lines = [line for line in second.stderr.splitlines() if line.startswith("orgrunner: ")]
        assert len(lines) == 1, second.stderr
        assert "another armed run, apply or undo holds the lock" in lines[0]
        assert str(lock_file(cli, org)) in lines[0]
        assert f"pid {first.pid}" in lines[0]
        assert "--wait-for-lock" in lines[0]
        assert second.stdout == ""
        assert first.finish() == 0
    # the refused run started nothing: one run in the audit log
    assert len(run_starts(cli)) == 1


def test_waiting_for_the_lock_runs_after_the_first_has_finished(cli: Cli, emulator: EmulatorClient,
                                                               org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        timed_out = check(cli.run("run", "strip-default-sg", "--arm", *writer(account), "--region", "us-east-1",
                                  "--wait-for-lock", "1"), 75)
        assert "after waiting 1s" in timed_out.stderr
        assert first.running(), "the first run ended too early: make it slower"
        waiting = subprocess.Popen([orgrunner_command(), "run", "strip-default-sg", "--arm", *writer(account),
                                    "--region", "us-east-1", "--wait-for-lock", "60"], env=cli.env(), cwd=cli.home,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: len(run_starts(cli)) == 1 and waiting.poll() is None, "the second run to start waiting")
        assert first.finish() == 0
        out, errors = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, errors
        assert "Plan: 1 account(s), 1 region(s), 1 target(s)" in out
    starts, ends = run_starts(cli), run_ends(cli)
    assert len(starts) == 2 and len(ends) == 2
    first_id, second_id = sorted(starts, key=starts.__getitem__)
    assert starts[second_id] >= ends[first_id]  # no overlap


def test_another_task_is_not_blocked(cli: Cli, emulator: EmulatorClient, org: SandboxOrg, tmp_path: Path) -> None:
    account = org.accounts["dev-app-1"]
    tasks = probe_tasks(tmp_path)
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        other = check(cli.run("run", "lock-probe", "--tasks-dir", str(tasks), "--account", account,
                              "--region", "eu-west-1"), 0)
        assert "Plan: 1 account(s), 1 region(s), 1 target(s): 0 change(s)" in other.stdout
        assert first.running(), "the first run ended before the other task ran: make it slower"
        assert lock_file(cli, org, "lock-probe").with_suffix(".apply.lock").exists()  # a dry run: the shared lock
        assert first.finish() == 0


def test_a_killed_run_does_not_block_the_next(cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-1"]
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        # the lock is taken a moment before the audit log records the start: kill after both
        deadline = time.monotonic() + 30
        while not run_starts(cli):
            assert time.monotonic() < deadline, "the first run never recorded its start"
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        assert first.finish(30) == -signal.SIGKILL
    # the killed run left its lock file behind, naming it, and never recorded its end
    assert f"pid {first.pid} " in lock_file(cli, org).read_text()
    assert len(run_starts(cli)) == 1 and run_ends(cli) == {}
    emulator.clear_rules()

    started = time.monotonic()
    nxt = check(cli.run("run", "strip-default-sg", "--account", account, "--region", "us-east-1"), 0)
    assert "Plan: 1 account(s), 1 region(s), 1 target(s)" in nxt.stdout
    assert time.monotonic() - started < 60
    assert len(run_ends(cli)) == 1


def test_an_armed_run_is_not_blocked_by_a_killed_armed_run(cli: Cli, emulator: EmulatorClient,
                                                           org: SandboxOrg) -> None:
    account = org.accounts["sandbox-1"]
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        os.kill(first.pid, signal.SIGKILL)
        first.finish(30)
    emulator.clear_rules()
    assert rule_count(emulator.url, account, "us-east-1") == 5  # killed while planning: nothing applied
    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account, "--account", account,
                  "--region", "us-east-1"), 0)
    assert rule_count(emulator.url, account, "us-east-1") == 0


def test_undo_shares_the_lock_of_its_task(cli: Cli, emulator: EmulatorClient, org: SandboxOrg) -> None:
    account = org.accounts["dev-app-2"]
    check(cli.run("run", "strip-default-sg", "--arm", "--confirm-accounts", account, "--account", account,
                  "--region", "eu-west-1"), 0)
    run_id = [e["run_id"] for e in cli.audit() if e["event"] == "run-start"][-1]
    with holding_the_lock(cli, org, account, "--region", "us-east-1") as first:
        undo = cli.run("undo", run_id, "--arm", "--confirm-accounts", account)
        assert undo.returncode == 75, (undo.returncode, undo.stderr[-2000:])
        assert first.running(), "the first run ended too early: make it slower"
        assert "another armed run, apply or undo holds the lock" in undo.stderr
        assert rule_count(emulator.url, account, "eu-west-1") == 0  # nothing restored
        assert first.finish() == 0
