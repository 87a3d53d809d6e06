"""Scale benchmark: orgrunner against botocove and awsrun on one emulated organization.

    .venv/bin/python -m tests.benchmarks.bench_scale [--accounts 300] [--regions 4] [--latency-ms 30]
        [--workers 32] [--tools orgrunner,botocove,awsrun] [--throttle-share 0.1]
        [--skip-memory] [--memory-accounts 1000,3000] [--json results.json]

A benchmark, not a test (tests/benchmarks/conftest.py keeps pytest out of this folder). It
starts the emulator (moto + tests/emulator/middleware.py) in its own process, seeds an
organization, warms every account and region (moto builds an account-region's EC2 backend on
its first call), sets a fixed latency per request and runs the same read-only workload with
each tool in its own child process (tests/benchmarks/workloads.py), at the same worker count:
per account x region, describe the default security groups and count their rules.

Per tool it prints wall seconds, the client process's CPU seconds and peak RSS, AssumeRole
calls and total requests (from the emulator's request log), the emulator's CPU seconds for the
run and the lower bound: the larger of requests x latency / workers and the emulator's CPU
seconds (moto serves on one process, sharing the machine's cores with the client).

Then: CPU per EC2 client creation (fresh botocore session vs orgrunner's shared loader), the
emulator's CPU per operation, the same workload with a share of requests throttled, and the
orgrunner client's peak RSS at 1,000 and 3,000 accounts (one region).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.credentials
import botocore.session
import psutil
from botocore.config import Config

from orgrunner.engine.workers import MAX_AUTO_PROCESSES
from orgrunner.sandbox.org import (
    SANDBOX_ENV_CREDENTIALS,
    Emulator,
    created_account_id,
    sandbox_environment,
    start_emulator,
)
from tests.benchmarks import whatif

REPO = Path(__file__).resolve().parents[2]
ROLE = "OrganizationAccountAccessRole"
DEFAULT_GROUP = [{"Name": "group-name", "Values": ["default"]}]
# The 17 regions enabled by default in every account, in the order --regions N takes them.
DEFAULT_REGIONS = [
    "us-east-1", "eu-west-1", "us-west-2", "ap-southeast-2", "us-east-2", "us-west-1", "ca-central-1",
    "eu-west-2", "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1",
    "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "sa-east-1",
]
ALL_TOOLS = ("orgrunner", "orgrunner-1proc", "orgrunner-api", "botocove", "awsrun")
# orgrunner plans in one process per CPU by default; orgrunner-1proc is the same with --processes 1.
# orgrunner-api (the engine without the CLI) costs as much as the CLI: opt in.
DEFAULT_TOOLS = ("orgrunner", "orgrunner-1proc", "botocove", "awsrun")
THROTTLES = (  # what AWS answers when it throttles each service
    {"service": "ec2", "code": "RequestLimitExceeded", "status": 503},
    {"service": "sts", "code": "Throttling", "status": 400},
    {"service": "organizations", "code": "TooManyRequestsException", "status": 400},
)


def say(line: str = "") -> None:
    print(line, flush=True)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned text table; columns are (key, heading, format)."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(k) is None else format(row[k], f)) for k, _, f in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for n, r in enumerate(cells):
        say("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if n == 0:
            say("  ".join("-" * w for w in widths))


# --- the emulator and the organization --------------------------------------------------------

class _ContextSession(botocore.session.Session):
    """A botocore session whose clients sign with the credentials the current job set."""

    def get_credentials(self) -> botocore.credentials.Credentials:
        return whatif.ContextCredentials()


@dataclass
class Org:
    emulator: Emulator
    scratch: Path
    management_account: str = ""
    accounts: list[str] = field(default_factory=list)
    warm: set[tuple[str, str]] = field(default_factory=set)
    log_index: int = 0

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.emulator.process.pid)
        self._botocore = botocore.session.get_session()  # one model parse for all seeding clients
        self._lock = threading.Lock()
        self._session = boto3.session.Session(
            botocore_session=self._botocore,
            aws_access_key_id=SANDBOX_ENV_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=SANDBOX_ENV_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=SANDBOX_ENV_CREDENTIALS["AWS_SESSION_TOKEN"],
            region_name="us-east-1",
        )
        config = Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 8})
        self._context_session = _ContextSession()
        self.orgs = self.client("organizations", config=config)
        self.sts = self.client("sts", config=config)

    def client(self, service: str, region: str = "us-east-1", **kwargs: Any) -> Any:
        with self._lock:  # botocore sessions are not thread-safe while creating clients
            return self._session.client(service, region_name=region, endpoint_url=self.emulator.url, **kwargs)

    # control API of tests/emulator/middleware.py
    def control(self, method: str, path: str, data: Any = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(f"{self.emulator.url}/_emulator/{path}", data=body, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.load(response)

    def latency(self, ms: float) -> None:
        self.control("POST", "latency", {"ms": ms})

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def new_requests(self) -> list[dict[str, Any]]:
        """The requests recorded since the last call (the log itself is never reset: resetting it
        would reset moto's state too)."""
        entries = self.control("GET", "requests")
        fresh, self.log_index = entries[self.log_index:], len(entries)
        return list(fresh)

    def create(self, members: int) -> float:
        """Grow the organization to `members` member accounts; returns the seconds it took."""
        start = time.perf_counter()
        if not self.management_account:
            org = self.orgs.create_organization(FeatureSet="ALL")["Organization"]
            self.management_account = org["MasterAccountId"]

        def one(i: int) -> str:
            status = self.orgs.create_account(AccountName=f"bench-{i:05d}", Email=f"bench-{i:05d}@bench.example")
            return created_account_id(self.orgs, status)

        with ThreadPoolExecutor(8) as pool:
            self.accounts += pool.map(one, range(len(self.accounts), members))
        return time.perf_counter() - start

    def warm_up(self, regions: list[str]) -> float:
        """First call into every account and region (AssumeRole, DescribeRegions, the workload's
        DescribeSecurityGroups) so moto has built each backend before anything is timed. One EC2
        client per region signs for each account in turn (a client per account and region would
        make this process, not the emulator, the bottleneck)."""
        start = time.perf_counter()
        config = Config(max_pool_connections=16, retries={"mode": "standard", "max_attempts": 8})
        ec2 = {r: self._context_session.create_client("ec2", region_name=r, endpoint_url=self.emulator.url,
                                                      config=config) for r in regions}

        def one(account: str) -> None:
            todo = [r for r in regions if (account, r) not in self.warm]
            if not todo:
                return
            arn = f"arn:aws:iam::{account}:role/{ROLE}"
            c = self.sts.assume_role(RoleArn=arn, RoleSessionName="bench-warm")["Credentials"]
            creds = botocore.credentials.Credentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"])
            token = whatif.CURRENT.set(lambda: creds)
            try:
                for i, region in enumerate(todo):
                    if i == 0:
                        ec2[region].describe_regions()
                    ec2[region].describe_security_groups(Filters=DEFAULT_GROUP)
            finally:
                whatif.CURRENT.reset(token)
            self.warm.update((account, r) for r in todo)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, self.accounts))
        return time.perf_counter() - start


