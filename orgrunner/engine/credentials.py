"""Member-account credentials: one AssumeRole per account and phase, cached, refreshed before expiry.

Each session carries the task's session policy (so its rights are the role's intersected with
what the task declared), a `RoleSessionName` naming operator and task, and `SourceIdentity`
naming the operator, so CloudTrail in the member account shows who ran what.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.credentials
from botocore.exceptions import ClientError

from orgrunner import aws
from orgrunner.errors import OrgrunnerError, SafetyRefusal, TargetError
from orgrunner.records.audit import forget_secret, register_secret

SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]", re.ASCII)
MAX_SESSION_NAME = 64
MAX_SOURCE_IDENTITY = 64


def _clean(text: str, limit: int) -> str:
    return SESSION_NAME_CHARS.sub("-", text)[:limit].strip("-") or "orgrunner"


def session_name(operator: str, task_name: str, run_id: str = "") -> str:
    """`or.<task>.<run>.<operator>` within AWS's 64 characters of `[\\w+=,.@-]`, so CloudTrail in the
    member account shows task, run and operator; the operator's tail is cut first."""
    run = run_id.rsplit("-", 1)[-1]
    head = f"or.{task_name}.{run}." if run else f"or.{task_name}."
    return _clean(head + operator, MAX_SESSION_NAME)


def source_identity(operator: str) -> str:
    """The operator, as AWS accepts it: 2 to 64 characters of `[\\w+=,.@-]`."""
    name = _clean(operator, MAX_SOURCE_IDENTITY)
    return name if len(name) >= 2 else f"operator-{name}"


