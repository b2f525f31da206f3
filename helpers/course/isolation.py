"""Grading as root: each submission's code runs as an unprivileged user of its own that cannot read
the solution or any other submission.

When the grader runs as root on Linux (a Gradescope container, an instructor's server):

* every grading process claims a user id of its own (:func:`claim_uid`; from
  :data:`FIRST_UID`, ids without an account, a lock file per id so that parallel jobs never
  share one) and runs the submission's code under it, in the group ``nogroup``, without
  supplementary groups; its private work folder is that user's, mode 0700;
* while grading, :class:`Guard` takes the "others" permissions off the solution (the checkout, or
  the installed package) and off the submissions as handed in, and gives "others" the right to
  *pass through* (not list) the folders above the interpreter and its import path where they
  lack it (``/root`` is 0700 where pyenv installs Python there), then restores every mode it
  changed, in reverse order, even when grading fails;
* when a submission's grading ends, every process of its user is killed (a daemon in a session
  of its own included).

A grader that is killed outright (SIGKILL, a power cut) cannot restore the modes: the folders it
changed are printed before grading starts, so they can be restored by hand. Not root, or not
Linux: none of this is possible, and the grader says its isolation is partial.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import resource
import signal
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

FIRST_UID = 61000  # sandbox ids are taken from here up, skipping any that has an account
UID_RANGE = 4096
NOGROUP = 65534  # the conventional unprivileged group (nogroup / nobody)
MAX_TASKS = 256  # processes and threads of one sandbox user: torch needs a few, a fork bomb more


@lru_cache(maxsize=None)
def available() -> bool:
    """Whether this process can run code as another user: root on Linux, where files can be
    given to an id without an account (not in a user namespace that maps only root)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        probe.touch()
        try:
            os.chown(probe, FIRST_UID, NOGROUP)
        except OSError:
            return False
    return True


def lock_dir() -> Path:
    """Root's folder for the grader's lock files: created 0700, and refused if anyone else made
    it first (a planted folder or link would let them steer root's writes)."""
    locks = Path(tempfile.gettempdir()) / "workbook-grader-locks"
    try:
        locks.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(locks)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise RuntimeError(
            f"{locks} is not a folder of this user's: remove it (someone else created it)"
        )
    os.chmod(locks, 0o700)
    return locks


def open_lock(name: str):
    """A lock file of :func:`lock_dir`, opened without following links."""
    fd = os.open(lock_dir() / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "r+")


@dataclass
class Account:
    """A user id claimed for one grading process (released by :meth:`release`)."""

    uid: int
    gid: int = NOGROUP
    _lock: object = None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None


def claim_uid() -> Account:
    """A user id no account has and no other grading process holds (an flock on a root-only
    lock file per id: released when this process ends, however it ends)."""
    for uid in range(FIRST_UID, FIRST_UID + UID_RANGE):
        try:
            pwd.getpwuid(uid)
            continue  # a real account: never borrow it
        except KeyError:
            pass
        handle = open_lock(f"uid-{uid}")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return Account(uid, NOGROUP, handle)
    raise RuntimeError(f"no free user id in {FIRST_UID}..{FIRST_UID + UID_RANGE - 1}")


def give_to(account: Account, *paths: Path) -> None:
    """Make ``paths`` (and everything under them) the account's, folders mode 0700."""
    for top in paths:
        for path in [top, *top.rglob("*")] if top.is_dir() else [top]:
            os.chown(path, account.uid, account.gid, follow_symlinks=False)
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o700)


def limit_tasks() -> None:
    """In the sandbox's process, before it runs anything: at most :data:`MAX_TASKS` processes and
    threads for its user (a fork bomb stops there, and :func:`kill_user` can outpace it)."""
    resource.setrlimit(resource.RLIMIT_NPROC, (MAX_TASKS, MAX_TASKS))


def _processes_of(uid: int) -> list[int]:
    """Processes whose real, effective, saved or filesystem user id is ``uid``, from each one's
    /proc status (its folder's owner would say root for one that made itself non-dumpable)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if str(uid) in line.split()[1:]:
                    found.append(int(entry.name))
                break
    return found


def kill_user(uid: int, deadline_s: float = 10.0) -> int:
    """SIGKILL every process of ``uid`` until none is left (or ``deadline_s`` passed); how many
    were killed."""
    killed, deadline = 0, time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = _processes_of(uid)
        if not found:
            return killed
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.02)
    print(
        f"warning: processes of the grading user {uid} survived {deadline_s:g} s", file=sys.stderr
    )
    return killed


@dataclass
class Guard:
    """The permissions grading needs, set on entry and restored on exit: ``hide`` loses every
    "others" bit; each folder above an entry of ``reach`` (and the entry itself) gains "others may
    pass through" (x), and an entry of ``reach`` "others may read" (r) too."""

    hide: list[Path]
    reach: list[Path]
    changed: list[tuple[Path, int]] = field(default_factory=list)
    _lock: object = None
    _handlers: dict = field(default_factory=dict)

    def plan(self) -> list[tuple[Path, int]]:
        """(path, new mode) of every change, in the order they are made."""
        wanted: dict[Path, int] = {}

        def mode(path: Path) -> int:
            return wanted.get(path, stat.S_IMODE(path.stat().st_mode))

        for target in self.reach:
            target = Path(os.path.abspath(target))
            for folder in reversed(target.parents):  # "/" first
                wanted[folder] = mode(folder) | stat.S_IXOTH
            runnable = target.is_dir() or mode(target) & stat.S_IXUSR
            wanted[target] = mode(target) | stat.S_IROTH | (stat.S_IXOTH if runnable else 0)
        for path in self.hide:
            path = Path(os.path.abspath(path))
            wanted[path] = mode(path) & ~0o007
        return [(p, m) for p, m in wanted.items() if m != stat.S_IMODE(p.stat().st_mode)]

    def __enter__(self) -> Guard:
        # one grading run at a time changes modes: a second one would record the first's changes
        # as the originals and restore them too early
        self._lock = open_lock("guard")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if threading.current_thread() is threading.main_thread():
            # a terminated grader (SIGTERM, a closed terminal) still restores the modes
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._handlers[sig] = signal.signal(sig, _exit_on_signal)
        try:
            for path, mode in self.plan():
                self.changed.append((path, stat.S_IMODE(path.stat().st_mode)))
                os.chmod(path, mode)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self.changed:
            path, mode = self.changed.pop()
            try:
                os.chmod(path, mode)
            except OSError as error:  # say so: the instructor restores it by hand
                print(f"warning: could not restore the mode of {path}: {error}", file=sys.stderr)
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers = {}
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def hidden_parts(roots: list[Path], needed: list[Path]) -> list[Path]:
    """What to hide of ``roots`` so that ``needed`` stays reachable: a root as a whole, or, where
    a needed path lies inside it (a virtual environment in the checkout), its other entries."""
    needed = [n.resolve() for n in needed]
    out = []
    for root in roots:
        root = root.resolve()
        inside = [n for n in needed if n == root or root in n.parents]
        if not inside:
            out.append(root)
        elif root.is_dir() and all(n != root for n in inside):
            out += hidden_parts(list(root.iterdir()), inside)
    return out
