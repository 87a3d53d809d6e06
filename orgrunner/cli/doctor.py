"""`orgrunner doctor`: can the role be assumed in every targeted account, and if not, why?

Each account's role is assumed with a session policy that allows nothing but
`sts:GetCallerIdentity`, which is then called: a check that can change nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from orgrunner import aws
from orgrunner.config.settings import Settings
from orgrunner.engine.accounts import Account
from orgrunner.engine.credentials import RoleAssumer, RoleRequest
from orgrunner.engine.runner import describe_error
from orgrunner.safety.policy import render

CHECK_POLICY = {"Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["sts:GetCallerIdentity"], "Resource": "*"}]}


def check_roles(session: aws.Session, accounts: list[Account], settings: Settings, name: str,
                identity: str) -> list[tuple[Account, str | None]]:
    """(account, None) where the role works, (account, reason) where it does not; in input order."""
    assumer = RoleAssumer(session, RoleRequest(
        role_name=settings.role_name, session_name=name, source_identity=identity, policy=render(CHECK_POLICY),
        duration=900, external_id=settings.external_id))

    # One STS client for every account, signing as the account being checked (see aws.AccountCredentials).
    sts = aws.Session.from_credentials(aws.AccountCredentials(),
                                       aws.client_config(max_pool_connections=settings.concurrency),
                                       partition=assumer.partition).client("sts")

    def check(account: Account) -> tuple[Account, str | None]:
        try:
            with aws.acting_for(lambda: assumer.credentials(account.id)):
                ident = aws.call(sts, "get_caller_identity")
            if ident.get("Account") != account.id:
                return account, f"the role answered as account {ident.get('Account')}"
            return account, None
        except Exception as exc:
            return account, describe_error(exc)

    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        return list(pool.map(check, accounts))