def child_env(org: Org) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "ORGRUNNER_"))}
    return env | sandbox_environment(org.emulator.url) | {
        "AWS_CONFIG_FILE": str(org.scratch / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(org.scratch / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "XDG_STATE_HOME": str(org.scratch / "state"),  # orgrunner's audit log goes here
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p),
        "NO_COLOR": "1", "COLUMNS": "200", "TQDM_DISABLE": "",
    }


# --- one tool run ------------------------------------------------------------------------------

def machine_busy() -> float:
    """CPU seconds spent by every process on the machine so far (to show other load)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def run_child(org: Org | None, tool: str, spec: dict[str, Any], scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run one workload process; its own figures plus wall and CPU seen from here."""
    label = spec["label"]
    spec_path, out_path = scratch / f"{label}.spec.json", scratch / f"{label}.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    stdout, stderr = scratch / f"{label}.stdout", scratch / f"{label}.stderr"
    emu_cpu = org.cpu() if org else 0.0
    busy = machine_busy()
    start = time.perf_counter()
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "tests.benchmarks.workloads", tool, str(spec_path),
                               str(out_path)], stdout=out, stderr=err, env=env, cwd=scratch, check=False)
    wall = time.perf_counter() - start
    emu_cpu = (org.cpu() - emu_cpu) if org else 0.0
    busy = machine_busy() - busy
    if not out_path.exists():
        raise RuntimeError(f"{tool} exited {proc.returncode} without a result:\n{stderr.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out_path.read_text())
    result |= {"tool": tool, "wall": wall, "emu_cpu": emu_cpu, "returncode": proc.returncode,
               "other_cpu": max(0.0, busy - emu_cpu - result["cpu_total"])}
    summary = [line for line in stdout.read_text().splitlines() if line.startswith(("Plan:", "Dry run"))]
    result["summary"] = " ".join(summary)
    result["stderr_tail"] = stderr.read_text()[-600:]
    return result


def run_tool(org: Org, tool: str, regions: list[str], workers: int, latency_ms: float, label: str,
             accounts: list[str] | None = None) -> dict[str, Any]:
    accounts = accounts if accounts is not None else org.accounts
    spec = {"label": label, "regions": regions, "workers": workers, "scratch": str(org.scratch),
            "management_account": org.management_account, "accounts": accounts,
            "expected_targets": len(accounts) * len(regions)}
    org.new_requests()  # skip whatever came before
    result = run_child(org, tool, spec, org.scratch, child_env(org))
    log = org.new_requests()
    ops = Counter(e["operation"] for e in log)
    per_account = Counter(e["account"] for e in log
                          if e["operation"] == "DescribeSecurityGroups" and e["status"] == 200)
    short = [a for a in accounts if per_account[a] != len(regions)]
    errors = Counter(e["status"] for e in log if e["status"] >= 400)
    targets = spec["expected_targets"]
    bound_io = len(log) * latency_ms / 1000 / workers
    result |= {
        "targets": targets, "requests": len(log), "assume_role": ops["AssumeRole"], "ops": dict(ops),
        "http_errors": sum(errors.values()), "bound_io": bound_io,
        # each account must have been read in each region exactly once, signed as that account
        "accounts_not_read_once_per_region": len(short),
        "bound": max(bound_io, result["emu_cpu"]),
        "cpu_per_target_ms": 1000 * result["run_cpu"] / max(1, targets),
    }
    result["wall_over_bound"] = result["wall"] / result["bound"] if result["bound"] else None
    result["run_over_bound"] = result["run_wall"] / result["bound"] if result["bound"] else None
    return result


TOOL_COLUMNS = [
    ("tool", "tool", ""), ("wall", "wall s", ".2f"), ("run_wall", "run s", ".2f"), ("cpu_total", "client CPU s", ".2f"),
    ("maxrss_mb", "peak RSS MB", ".0f"), ("assume_role", "AssumeRole", "d"), ("requests", "requests", "d"),
    ("ok", "targets ok", "d"), ("failed", "failed", "d"), ("emu_cpu", "emulator CPU s", ".2f"),
    ("bound", "lower bound s", ".2f"), ("wall_over_bound", "wall/bound", ".2f"), ("vs", "wall vs orgrunner", ".2f"),
    ("other_cpu", "other procs CPU s", ".1f"),
]


def print_tool_table(results: list[dict[str, Any]], reference: str = "orgrunner") -> None:
    ref = next((r for r in results if r["tool"] == reference), None)
    for r in results:
        r["vs"] = r["wall"] / ref["wall"] if ref else None
    table(results, TOOL_COLUMNS)
    for r in results:
        if r["failed"] or r["errors"]:
            say(f"  {r['tool']}: errors {r['errors']}")
        if r["accounts_not_read_once_per_region"]:
            say(f"  {r['tool']}: {r['accounts_not_read_once_per_region']} account(s) not read exactly once per region "
                "(successful DescribeSecurityGroups signed as the account)")


# --- sections ----------------------------------------------------------------------------------

def section_client_creation(scratch: Path, count: int) -> list[dict[str, Any]]:
    say(f"\n## CPU per EC2 client creation ({count} clients per mode, each mode in a fresh process)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {
        "PYTHONPATH": str(REPO), "AWS_EC2_METADATA_DISABLED": "true"}
    rows = []
    for mode, who in (
        ("boto3-session-per-client", "botocove (every account x region), awsrun (every account)"),
        ("private-loader-per-client", "orgrunner's session without the shared loader (before)"),
        ("shared-loader-session-per-client", "orgrunner, first region of an account (after)"),
        ("shared-loader-same-session", "orgrunner, each further region of an account (after)"),
    ):
        spec = {"label": f"clients-{mode}", "mode": mode, "count": count, "regions": DEFAULT_REGIONS}
        r = run_child(None, "clients", spec, scratch, env)
        rows.append({"mode": mode, "first": 1000 * r["first_cpu"], "each": 1000 * r["per_client_cpu"], "who": who})
    table(rows, [("mode", "mode", ""), ("first", "first client ms CPU", ".1f"),
                 ("each", "each further client ms CPU", ".2f"), ("who", "who creates clients this way", "")])
    return rows


def section_op_costs(org: Org, n: int) -> list[dict[str, Any]]:
    """The emulator's CPU per operation (sequential, no latency), and the recording middleware's
    own share of it (measured in this process around a do-nothing app)."""
    say(f"\n## Emulator CPU per request ({n} sequential calls each, warm, no latency)")
    account = org.accounts[0]
    arn = f"arn:aws:iam::{account}:role/{ROLE}"
    creds = org.sts.assume_role(RoleArn=arn, RoleSessionName="bench-ops")["Credentials"]
    ec2 = org.client("ec2", "us-east-1", aws_access_key_id=creds["AccessKeyId"],
                     aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])
    calls = {
        "sts:AssumeRole": lambda: org.sts.assume_role(RoleArn=arn, RoleSessionName="bench-ops"),
        "ec2:DescribeRegions": ec2.describe_regions,
        "ec2:DescribeSecurityGroups (filtered)": lambda: ec2.describe_security_groups(Filters=DEFAULT_GROUP),
        "sts:GetCallerIdentity": org.sts.get_caller_identity,
        "organizations:ListAccounts (page)": lambda: org.orgs.list_accounts(MaxResults=20),
    }
    rows = []
    for name, call in calls.items():
        call()
        c0 = org.cpu()
        for _ in range(n):
            call()
        rows.append({"op": name, "ms": 1000 * (org.cpu() - c0) / n})
    rows.append({"op": "of which the middleware (parse + record)", "ms": middleware_cost_ms()})
    table(rows, [("op", "operation", ""), ("ms", "emulator CPU ms per request", ".2f")])
    org.new_requests()
    return rows


