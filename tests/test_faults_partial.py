"""Partial failure: one account's or region's fault is reported precisely for that target, the
rest of the run completes, the exit code is 1, and `--retry-failed REPORT` re-runs exactly the
failed targets.

Faults the emulator's middleware injects itself (AssumeRole denied, 500/503, throttling) are set
with `emulator.add_rule`. Faults it cannot inject (a connection reset before or after AWS acted,
a 200 answer whose body is truncated or lacks fields, a region the account has not enabled) come
from `FaultProxy`: a small HTTP proxy between orgrunner and the emulator (orgrunner is pointed at
it with AWS_ENDPOINT_URL), which learns which account each access key belongs to from the
AssumeRole answers passing through it and keeps every credential the emulator issued.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from orgrunner.sandbox.org import SandboxOrg
from tests.cli import Cli
from tests.emulator.client import EmulatorClient
from tests.test_run_dry import assume_calls, new_requests, snapshot

REGIONS = ("us-east-1", "eu-west-1")
ROLE = "OrganizationAccountAccessRole"
FAST_RETRIES = {"ORGRUNNER_RETRY_ATTEMPTS": "2"}
BOTOCORE_ATTEMPTS = 1 + 5  # orgrunner.aws.client_config: retries={"mode": "standard", "max_attempts": 5}


# --- the fault proxy ---------------------------------------------------------------------------

_CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Call:
    """What the proxy knows of one request."""

    operation: str
    region: str
    account: str | None  # the account of the signing access key (None: the caller's own)
    target_account: str | None  # AssumeRole: the account of the role


@dataclass
class ProxyFault:
    """`reset`: drop the connection (TCP RST) before AWS sees the request; `reset-after`: let AWS act,
    then drop the connection, so the answer is lost; `rewrite`: pass the 200 answer through `rewrite`."""

    action: str
    operation: str
    account: str | None = None
    target_account: str | None = None
    region: str | None = None
    times: float = float("inf")
    rewrite: Callable[[bytes], bytes] | None = None
    hits: int = 0

    def matches(self, call: Call) -> bool:
        return (self.operation == call.operation and self.hits < self.times
                and self.account in (None, call.account) and self.region in (None, call.region)
                and self.target_account in (None, call.target_account))


@dataclass(frozen=True)
class Issued:
    """Credentials the emulator handed out in an AssumeRole answer."""

    access_key_id: str
    secret_access_key: str
    session_token: str


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: list[ProxyFault] = []
        self.issued: list[Issued] = []
        self._accounts: dict[str, str] = {}  # access key id -> account
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, action: str, operation: str, **match: Any) -> ProxyFault:
        fault = ProxyFault(action, operation, **match)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def describe(self, headers: Any, body: bytes) -> Call:
        found = _CREDENTIAL.search(headers.get("Authorization", ""))
        key, region = (found.group(1), found.group(2)) if found else ("", "")
        params = dict(parse_qsl(body.decode(errors="replace")))
        operation = params.get("Action") or headers.get("X-Amz-Target", "").rpartition(".")[2]
        arn = params.get("RoleArn", "")
        with self._lock:
            account = self._accounts.get(key)
        return Call(operation, region, account, arn.split(":")[4] if arn.count(":") >= 5 else None)

    def fault_for(self, call: Call) -> ProxyFault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(call):
                    fault.hits += 1
                    return fault
        return None

    def learn(self, call: Call, payload: bytes) -> None:
        text = payload.decode(errors="replace")
        parts = [re.search(rf"<{k}>([^<]+)</{k}>", text) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")]
        if call.target_account and all(parts):
            issued = Issued(*(p.group(1) for p in parts if p))
            with self._lock:
                self._accounts[issued.access_key_id] = call.target_account
                self.issued.append(issued)

    def forward(self, method: str, path: str, headers: Any,
                body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            conn.request(method, path, body=body, headers=dict(headers.items()))
            answer = conn.getresponse()
            return answer.status, answer.reason, answer.getheaders(), answer.read()
        finally:
            conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = proxy.describe(self.headers, body)
        fault = proxy.fault_for(call)
        if fault is not None and fault.action == "reset":
            self._reset()
            return
        status, reason, headers, payload = proxy.forward(self.command, self.path, self.headers, body)
        if call.operation == "AssumeRole" and status == 200:
            proxy.learn(call, payload)
        if fault is not None and fault.action == "reset-after":
            self._reset()
            return
        if fault is not None and fault.rewrite is not None:
            payload = fault.rewrite(payload)
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

    def _reset(self) -> None:
        """Close with a TCP RST: the client sees 'connection reset by peer'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