class _RoleCredentials(botocore.credentials.RefreshableCredentials):
    """Refreshable credentials whose refresh margins fit short sessions too: botocore's fixed
    15/10 minute margins would re-assume on every call for a 15-minute session."""

    def __init__(self, duration: int, **kwargs: Any) -> None:
        self._advisory_refresh_timeout = min(15 * 60, duration // 4)
        self._mandatory_refresh_timeout = min(10 * 60, duration // 8)
        super().__init__(**kwargs)


class RoleNotAssumable(TargetError):
    """AssumeRole was refused; `code` is AWS's error code (AccessDenied...)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class RolesNotReady(OrgrunnerError):
    """The role did not become assumable in some accounts within the wait (exit 1)."""


def assume(sts: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One AssumeRole call; credentials as botocore's refreshable metadata. Errors name the role."""
    try:
        creds = aws.call(sts, "assume_role", **params)["Credentials"]
    except ClientError as exc:
        code = aws.error_code(exc)
        raise RoleNotAssumable(
            f"cannot assume {params['RoleArn']}: {code}: {exc.response.get('Error', {}).get('Message', '')}", code
        ) from None
    register_secret(creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])
    expiry = creds["Expiration"]
    if isinstance(expiry, datetime):
        expiry = expiry.astimezone(UTC).isoformat()
    return {
        "access_key": creds["AccessKeyId"],
        "secret_key": creds["SecretAccessKey"],
        "token": creds["SessionToken"],
        "expiry_time": expiry,
    }


def refreshable_credentials(metadata: dict[str, Any], duration: int,
                            refresh: Callable[[], dict[str, Any]]) -> botocore.credentials.Credentials:
    return _RoleCredentials(
        duration=duration,
        access_key=metadata["access_key"],
        secret_key=metadata["secret_key"],
        token=metadata["token"],
        expiry_time=datetime.fromisoformat(metadata["expiry_time"]),
        refresh_using=refresh,
        method="sts-assume-role",
    )


def operator_session(base: aws.Session, role_arn: str, name: str, duration: int,
                     mfa_serial: str | None = None, mfa_token: Callable[[], str] | None = None,
                     identity: str | None = None) -> aws.Session:
    """The first hop: assume the operator's own role (with MFA if given) from the base credentials.

    Without MFA the session refreshes itself; with MFA a refresh would need a new token, so the
    run must end within `duration` (the error then says so)."""
    sts = base.client("sts", base.home_region)
    params: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": name, "DurationSeconds": duration}
    if identity:
        params["SourceIdentity"] = identity  # set on the first hop, it follows every chained session
    if mfa_serial:
        params["SerialNumber"] = mfa_serial
        params["TokenCode"] = mfa_token() if mfa_token else ""
    try:
        metadata = assume(sts, params)
    except TargetError as exc:
        raise SafetyRefusal(f"operator role: {exc}") from None

    def refresh() -> dict[str, Any]:
        if mfa_serial:
            raise SafetyRefusal(f"the MFA session for {role_arn} expired; run again with a new token")
        return assume(sts, params)

    return aws.Session.from_credentials(refreshable_credentials(metadata, duration, refresh),
                                        partition=aws.partition_of_arn(role_arn))


@dataclass(frozen=True)
class RoleRequest:
    role_name: str
    session_name: str
    source_identity: str | None
    policy: str | None
    duration: int = 3600
    external_id: str | None = None


class RoleAssumer:
    """Assumes the member role once per account (per phase) and caches the refreshable result."""

    def __init__(self, base: aws.Session, request: RoleRequest, partition: str | None = None) -> None:
        self._partition = partition or base.partition
        # the regional STS endpoint of the partition's home region (aws.Session sets regional endpoints)
        self._sts = base.client("sts", aws.home_region(self._partition))
        self._request = request
        self._cache: dict[str, botocore.credentials.Credentials] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._issued: dict[str, list[str]] = {}  # account -> every credential value it was given
        self._guard = threading.Lock()
        self.assume_calls = 0

    @property
    def partition(self) -> str:
        return self._partition

    def role_arn(self, account_id: str) -> str:
        return f"arn:{self._partition}:iam::{account_id}:role/{self._request.role_name}"

    def _assume(self, account_id: str) -> dict[str, Any]:
        req = self._request
        params: dict[str, Any] = {
            "RoleArn": self.role_arn(account_id),
            "RoleSessionName": req.session_name,
            "DurationSeconds": req.duration,
        }
        if req.policy:
            params["Policy"] = req.policy
        if req.source_identity:
            params["SourceIdentity"] = req.source_identity
        if req.external_id:
            params["ExternalId"] = req.external_id
        with self._guard:
            self.assume_calls += 1
        metadata = assume(self._sts, params)
        with self._guard:
            self._issued.setdefault(account_id, []).extend(
                (metadata["access_key"], metadata["secret_key"], metadata["token"]))
        return metadata

    def credentials(self, account_id: str) -> botocore.credentials.Credentials:
        """The account's refreshable credentials (about 1 KB each); the first caller assumes the
        role, later ones reuse it, and botocore refreshes it before it expires."""
        cached = self._cache.get(account_id)
        if cached is not None:
            return cached
        with self._guard:
            lock = self._locks.setdefault(account_id, threading.Lock())
        with lock:
            cached = self._cache.get(account_id)
            if cached is None:
                cached = refreshable_credentials(self._assume(account_id), self._request.duration,
                                                 lambda: self._assume(account_id))
                self._cache[account_id] = cached
            return cached

    def session(self, account_id: str) -> aws.Session:
        """A session of its own for the account (the runner shares one session instead)."""
        return aws.Session.from_credentials(self.credentials(account_id), partition=self._partition)

    def forget(self, account_id: str) -> None:
        """Drop the account's credentials (its work is done), and stop scrubbing output for them:
        results are scrubbed where they are made, in the worker. A later call assumes again."""
        with self._guard:
            self._cache.pop(account_id, None)
            self._locks.pop(account_id, None)
            issued = self._issued.pop(account_id, [])
        forget_secret(*issued)


# Deny everything: the session that proves a role can be assumed can do nothing with it.
PROBE_POLICY = json.dumps({"Version": "2012-10-17",
                           "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]}, separators=(",", ":"))
FIRST_PAUSE_SECONDS = 1.0
MAX_PAUSE_SECONDS = 15.0
STILL_WAITING_EVERY_SECONDS = 30.0


def wait_until_assumable(base: aws.Session, request: RoleRequest, accounts: list[str], timeout: float,
                         tell: Callable[[str], None]) -> None:
    """Assume the role in each account until it works, for accounts just created: AWS makes a new
    account's role assumable a while after CreateAccount and refuses AssumeRole with AccessDenied
    meanwhile, so AccessDenied is retried (pauses doubling from 1 s to 15 s) until `timeout`
    seconds have passed; any other error is not. The session asked for carries a deny-all
    policy: it proves the role can be assumed, and can do nothing. Raises RolesNotReady (each
    account and its last error said first) when some never became assumable."""
    assumer = RoleAssumer(base, dataclasses.replace(request, policy=PROBE_POLICY))
    role = request.role_name
    tell(f"waiting for {role} in {len(accounts)} account(s): AWS makes a new account's role assumable a while "
         f"after CreateAccount; AssumeRole is retried for up to {timeout:g} s")
    start = said = time.monotonic()
    deadline = start + timeout
    waiting = list(accounts)
    failed: dict[str, str] = {}
    last: dict[str, str] = {}
    pause = FIRST_PAUSE_SECONDS
    while True:
        for account_id in list(waiting):
            try:
                assumer.credentials(account_id)
            except RoleNotAssumable as exc:
                last[account_id] = str(exc)
                if exc.code != "AccessDenied":  # not what propagation looks like: not retried
                    failed[account_id] = str(exc)
                    waiting.remove(account_id)
                continue
            assumer.forget(account_id)
            waiting.remove(account_id)
        now = time.monotonic()
        if not waiting or now >= deadline:
            break
        if now - said >= STILL_WAITING_EVERY_SECONDS:
            tell(f"still waiting for {role} in {len(waiting)} account(s) ({now - start:.0f} s)")
            said = now
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, MAX_PAUSE_SECONDS)
    failed.update({a: last[a] for a in waiting})
    tell(f"{role} assumable in {len(accounts) - len(failed)} of {len(accounts)} account(s) after "
         f"{time.monotonic() - start:.0f} s")
    if failed:
        for account_id, why in sorted(failed.items()):
            tell(f"  {account_id}: {why.split(': ', 1)[-1]}")
        raise RolesNotReady(f"{role} could not be assumed in {len(failed)} account(s) within {timeout:g} s; if they "
                            "were just created, AWS may still be propagating it: run again later, or with a longer "
                            "--wait-for-role; nothing applied")