def middleware_cost_ms(n: int = 5000) -> float:
    """CPU of tests/emulator/middleware.py per EC2 request, around an app that does nothing."""
    from tests.emulator.middleware import wrap

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"<ok/>"]

    middleware = wrap(app)
    body = b"Action=DescribeSecurityGroups&Version=2016-11-15&Filter.1.Name=group-name&Filter.1.Value.1=default"
    auth = ("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE01/20260101/us-east-1/ec2/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)

    def environ() -> dict[str, Any]:
        return {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "", "HTTP_AUTHORIZATION": auth,
                "CONTENT_TYPE": "application/x-www-form-urlencoded; charset=utf-8",
                "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}

    list(middleware(environ(), lambda *a: None))  # first call loads the EC2 model
    c0 = time.process_time()
    for _ in range(n):
        list(middleware(environ(), lambda *a: None))
    return 1000 * (time.process_time() - c0) / n


def section_tools(org: Org, args: argparse.Namespace, regions: list[str]) -> list[dict[str, Any]]:
    say(f"\n## Side by side: {len(org.accounts)} accounts x {len(regions)} regions = "
        f"{len(org.accounts) * len(regions)} targets, {args.workers} workers, {args.latency_ms:g} ms per request")
    by_tool: dict[str, list[dict[str, Any]]] = {t: [] for t in args.tools}
    for rep in range(args.repeat):
        for tool in args.tools:
            r = run_tool(org, tool, regions, args.workers, args.latency_ms, f"{tool}-{rep}")
            by_tool[tool].append(r)
            say(f"  run {rep + 1}/{args.repeat} {tool}: wall {r['wall']:.2f} s, {r['ok']} ok, {r['failed']} failed")
    results = []
    for runs in by_tool.values():
        median = sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]
        median["walls"] = [round(r["wall"], 2) for r in runs]
        results.append(median)
    say("")
    if args.repeat > 1:
        say(f"(median of {args.repeat} runs by wall time; walls: "
            + "; ".join(f"{r['tool']} {r['walls']}" for r in results) + ")")
    print_tool_table(results)
    say("")
    table([{"tool": r["tool"], "import": r["import_wall"], "import_cpu": r["import_cpu"], "run_cpu": r["run_cpu"],
            "per_target": r["cpu_per_target_ms"], "rules": r["rules"], "io": r["bound_io"],
            "ops": ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items(), key=lambda kv: -kv[1]))}
           for r in results],
          [("tool", "tool", ""), ("import", "import s", ".2f"), ("import_cpu", "import CPU s", ".2f"),
           ("run_cpu", "run CPU s", ".2f"), ("per_target", "run CPU ms/target", ".2f"),
           ("rules", "rules counted", "d"), ("io", "requests x latency / workers s", ".2f"), ("ops", "requests", "")])
    return results


