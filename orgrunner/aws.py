"""The one place that creates AWS clients, pages through list calls and retries.

Every botocore session orgrunner makes shares one data loader, so service models are parsed
once per process however many accounts and regions are covered. Retries are layered: botocore's
standard retry mode (which knows throttling codes such as Organizations'
`TooManyRequestsException`) inside, jittered exponential backoff with tenacity outside.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import botocore.credentials
import botocore.exceptions
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from orgrunner.config import environment

USER_AGENT = "orgrunner/0.1"
HOME_REGION = "us-east-1"  # the aws partition's region for Organizations, IAM and other global APIs
# Each partition's region for global calls (Organizations, IAM, STS of the first hop).
HOME_REGIONS = {"aws": "us-east-1", "aws-us-gov": "us-gov-west-1", "aws-cn": "cn-north-1"}
RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "SlowDown", "RequestThrottled",
    "EC2ThrottledException", "ServiceUnavailable", "InternalError", "InternalFailure", "ServiceException",
})
TRANSIENT_ERRORS = (ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError)

_loader_lock = threading.Lock()
_shared_loader: botocore.loaders.Loader | None = None


def shared_loader() -> botocore.loaders.Loader:
    """The process-wide data loader: service models are read and parsed once."""
    global _shared_loader
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = botocore.loaders.create_loader()
        return _shared_loader


def client_config(max_pool_connections: int = 10) -> Config:
    """Standard retry mode (AWS_MAX_ATTEMPTS, default 5 attempts); timeouts from
    ORGRUNNER_CONNECT_TIMEOUT / ORGRUNNER_READ_TIMEOUT (seconds, default 10 / 30)."""
    env = environment.current()  # parsed and checked once, at start
    return Config(
        retries={"mode": "standard", "max_attempts": env.max_attempts},
        max_pool_connections=max_pool_connections,
        connect_timeout=env.connect_timeout,
        read_timeout=env.read_timeout,
        user_agent_extra=USER_AGENT,
    )


_acting_for: contextvars.ContextVar[Callable[[], botocore.credentials.Credentials] | None] = \
    contextvars.ContextVar("orgrunner_acting_for", default=None)


class AccountCredentials(botocore.credentials.Credentials):
    """The credentials of whichever account the current job works for (see `acting_for`).

    One client per service and region then serves every account: client creation, the costly
    part of botocore, happens a handful of times per run instead of once per target, and
    connections are reused across accounts. A call made outside any job (a thread a task started
    itself) finds no account and fails closed instead of signing for the wrong one."""

    def __init__(self) -> None:  # no static keys: every read goes to the job's credentials
        self.method = "orgrunner-per-job"
        self.account_id = None

    def _current(self) -> botocore.credentials.Credentials:
        source = _acting_for.get()
        if source is None:
            raise RuntimeError("an AWS call outside any orgrunner job (from a thread the engine did not start)")
        return source()

    def get_frozen_credentials(self) -> botocore.credentials.ReadOnlyCredentials:
        frozen: botocore.credentials.ReadOnlyCredentials = self._current().get_frozen_credentials()
        return frozen

    @property
    def access_key(self) -> str:  # type: ignore[override]
        return str(self.get_frozen_credentials().access_key)

    @property
    def secret_key(self) -> str:  # type: ignore[override]
        return str(self.get_frozen_credentials().secret_key)

    @property
    def token(self) -> str | None:  # type: ignore[override]
        return self.get_frozen_credentials().token


@contextlib.contextmanager
def acting_for(credentials: Callable[[], botocore.credentials.Credentials]) -> Iterator[None]:
    """Within this block (this thread), clients of an `AccountCredentials` session sign as `credentials()`."""
    token = _acting_for.set(credentials)
    try:
        yield
    finally:
        _acting_for.reset(token)


class _CredentialedSession(botocore.session.Session):
    """A botocore session whose credentials are handed in (static or refreshable)."""

    def __init__(self, credentials: botocore.credentials.Credentials) -> None:
        super().__init__()
        self._given_credentials = credentials

    def get_credentials(self) -> botocore.credentials.Credentials:
        return self._given_credentials


class Session:
    """Creates clients for one set of credentials; safe to share between threads.

    `partition` (aws, aws-us-gov, aws-cn) decides the home region of global calls; it starts as
    the partition of the configured region and is set from the caller's ARN once STS said who
    we are (see `identity.resolve_caller`)."""

    def __init__(self, botocore_session: botocore.session.Session, config: Config | None = None,
                 partition: str | None = None) -> None:
        self._session = botocore_session
        self._session.register_component("data_loader", shared_loader())
        # Member sessions use the regional STS endpoint of the home region, never the global one.
        self._session.set_config_variable("sts_regional_endpoints", "regional")
        configured = self._session.get_config_variable("region")
        self.partition = partition or partition_of_region(configured or HOME_REGION)
        self._session.register("after-call.*.*", _count_retries)
        _install_emulator_hooks(self._session)
        self._config = config or client_config()
        self._lock = threading.Lock()

    @classmethod
    def from_credentials(cls, credentials: botocore.credentials.Credentials,
                         config: Config | None = None, partition: str = "aws") -> Session:
        return cls(_CredentialedSession(credentials), config, partition)

    @property
    def home_region(self) -> str:
        return home_region(self.partition)

    @classmethod
    def from_profile(cls, profile: str | None, config: Config | None = None) -> Session:
        return cls(botocore.session.Session(profile=profile), config)

    @property
    def botocore_session(self) -> botocore.session.Session:
        return self._session

    def credentials(self) -> botocore.credentials.Credentials | None:
        creds: botocore.credentials.Credentials | None = self._session.get_credentials()
        return creds

    def client(self, service: str, region: str | None = None) -> Any:
        # botocore sessions are not thread-safe while they build their components.
        with self._lock:
            return self._session.create_client(service, region_name=region or self.home_region, config=self._config)


def load_models(services: Iterable[str]) -> None:
    """Parse these services' models into the shared loader now (a client of each, discarded), so
    processes forked afterwards inherit them instead of each parsing its own (EC2's: ~0.2 s of CPU).
    Names botocore does not know (an IAM prefix that is not a service name) are passed over."""
    session = botocore.session.Session()
    session.register_component("data_loader", shared_loader())
    for service in services:
        with contextlib.suppress(botocore.exceptions.UnknownServiceError):
            session.create_client(service, region_name=HOME_REGION, aws_access_key_id="unused",
                                  aws_secret_access_key="unused")


@functools.cache
def _partition_regions() -> dict[str, frozenset[str]]:
    session = botocore.session.Session()
    session.register_component("data_loader", shared_loader())
    return {p: frozenset(session.get_available_regions("ec2", p)) for p in session.get_available_partitions()}


def partition_of_region(region: str) -> str:
    """The partition a region belongs to (botocore's endpoint data); "aws" for a region it does not know."""
    return next((p for p, regions in _partition_regions().items() if region in regions), "aws")


def partition_of_arn(arn: str) -> str:
    """`arn:aws-us-gov:sts::...` -> "aws-us-gov"."""
    parts = arn.split(":")
    return parts[1] if len(parts) > 5 and parts[0] == "arn" and parts[1] else "aws"


def home_region(partition: str) -> str:
    """The region global calls of `partition` go to (us-east-1, us-gov-west-1, cn-north-1)."""
    if partition in HOME_REGIONS:
        return HOME_REGIONS[partition]
    regions = sorted(_partition_regions().get(partition, ()))
    return regions[0] if regions else HOME_REGION


def partition_regions(partition: str) -> frozenset[str]:
    """The regions of one partition: the only ones a run in that partition ever targets."""
    return _partition_regions().get(partition, frozenset())


_known_regions: frozenset[str] | None = None


def known_regions() -> frozenset[str]:
    """Every region botocore knows in any partition (opt-in regions included)."""
    global _known_regions
    if _known_regions is None:
        session = botocore.session.Session()
        session.register_component("data_loader", shared_loader())
        _known_regions = frozenset(
            region for partition in session.get_available_partitions()
            for region in session.get_available_regions("ec2", partition)
        )
    return _known_regions


class IncompleteAnswer(Exception):
    """An API answer without the field it must carry."""


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_retryable(exc: BaseException) -> bool:
    return error_code(exc) in RETRYABLE_CODES or isinstance(exc, TRANSIENT_ERRORS)


class RetryCount:
    """Retries made in this process: botocore's own (per call) and orgrunner's backoff on top."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.botocore = 0
        self.backoff = 0

    def add(self, botocore: int = 0, backoff: int = 0) -> None:
        with self._lock:
            self.botocore += botocore
            self.backoff += backoff

    @property
    def total(self) -> int:
        return self.botocore + self.backoff


RETRIES = RetryCount()


def _count_retries(**kwargs: Any) -> None:
    """after-call hook: botocore reports the retries behind each answer, success or error."""
    parsed = kwargs.get("parsed")
    attempts = parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) if isinstance(parsed, dict) else 0
    if attempts:
        RETRIES.add(botocore=int(attempts))


def _retrying(attempts: int) -> Retrying:
    return Retrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_random_exponential(multiplier=0.5, max=20),
        stop=stop_after_attempt(attempts),
        before_sleep=lambda _: RETRIES.add(backoff=1),
        reraise=True,
    )


def call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    """Call one API operation, retrying throttling and transient errors with jittered backoff."""
    method: Callable[..., dict[str, Any]] = getattr(client, operation)
    return _retrying(environment.current().retry_attempts)(method, **params)


T = TypeVar("T")


class WaitTimeout(Exception):
    """`poll` gave up: the operation had not settled within its time."""


def poll(check: Callable[[], T | None], timeout: float, what: str, first: float = 1.0, longest: float = 15.0) -> T:
    """Call `check` (which reads, e.g. DescribeCreateAccountStatus) until it returns a value, waiting
    `first` seconds after the first try, then twice as long each time up to `longest`. Raises
    WaitTimeout naming `what` after `timeout` seconds. An asynchronous AWS operation is followed
    to its end here, never with a sleep loop in a task."""
    deadline = time.monotonic() + timeout
    wait = first
    while True:
        found = check()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"{what}: not settled after {timeout:g} s")
        time.sleep(min(wait, left))
        wait = min(wait * 2, longest)


def paginate(client: Any, operation: str, key: str, **params: Any) -> list[Any]:
    """Every item of a paginated list call. Follows NextToken through empty pages; a throttled
    page restarts the listing from its first page after a backoff."""

    def collect() -> list[Any]:
        items: list[Any] = []
        for page in client.get_paginator(operation).paginate(**params):
            if key not in page:  # a truncated answer must fail the target, not read as "nothing there"
                raise IncompleteAnswer(f"{operation}: the answer has no {key!r}")
            items.extend(page[key])
        return items

    return _retrying(environment.current().retry_attempts)(collect)


_ACCOUNT_HOST = re.compile(r"^(https?://)\d{12}\.")


def _strip_account_from_host(**kwargs: Any) -> None:
    request = kwargs["request"]
    request.url = _ACCOUNT_HOST.sub(r"\1", request.url)


EMULATOR_SWITCH = "ORGRUNNER_EMULATOR"  # set by the sandbox and the tests' emulator (orgrunner/sandbox/org.py)


def emulator_rewrites_enabled() -> bool:
    """Only against orgrunner's own emulator, switched on explicitly: AWS_ENDPOINT_URL alone (a
    proxy, LocalStack) gets requests exactly as AWS would."""
    return environment.current().emulator and bool(os.environ.get("AWS_ENDPOINT_URL"))


def _install_emulator_hooks(session: botocore.session.Session) -> None:
    """Against orgrunner's emulator, S3 Control's account-id host prefix cannot be resolved; strip
    it so requests reach the endpoint. Never active otherwise."""
    if emulator_rewrites_enabled():
        session.register("before-sign.s3-control.*", _strip_account_from_host)
