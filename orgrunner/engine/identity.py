"""Who is calling: which credentials, which account, long-term or temporary.

orgrunner never falls back silently to the default profile: a profile must be named
(`--profile` or `AWS_PROFILE`) or credentials given explicitly in the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from botocore.exceptions import BotoCoreError, ClientError

from orgrunner import aws
from orgrunner.errors import InputError, SafetyRefusal
from orgrunner.records.audit import register_secret

CredentialKind = Literal["long-term", "temporary"]

# Environment variables that name credentials explicitly (keys, a container or web identity).
EXPLICIT_ENV = (
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",),
    ("AWS_CONTAINER_CREDENTIALS_FULL_URI",),
    ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"),
)


@dataclass(frozen=True)
class Caller:
    arn: str
    account_id: str
    kind: CredentialKind
    source: str  # "profile NAME" or "environment"
    key_prefix: str  # the access key id's first four characters: AKIA / ASIA; never more
    operator: str = ""  # the human behind the session; with an operator role, the first hop's
    long_term_first_hop: bool = False  # an operator role assumed with long-term keys and no MFA

    @property
    def long_term(self) -> bool:
        """Long-term keys decide this session, directly or through a first hop without MFA."""
        return self.kind == "long-term" or self.long_term_first_hop

    def describe(self) -> str:
        note = "; first hop from long-term keys without MFA" if self.long_term_first_hop else ""
        return f"{self.arn} (account {self.account_id}, {self.kind} credentials from {self.source}{note})"


def credential_source(profile: str | None) -> tuple[str | None, str]:
    """The profile to use (None: environment) and a label; refuses the implicit default profile."""
    profile = profile or os.environ.get("AWS_PROFILE") or None
    if profile:
        return profile, f"profile {profile}"
    if any(all(os.environ.get(v) for v in group) for group in EXPLICIT_ENV):
        return None, "environment"
    raise SafetyRefusal(
        "no profile named and no credentials in the environment: refusing to fall back to the "
        "default profile; pass --profile NAME or set AWS_PROFILE"
    )


def base_session(profile: str | None) -> tuple[aws.Session, str]:
    name, label = credential_source(profile)
    try:
        return aws.Session.from_profile(name), label
    except BotoCoreError as exc:  # e.g. ProfileNotFound
        raise InputError(f"credentials: {exc}") from None


def resolve_caller(session: aws.Session, source: str) -> Caller:
    """Ask STS who we are; classify the credentials by their access key id."""
    try:
        creds = session.credentials()
        if creds is None:
            raise SafetyRefusal(f"no credentials found in {source}")
        frozen = creds.get_frozen_credentials()
        register_secret(frozen.access_key, frozen.secret_key, frozen.token)
        key = frozen.access_key or ""
        ident = aws.call(session.client("sts"), "get_caller_identity")
    except ClientError as exc:
        raise SafetyRefusal(f"the caller's credentials were refused: {aws.error_code(exc)}") from None
    except BotoCoreError as exc:
        raise InputError(f"credentials: {exc}") from None
    kind: CredentialKind = "long-term" if key.startswith("AKIA") else "temporary"
    session.partition = aws.partition_of_arn(ident["Arn"])  # the caller's ARN decides the partition
    return Caller(arn=ident["Arn"], account_id=ident["Account"], kind=kind, source=source, key_prefix=key[:4],
                  operator=operator_name(ident["Arn"]))


def operator_name(caller_arn: str) -> str:
    """The human part of a caller ARN: the user, or the session name of an assumed role."""
    resource = caller_arn.split(":", 5)[-1]
    return resource.rsplit("/", 1)[-1] or resource
