"""One benchmark workload in its own process, so client CPU and peak RSS belong to one tool.

    python -m tests.benchmarks.workloads TOOL SPEC.json RESULT.json

TOOL is one of `TOOLS` (or `clients`, the client-creation measurement). SPEC holds the
regions, the worker count and what each tool needs; the AWS_* environment points at the
emulator. RESULT receives the tool's own figures: wall and CPU seconds of the import and of
the run, peak RSS, targets completed or failed, and the rules counted (the same for every tool
when each saw every target). The parent process reads the emulator's side (requests, CPU).
"""

from __future__ import annotations

import functools
import json
import resource
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROLE = "OrganizationAccountAccessRole"
TASK = "bench-default-sg"
TASKS_DIR = Path(__file__).resolve().parent / "orgrunner_tasks"
DEFAULT_GROUP = [{"Name": "group-name", "Values": ["default"]}]


def cpu_seconds() -> float:
    """CPU of this process and of its children that have ended (orgrunner's planning processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class Clock:
    """Marks where a tool's imports end and its run begins and ends (wall and CPU, children's included)."""

    def __init__(self) -> None:
        self.t0, self.c0 = time.perf_counter(), cpu_seconds()
        self.t1 = self.c1 = self.t2 = self.c2 = 0.0

    def start(self) -> None:
        self.t1, self.c1 = time.perf_counter(), cpu_seconds()

    def stop(self) -> None:
        self.t2, self.c2 = time.perf_counter(), cpu_seconds()

    def figures(self) -> dict[str, float]:
        return {"import_wall": self.t1 - self.t0, "import_cpu": self.c1 - self.c0,
                "run_wall": self.t2 - self.t1, "run_cpu": self.c2 - self.c1}


def count_rules(groups: list[dict[str, Any]]) -> int:
    return sum(len(g.get("IpPermissions", [])) + len(g.get("IpPermissionsEgress", [])) for g in groups)


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:160]


# --- orgrunner ---------------------------------------------------------------------------------

def orgrunner_cli(spec: dict[str, Any], clock: Clock, processes: int | None = None) -> dict[str, Any]:
    """The `orgrunner run` command, as the console script runs it, in this process (the rule
    counts are read from its report). `processes`: `--processes N`; None leaves orgrunner's
    default (one planning process per CPU, at most 4, each with 50 accounts or more)."""
    from orgrunner.cli.app import main

    report = Path(spec["scratch"]) / f"report-{spec['label']}.jsonl"
    argv = ["orgrunner", "run", TASK, "--dry-run", "--tasks-dir", str(TASKS_DIR),
            "--concurrency", str(spec["workers"]), "--report", str(report)]
    if processes is not None:
        argv += ["--processes", str(processes)]
    for region in spec["regions"]:
        argv += ["--region", region]
    sys.argv = argv
    clock.start()
    try:
        main()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    clock.stop()
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    rules = 0
    if report.exists():
        with report.open() as lines:
            for line in lines:
                record = json.loads(line)
                statuses[record["status"]] += 1
                rules += noted_rules(record["notes"])
                if record.get("error"):
                    errors[record["error"][:160]] += 1
        report.unlink()
    return {"ok": statuses["ok"], "failed": statuses["failed"], "skipped": statuses["skipped"],
            "rules": rules, "exit": code, "errors": errors.most_common(3), "argv": argv[1:]}


def noted_rules(notes: list[str] | tuple[str, ...]) -> int:
    """The rule count the benchmark task notes on each target (`rules=N`)."""
    return sum(int(n.removeprefix("rules=")) for n in notes if n.startswith("rules="))


def orgrunner_api(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """orgrunner's engine through its Python API (Organization -> RoleAssumer -> Workers), without
    the CLI's report, audit log and terminal output."""
    from orgrunner.engine.accounts import Organization, Selectors
    from orgrunner.engine.credentials import RoleAssumer, RoleRequest
    from orgrunner.engine.identity import base_session
    from orgrunner.engine.workers import Launch, Workers, auto_processes
    from orgrunner.safety.policy import render, session_policy

    workers = Workers(Launch(TASK, TASKS_DIR, Path(spec["scratch"])), spec["workers"], 300)
    cls = workers.start(1)
    clock.start()
    session, _ = base_session(None)
    selection = Organization(session).select(Selectors())
    request = RoleRequest(ROLE, "or.bench-default-sg.api", "bench", render(session_policy(cls, "plan")))
    assumer = RoleAssumer(session, request)
    statuses: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    rules = 0
    workers.start(auto_processes(len(selection.targets)))
    with workers:
        for result in workers.plan(assumer, selection.targets, spec["regions"]):
            statuses[result.status] += 1
            rules += noted_rules(result.notes)
            if result.error:
                errors[result.error[:160]] += 1
    clock.stop()
    return {"ok": statuses["ok"], "failed": statuses["failed"], "skipped": statuses["skipped"],
            "rules": rules, "exit": 0, "errors": errors.most_common(3),
            "assume_calls_counted_by_engine": assumer.assume_calls}


