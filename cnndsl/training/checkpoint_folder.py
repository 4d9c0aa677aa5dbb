"""Checkpoint folders: writable, and written by one run at a time.

Input: the folder a run checkpoints into. `check_checkpoint_folder` says,
before any work, whether files can be created there (a read-only folder is
reported as such, not as a full disk). `FolderLock` keeps a second run out
while one writes there: an advisory flock on DIR/.lock, which names the
holder's process id and is removed on release; a lock file found free was
left by a run that died and is taken over. Temporary files carry their
writer's process id (.checkpoint-<pid>-XXXX.tmp), so a run deletes only those
of writers that are gone. Raises ModelError with the folder, the cause and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from cnndsl.runtime.executor import ModelError

try:
    import fcntl
except ImportError:  # NOTE: not on Windows: runs there go unlocked
    fcntl = None  # type: ignore[assignment]

TEMP_PREFIX = ".checkpoint-"
LOCK_NAME = ".lock"


def check_checkpoint_folder(folder: str | os.PathLike[str]) -> None:
    """ModelError now if a run could not checkpoint into folder (not a folder, not writable).

    Meant to be called before any work (data loading, training), so a read-only
    folder is reported at once instead of at the first checkpoint. A folder
    that does not exist yet must be creatable: its nearest existing parent is
    checked instead. Changes nothing on disk.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ModelError(
            f"{path}: cannot create the checkpoint folder (a file of that name exists);"
            " --checkpoint takes a folder"
        )
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing != path:
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ModelError(
                f"{path}: cannot create the checkpoint folder ({existing} is not a writable"
                " folder); pass another --checkpoint folder"
            )
        return
    problem = write_problem(path)
    if problem:
        raise ModelError(problem)


def write_problem(folder: Path) -> str | None:
    """Why no file can be created in folder (tried with an empty temporary file), else None."""
    try:
        fd, probe = tempfile.mkstemp(
            dir=folder, prefix=f"{TEMP_PREFIX}{os.getpid()}-", suffix=".tmp"
        )
    except OSError as e:
        return (
            f"{folder}: cannot write in the checkpoint folder ({e.strerror or e}); {write_fix(e)}"
        )
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None


def write_fix(e: OSError) -> str:
    """What to do about a failed write, by its cause."""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return "free some space or pass another --checkpoint folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the folder writable or pass another --checkpoint folder"
    return "pass another --checkpoint folder"


class FolderLock:
    """An advisory lock (flock) on DIR/.lock: one run checkpoints into a folder at a time.

    The lock file holds its holder's process id and is removed on release, so
    a lock file found free was left by a run that died (kill -9, power loss):
    it is taken over, and `acquire` says whose it was. flock locks go with the
    process: nothing stays locked after any exit. Where the file system has no
    flock (some network file systems) the run goes on unlocked.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; the process id of a dead holder it took over, if any.

        Raises ModelError while another run holds it; OSError if the lock file
        cannot be created.
        """
        if fcntl is None:
            return None
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _pid_in(fd)
                os.close(fd)
                who = " in this process" if holder == os.getpid() else ""
                pid = f" (process {holder})" if holder else ""
                raise ModelError(
                    f"{self.folder}: another run{who} is checkpointing into this folder{pid};"
                    " wait for it to finish, or pass another --checkpoint folder"
                ) from None
            except OSError:  # NOTE: no flock here (ENOLCK, EOPNOTSUPP): go on unlocked
                os.close(fd)
                return None
            # The holder before us removes the file as it lets go: make sure we locked the
            # file that is there now, not the one it just removed.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            previous = _pid_in(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return previous if previous != os.getpid() else None
        raise ModelError(f"{self.folder}: cannot lock the checkpoint folder; try again")

    def release(self) -> None:
        """Remove the lock file and let go (also done when the process ends)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(fd)


def _pid_in(fd: int) -> int | None:
    """The process id a lock file holds, if it holds one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and len(text) < 12 else None


def alive(pid: int) -> bool:
    """Whether a process of that id exists (another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # NOTE: EPERM: it exists, under another user
        return True
    return True


def writer_pid(name: str) -> int | None:
    """The process id in a temporary file's name (.checkpoint-<pid>-XXXX.tmp), if any."""
    pid, sep, _ = name[len(TEMP_PREFIX) :].partition("-")
    return int(pid) if sep and pid.isascii() and pid.isdigit() and len(pid) < 12 else None


__all__ = [
    "LOCK_NAME",
    "TEMP_PREFIX",
    "FolderLock",
    "alive",
    "check_checkpoint_folder",
    "write_fix",
    "write_problem",
    "writer_pid",
]
