"""What-if patches: engine changes tried out in a benchmark child process, never in orgrunner/.

A tool named `orgrunner+PATCH[+PATCH...]` (or `orgrunner-api+...`) runs orgrunner with these
patches applied in its own process, so the benchmark can show what a proposed engine change
would buy before anyone makes it. Each patch mirrors a change described in docs/performance.md:

- `class-cache`: botocore builds a new client class (one method per API operation, ~830 for
  EC2) for every client; cache the class per service and API version.
- `serial-loader`: the shared botocore loader parses a model once per thread that asks for it
  before the first parse is cached (32 workers: 32 parses of EC2's model at once); serialise loads.
- `shared-clients`: one guarded client per service, region and phase for the whole run, signing
  each request with the credentials of the account whose job is running (a context variable
  set by the runner per job), instead of a new session per account and client per target.
- `known-regions`: skip the per-account DescribeRegions when every requested region is one of
  the regions enabled in every account (they cannot be disabled).
- `lean-sessions`: the role assumer caches each account's refreshable credentials (about 1 KB)
  instead of a whole botocore session (about 136 KB, its event handlers and components).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import botocore.client
import botocore.credentials

# Regions enabled by default in every account; only opt-in regions can be disabled.
ALWAYS_ENABLED = frozenset({
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ca-central-1", "eu-west-1", "eu-west-2",
    "eu-west-3", "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2",
    "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "sa-east-1",
})

# A callable giving the current job's account credentials (resolved when a request is signed).
CURRENT: contextvars.ContextVar[Callable[[], botocore.credentials.Credentials] | None] = contextvars.ContextVar(
    "account_credentials", default=None)


class ContextCredentials(botocore.credentials.Credentials):
    """Credentials of whichever account the current job set in `CURRENT`; a client holding these
    signs each request for that account. Unset (say, in a thread a task started itself), signing
    fails instead of guessing."""

    def __init__(self) -> None:
        super().__init__("context", "context", None, method="orgrunner-context")

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        credentials = CURRENT.get()
        if credentials is None:
            raise RuntimeError("no account credentials in this context")
        return credentials().get_frozen_credentials()


def class_cache() -> None:
    cache: dict[tuple[str, str], type] = {}
    lock = threading.Lock()
    original = botocore.client.ClientCreator._create_client_class

    @functools.wraps(original)
    def cached(self: Any, service_name: str, service_model: Any) -> type:
        key = (service_name, service_model.api_version)
        with lock:
            cls = cache.get(key)
        if cls is None:
            cls = original(self, service_name, service_model)
            with lock:
                cls = cache.setdefault(key, cls)
        return cls

    botocore.client.ClientCreator._create_client_class = cached


def serial_loader() -> None:
    from orgrunner import aws

    loader = aws.shared_loader()
    lock = threading.RLock()
    for name in ("load_service_model", "load_data", "load_data_with_path", "list_available_services"):
        method = getattr(loader, name)

        def serialised(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            with lock:
                return _method(*args, **kwargs)

        setattr(loader, name, serialised)


def shared_clients(workers: int) -> None:
    from orgrunner import aws
    from orgrunner.guard import CallGuard
    from orgrunner.policy import phase_actions
    from orgrunner.runner import Runner
    from orgrunner.task import GLOBAL_REGION

    session = aws.Session.from_credentials(ContextCredentials(),
                                           aws.client_config(max_pool_connections=max(10, workers)))
    clients: dict[tuple[str, str, str, str], Any] = {}
    lock = threading.Lock()

    def shared(task: Any, service: str, region: str, phase: Any) -> Any:
        key = (task.name, service, region, phase)
        with lock:
            client = clients.get(key)
            if client is None:
                guard = CallGuard(task.name, phase, phase_actions(type(task), phase))
                client = clients[key] = guard.install(session.client(service, region))
            return client

    # The runner's `_clients` returns (make, guard) since the guard learnt to remember refusals a
    # task swallowed; a per-target guard is handed back (the shared client's own guard refuses).
    returns_guard = "tuple" in str(inspect.signature(Runner._clients).return_annotation)

    def _clients(self: Runner, target: Any, phase: Any) -> Any:
        region = aws.HOME_REGION if target.region == GLOBAL_REGION else target.region

        def make(service: str, _phase: Any) -> Any:
            return shared(self.task, service, region, phase)

        if returns_guard:
            return make, CallGuard(self.task.name, phase, phase_actions(type(self.task), phase))
        return make

    def in_account(method: Callable[..., None], account_of: Callable[..., str]) -> Callable[..., None]:
        @functools.wraps(method)
        def job(self: Runner, *args: Any) -> None:
            account_id = account_of(*args)
            token = CURRENT.set(lambda: self.assumer.session(account_id).credentials())
            try:
                method(self, *args)
            finally:
                CURRENT.reset(token)
        return job

    original_regions = Runner._regions

    def _regions(self: Runner, account: Any, wanted: list[str] | None) -> tuple[list[str], list[str]]:
        if not type(self.task).regional:
            return original_regions(self, account, wanted)
        self.assumer.session(account.id)  # assume the role here, so a failure is reported as such
        ec2 = shared(self.task, "ec2", aws.HOME_REGION, "plan")
        enabled = sorted(r["RegionName"] for r in aws.call(ec2, "describe_regions")["Regions"])
        if wanted is None:
            return enabled, []
        return [r for r in wanted if r in enabled], [r for r in wanted if r not in enabled]

    Runner._clients = _clients  # type: ignore[method-assign]
    Runner._regions = _regions  # type: ignore[method-assign]
    Runner._plan_account = in_account(Runner._plan_account, lambda pool, account, wanted: account.id)  # type: ignore
    Runner._plan_target = in_account(Runner._plan_target, lambda pool, target: target.account_id)  # type: ignore


def known_regions() -> None:
    from orgrunner.runner import Runner

    original = Runner._regions

    def _regions(self: Runner, account: Any, wanted: list[str] | None) -> tuple[list[str], list[str]]:
        if type(self.task).regional and wanted is not None and set(wanted) <= ALWAYS_ENABLED:
            return list(wanted), []
        return original(self, account, wanted)

    Runner._regions = _regions  # type: ignore[method-assign]


def lean_sessions() -> None:
    from orgrunner import aws
    from orgrunner import credentials as cr

    class Light:
        """What the runner asks of an account's session: its credentials, or a client."""

        def __init__(self, credentials: botocore.credentials.Credentials) -> None:
            self._credentials = credentials

        def credentials(self) -> botocore.credentials.Credentials:
            return self._credentials

        def client(self, service: str, region: str | None = None) -> Any:
            return aws.Session.from_credentials(self._credentials).client(service, region)

    def session(self: cr.RoleAssumer, account_id: str) -> Any:
        with self._guard:
            lock = self._locks.setdefault(account_id, threading.Lock())
        with lock:
            cached = self._cache.get(account_id)
            if cached is None:
                meta = self._assume(account_id)
                creds = cr._RoleCredentials(
                    duration=self._request.duration, access_key=meta["access_key"], secret_key=meta["secret_key"],
                    token=meta["token"], expiry_time=datetime.fromisoformat(meta["expiry_time"]),
                    refresh_using=lambda: self._assume(account_id), method="sts-assume-role")
                cached = self._cache[account_id] = Light(creds)
            return cached

    cr.RoleAssumer.session = session  # type: ignore[assignment]


def apply(patches: list[str], workers: int) -> None:
    """Apply the named patches, in a fixed order (known-regions wraps shared-clients)."""
    known = {"class-cache", "serial-loader", "shared-clients", "known-regions", "lean-sessions"}
    if unknown := set(patches) - known:
        raise SystemExit(f"unknown what-if patch(es): {', '.join(sorted(unknown))}")
    if "class-cache" in patches:
        class_cache()
    if "serial-loader" in patches:
        serial_loader()
    if "shared-clients" in patches:
        shared_clients(workers)
    if "known-regions" in patches:
        known_regions()
    if "lean-sessions" in patches:
        lean_sessions()
