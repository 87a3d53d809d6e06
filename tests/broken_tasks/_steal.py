"""Every route a hostile task might take to the operator's credentials, tried and noted.

Imported by `steals_credentials.py` (a module a task imports) and installed by
tests/test_attacks.py as the entry-point package `orgrunner-hostile` (module `hostile_entry_point`):
both try every route at import time, and the task again in plan and apply. A finding is one line,
`ROUTE: nothing ...` or `ROUTE: GOT <sha256 of the value, 16 hex>`: never the value itself.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import pwd
import re
import stat
import urllib.request
from collections.abc import Iterable

SECRET_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
               "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE")
_KEYISH = re.compile(rb"(?:aws_secret_access_key|aws_access_key_id|SecretAccessKey|AccessKeyId|accessToken)"
                     rb"[\"'\s:=]+([A-Za-z0-9/+=._-]{8,})")


def digest(value: str | bytes) -> str:
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()[:16]


def _got(route: str, values: Iterable[str | bytes]) -> str:
    found = sorted({digest(v) for v in values if v})
    return f"{route}: GOT {' '.join(found)}" if found else f"{route}: nothing"


def _keys_in(data: bytes) -> list[bytes]:
    return [m.group(1) for m in _KEYISH.finditer(data)]


def environment() -> str:
    return _got("environment", [os.environ[v] for v in SECRET_VARS if os.environ.get(v)])


def default_chain() -> str:
    try:
        import botocore.session

        creds = botocore.session.Session().get_credentials()
    except Exception as exc:
        return f"botocore default chain: nothing ({type(exc).__name__})"
    if creds is None:
        return "botocore default chain: nothing"
    frozen = creds.get_frozen_credentials()
    return _got("botocore default chain", [frozen.access_key, frozen.secret_key])


def profiles() -> str:
    try:
        import boto3

        names = boto3.Session().available_profiles
        got: list[str] = []
        for name in names:
            with contextlib.suppress(Exception):
                creds = boto3.Session(profile_name=name).get_credentials()
                if creds is not None:
                    got += [creds.get_frozen_credentials().access_key, creds.get_frozen_credentials().secret_key]
    except Exception as exc:
        return f"named profiles: nothing ({type(exc).__name__})"
    return _got(f"named profiles ({len(names)})", got)


def files(extra: Iterable[str] = ()) -> str:
    """~/.aws of the real user (found through pwd, not HOME), its SSO cache, and any given path."""
    home = pwd.getpwuid(os.getuid()).pw_dir
    paths = [f"{home}/.aws/credentials", f"{home}/.aws/config", *glob.glob(f"{home}/.aws/sso/cache/*")]
    for path in extra:
        paths += glob.glob(os.path.join(path, "*")) if os.path.isdir(path) else [path]
        paths += glob.glob(os.path.join(path, "sso", "cache", "*"))
    got: list[bytes] = []
    for path in paths:
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            got += _keys_in(handle.read(1 << 20))
    return _got(f"credential files ({len(paths)} tried)", got)


def metadata(urls: Iterable[str] = ()) -> str:
    wanted = ["http://169.254.169.254/latest/meta-data/iam/security-credentials/",
              "http://169.254.170.2/v2/credentials/", *urls]
    got: list[bytes] = []
    for url in wanted:
        with contextlib.suppress(Exception), urllib.request.urlopen(url, timeout=1) as answer:
            got += _keys_in(answer.read(1 << 16))
    return _got(f"metadata endpoints ({len(wanted)} tried)", got)


def parent_process() -> str:
    parent = os.getppid()
    got: list[bytes] = []
    notes: list[str] = []
    try:
        with open(f"/proc/{parent}/environ", "rb") as handle:
            for item in handle.read().split(b"\0"):
                name, _, value = item.partition(b"=")
                if name.decode(errors="replace") in SECRET_VARS:
                    got.append(value)
    except OSError as exc:
        notes.append(f"environ {exc.strerror}")
    try:
        with open(f"/proc/{parent}/maps") as maps:
            regions = [line.split()[0] for line in maps if "[heap]" in line]
        with open(f"/proc/{parent}/mem", "rb") as mem:
            for region in regions:
                start, end = (int(x, 16) for x in region.split("-"))
                mem.seek(start)
                got += _keys_in(mem.read(min(end - start, 64 << 20)))
    except OSError as exc:
        notes.append(f"mem {exc.strerror}")
    line = _got(f"/proc/{parent} environ and mem", got)
    return f"{line} ({'; '.join(notes)})" if notes and not got else line


def descriptors() -> str:
    """Every inherited file descriptor: what it is, and any credential in what can be read of it."""
    kinds: list[str] = []
    got: list[bytes] = []
    for fd in range(256):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        kind = "socket" if stat.S_ISSOCK(mode) else "file" if stat.S_ISREG(mode) else \
            "fifo" if stat.S_ISFIFO(mode) else "char" if stat.S_ISCHR(mode) else "other"
        kinds.append(f"{fd}={kind}")
        if kind == "file":
            with contextlib.suppress(OSError):
                got += _keys_in(os.pread(fd, 1 << 20, 0))
    return _got(f"file descriptors ({' '.join(kinds)})", got)


def direct_clients() -> list[str]:
    """Clients made directly, as code in a package's __init__ would, with whatever the SDK finds."""
    lines = []
    for service, operation in (("organizations", "list_handshakes_for_organization"), ("iam", "list_users"),
                               ("sts", "get_caller_identity")):
        try:
            import boto3

            answer = getattr(boto3.client(service, region_name="us-east-1"), operation)()
            lines.append(f"boto3.client({service!r}).{operation}: GOT {digest(json.dumps(answer, default=str))}")
        except Exception as exc:
            lines.append(f"boto3.client({service!r}).{operation}: nothing ({type(exc).__name__})")
    return lines


def everything(paths: Iterable[str] = (), urls: Iterable[str] = ()) -> list[str]:
    return [environment(), default_chain(), profiles(), files(paths), metadata(urls), parent_process(),
            descriptors(), *direct_clients()]


FOUND_AT_IMPORT = everything()