# --- peers -------------------------------------------------------------------------------------

def botocove(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """botocove 1.7: the @cove decorator over every active member account and the regions."""
    import boto3
    from botocove import cove

    clock.start()
    try:
        @cove(rolename=ROLE, regions=spec["regions"], thread_workers=spec["workers"],
              assuming_session=boto3.Session())
        def work(session: Any) -> int:
            ec2 = session.client("ec2")
            return count_rules(ec2.describe_security_groups(Filters=DEFAULT_GROUP)["SecurityGroups"])

        output = work()
    except Exception as exc:  # botocove raises from its set-up (e.g. a throttled ListAccounts)
        clock.stop()
        return {"ok": 0, "failed": spec["expected_targets"], "skipped": 0, "rules": 0, "exit": 1,
                "errors": [(f"run aborted: {_short(exc)}", spec["expected_targets"])]}
    clock.stop()
    errors: Counter[str] = Counter()
    for item in output["Exceptions"] + output["FailedAssumeRole"]:
        errors[_short(item["ExceptionDetails"])] += 1
    failed = len(output["Exceptions"]) + len(output["FailedAssumeRole"])
    return {"ok": len(output["Results"]), "failed": failed, "skipped": 0,
            "rules": sum(r["Result"] for r in output["Results"]), "exit": 1 if failed else 0,
            "errors": errors.most_common(3)}


def awsrun(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """awsrun 3.2: AccountRunner(max_workers) with a RegionalCommand and CredsViaCrossAccount
    (it has no Organizations enumeration: it is handed the member account ids)."""
    from awsrun.runner import AccountRunner, RegionalCommand
    from awsrun.session.aws import CredsViaCrossAccount, CredsViaProfile

    class CountRules(RegionalCommand):  # type: ignore[misc]
        def __init__(self, regions: list[str]) -> None:
            super().__init__(regions)
            self.ok = self.failed = self.rules = 0
            self.errors: Counter[str] = Counter()

        def regional_execute(self, session: Any, acct: str, region: str) -> int:
            ec2 = session.client("ec2", region_name=region)
            return count_rules(ec2.describe_security_groups(Filters=DEFAULT_GROUP)["SecurityGroups"])

        def collect_results(self, acct: str, get_result: Callable[[], Any]) -> None:
            try:
                per_region = get_result()
            except Exception as exc:  # no credentials for the account: every region fails
                self.failed += len(self.regions)
                self.errors[_short(exc)] += len(self.regions)
                return
            for region, get in per_region:
                self.regional_collect_results(acct, region, get)

        def regional_collect_results(self, acct: str, region: str, get_result: Callable[[], Any]) -> None:
            try:
                self.rules += get_result()
                self.ok += 1
            except Exception as exc:
                self.failed += 1
                self.errors[_short(exc)] += 1

    clock.start()
    command = CountRules(spec["regions"])
    provider = CredsViaCrossAccount(CredsViaProfile(), spec["management_account"], ROLE)
    AccountRunner(provider, max_workers=spec["workers"]).run(command, spec["accounts"])
    clock.stop()
    return {"ok": command.ok, "failed": command.failed, "skipped": 0, "rules": command.rules,
            "exit": 0, "errors": command.errors.most_common(3)}


# --- client creation ---------------------------------------------------------------------------

def clients(spec: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """CPU to create EC2 clients in one of four ways (one way per process, so the first client
    pays the cold model parse): `spec["mode"]`, `spec["count"]` clients over `spec["regions"]`."""
    import boto3
    import botocore.credentials

    from orgrunner import aws
    from orgrunner.safety.guard import CallGuard

    creds = botocore.credentials.Credentials("ASIABENCHEXAMPLE0001", "secret", "token")
    regions, mode, count = spec["regions"], spec["mode"], spec["count"]
    guard = CallGuard(TASK, "plan", ("ec2:DescribeSecurityGroups",))
    shared = aws.Session.from_credentials(creds)

    def make(i: int) -> Any:
        region = regions[i % len(regions)]
        if mode == "boto3-session-per-client":  # botocove (per account x region), awsrun (per account)
            return boto3.Session(aws_access_key_id="ASIABENCHEXAMPLE0001", aws_secret_access_key="secret",
                                 aws_session_token="token").client("ec2", region_name=region)
        if mode == "private-loader-per-client":  # orgrunner's session without the shared loader
            session = aws._CredentialedSession(creds)
            return session.create_client("ec2", region_name=region, config=aws.client_config())
        if mode == "shared-loader-session-per-client":  # orgrunner per account: new session, shared loader
            return guard.install(aws.Session.from_credentials(creds).client("ec2", region))
        if mode == "shared-loader-same-session":  # orgrunner per further region of an account
            return guard.install(shared.client("ec2", region))
        raise SystemExit(f"unknown mode {mode}")

    clock.start()
    c0 = time.process_time()
    make(0)
    first = time.process_time() - c0
    c1 = time.process_time()
    for i in range(1, count):
        make(i)
    rest = time.process_time() - c1
    clock.stop()
    return {"mode": mode, "first_cpu": first, "per_client_cpu": rest / max(1, count - 1), "count": count,
            "ok": count, "failed": 0, "skipped": 0, "rules": 0, "exit": 0, "errors": []}


TOOLS: dict[str, Callable[[dict[str, Any], Clock], dict[str, Any]]] = {
    "orgrunner": orgrunner_cli,
    "orgrunner-1proc": functools.partial(orgrunner_cli, processes=1),
    "orgrunner-api": orgrunner_api,
    "botocove": botocove,
    "awsrun": awsrun,
}


def peak_rss_kib(usage: resource.struct_rusage) -> int:
    """This process's own peak RSS. Not `ru_maxrss`: Linux keeps that across execve, so a child of
    the (growing) benchmark process would report at least the benchmark's RSS at the fork. VmHWM
    belongs to this program's own address space."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(usage.ru_maxrss)


def main() -> None:
    clock = Clock()
    tool, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    base, *patches = tool.split("+")
    if patches:  # what-if engine changes, tried in this process only (see whatif.py)
        from tests.benchmarks import whatif

        whatif.apply(patches, spec["workers"])
    runner = clients if base == "clients" else TOOLS[base]
    try:
        result = runner(spec, clock)
    except Exception as exc:
        traceback.print_exc()
        clock.stop()
        result = {"ok": 0, "failed": spec.get("expected_targets", 0), "skipped": 0, "rules": 0, "exit": 70,
                  "errors": [(f"crashed: {_short(exc)}", 1)]}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = peak_rss_kib(usage)
    result |= clock.figures() | {
        "cpu_total": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
        # the largest of the processes (this one, or its largest child): KiB on Linux
        "maxrss_mb": max(own, children.ru_maxrss) / 1024,
        "self_maxrss_mb": own / 1024, "child_maxrss_mb": children.ru_maxrss / 1024,
        "self_cpu": usage.ru_utime + usage.ru_stime, "children_cpu": children.ru_utime + children.ru_stime,
    }
    Path(out_path).write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
