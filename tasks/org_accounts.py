"""org-accounts: the organization's member accounts as desired state (`config/accounts.yaml`).

Scope: the organization. One target, the management account (global), reached like any account:
AssumeRole into the configured role there with this task's session policy (see docs/accounts.md).

Plan, against the live organization (accounts are matched by email, which AWS keeps unique):
- `create-ou`: an OU a path names that does not exist (only with `create_ous: true`; otherwise
  the target fails naming the path), parents first;
- `create-account`: CreateAccount, then DescribeCreateAccountStatus until it settles (FAILED
  fails the change with AWS's FailureReason), then MoveAccount into its OU. The new account has
  `OrganizationAccountAccessRole`; the summary prints the `orgrunner baseline` command for it;
- `move-account`: the account's OU differs (MoveAccount from the OU the plan saw: drift otherwise);
- `tag-account`: tags added, changed or removed (an entry without `tags:` leaves them alone);
- `close-account`: `closed: true`, or an account absent from the file with `prune: close`.
  CloseAccount cannot be undone by orgrunner: AWS Support can reopen a closed account within 90
  days, never after. The engine itself refuses closing the management account or a protected
  account, refuses more closures than `max_closures_per_run`, and asks for the accounts' names.
Accounts in the organization but not in the file are reported (a note) and never touched unless
`prune: close`. Every change but `create-ou` is destructive: `--arm` and the typed confirmation.

Undo reverses moves and tags (if still as the run left them), plans the closure of the accounts
the run created (with the closure's own confirmation), and says what it cannot reverse: OUs it
created (delete them by hand once empty) and accounts it closed (AWS Support, within 90 days).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from orgrunner.aws import call, error_code, poll
from orgrunner.errors import ConfigMismatch, TargetError
from orgrunner.task import ApplyContext, Change, Drift, Task, TaskContext, register

from ._org import CLOSED_STATES, AccountsConfig, Live, LiveAccount, ou_parts, ou_path, tag_lines, tags_of

CREATE_TIMEOUT = 1800.0  # seconds CreateAccount may stay IN_PROGRESS (AWS: usually a few minutes)
NO_REOPEN = "orgrunner cannot reopen a closed account: AWS Support can, within 90 days of the closure; never after"


@register
class OrgAccounts(Task):
    name = "org-accounts"
    description = "Member accounts as desired state: create, move, tag, and (guarded) close them."
    destructive = True
    regional = False
    scope = "organization"
    plan_actions = ("organizations:DescribeOrganization", "organizations:ListRoots", "organizations:ListAccounts",
                    "organizations:ListAccountsForParent", "organizations:ListOrganizationalUnitsForParent",
                    "organizations:ListTagsForResource", "organizations:DescribeAccount",
                    "organizations:DescribeCreateAccountStatus", "organizations:ListParents")
    apply_actions = ("organizations:CreateOrganizationalUnit", "organizations:CreateAccount",
                     "organizations:MoveAccount", "organizations:TagResource", "organizations:UntagResource",
                     "organizations:CloseAccount")
    undo_actions = ("organizations:MoveAccount", "organizations:TagResource", "organizations:UntagResource",
                    "organizations:CloseAccount")
    config_file = "accounts.yaml"
    Config = AccountsConfig

    def plan(self, ctx: TaskContext) -> list[Change]:
        config = self.config
        assert isinstance(config, AccountsConfig)
        orgs = ctx.client("organizations")
        live = Live.read(orgs)
        ous: list[Change] = []
        creates: list[Change] = []
        moves: list[Change] = []
        tags: list[Change] = []
        closes: list[Change] = []
        for index, want in enumerate(config.accounts):
            where = f"accounts.yaml accounts[{index}] ({want.name})"
            if not want.closed:
                for depth in range(1, len(ou_parts(want.ou)) + 1):
                    path = ou_path(ou_parts(want.ou)[:depth])
                    if path in live.ous or any(c.resource == path for c in ous):
                        continue
                    if not config.create_ous:
                        raise ConfigMismatch(f"{where}: OU {path} does not exist in the organization; create it, fix "
                                          "the path, or set create_ous: true")
                    ous.append(ctx.change(path, "create-ou", f"create OU {path}", before=None,
                                          after={"ou": path}, destructive=False))
            account = live.by_email(want.email)
            if account is None:
                same_name = live.by_name(want.name)
                if same_name is not None:
                    raise TargetError(f"{where}: account {same_name.id} is named {want.name!r} but its email is "
                                      f"{same_name.email}, not {want.email}; orgrunner does not change emails")
                if want.closed:
                    ctx.note(f"{want.name} ({want.email}) is marked closed and is not in the organization")
                    continue
                wanted = {"name": want.name, "email": want.email, "ou": want.ou, "tags": want.tags or {}}
                creates.append(ctx.change(
                    want.name, "create-account", f"create account {want.name} <{want.email}> in {want.ou}",
                    details=[f"{k}: (none) -> {v}" for k, v in (("email", want.email), ("ou", want.ou))]
                    + tag_lines({}, want.tags or {}),
                    before=None, after=wanted, undo={"email": want.email}))
                continue
            label = f"{account.name} ({account.id})"
            if account.id == live.management_id and want.closed:
                raise TargetError(f"{where}: {label} is the management account: it can never be closed")
            if not account.active:
                if not want.closed:
                    ctx.note(f"{label} is {account.state}: {NO_REOPEN}; mark it closed: true or remove it")
                continue
            if want.closed:
                closes.append(self._closure(ctx, account, tags_of(orgs, account.id), "closed: true in accounts.yaml"))
                continue
            if account.name != want.name:
                ctx.note(f"{label}: named {want.name!r} in accounts.yaml; orgrunner does not rename accounts")
            if account.ou != want.ou:
                moves.append(ctx.change(
                    account.id, "move-account", f"{label}: move {account.ou} -> {want.ou}",
                    details=[f"ou: {account.ou} -> {want.ou}"],
                    before={"account_id": account.id, "name": account.name, "ou": account.ou,
                            "parent_id": account.parent_id},
                    after={"account_id": account.id, "name": account.name, "ou": want.ou}, undo={"ou": account.ou}))
            if want.tags is not None:
                now = tags_of(orgs, account.id)
                if now != want.tags:
                    tags.append(self._retag(ctx, account, now, want.tags))
        listed = {w.email.lower() for w in config.accounts}
        for account in sorted(live.accounts.values(), key=lambda a: a.name):
            if account.email.lower() in listed or not account.active or account.id == live.management_id:
                continue
            if config.prune == "close":
                closes.append(self._closure(ctx, account, tags_of(orgs, account.id),
                                            "not in accounts.yaml, prune: close"))
            else:
                ctx.note(f"unmanaged: {account.name} ({account.id}) in {account.ou}: not in accounts.yaml; left alone")
        return [*ous, *creates, *moves, *tags, *closes]

    @staticmethod
    def _closure(ctx: TaskContext, account: LiveAccount, tags: dict[str, str], why: str) -> Change:
        return ctx.change(
            account.id, "close-account", f"{account.name} ({account.id}): CLOSE the account ({why})",
            details=[f"email: {account.email}", f"ou: {account.ou}", "state: ACTIVE -> PENDING_CLOSURE -> SUSPENDED",
                     NO_REOPEN],
            before=account.record(tags), after={"account_id": account.id, "state": "SUSPENDED"},
            undo={"reopen": NO_REOPEN}, risk="closes an AWS account")

    @staticmethod
    def _retag(ctx: TaskContext, account: LiveAccount, now: dict[str, str], wanted: dict[str, str]) -> Change:
        return ctx.change(
            account.id, "tag-account", f"{account.name} ({account.id}): set tags",
            details=tag_lines(now, wanted), before={"account_id": account.id, "name": account.name, "tags": now},
            after={"account_id": account.id, "name": account.name, "tags": wanted}, undo={"tags": now})

    def plan_undo(self, ctx: TaskContext, applied: list[Change]) -> list[Change]:
        orgs = ctx.client("organizations")
        live = Live.read(orgs)
        changes = []
        for done in applied:
            if done.action == "create-ou":
                ctx.note(f"OU {done.resource} created by the run is left; delete it by hand once empty")
                continue
            if done.action == "close-account":
                ctx.note(f"{done.before['name']} ({done.resource}) was closed by the run: {NO_REOPEN}")
                continue
            account = live.by_email(done.after["email"]) if done.action == "create-account" else \
                live.accounts.get(done.resource)
            if account is None or not account.active:
                ctx.note(f"{done.resource}: no longer an active account of the organization; nothing to reverse")
            elif done.action == "create-account":
                changes.append(self._closure(ctx, account, tags_of(orgs, account.id), "created by the run undone"))
            elif done.action == "move-account" and account.ou == done.after["ou"]:
                changes.append(ctx.change(
                    account.id, "move-account", f"{account.name} ({account.id}): move back {account.ou} -> "
                    f"{done.before['ou']}", details=[f"ou: {account.ou} -> {done.before['ou']}"],
                    before={"account_id": account.id, "name": account.name, "ou": account.ou,
                            "parent_id": account.parent_id},
                    after={"account_id": account.id, "name": account.name, "ou": done.before["ou"]}))
            elif done.action == "tag-account" and tags_of(orgs, account.id) == done.after["tags"]:
                changes.append(self._retag(ctx, account, done.after["tags"], done.before["tags"]))
            else:
                ctx.note(f"{account.name} ({account.id}) has changed since the run; {done.action} not reversed")
        return changes

    def apply(self, ctx: ApplyContext, change: Change) -> str:
        orgs = ctx.client("organizations")
        live = Live.read(orgs)
        if change.action == "create-ou":
            if change.resource in live.ous:
                return "already done"
            parts = ou_parts(change.resource)
            parent = live.ous.get(ou_path(parts[:-1]))
            if parent is None:
                raise Drift(f"the parent of OU {change.resource} is gone")
            call(orgs, "create_organizational_unit", ParentId=parent, Name=parts[-1])
            return "applied"
        if change.action == "create-account":
            return self._create(ctx, orgs, live, change.after)
        account = live.accounts.get(change.resource)
        if account is None:
            raise Drift(f"account {change.resource} is no longer in the organization")
        if change.action == "close-account":
            if account.state in CLOSED_STATES:
                return "already done"
            seen = change.before
            if (account.name, account.email, account.ou) != (seen["name"], seen["email"], seen["ou"]) \
                    or account.id == live.management_id:
                raise Drift(f"{account.name} ({account.id}) changed since the plan (name, email or OU); not closed")
            call(orgs, "close_account", AccountId=account.id)
            ctx.note(f"closed {account.name} ({account.id}, {account.email}, {account.ou}): {NO_REOPEN}")
            return "applied"
        if change.action == "move-account":
            if account.ou == change.after["ou"]:
                return "already done"
            if account.parent_id != change.before["parent_id"]:
                raise Drift(f"{account.name} ({account.id}) was moved to {account.ou} since the plan; not moved")
            return self._move(orgs, live, account, change.after["ou"])
        now, wanted = tags_of(orgs, account.id), change.after["tags"]
        if now == wanted:
            return "already done"
        if now != change.before["tags"]:
            raise Drift(f"the tags of {account.name} ({account.id}) changed since the plan; not changed")
        changed = [{"Key": k, "Value": v} for k, v in sorted(wanted.items()) if now.get(k) != v]
        if changed:
            call(orgs, "tag_resource", ResourceId=account.id, Tags=changed)
        removed = sorted(set(now) - set(wanted))
        if removed:
            call(orgs, "untag_resource", ResourceId=account.id, TagKeys=removed)
        return "applied"

    @staticmethod
    def _move(orgs: Any, live: Live, account: LiveAccount, path: str) -> str:
        destination = live.ous.get(path)
        if destination is None:
            raise Drift(f"OU {path} does not exist (any more); {account.name} not moved")
        call(orgs, "move_account", AccountId=account.id, SourceParentId=account.parent_id,
             DestinationParentId=destination)
        return "applied"

    def _create(self, ctx: ApplyContext, orgs: Any, live: Live, wanted: dict[str, Any]) -> str:
        existing = live.by_email(wanted["email"])
        if existing is not None:
            if existing.name == wanted["name"] and existing.ou == wanted["ou"] and existing.active:
                return "already done"
            raise Drift(f"an account with {wanted['email']} appeared since the plan ({existing.id}); not created")
        tags = [{"Key": k, "Value": v} for k, v in sorted(wanted["tags"].items())]
        request = call(orgs, "create_account", Email=wanted["email"], AccountName=wanted["name"],
                       **({"Tags": tags} if tags else {}))["CreateAccountStatus"]

        def settled() -> dict[str, Any] | None:
            status: dict[str, Any] = call(orgs, "describe_create_account_status",
                                          CreateAccountRequestId=request["Id"])["CreateAccountStatus"]
            return None if status["State"] == "IN_PROGRESS" else status

        status = poll(settled, CREATE_TIMEOUT, f"CreateAccount {wanted['name']}")
        if status["State"] != "SUCCEEDED":
            raise TargetError(f"CreateAccount {wanted['name']} <{wanted['email']}>: {status['State']}: "
                              f"{status.get('FailureReason', 'no reason given')}")
        account_id = str(status["AccountId"])
        ctx.created_account(account_id)
        ctx.note(f"created {wanted['name']} ({account_id}) <{wanted['email']}>")
        if wanted["ou"] != "/":
            try:
                fresh = Live.read(orgs)
                self._move(orgs, fresh, fresh.accounts[account_id], wanted["ou"])
            except (ClientError, Drift, KeyError) as exc:
                code = error_code(exc) if isinstance(exc, ClientError) else str(exc)
                raise TargetError(f"created {wanted['name']} ({account_id}) but could not move it to "
                                  f"{wanted['ou']}: {code}; plan again to move it") from None
        return "applied"
