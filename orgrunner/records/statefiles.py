"""Files orgrunner writes: the state folder's (lock, journal, audit log) and the output paths
given on the command line (--report, --audit-log, --plan-out). One place opens them all.

The state folder is ours alone: created 0700 (files 0600) whatever the umask, refused when others
can write to it or when it belongs to another user. The one sharing allowed is the documented
one (docs/operations.md): a folder owned by a group the user is in, mode 0770, for cron and
operators; there, folders are made 0770 and files 0660, and nobody outside the group gets in.

Files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked after opening (`fstat`, so nothing
can be swapped in between): a symbolic link is refused (someone may have planted it to make us
truncate or append to a file of their choosing), anything that is not a regular file is refused
(a FIFO would hang the run, a device would swallow or refuse the records), and a state file must
belong to us (or, in a shared folder, to the folder's group). An output path from the command
line must be a regular file or not exist; a symbolic link there is followed only with
`--follow-symlinks`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

from orgrunner.errors import InputError, SafetyRefusal

Mode = Literal["r", "a", "w", "r+"]
SHARED_HOW = "docs/operations.md: a folder for cron and operators is owned by their group, mode 0770"


def _mode_text(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _in_group(gid: int) -> bool:
    return gid == os.getegid() or gid in os.getgroups()


def _shared(st: os.stat_result) -> bool:
    """The documented shared setup: group-writable, not writable by others, a group we are in."""
    mode = stat.S_IMODE(st.st_mode)
    return bool(mode & stat.S_IWGRP) and not mode & stat.S_IWOTH and _in_group(st.st_gid)


def check_folder(path: Path, st: os.stat_result, what: str = "state folder") -> bool:
    """Refuse a folder others could plant files in; return whether it is a shared (group) folder."""
    if not stat.S_ISDIR(st.st_mode):
        raise SafetyRefusal(f"{what} {path} is not a folder; remove it or set ORGRUNNER_STATE_DIR elsewhere")
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        raise SafetyRefusal(f"{what} {path} is writable by others (mode {_mode_text(st)}): run "
                            f"`chmod o-w {path}`, or use a private one ({SHARED_HOW})")
    if st.st_uid != os.geteuid() and not _shared(st):
        raise SafetyRefusal(f"{what} {path} belongs to another user (uid {st.st_uid}, mode {_mode_text(st)}): "
                            f"use your own (unset ORGRUNNER_STATE_DIR), or a shared one ({SHARED_HOW})")
    return st.st_uid != os.geteuid() or bool(mode & stat.S_IWGRP)


class StateFolder:
    """The state folder, checked: where the lock, the journal and the audit log live."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            if not root.exists():
                _make_private_parents(root)
            st = root.stat()  # the folder itself is the operator's choice; what is inside is never followed
        except OSError as exc:
            raise InputError(f"state folder {root}: {exc.strerror or exc}") from None
        self.shared = check_folder(root, st)
        self.dir_mode = 0o770 if self.shared else 0o700
        self.file_mode = 0o660 if self.shared else 0o600

    def folder(self, *parts: str) -> Path:
        """A subfolder (made if missing, with our mode), never through a symbolic link."""
        path = self.root
        for part in parts:
            path = path / part
            try:
                os.mkdir(path, self.dir_mode)
                os.chmod(path, self.dir_mode, follow_symlinks=False)  # the umask does not decide
            except FileExistsError:
                pass
            except OSError as exc:
                raise InputError(f"state folder {path}: {exc.strerror or exc}") from None
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise SafetyRefusal(f"{path} is a symbolic link, not a folder: refused; remove it")
            check_folder(path, st, "folder")
        return path

    def open(self, path: Path, mode: Mode) -> IO[str]:
        """A file inside the state folder: never followed, a regular file, ours (or our group's)."""
        return open_file(path, mode, follow_symlinks=False, create_mode=self.file_mode,
                         owner_group=self.shared, state=True)

def _make_private_parents(root: Path) -> None:
    """Create the state folder and any missing parents 0700, whatever the umask."""
    missing = []
    path = root
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
            os.chmod(folder, 0o700)


def _flags(mode: Mode) -> int:
    return {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND, "w": os.O_WRONLY, "r+": os.O_RDWR}[mode]


def open_file(path: Path, mode: Mode, *, follow_symlinks: bool = False, create_mode: int = 0o600,
              owner_group: bool = False, state: bool = False, flag: str | None = None) -> IO[str]:
    """Open `path` for text: created with `create_mode` when missing (not for "r"), never through a
    symbolic link unless `follow_symlinks`, and refused unless it is a regular file (and, for a
    state file, ours). "w" truncates only after these checks. Errors are one line (exit 2 or 3)."""
    where = f"{flag} {path}" if flag else str(path)
    base = _flags(mode) | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    created = False
    try:
        if mode != "r":
            try:
                fd = os.open(path, base | os.O_CREAT | os.O_EXCL, create_mode)
                created = True
            except FileExistsError:
                try:
                    fd = os.open(path, base)
                except FileNotFoundError:  # a dangling link, followed on purpose: create its target
                    fd = os.open(path, base | os.O_CREAT, create_mode)
        else:
            fd = os.open(path, base)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refusal(state, f"{where} is a symbolic link: refused"
                           + ("; remove it (someone may have planted it)" if state else
                              " (pass --follow-symlinks to write through it)")) from None
        if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened without blocking
            raise _refusal(state, f"{where} is not a regular file (a FIFO): refused") from None
        raise InputError(f"{where}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(state, f"{where} is not a regular file ({_kind(st)}): refused")
        if state and st.st_uid != os.geteuid() and not (owner_group and _in_group(st.st_gid)):
            raise SafetyRefusal(f"{where} belongs to another user (uid {st.st_uid}): refused; "
                                "remove it (files in the state folder are orgrunner's own)")
        if created:
            os.fchmod(fd, create_mode)  # the umask does not decide
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if mode == "w":
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, {"r": "r", "a": "a", "w": "w", "r+": "r+"}[mode], encoding="utf-8")


def _refusal(state: bool, message: str) -> InputError | SafetyRefusal:
    return SafetyRefusal(message) if state else InputError(message)


def _kind(st: os.stat_result) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(st.st_mode):
            return name
    return "not a file"


def check_output_path(flag: str, path: Path, *, follow_symlinks: bool = False, create_parents: bool = True) -> None:
    """Before any AWS call: an output path must be a regular file or not exist; a symbolic link
    only with --follow-symlinks; FIFOs, devices and folders are refused (exit 2)."""
    def status(how: Callable[[Path], os.stat_result]) -> os.stat_result | None:
        try:
            return how(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InputError(f"{flag} {path}: {exc.strerror or exc}") from None

    st = status(os.lstat)
    if st is not None and stat.S_ISLNK(st.st_mode):
        if not follow_symlinks:
            raise InputError(f"{flag} {path} is a symbolic link: refused (pass --follow-symlinks to write through it)")
        st = status(os.stat)
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{flag} {path} is not a regular file ({_kind(st)}): refused")
    folder = path.parent
    while create_parents and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"{flag} {path}: not a writable file path")