def section_throttle(org: Org, args: argparse.Namespace, regions: list[str]) -> list[dict[str, Any]]:
    """Each throttle tool unthrottled first (the reference, run now so the machine's load is
    comparable), then at each share."""
    if not args.throttle_share:
        return []
    results = []
    baseline: dict[str, float] = {}
    for share in [0.0, *args.throttle_share]:
        if share:
            say(f"\n## Throttled: {share:.0%} of EC2 (RequestLimitExceeded, 503), STS (Throttling) and "
                f"Organizations (TooManyRequestsException) requests, every account and region, "
                f"{args.latency_ms:g} ms, {args.workers} workers")
        else:
            say(f"\n## Throttling reference: the same tools unthrottled, just before ({args.latency_ms:g} ms, "
                f"{args.workers} workers)")
        rows = []
        for tool in args.throttle_tools:
            org.control("DELETE", "rules")
            for rule in THROTTLES if share else ():
                org.control("POST", "rules", {**rule, "probability": share})
            r = run_tool(org, tool, regions, args.workers, args.latency_ms, f"throttle-{share}-{tool}")
            r["throttled"] = sum(rule["hits"] for rule in org.control("GET", "rules"))
            org.control("DELETE", "rules")
            r["share"] = share
            if not share:
                baseline[tool] = r["wall"]
            r["vs_unthrottled"] = r["wall"] / baseline[tool] if tool in baseline else None
            reported = re.search(r"(\d+) retries", r["summary"])
            r["retries_reported"] = int(reported.group(1)) if reported else None
            rows.append(r)
        table(rows, [("tool", "tool", ""), ("wall", "wall s", ".2f"), ("vs_unthrottled", "vs unthrottled", ".2f"),
                     ("ok", "targets ok", "d"), ("failed", "failed", "d"), ("throttled", "throttles injected", "d"),
                     ("retries_reported", "retries in its summary", "d"), ("requests", "requests", "d"),
                     ("cpu_total", "client CPU s", ".2f")])
        for r in rows:
            if r["errors"]:
                say(f"  {r['tool']}: errors {r['errors']}")
            if r["summary"]:
                say(f"  {r['tool']} summary: {r['summary']}")
        results += rows
    return results


