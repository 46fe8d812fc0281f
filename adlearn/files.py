"""Writing files so that nothing is lost: every file the package writes goes through here.

A file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed
over the target with :func:`os.replace`, which is atomic on POSIX and Windows. A failure at any
point (an exception, a full disk, Ctrl-C, SIGKILL) leaves the previous file intact and, at
worst, a stale temporary file ``.<name>.tmp-<pid>@<host>-*``.

Temporary names carry the writer's process id and host, so :func:`remove_stale` (run before each
write to the same target, and by :func:`~adlearn.datasets.make_synthetic` for its folders) deletes
only what a dead process left: on this host, a temporary whose process no longer runs; from
another host sharing the folder, one older than :data:`STALE_AFTER_S`. A file that a live
process is writing right now is never touched.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, Iterator

from .errors import AdlearnError

__all__ = ["atomic_write", "check_writable_dir", "check_writable_file", "remove_stale", "temp_prefix", "TMP_MARK"]

TMP_MARK = ".tmp-"
"""Part of the name of every temporary file or folder: what stale-file clean-up looks for."""

STALE_AFTER_S = 24 * 3600
"""Age after which a temporary whose writer cannot be checked (another host, Windows) is stale."""

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_OWNER = re.compile(rf"{re.escape(TMP_MARK)}(?P<pid>\d+)@(?P<host>\w+)-")


def temp_prefix(name: str) -> str:
    """Prefix of a temporary beside ``name``: ``.<name>.tmp-<pid>@<host>-`` (hidden, owner recorded)."""
    return f".{name}{TMP_MARK}{os.getpid()}@{_HOST}-"


def remove_stale(folder: str | Path, name: str) -> None:
    """Delete the temporaries of ``folder/name`` (files or folders) left by processes that died."""
    for stale in Path(folder).glob(f".{glob.escape(name)}{TMP_MARK}*"):
        if _is_stale(stale):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.unlink()


def _is_stale(path: Path) -> bool:
    owner = _OWNER.search(path.name)
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False
    if owner is None or owner["host"] != _HOST or os.name == "nt":  # os.kill would end the process on Windows
        return age > STALE_AFTER_S
    pid = int(owner["pid"])
    return pid != os.getpid() and not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        pass
    return True


def check_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and make sure files can be written there; one clear error if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AdlearnError(f"{what} {folder} is a file, not a folder; choose another path or move the file away")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".probe{TMP_MARK}"):
            pass
    except OSError as err:
        raise AdlearnError(f"cannot write to {what} {folder} ({err.strerror}); choose a writable folder") from err
    return folder


def check_writable_file(path: str | Path, what: str = "output file") -> Path:
    """Make sure ``path`` can be written (a file name in a writable folder) before any work starts."""
    path = Path(path)
    _refuse_folder(path, what)
    try:
        check_writable_dir(path.parent)
    except AdlearnError as err:
        raise AdlearnError(f"cannot write {what} {path}: {err}") from None
    return path


def _refuse_folder(path: Path, what: str) -> None:
    if path.is_dir():
        raise AdlearnError(f"{what} {path} is a folder; give a file name, e.g. {path / 'model.pt'}")


def _mode_for(path: Path) -> int:
    """The target's current permissions, else what ``open(path, "w")`` would give (0666 less the umask)."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path`` atomically.

    >>> with atomic_write("results.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    _refuse_folder(path, "output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name))
    try:
        with os.fdopen(fd, mode) as handle:
            os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600 files; keep what a plain open() gives
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
