"""Member-account credentials: one AssumeRole per account and phase, cached, refreshed before expiry.

Each session carries the task's session policy (so its rights are the role's intersected with
what the task declared), a `RoleSessionName` naming operator and task, and `SourceIdentity`
naming the operator, so CloudTrail in the member account shows who ran what.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import botocore.credentials
from botocore.exceptions import ClientError

from orgrunner import aws
from orgrunner.errors import TargetError

SESSION_NAME_CHARS = re.compile(r"[^\w+=,.@-]")
MAX_SESSION_NAME = 64
MAX_SOURCE_IDENTITY = 64


def _clean(text: str, limit: int) -> str:
    return SESSION_NAME_CHARS.sub("-", text)[:limit].strip("-") or "orgrunner"


def session_name(operator: str, task_name: str) -> str:
    """`orgrunner.<task>.<operator>` within AWS's 64 characters of `[\\w+=,.@-]`; the task
    survives truncation, the operator's tail is cut first."""
    head = f"or.{task_name}."
    return _clean(head + operator, MAX_SESSION_NAME)


def source_identity(operator: str) -> str:
    return _clean(operator, MAX_SOURCE_IDENTITY)


def operator_name(caller_arn: str) -> str:
    """The human part of a caller ARN: the user, or the session name of an assumed role."""
    resource = caller_arn.split(":", 5)[-1]
    return resource.rsplit("/", 1)[-1] or resource


class _RoleCredentials(botocore.credentials.RefreshableCredentials):
    """Refreshable credentials whose refresh margins fit short sessions too: botocore's fixed
    15/10 minute margins would re-assume on every call for a 15-minute session."""

    def __init__(self, duration: int, **kwargs: Any) -> None:
        self._advisory_refresh_timeout = min(15 * 60, duration // 4)
        self._mandatory_refresh_timeout = min(10 * 60, duration // 8)
        super().__init__(**kwargs)


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

    def __init__(self, base: aws.Session, request: RoleRequest, partition: str = "aws") -> None:
        self._sts = base.client("sts", aws.HOME_REGION)
        self._request = request
        self._partition = partition
        self._cache: dict[str, aws.Session] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.assume_calls = 0

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
        try:
            creds = aws.call(self._sts, "assume_role", **params)["Credentials"]
        except ClientError as exc:
            raise TargetError(
                f"cannot assume {params['RoleArn']}: {aws.error_code(exc)}: "
                f"{exc.response.get('Error', {}).get('Message', '')}"
            ) from None
        expiry = creds["Expiration"]
        if isinstance(expiry, datetime):
            expiry = expiry.astimezone(UTC).isoformat()
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry,
        }

    def session(self, account_id: str) -> aws.Session:
        """The account's session; the first caller assumes the role, later ones reuse it."""
        with self._guard:
            lock = self._locks.setdefault(account_id, threading.Lock())
        with lock:
            cached = self._cache.get(account_id)
            if cached is None:
                metadata = self._assume(account_id)
                creds = _RoleCredentials(
                    duration=self._request.duration,
                    access_key=metadata["access_key"],
                    secret_key=metadata["secret_key"],
                    token=metadata["token"],
                    expiry_time=datetime.fromisoformat(metadata["expiry_time"]),
                    refresh_using=lambda: self._assume(account_id),
                    method="sts-assume-role",
                )
                cached = aws.Session.from_credentials(creds)
                self._cache[account_id] = cached
            return cached

    def forget(self, account_id: str) -> None:
        with self._guard:
            self._cache.pop(account_id, None)