def section_memory(org: Org, args: argparse.Namespace) -> list[dict[str, Any]]:
    region = DEFAULT_REGIONS[:1]
    say(f"\n## Peak RSS against the number of targets ({region[0]} only, {args.workers} workers, "
        f"{args.latency_ms:g} ms)")
    rows = []
    for members in args.memory_accounts:
        org.latency(0)
        seed = org.create(members)
        warm = org.warm_up(region)
        say(f"  organization grown to {members} members in {seed:.1f} s, warmed in {warm:.1f} s")
        org.latency(args.latency_ms)
        for tool in args.memory_tools:
            r = run_tool(org, tool, region, args.workers, args.latency_ms, f"memory-{members}-{tool}")
            rows.append(r)
    table(rows, [("tool", "tool", ""), ("targets", "targets", "d"), ("maxrss_mb", "peak RSS MB", ".1f"),
                 ("self_maxrss_mb", "parent MB", ".1f"), ("child_maxrss_mb", "largest worker MB", ".1f"),
                 ("wall", "wall s", ".2f"), ("cpu_total", "client CPU s", ".2f"), ("ok", "targets ok", "d"),
                 ("failed", "failed", "d"), ("emu_cpu", "emulator CPU s", ".2f"), ("bound", "lower bound s", ".2f")])
    for tool in args.memory_tools:
        mine = [r for r in rows if r["tool"] == tool]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            slope = 1024 * (b["maxrss_mb"] - a["maxrss_mb"]) / (b["targets"] - a["targets"])
            say(f"  {tool}: {slope:+.1f} KB of peak RSS per added target "
                f"({a['targets']} -> {b['targets']} targets: {a['maxrss_mb']:.1f} -> {b['maxrss_mb']:.1f} MB)")
    return rows