@pytest.fixture
def proxy(emulator: EmulatorClient) -> Iterator[FaultProxy]:
    running = FaultProxy(emulator.url)
    yield running
    running.close()


def drop_region(region: str) -> Callable[[bytes], bytes]:
    """A DescribeRegions answer without `region`: the account has not enabled it."""
    name = re.escape(region.encode())
    item = re.compile(rb"<item>(?:(?!</item>).)*?<regionName>" + name + rb"</regionName>.*?</item>", re.S)
    return lambda body: item.sub(b"", body)


def remove_elements(tag: str) -> Callable[[bytes], bytes]:
    return lambda body: re.sub(rb"<" + tag.encode() + rb">[^<]*</" + tag.encode() + rb">", b"", body)


def replace_elements(tag: str, value: str) -> Callable[[bytes], bytes]:
    element = f"<{tag}>{value}</{tag}>".encode()
    return lambda body: re.sub(rb"<" + tag.encode() + rb">[^<]*</" + tag.encode() + rb">", element, body)


# --- helpers ------------------------------------------------------------------------------------

def read_report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_target(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record["account"], record["region"])
        assert key not in found, f"target {key} reported twice"
        found[key] = record
    return found


def check_clean(result: Any, code: int) -> None:
    assert result.returncode == code, (result.returncode, result.stdout[-3000:], result.stderr[-3000:])
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stderr


def members(org: SandboxOrg) -> list[str]:
    return [org.accounts[name] for name in sorted(org.accounts)]


# --- every fault in one run, then --retry-failed --------------------------------------------------

