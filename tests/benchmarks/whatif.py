"""What-if patches: engine changes tried out in a benchmark child process, never in orgrunner/.

A tool named `orgrunner+PATCH[+PATCH...]` (or `orgrunner-api+...`) runs orgrunner with these
patches applied in its own process, so the benchmark can show what a proposed engine change
would buy before anyone makes it. Each patch mirrors a change described in docs/performance.md:

- `class-cache`: botocore builds a new client class (one method per API operation, ~830 for
  EC2) for every client; cache the class per service and API version.
- `serial-loader`: the shared botocore loader parses a model once per thread that asks for it
  before the first parse is cached (32 workers: 32 parses of EC2's model at once); serialise loads.
- `known-regions`: skip the per-account DescribeRegions when every requested region is one of
  the regions enabled in every account (they cannot be disabled).

Two earlier what-ifs, `shared-clients` (one guarded client per service and region signing for
the current job's account) and `lean-sessions` (cache refreshable credentials, not sessions),
are the engine itself now (`orgrunner.aws.AccountCredentials`, `RoleAssumer.credentials`) and
were removed. `ContextCredentials` below remains: the benchmark's warm-up signs with it.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
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


def known_regions() -> None:
    from orgrunner.engine.runner import Runner

    original = Runner._regions

    def _regions(self: Runner, account: Any, wanted: list[str] | None) -> tuple[list[str], list[str]]:
        if type(self.task).regional and wanted is not None and set(wanted) <= ALWAYS_ENABLED:
            return list(wanted), []
        return original(self, account, wanted)

    Runner._regions = _regions  # type: ignore[method-assign]


def apply(patches: list[str], workers: int) -> None:
    """Apply the named patches, in a fixed order."""
    known = {"class-cache", "serial-loader", "known-regions"}
    if unknown := set(patches) - known:
        raise SystemExit(f"unknown what-if patch(es): {', '.join(sorted(unknown))}")
    if "class-cache" in patches:
        class_cache()
    if "serial-loader" in patches:
        serial_loader()
    if "known-regions" in patches:
        known_regions()
