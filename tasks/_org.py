"""org-accounts' two data shapes: `accounts.yaml` (the wanted accounts) and `Live` (the organization
as read now: OUs by path, accounts with their OU path and state). Reads only; no task here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from orgrunner.aws import call, paginate

EMAIL = re.compile(r"\A[^\s@]+@[^\s@]+\.[^\s@]+\Z")  # AWS's own pattern (Organizations' Email shape), 6..64
ACCOUNT_NAME = re.compile(r"\A[\x20-\x7e]{1,50}\Z")  # CreateAccount's AccountName: printable ASCII, 1..50
OU_NAME = re.compile(r"\A[\x20-\x7e]{1,128}\Z")
MAX_OU_DEPTH = 5  # AWS: OUs nest at most five levels below the root
CLOSED_STATES = ("PENDING_CLOSURE", "SUSPENDED", "CLOSED")


class WantedAccount(BaseModel):
    """One member account of `accounts.yaml`. `tags` absent: its tags are not managed; `{}`: none."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str
    email: str = Field(min_length=6, max_length=64)
    ou: str = Field(description="OU path from the root, like /Workloads/Prod ('/' is the root)")
    tags: dict[str, str] | None = None
    closed: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not ACCOUNT_NAME.match(name) or name != name.strip():
            raise ValueError("an account name is 1 to 50 printable ASCII characters, without leading or trailing "
                             "spaces")
        return name

    @field_validator("email")
    @classmethod
    def _email(cls, email: str) -> str:
        if not EMAIL.match(email):
            raise ValueError("not an email address (AWS accepts NAME@DOMAIN.TLD, no spaces)")
        return email

    @field_validator("ou")
    @classmethod
    def _ou(cls, path: str) -> str:
        parts = ou_parts(path)
        if not path.startswith("/") or (path != "/" and (path.endswith("/") or not all(parts))):
            raise ValueError("an OU path starts with '/' and names each OU from the root: /Workloads/Prod")
        if len(parts) > MAX_OU_DEPTH:
            raise ValueError(f"AWS nests OUs at most {MAX_OU_DEPTH} levels below the root")
        bad = next((p for p in parts if not OU_NAME.match(p)), None)
        if bad is not None:
            raise ValueError(f"OU name {bad!r}: 1 to 128 printable ASCII characters")
        return path

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        if tags is None:
            return None
        if len(tags) > 50:
            raise ValueError("AWS allows at most 50 tags on an account")
        for key, value in tags.items():
            if not 1 <= len(key) <= 128 or key.lower().startswith("aws:") or len(value) > 256:
                raise ValueError(f"tag {key!r}: keys are 1 to 128 characters and not 'aws:...', values at most 256")
        return tags


class AccountsConfig(BaseModel):
    """config/accounts.yaml."""

    model_config = ConfigDict(extra="forbid", strict=True)
    accounts: list[WantedAccount] = []
    create_ous: bool = Field(False, description="create the OUs a path names that do not exist yet")
    prune: Literal["off", "close"] = Field("off", description="close: plan the closure of accounts not in the file")

    @field_validator("prune", mode="before")
    @classmethod
    def _prune(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("accounts")
    @classmethod
    def _unique(cls, accounts: list[WantedAccount]) -> list[WantedAccount]:
        for key in ("name", "email"):
            seen: dict[str, int] = {}
            for index, account in enumerate(accounts):
                value = str(getattr(account, key)).lower()
                if value in seen:
                    raise _error((index, key), getattr(account, key),
                                 f"{key} repeats that of accounts[{seen[value]}]: each account is listed once")
                seen[value] = index
        return accounts


def _error(loc: tuple[int | str, ...], value: Any, message: str) -> ValidationError:
    """A validation error located at `loc` below the field (so the line named is the entry's)."""
    detail = InitErrorDetails(type=PydanticCustomError("invalid", message), loc=loc, input=value)
    return ValidationError.from_exception_data("accounts", [detail])


def ou_parts(path: str) -> list[str]:
    return [] if path == "/" else path[1:].split("/")


def ou_path(parts: list[str]) -> str:
    return "/" + "/".join(parts)


@dataclass
class LiveAccount:
    id: str
    name: str
    email: str
    state: str
    ou: str  # OU path
    parent_id: str

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"

    def record(self, tags: dict[str, str] | None = None) -> dict[str, Any]:
        """What the journal keeps of an account: it outlives the account."""
        return {"account_id": self.id, "name": self.name, "email": self.email, "ou": self.ou,
                "state": self.state, **({"tags": tags} if tags is not None else {})}


@dataclass
class Live:
    """The organization now: its management account, OU ids by path, accounts by id."""

    management_id: str
    ous: dict[str, str]  # path -> id ("/" -> the root)
    accounts: dict[str, LiveAccount] = field(default_factory=dict)

    @classmethod
    def read(cls, orgs: Any) -> Live:
        """One breadth-first walk (ListOrganizationalUnitsForParent and ListAccountsForParent per
        OU); states from ListAccounts, `State` first (`Status` was retired on 2026-09-09)."""
        management = str(call(orgs, "describe_organization")["Organization"]["MasterAccountId"])
        root = paginate(orgs, "list_roots", "Roots")[0]["Id"]
        live = cls(management, {"/": root})
        states = {a["Id"]: a for a in paginate(orgs, "list_accounts", "Accounts")}
        queue = [("/", root)]
        while queue:
            path, parent = queue.pop(0)
            for a in paginate(orgs, "list_accounts_for_parent", "Accounts", ParentId=parent):
                data = states.get(a["Id"], a)
                live.accounts[a["Id"]] = LiveAccount(
                    a["Id"], str(data.get("Name", "")), str(data.get("Email", "")),
                    str(data.get("State") or data.get("Status") or "UNKNOWN"), path, parent)
            for ou in paginate(orgs, "list_organizational_units_for_parent", "OrganizationalUnits", ParentId=parent):
                child = ou_path([*ou_parts(path), ou["Name"]])
                live.ous[child] = ou["Id"]
                queue.append((child, ou["Id"]))
        return live

    def by_email(self, email: str) -> LiveAccount | None:
        return next((a for a in self.accounts.values() if a.email.lower() == email.lower()), None)

    def by_name(self, name: str) -> LiveAccount | None:
        return next((a for a in self.accounts.values() if a.name == name and a.active), None)


def tags_of(orgs: Any, account_id: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in paginate(orgs, "list_tags_for_resource", "Tags", ResourceId=account_id)}


def tag_lines(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """One `tag KEY: old -> new` line per differing tag."""
    return [f"tag {k}: {before.get(k, '(none)')} -> {after.get(k, '(removed)')}"
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
