"""Settings: `config/orgrunner.yaml` merged with command-line flags into one validated object.

Flags win over the file; the file wins over defaults. Without `--config`, the file is
`config/orgrunner.yaml` below the current folder if it exists (or `$ORGRUNNER_CONFIG`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orgrunner.config import configfile, environment
from orgrunner.engine.accounts import ACCOUNT_ID, Protection
from orgrunner.errors import InputError

DEFAULT_CONFIG = Path("config") / "orgrunner.yaml"


class ProtectedAccounts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(default_factory=list, description="account ids never targeted")
    name_patterns: list[str] = Field(default_factory=list, description="glob patterns on account names")

    @field_validator("ids")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        for account_id in ids:
            if not ACCOUNT_ID.match(account_id):
                raise ValueError(f"{account_id!r} is not a 12-digit account id")
        return ids


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role_name: str = Field("OrganizationAccountAccessRole", pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$")
    concurrency: int = Field(16, ge=1, le=256)
    processes: int | None = Field(None, ge=1, le=64,
                                  description="task worker processes; unset: one per CPU (at most 4), "
                                              "each with 50 accounts or more")
    worker_timeout: float = Field(300, gt=0, le=86400,
                                  description="seconds a task worker may hold targets without progress (no AWS "
                                              "answer, no result) before it is ended and its targets failed")
    session_duration: int = Field(3600, ge=900, le=43200, description="AssumeRole DurationSeconds")
    organization_role_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_+=,.@-]{1,64}$",
        description="role assumed in the management account for organization-scope tasks (org-accounts); "
                    "unset: role_name")
    max_closures_per_run: int = Field(1, ge=0, le=1000,
                                      description="account closures (CloseAccount) one run may apply at most")
    external_id: str | None = None
    audit_log: Path | None = None
    regions: list[str] | None = Field(None, description="default regions; all enabled ones if unset")
    protected_accounts: ProtectedAccounts = Field(default_factory=ProtectedAccounts)

    @field_validator("protected_accounts", mode="before")
    @classmethod
    def _protected(cls, value: Any) -> Any:
        """A plain list is short for `{ids: [...]}`."""
        return {"ids": value} if isinstance(value, list) else value

    def protection(self) -> Protection:
        protected = self.protected_accounts
        return Protection(ids=frozenset(protected.ids), name_patterns=tuple(protected.name_patterns))


def state_dir() -> Path:
    """orgrunner's state: audit log, journal, locks. `$ORGRUNNER_STATE_DIR`, else
    `$XDG_STATE_HOME/orgrunner`. Set it to one shared folder (say /var/lib/orgrunner) where cron
    and operators must share the run lock and the journal."""
    explicit = environment.current().state_dir
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "orgrunner"


def config_path(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    env = environment.current().config
    if env:
        return Path(env)
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def config_dir(explicit: Path | None) -> Path:
    """Where task config files live: beside the settings file, else `./config`."""
    path = config_path(explicit)
    return path.parent if path is not None else DEFAULT_CONFIG.parent


def load_settings(explicit: Path | None = None, **flags: Any) -> Settings:
    """The file's settings with the given flags (those not None) laid over them, validated."""
    path = config_path(explicit)
    base = configfile.load(path, Settings) if path is not None else Settings()
    overrides = {k: v for k, v in flags.items() if v is not None}
    if not overrides:
        return base
    try:
        return Settings.model_validate({**base.model_dump(exclude_unset=True), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "settings"
        raise InputError(f"{flag}: {err['msg']} (got {err.get('input')!r})") from None