def test_each_fault_fails_only_its_own_targets_and_retry_failed_reruns_exactly_those(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, proxy: FaultProxy) -> None:
    a, b, c, d, e, f, g, _ = members(org)  # the last one: no fault
    # a: the role is missing or AssumeRole is denied (AWS answers AccessDenied for both)
    emulator.add_rule(service="sts", operation="AssumeRole", target_account=a, code="AccessDenied", status=403,
                      message=f"User: arn:aws:sts::{org.management_account_id}:assumed-role/ops/me is not authorized "
                              f"to perform: sts:AssumeRole on resource: arn:aws:iam::{a}:role/{ROLE}")
    # b: 500 from EC2 in one region, every time; c: 503 in every region, every time
    emulator.add_rule(service="ec2", operation="DescribeSecurityGroups", account=b, region="us-east-1",
                      code="InternalError", message="An internal error has occurred", status=500, times=10_000)
    emulator.add_rule(service="ec2", operation="DescribeSecurityGroups", account=c, code="ServiceUnavailable",
                      message="The service is unavailable", status=503, times=10_000)
    # d: a throttling burst, retried away
    emulator.add_rule(service="ec2", operation="DescribeSecurityGroups", account=d, code="RequestLimitExceeded",
                      message="Request limit exceeded.", status=503, times=3)
    # e: connections reset in one region, every time; f: two resets, retried away
    proxy.add("reset", "DescribeSecurityGroupRules", account=e, region="eu-west-1")
    proxy.add("reset", "DescribeSecurityGroupRules", account=f, times=2)
    # g: eu-west-1 is an opt-in region the account has not enabled
    proxy.add("rewrite", "DescribeRegions", account=g, rewrite=drop_region("eu-west-1"))
    report = cli.home / "first.jsonl"
    mark = len(emulator.requests())

    result = cli.run("run", "strip-default-sg", *[x for r in REGIONS for x in ("--region", r)], "--report",
                     str(report), env=cli.env(AWS_ENDPOINT_URL=proxy.url, **FAST_RETRIES))

    check_clean(result, 1)
    records = by_target(read_report(report))
    assert set(records) == {(x, r) for x in members(org) for r in REGIONS}
    failed = {t for t, rec in records.items() if rec["status"] == "failed"}
    skipped = {t for t, rec in records.items() if rec["status"] == "skipped"}
    assert failed == {(a, "us-east-1"), (a, "eu-west-1"), (b, "us-east-1"), (c, "us-east-1"), (c, "eu-west-1"),
                      (e, "eu-west-1")}
    assert skipped == {(g, "eu-west-1")}
    for target, record in records.items():
        if target not in failed | skipped:
            assert record["status"] == "ok" and len(record["changes"]) == 1, record
    # each failure says precisely what went wrong, on one line
    assert f"cannot assume arn:aws:iam::{a}:role/{ROLE}: AccessDenied" in records[(a, "us-east-1")]["error"]
    assert "DescribeSecurityGroups: InternalError" in records[(b, "us-east-1")]["error"]
    assert "DescribeSecurityGroups: ServiceUnavailable" in records[(c, "eu-west-1")]["error"]
    assert "Connection was closed before we received a valid response" in records[(e, "eu-west-1")]["error"]
    assert records[(g, "eu-west-1")]["error"] == "region not enabled in this account"
    for target in failed:
        assert re.search(rf"^{target[0]} .* {target[1]} +FAILED: \S", result.stdout, re.M), target
    assert "16 target(s): 9 change(s) in 6 account(s); 6 failed, 1 skipped; " in result.stdout
    # the summary reports the retries (botocore's own and orgrunner's backoffs)
    assert re.search(r"; [1-9]\d* retries \(\d+ by botocore, [1-9]\d* backoffs\)\.", result.stdout), \
        result.stdout[-500:]

    requests = new_requests(emulator, mark)
    # the denied account was tried once and got no further
    assert [r["target_account"] for r in assume_calls(requests)].count(a) == 1
    assert not [r for r in requests if r["service"] == "ec2" and r["account"] == a]
    # a server error is retried by botocore and by orgrunner's own backoff, then given up
    tries = [r for r in requests if r["operation"] == "DescribeSecurityGroups" and r["account"] == b
             and r["region"] == "us-east-1"]
    assert len(tries) == BOTOCORE_ATTEMPTS * 2 and {r["status"] for r in tries} == {500}
    throttled = [r["status"] for r in requests if r["operation"] == "DescribeSecurityGroups" and r["account"] == d]
    assert throttled.count(503) == 3 and throttled.count(200) == 2
    assert [x.hits for x in proxy.faults][1] == 2  # f: reset twice, then answered

    # --retry-failed: exactly the failed targets, nothing else, with the faults gone
    emulator.clear_rules()
    proxy.clear()
    retry = cli.home / "retry.jsonl"
    mark = len(emulator.requests())
    again = cli.run("run", "strip-default-sg", "--retry-failed", str(report), "--report", str(retry))
    check_clean(again, 0)
    assert set(by_target(read_report(retry))) == failed
    assert {r["status"] for r in read_report(retry)} == {"ok"}
    requests = new_requests(emulator, mark)
    assert sorted(r["target_account"] for r in assume_calls(requests)) == sorted({a, b, c, e})
    planned = {(r["account"], r["region"]) for r in requests if r["operation"] == "DescribeSecurityGroupRules"}
    assert planned == failed

    # and a report without failures retries nothing, without calling AWS
    mark = len(emulator.requests())
    nothing = cli.run("run", "strip-default-sg", "--retry-failed", str(retry))
    check_clean(nothing, 0)
    assert "no failed targets" in nothing.stderr
    assert new_requests(emulator, mark) == []