# --- verdicts ----------------------------------------------------------------------------------

def verdicts(args: argparse.Namespace, tools: list[dict[str, Any]], clients: list[dict[str, Any]],
             throttled: list[dict[str, Any]], memory: list[dict[str, Any]], regions: list[str]) -> None:
    say("\n## Against the targets")
    by = {r["tool"]: r for r in tools}
    ours = by.get("orgrunner")
    if ours:
        ratio = ours["wall"] / ours["bound"]
        say(f"- wall within 1.3x of the lower bound: {'MET' if ratio <= 1.3 else 'MISSED'} "
            f"({ours['wall']:.2f} s / {ours['bound']:.2f} s = {ratio:.2f}x; run only "
            f"{ours['run_wall']:.2f} s = {ours['run_over_bound']:.2f}x; the bound is "
            f"{'the emulator CPU' if ours['emu_cpu'] >= ours['bound_io'] else 'requests x latency / workers'})")
        peers = [by[t] for t in ("botocove", "awsrun") if t in by]
        if peers:
            fastest = min(peers, key=lambda r: r["wall"])
            say(f"- at least as fast as the faster peer ({fastest['tool']} {fastest['wall']:.2f} s): "
                f"{'MET' if ours['wall'] <= fastest['wall'] else 'MISSED'} (orgrunner {ours['wall']:.2f} s)")
            one_each = ours["assume_role"] == len(args.member_ids)
            say(f"- one AssumeRole per account: {'MET' if one_each else 'MISSED'} (orgrunner {ours['assume_role']} "
                f"for {len(args.member_ids)} accounts); fewer than each peer: "
                + ", ".join(f"{p['tool']} {p['assume_role']} "
                            f"({'fewer' if ours['assume_role'] < p['assume_role'] else 'NOT fewer'})" for p in peers))
        for r in tools:
            if r["tool"].startswith("orgrunner+"):
                say(f"- what-if {r['tool']}: wall {r['wall']:.2f} s = {r['wall'] / r['bound']:.2f}x its lower bound "
                    f"({r['bound']:.2f} s), {ours['wall'] / r['wall']:.1f}x faster than orgrunner today, client CPU "
                    f"{r['cpu_per_target_ms']:.2f} ms per target; {r['ok']}/{r['targets']} targets ok")
        single = by.get("orgrunner-1proc", ours)  # CPU per target of one process, without sharding's overhead
        per_target = single["run_cpu"] / single["targets"]
        requests_per_target = ours["requests"] / ours["targets"]
        cpu_rate = 1 / per_target  # one process: the GIL holds it to about one core
        io_rate = args.workers / (requests_per_target * args.latency_ms / 1000)
        needed = math.ceil(io_rate / cpu_rate)
        say(f"- client CPU per target {1000 * per_target:.2f} ms ({single['tool']}: run CPU / targets, engine and "
            f"CLI included): one process completes at most {cpu_rate:.0f} targets/s on its CPU, while "
            f"{args.workers} workers at {args.latency_ms:g} ms per request ({requests_per_target:.2f} requests per "
            f"target) would allow {io_rate:.0f}/s: one process is {'I/O' if cpu_rate >= io_rate else 'CPU'} bound; "
            f"{needed} planning process(es) on as many free cores are I/O bound (orgrunner starts one per CPU, "
            f"at most {MAX_AUTO_PROCESSES}; this machine has {psutil.cpu_count()}, shared with the emulator). "
            f"5,000 x 17 = 85,000 targets need {85000 * per_target:.0f} CPU s: "
            f"{85000 / min(cpu_rate, io_rate) / 60:.1f} min in one process, "
            f"{85000 / min(MAX_AUTO_PROCESSES * cpu_rate, io_rate) / 60:.1f} min in {MAX_AUTO_PROCESSES}")
        if "orgrunner-1proc" in by:
            sharded = ours["run_cpu"] / ours["targets"]
            say(f"- sharding's own cost: {1000 * sharded:.2f} ms of CPU per target over all processes against "
                f"{1000 * per_target:.2f} ms in one ({ours.get('children_cpu', 0):.2f} s in the workers, "
                f"{ours.get('self_cpu', 0):.2f} s in the parent, imports included)")
    if clients:
        c = {r["mode"]: r for r in clients}
        before, after = c["private-loader-per-client"], c["shared-loader-same-session"]
        say(f"- shared loader: {before['each']:.2f} ms -> {c['shared-loader-session-per-client']['each']:.2f} ms "
            f"(new session per account) / {after['each']:.2f} ms (same session) CPU per EC2 client")
    if throttled:
        for r in throttled:
            if not r["share"]:
                continue
            say(f"- throttled {r['share']:.0%}, {r['tool']}: {r['ok']}/{r['targets']} targets, "
                f"{r['throttled']} throttles absorbed, wall x{(r['vs_unthrottled'] or 0):.2f}; retries in its summary: "
                + ("NO" if r["retries_reported"] is None else f"{r['retries_reported']}"))
    for tool in dict.fromkeys(r["tool"] for r in memory):
        mine = [r for r in memory if r["tool"] == tool]
        if len(mine) >= 2:
            a, b = mine[0], mine[-1]
            say(f"- memory flat in the number of targets ({tool}, largest process): peak RSS {a['maxrss_mb']:.1f} MB "
                f"at {a['targets']} -> {b['maxrss_mb']:.1f} MB at {b['targets']} targets "
                f"({'MET' if b['maxrss_mb'] <= 1.1 * a['maxrss_mb'] else 'MISSED'}: met if within 10%)")


