"""The fences around task code: a clean environment and, on Linux, Landlock.

A worker process (orgrunner.engine.worker) starts with an environment built here from scratch, so no
credential source is named in it, and restricts itself with Landlock before it imports any task
code: it may read the Python installation, the shared libraries, the few /etc files DNS and TLS
need, the task folders and the config folder; write only to its private scratch folder; connect
over TCP only to the AWS endpoint's port (ABI 4+); and, from ABI 6, neither signal processes nor
reach abstract unix sockets outside its own domain. Landlock also keeps a restricted process from
ptrace-reading processes outside its domain, `/proc/<parent>/environ` and `mem` included, even as
root. The parent makes itself non-dumpable (`make_undumpable`).

A small ctypes module rather than a binding from the package index: the syscalls are three, the
structures three, and the only binding there (`landlock`, a 2025 development release) covers
neither network rules nor scopes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# The test-only switch: workers keep the parent's environment and no Landlock. Only a test that
# shows the fences matter (tests/test_attacks.py) sets it; every run says so when it is set.
UNFENCED_ENV = "ORGRUNNER_TEST_ONLY_UNFENCED_WORKERS"

# syscall numbers: the same on every Linux architecture (generic syscall table, 5.13+)
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH, _RULE_NET_PORT = 1, 2
_PR_SET_NO_NEW_PRIVS, _PR_SET_DUMPABLE = 38, 4

# filesystem access rights, by the ABI that introduced them
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_ABI1 = (1 << 13) - 1  # execute ... make_sym
_FS_REFER, _FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# the scratch folder: files and folders made, written, removed; never device nodes or sockets
_REMOVE_DIR, _REMOVE_FILE, _MAKE_DIR = 1 << 4, 1 << 5, 1 << 7
_MAKE_REG, _MAKE_FIFO, _MAKE_SYM = 1 << 8, 1 << 10, 1 << 12
WRITE = FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_DIR | _MAKE_REG | \
    _MAKE_FIFO | _MAKE_SYM | _FS_TRUNCATE


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    libc = _libc()
    if libc is None:
        return 0
    version = int(libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)))
    return max(version, 0)


UNDUMPABLE = False


def make_undumpable() -> bool:
    """PR_SET_DUMPABLE 0: no core dumps, and `/proc/PID/{environ,mem}` and ptrace of this process
    need CAP_SYS_PTRACE, so another process of the same user cannot read the operator's credentials."""
    global UNDUMPABLE
    libc = _libc()
    UNDUMPABLE = libc is not None and libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    return UNDUMPABLE


@dataclass(frozen=True)
class Allowances:
    """What a fenced worker may still reach."""

    read: tuple[str, ...]
    write: tuple[str, ...]
    ports: tuple[int, ...]


def endpoint_ports() -> tuple[int, ...]:
    """443, and the port of AWS_ENDPOINT_URL if one is set."""
    ports = {443}
    url = os.environ.get("AWS_ENDPOINT_URL")
    if url:
        parts = urlsplit(url)
        ports.add(parts.port or (80 if parts.scheme == "http" else 443))
    return tuple(sorted(ports))


_SYSTEM_READ = (
    "/usr/lib", "/usr/lib64", "/usr/local/lib", "/lib", "/lib64", "/usr/share/zoneinfo",
    "/usr/share/ca-certificates", "/etc/ssl", "/etc/pki", "/etc/ca-certificates", "/etc/ld.so.cache",
    "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf",
    "/etc/localtime", "/etc/os-release", "/dev/null", "/dev/urandom", "/dev/random",
)


def python_paths() -> list[str]:
    """The interpreter's installation and every folder on its import path."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent), str(Path(__file__).resolve().parents[2])]
    paths += [p for p in sys.path if p]
    return paths


def _too_wide(path: Path, home: Path) -> bool:
    """The root, or a folder holding the user's home (and so ~/.aws): never granted whole."""
    return path == Path("/") or path == home or home.is_relative_to(path)


def allowances(task_paths: Iterable[Path], scratch: Path, home: Path) -> Allowances:
    read: list[str] = []
    for candidate in [*_SYSTEM_READ, *python_paths(), *map(str, task_paths)]:
        path = Path(candidate)
        try:
            path = path.resolve()
        except OSError:
            continue
        if path.exists() and not _too_wide(path, home) and str(path) not in read:
            read.append(str(path))
    return Allowances(tuple(read), (str(scratch), "/dev/null"), endpoint_ports())


def restrict(allowed: Allowances) -> str:
    """Restrict this process (and every thread and child it starts later) with Landlock; return
    a line naming what is in force. Call before any thread starts."""
    libc = _libc()
    abi = landlock_abi()
    if libc is None or abi < 1:
        return "no Landlock on this system"
    handled_fs = _FS_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0) | \
        (_FS_IOCTL_DEV if abi >= 5 else 0)
    handled_net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL) if abi >= 6 else 0
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = int(libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        for paths, access in ((allowed.read, READ), (allowed.write, WRITE)):
            for path in paths:
                _add_path(libc, ruleset, path, access & handled_fs)
        for port in allowed.ports if handled_net else ():
            rule = _NetPortAttr(_NET_CONNECT_TCP, port)
            if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                raise OSError(ctypes.get_errno(), f"landlock_add_rule port {port}")
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    parts = [f"Landlock ABI {abi}: reads only Python, task and config folders, writes only its scratch folder"]
    parts.append(f"TCP connect to port {', '.join(map(str, allowed.ports))} only" if handled_net
                 else "network not fenced (ABI < 4)")
    if scoped:
        parts.append("signals and abstract sockets scoped")
    return "; ".join(parts)


def _add_path(libc: ctypes.CDLL, ruleset: int, path: str, access: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):
            access &= _FILE_ONLY
        rule = _PathBeneathAttr(access, fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)


# --- the worker's environment ------------------------------------------------------------------

# What a worker keeps of the parent's environment: where AWS is, and how the engine calls it.
_KEPT = (
    "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
    "AWS_STS_REGIONAL_ENDPOINTS", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT", "AWS_CA_BUNDLE",
    "ORGRUNNER_CONNECT_TIMEOUT", "ORGRUNNER_READ_TIMEOUT", "ORGRUNNER_RETRY_ATTEMPTS", "ORGRUNNER_DEBUG",
    "ORGRUNNER_EMULATOR",  # the emulator-only S3 Control host rewrite (aws.py), which task clients need there
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
)


def worker_environment(scratch: Path) -> dict[str, str]:
    """An environment built from scratch: no credential or profile variable, no container
    credential endpoint, empty AWS config and credentials files, HOME an empty private folder."""
    if unfenced():
        return dict(os.environ)
    home = scratch / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    for name in ("aws-config", "aws-credentials"):
        (scratch / name).touch(mode=0o600)
    env = {k: os.environ[k] for k in _KEPT if k in os.environ}
    env.update({
        "HOME": str(home), "TMPDIR": str(scratch), "PATH": os.defpath,
        "AWS_CONFIG_FILE": str(scratch / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
    })
    return env


def unfenced() -> bool:
    """The test-only switch, parsed strictly with the other variables: `=0` or a typo never turns
    the fences off (a bad value is refused at start)."""
    from orgrunner.config import environment
    return environment.current().unfenced_workers
