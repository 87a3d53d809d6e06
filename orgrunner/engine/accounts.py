"""Organization enumeration and account selection.

Accounts come from Organizations (fully paginated; OU selectors walk nested OUs). Only ACTIVE
accounts are targeted; the management account and protected accounts are left out unless asked
for, and every account left out is reported with the reason.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from orgrunner import aws
from orgrunner.errors import InputError, SafetyRefusal

ACCOUNT_ID = re.compile(r"\A[0-9]{12}\Z")
OU_ID = re.compile(r"\A(ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}|r-[0-9a-z]{4,32})\Z")


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    email: str
    state: str
    tags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Account:
        # `Status` was retired on 2026-09-09 in favour of `State`; read State, fall back to Status.
        state = data.get("State") or data.get("Status") or "UNKNOWN"
        return cls(id=data["Id"], name=data.get("Name", ""), email=data.get("Email", ""), state=str(state))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email, "state": self.state,
                "tags": dict(self.tags)}


@dataclass
class Selectors:
    accounts: list[str] = field(default_factory=list)
    ous: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    include_management: bool = False
    include_protected: bool = False

    def validate(self) -> None:
        for flag, ids in (("--account", self.accounts), ("--exclude", self.exclude)):
            for account_id in ids:
                if not ACCOUNT_ID.match(account_id):
                    raise InputError(f"{flag} {account_id!r}: an account id is 12 digits")
        for ou in self.ous:
            if not OU_ID.match(ou):
                raise InputError(f"--ou {ou!r}: expected an OU id such as ou-ab12-cd34ef56 or a root id r-ab12")

    def to_dict(self) -> dict[str, Any]:
        return {"accounts": self.accounts, "ous": self.ous, "exclude": self.exclude, "tags": self.tags,
                "include_management": self.include_management, "include_protected": self.include_protected}


def parse_tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise InputError(f"--tag {value!r}: expected KEY=VALUE")
        tags[key] = val
    return tags


@dataclass
class OrgUnit:
    """A root or an OU: its id, name, parent, path from the root, and its direct member accounts."""

    id: str
    name: str
    parent: str | None
    path: str
    accounts: list[str] = field(default_factory=list)

    def total(self, units: list[OrgUnit]) -> int:
        """Accounts under this unit, nested OUs included."""
        children = [u for u in units if u.parent == self.id]
        return len(self.accounts) + sum(c.total(units) for c in children)


@dataclass
class Selection:
    targets: list[Account]
    skipped: list[tuple[Account, str]]
    management_account_id: str
    # targets opened by --include-protected (id -> name): they need their own confirmation
    protected: dict[str, str] = field(default_factory=dict)
    organization_id: str = ""  # targets opened by --include-protected: id -> name
    # organization scope: every account of the organization, as the parent read it (names, emails
    # and states the closure rules and confirmation take from here, never from task code)
    members: dict[str, Account] = field(default_factory=dict)


@dataclass(frozen=True)
class Protection:
    """Accounts never targeted: ids, and name patterns (`*prod*`) that `--include-protected` opens."""

    ids: frozenset[str] = frozenset()
    name_patterns: tuple[str, ...] = ()

    def reason(self, account: Account) -> str | None:
        if account.id in self.ids:
            return "protected account (configured in protected_accounts)"
        for pattern in self.name_patterns:
            if fnmatch.fnmatchcase(account.name.lower(), pattern.lower()):
                return f"protected by name pattern {pattern!r} (use --include-protected)"
        return None


class Organization:
    def __init__(self, session: aws.Session) -> None:
        self._client = session.client("organizations", session.home_region)

    def _api(self, operation: str, key: str, **params: Any) -> list[Any]:
        try:
            return aws.paginate(self._client, operation, key, **params)
        except ClientError as exc:
            code = aws.error_code(exc)
            if code == "AWSOrganizationsNotInUseException":
                raise InputError("the caller's account is not in an organization") from None
            if code in ("AccessDeniedException", "AccessDenied"):
                raise SafetyRefusal(
                    f"Organizations refused {operation}: run from the management account or a delegated "
                    "administrator"
                ) from None
            if code in ("ParentNotFoundException", "ChildNotFoundException", "InvalidInputException"):
                raise InputError(f"{code}: {exc.response['Error'].get('Message', '')}") from None
            raise

    def describe(self) -> dict[str, Any]:
        try:
            org: dict[str, Any] = aws.call(self._client, "describe_organization")["Organization"]
            return org
        except ClientError as exc:
            if aws.error_code(exc) == "AWSOrganizationsNotInUseException":
                raise InputError("the caller's account is not in an organization") from None
            raise

    def accounts(self) -> list[Account]:
        return [Account.from_api(a) for a in self._api("list_accounts", "Accounts")]

    def accounts_under(self, parent_id: str) -> set[str]:
        """Ids of every account under an OU or root, nested OUs included (walked breadth-first)."""
        found: set[str] = set()
        queue = [parent_id]
        while queue:
            parent = queue.pop(0)
            found.update(a["Id"] for a in self._api("list_accounts_for_parent", "Accounts", ParentId=parent))
            queue.extend(ou["Id"] for ou in self._api(
                "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent))
        return found

    def tree(self) -> list[OrgUnit]:
        """The roots and OUs, parents before children, each with its path of names from the root
        ("Root/Workloads/Prod") and its direct accounts, from one breadth-first walk (one
        ListOrganizationalUnitsForParent and one ListAccountsForParent per OU, not one ListParents
        per account; paged and retried on throttling by orgrunner.aws)."""
        units: list[OrgUnit] = []
        queue = [OrgUnit(r["Id"], str(r.get("Name") or "Root"), None, str(r.get("Name") or "Root"))
                 for r in self._api("list_roots", "Roots")]
        while queue:
            unit = queue.pop(0)
            units.append(unit)
            unit.accounts = [a["Id"] for a in self._api("list_accounts_for_parent", "Accounts", ParentId=unit.id)]
            children = self._api("list_organizational_units_for_parent", "OrganizationalUnits", ParentId=unit.id)
            queue.extend(OrgUnit(c["Id"], str(c.get("Name") or c["Id"]), unit.id,
                                 f"{unit.path}/{c.get('Name') or c['Id']}")
                         for c in sorted(children, key=lambda c: str(c.get("Name", ""))))
        return units

    def ou_paths(self) -> dict[str, str]:
        """Account id -> the path of OU names from the root down to the account's parent."""
        return {account: unit.path for unit in self.tree() for account in unit.accounts}

    def tags(self, account_id: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self._api("list_tags_for_resource", "Tags", ResourceId=account_id)}

    def select(self, selectors: Selectors, protection: Protection = Protection()) -> Selection:
        selectors.validate()
        org = self.describe()
        management_id = str(org["MasterAccountId"])
        accounts = self.accounts()
        by_id = {a.id: a for a in accounts}
        for account_id in selectors.accounts:
            if account_id not in by_id:
                raise InputError(f"--account {account_id}: not an account of this organization")
        chosen = [a for a in accounts if not selectors.accounts or a.id in selectors.accounts]
        if selectors.ous:
            under: set[str] = set()
            for ou in selectors.ous:
                try:
                    under |= self.accounts_under(ou)
                except InputError:
                    raise InputError(f"--ou {ou}: no such OU or root in this organization") from None
            chosen = [a for a in chosen if a.id in under]
        targets: list[Account] = []
        skipped: list[tuple[Account, str]] = []
        protected: dict[str, str] = {}
        for account in chosen:
            reason = self._exclusion(account, selectors, protection, management_id)
            if reason is None and selectors.tags:
                account = Account(account.id, account.name, account.email, account.state,
                                  tuple(sorted(self.tags(account.id).items())))
                tags = dict(account.tags)
                if any(tags.get(k) != v for k, v in selectors.tags.items()):
                    continue  # not selected: filtered, not skipped
            if reason is None:
                targets.append(account)
                if protection.reason(account):
                    protected[account.id] = account.name
            else:
                skipped.append((account, reason))
        return Selection(targets=targets, skipped=skipped, management_account_id=management_id, protected=protected,
                         organization_id=str(org["Id"]))

    def management_target(self, selectors: Selectors, protection: Protection = Protection()) -> Selection:
        """The organization scope's one target: the management account, where organization-scope
        tasks (org-accounts) run. Protected by id: refused; by a name pattern: --include-protected."""
        org = self.describe()
        management_id = str(org["MasterAccountId"])
        members = {a.id: a for a in self.accounts()}
        management = members.get(management_id)
        if management is None:
            raise SafetyRefusal(f"the management account {management_id} is not among the organization's accounts")
        reason = self._exclusion(management, Selectors(include_management=True,
                                                       include_protected=selectors.include_protected),
                                 protection, management_id)
        if reason is not None:
            raise SafetyRefusal(f"the management account {management_id} ({management.name}), where organization-"
                                f"scope tasks run, is left out: {reason}")
        protected = {management.id: management.name} if protection.reason(management) else {}
        return Selection(targets=[management], skipped=[], management_account_id=management_id, protected=protected,
                         organization_id=str(org["Id"]), members=members)

    @staticmethod
    def _exclusion(account: Account, selectors: Selectors, protection: Protection, management_id: str) -> str | None:
        if account.id in selectors.exclude:
            return "excluded (--exclude)"
        if account.state != "ACTIVE":
            return f"not active ({account.state})"
        if account.id == management_id and not selectors.include_management:
            return "management account (use --include-management)"
        reason = protection.reason(account)
        if reason and not (selectors.include_protected and account.id not in protection.ids):
            return reason
        return None