# --- main --------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=300, help="member accounts (default 300)")
    p.add_argument("--regions", default="4", help="a count (the first N default regions) or a comma list (default 4)")
    p.add_argument("--latency-ms", type=float, default=30.0, help="injected latency per request (default 30)")
    p.add_argument("--workers", type=int, default=32, help="workers for every tool (default 32)")
    p.add_argument("--tools", default=",".join(DEFAULT_TOOLS),
                   help=f"comma list of {', '.join(ALL_TOOLS)}, or what-ifs orgrunner+PATCH (see whatif.py); "
                   "'none' skips the side-by-side part")
    p.add_argument("--repeat", type=int, default=1, help="runs per tool; the median is shown (default 1)")
    p.add_argument("--throttle-share", default="0.1",
                   help="comma list of throttled shares of requests; 0 skips the throttling part (default 0.1)")
    p.add_argument("--throttle-tools", default="orgrunner", help="tools run throttled (default orgrunner)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak RSS runs at 1,000 and 3,000 accounts")
    p.add_argument("--memory-accounts", default="1000,3000", help="member counts of the memory runs")
    p.add_argument("--memory-tools", default="orgrunner", help="tools of the memory runs (default orgrunner)")
    p.add_argument("--skip-clients", action="store_true", help="skip the client-creation measurement")
    p.add_argument("--client-count", type=int, default=100, help="clients per creation mode (default 100)")
    p.add_argument("--op-calls", type=int, default=100, help="calls per operation for the emulator CPU costs; 0 skips")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (children's output) for inspection")
    args = p.parse_args(argv)
    args.region_list = (DEFAULT_REGIONS[:int(args.regions)] if args.regions.isdigit()
                        else [r.strip() for r in args.regions.split(",") if r.strip()])
    args.tools = [t for t in args.tools.split(",") if t and t != "none"]
    args.throttle_tools = [t for t in args.throttle_tools.split(",") if t]
    args.memory_tools = [t for t in args.memory_tools.split(",") if t]
    for t in {*args.tools, *args.throttle_tools, *args.memory_tools}:
        base, *patches = t.split("+")
        if base not in ALL_TOOLS or (patches and not base.startswith("orgrunner")):
            p.error(f"unknown tool {t!r}; choose from {', '.join(ALL_TOOLS)}, or orgrunner[-api]+PATCH "
                    "(what-if engine changes, see tests/benchmarks/whatif.py)")
    args.throttle_share = [float(s) for s in args.throttle_share.split(",") if float(s) > 0]
    args.memory_accounts = sorted(int(n) for n in args.memory_accounts.split(",") if n)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    regions = args.region_list
    started = time.perf_counter()
    from importlib.metadata import version

    import awsrun  # noqa: F401  (fail early if the bench extra is missing)
    import botocove  # noqa: F401
    import moto
    say(f"# orgrunner scale benchmark: python -m tests.benchmarks.bench_scale {' '.join(argv or sys.argv[1:])}")
    head = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "orgrunner", "tasks"],
                           capture_output=True, text=True).stdout.count("\n")
    say(f"# orgrunner at {head.stdout.strip()[:70]} ({dirty} file(s) changed in orgrunner/ and tasks/); "
        f"load average {os.getloadavg()[0]:.1f}")
    say(f"# {platform.platform()}, {psutil.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"botocore {version('botocore')}, moto {moto.__version__}, botocove {version('botocove')}, "
        f"awsrun {version('awsrun')}")
    scratch = Path(tempfile.mkdtemp(prefix="orgrunner-bench-"))
    emulator = start_emulator(wsgi_wrapper="tests.emulator.middleware:wrap", extra_env={"PYTHONPATH": str(REPO)})
    figures: dict[str, Any] = {"argv": argv or sys.argv[1:], "regions": regions}
    try:
        org = Org(emulator, scratch)
        org.latency(0)
        c0 = org.cpu()
        seed = org.create(args.accounts)
        say(f"\nseeded {args.accounts} member accounts in {seed:.1f} s (emulator CPU {org.cpu() - c0:.1f} s)")
        c0 = org.cpu()
        warm = org.warm_up(regions)
        say(f"warmed {len(org.accounts)} accounts x {len(regions)} regions in {warm:.1f} s "
            f"(emulator CPU {org.cpu() - c0:.1f} s)")
        args.member_ids = list(org.accounts)
        org.new_requests()
        figures["op_costs"] = section_op_costs(org, args.op_calls) if args.op_calls else []
        figures["clients"] = [] if args.skip_clients else section_client_creation(scratch, args.client_count)
        org.latency(args.latency_ms)
        figures["tools"] = section_tools(org, args, regions) if args.tools else []
        figures["throttled"] = section_throttle(org, args, regions)
        figures["memory"] = [] if args.skip_memory else section_memory(org, args)
        verdicts(args, figures["tools"], figures["clients"], figures["throttled"], figures["memory"], regions)
        say(f"\n(benchmark took {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}; "
            f"emulator peak RSS "
            f"{org.process.memory_info().rss / 2**20:.0f} MB)")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1, default=str))
    finally:
        emulator.stop()
        if args.keep:
            say(f"scratch kept: {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
