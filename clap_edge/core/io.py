"""Atomic writes: a crash never leaves a half-written file or directory that looks whole.

Temp files and folders are named ``.clap-edge-staging-<pid>@<host>-<target>.<random>`` (in the
system temp folder without the leading dot), so that :func:`clean_stale` (run by every later
directory write and by ``clap-edge clean``) can tell debris of a killed run (its pid is gone) from
work in progress. Two writers of the same directory are serialised by :func:`claim`: the second
gets one :class:`~clap_edge.core.errors.OutputError` line instead of a race.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clap_edge.core.errors import OutputError, OutputExistsError

STAGING = "clap-edge-staging-"
LOCK = ".clap-edge-lock-"
_DEBRIS = re.compile(r"^\.?clap-edge-(?:staging|lock)-(?:(\d+)@([A-Za-z0-9_.]*)-|)")
LOCK_GRACE_S = 10.0  # a lock file still without a pid after this long is debris


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64]


def staging_prefix(name: str, hidden: bool = True) -> str:
    """The name prefix of a temp file or folder for ``name`` made by this process."""
    return f"{'.' if hidden else ''}{STAGING}{os.getpid()}@{_host()}-{name}."


def staging_tempdir(name: str) -> tempfile.TemporaryDirectory:
    """A TemporaryDirectory in the system temp folder, named so ``clap-edge clean`` knows it."""
    with contextlib.suppress(OSError):
        clean_stale(tempfile.gettempdir())
    return tempfile.TemporaryDirectory(prefix=staging_prefix(name, hidden=False))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 (and writers may recreate the file): give it a new file's usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; it replaces ``path`` only if the block succeeds.

    The target is claimed for the whole block (a second writer fails at once with one line), and
    stale staging folders of killed writers beside it are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        clean_stale(path.parent)
    with claim(path):
        _refuse_existing(path, overwrite)
        tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a bundle must be readable by the service using it
        try:
            yield tmp
            normal_modes(tmp)
            _refuse_existing(path, overwrite)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)  # left by a crash between the two renames: it blocks the first
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True / --force to replace it)")


def normal_modes(root: Path) -> None:
    """Give every file under ``root`` a new file's usual mode (some writers make 0600 files)."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


@contextlib.contextmanager
def claim(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive claim on ``path`` (a lock file beside it holding our pid) for the block."""
    path = Path(path)
    lock = path.parent / f"{LOCK}{path.name}"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None:
                who = f"pid {owner}" if owner > 0 else "a process that is starting"
                raise OutputError(f"{path}: another clap-edge process ({who}) is writing it; "
                                  f"wait for it to finish") from None
            aside = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
            with contextlib.suppress(FileNotFoundError):  # stale: move it aside (one taker wins the rename)
                os.rename(lock, aside)
                os.unlink(aside)
            continue
        except OSError as e:  # a folder that takes no files (/proc, read-only, full): name the output, not the lock
            raise OutputError(f"{path}: cannot write it here ({e.strerror or e})") from None
        try:
            os.write(fd, f"{os.getpid()}@{_host()}\n".encode())
        finally:
            os.close(fd)
        break
    else:
        raise OutputError(f"{path}: cannot claim it for writing ({lock.name} keeps reappearing)")
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def _lock_owner(lock: Path) -> int | None:
    """The pid holding ``lock`` if that process is alive (here) or may be; None if the lock is stale."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    m = re.fullmatch(r"(\d+)@(\S*)", text)
    if not m:
        return -1 if age < LOCK_GRACE_S else None  # being written right now, or debris
    pid, host = int(m.group(1)), m.group(2)
    if host != _host() or pid_alive(pid):
        return pid  # another machine's process: we cannot tell, so respect it
    return None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


@dataclass
class Debris:
    path: Path
    pid: int | None
    removed: bool
    reason: str


def clean_stale(folder: str | os.PathLike, dry_run: bool = False) -> list[Debris]:
    """Remove staging files/folders and locks in ``folder`` whose writer process is gone (this host)."""
    out = []
    folder = Path(folder)
    for entry in os.scandir(folder):
        m = _DEBRIS.match(entry.name)
        if not m:
            continue
        path = folder / entry.name
        if entry.name.startswith(LOCK) and not m.group(1):
            pid = _lock_owner(path)
            if pid is not None:
                continue  # a live claim
            out.append(_remove(path, None, "stale lock", dry_run))
            continue
        if not m.group(1):
            continue
        pid, host = int(m.group(1)), m.group(2)
        if host != _host():
            continue  # written from another machine (shared disk): not ours to judge
        if pid_alive(pid):
            continue
        out.append(_remove(path, pid, f"left by pid {pid}, which is no longer running", dry_run))
    return out


def _remove(path: Path, pid: int | None, reason: str, dry_run: bool) -> Debris:
    if not dry_run:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return Debris(path, pid, removed=not dry_run and not path.exists(), reason=reason)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_no_wait(path: str | os.PathLike, follow_symlinks: bool = True) -> tuple[int, os.stat_result]:
    """Open for reading without waiting for a FIFO's writer (O_NONBLOCK), and fstat what was opened.

    The caller checks the kind from the returned stat (the very file opened, no race with a path check)
    and closes the fd. ``follow_symlinks=False`` fails on a symbolic link (ELOOP) instead of opening its target."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        return fd, os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes; never blocks on a FIFO or opens a device.

    Raises FileNotFoundError, IsADirectoryError, or ValueError (not a regular file / too large)."""
    import stat

    fd, st = open_no_wait(path)
    try:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"not a regular file ({file_kind(st.st_mode)})")
        if st.st_size > limit:
            raise ValueError(f"{st.st_size:,} bytes, more than the {limit:,} allowed")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"more than the {limit:,} bytes allowed")
        return data
    finally:
        os.close(fd)


def file_kind(mode: int) -> str:
    """'fifo', 'socket', 'character device', ... for a stat mode (for messages)."""
    import stat

    for test, name in ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symbolic link"), (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "special file"