def test_retry_failed_reruns_every_region_of_an_account_that_failed_before_its_regions_were_known(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    denied, fine = org.accounts["dev-app-1"], org.accounts["sandbox-1"]
    emulator.add_rule(service="sts", operation="AssumeRole", target_account=denied, code="AccessDenied", status=403)
    report = cli.home / "first.jsonl"
    first = cli.run("run", "strip-default-sg", "--account", denied, "--account", fine, "--report", str(report))
    check_clean(first, 1)
    failed = [r for r in read_report(report) if r["status"] == "failed"]
    assert [(r["account"], r["region"]) for r in failed] == [(denied, "*")]

    emulator.clear_rules()
    retry = cli.home / "retry.jsonl"
    mark = len(emulator.requests())
    check_clean(cli.run("run", "strip-default-sg", "--retry-failed", str(report), "--report", str(retry)), 0)
    records = read_report(retry)
    assert {r["account"] for r in records} == {denied}
    assert set(REGIONS) <= {r["region"] for r in records} and len(records) > 10
    assert [r["target_account"] for r in assume_calls(new_requests(emulator, mark))] == [denied]


def test_an_organizations_outage_stops_the_run_with_one_line_not_as_an_internal_error(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient) -> None:
    emulator.add_rule(service="organizations", operation="ListAccounts", code="ServiceException", status=500,
                      message="Organizations is unavailable", times=10_000)
    mark = len(emulator.requests())
    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", env=cli.env(**FAST_RETRIES))
    assert not assume_calls(new_requests(emulator, mark))  # stopped before any target
    problem = [line for line in result.stderr.splitlines() if line.startswith("orgrunner: ")]
    assert len(problem) == 1 and "ListAccounts" in problem[0] and "ServiceException" in problem[0]
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert result.returncode == 1


# --- odd answers ----------------------------------------------------------------------------------

def test_an_answer_with_missing_or_odd_fields_fails_that_target_cleanly_never_the_run(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, proxy: FaultProxy) -> None:
    a, b, c, d, e, *fine = members(org)
    proxy.add("rewrite", "DescribeRegions", account=a, rewrite=remove_elements("regionName"))
    proxy.add("rewrite", "DescribeSecurityGroupRules", account=b, rewrite=remove_elements("securityGroupRuleId"))
    proxy.add("rewrite", "AssumeRole", target_account=c, rewrite=replace_elements("Expiration", "2001-01-01T00:00:00Z"))
    proxy.add("rewrite", "DescribeSecurityGroupRules", account=d, rewrite=replace_elements("fromPort", "twenty-two"))
    proxy.add("rewrite", "DescribeSecurityGroups", account=e, rewrite=lambda body: b"<html>502 Bad Gateway")
    report = cli.home / "odd.jsonl"

    result = cli.run("run", "strip-default-sg", "--region", "us-east-1", "--report", str(report),
                     env=cli.env(AWS_ENDPOINT_URL=proxy.url, **FAST_RETRIES))

    check_clean(result, 1)
    records = {r["account"]: r for r in read_report(report)}
    assert set(records) == set(members(org))
    expected = {a: "KeyError: 'RegionName'", b: "KeyError: 'SecurityGroupRuleId'",
                c: "refreshed credentials are still expired", d: "ValueError: invalid literal for int()",
                e: "unreadable answer from AWS: Unable to parse response"}
    for account, words in expected.items():
        assert records[account]["status"] == "failed", records[account]
        assert words in records[account]["error"], records[account]["error"]
        assert "\n" not in records[account]["error"]
    for account in fine:
        assert records[account]["status"] == "ok" and len(records[account]["changes"]) == 1
    assert "8 target(s): 3 change(s) in 3 account(s); 5 failed, 0 skipped" in result.stdout


def test_an_answer_without_its_result_list_fails_the_target_instead_of_planning_nothing(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, proxy: FaultProxy) -> None:
    account = org.accounts["dev-app-1"]
    proxy.add("rewrite", "DescribeSecurityGroups", account=account, rewrite=lambda body: re.sub(
        rb"<securityGroupInfo>.*</securityGroupInfo>", b"", body, flags=re.S))
    report = cli.home / "odd.jsonl"
    result = cli.run("run", "strip-default-sg", "--account", account, "--region", "us-east-1", "--report",
                     str(report), env=cli.env(AWS_ENDPOINT_URL=proxy.url))
    # the group holds five permissive rules; an answer that lists no groups at all must not read as compliant
    (record,) = read_report(report)
    assert record["status"] == "failed" and "SecurityGroups" in record["error"], record
    check_clean(result, 1)


# --- a write whose answer was lost ------------------------------------------------------------------

def test_a_revoke_whose_answer_was_lost_is_retried_and_counts_as_applied(
        cli: Cli, org: SandboxOrg, emulator: EmulatorClient, proxy: FaultProxy) -> None:
    account = org.accounts["sandbox-1"]
    proxy.add("reset-after", "RevokeSecurityGroupIngress", account=account, times=1)
    result = cli.run("run", "strip-default-sg", "--arm", "--account", account, "--region", "us-east-1",
                     "--confirm-accounts", account, env=cli.env(AWS_ENDPOINT_URL=proxy.url, **FAST_RETRIES))
    assert proxy.faults[0].hits == 1
    assert snapshot(emulator.url, [account], ["us-east-1"]) == {(account, "us-east-1"): {}}
    check_clean(result, 0)
