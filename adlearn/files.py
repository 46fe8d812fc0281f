"""Writing files so that nothing is lost: every file the package writes goes through here.

A file is written to a temporary name in the same folder, flushed and fsync'ed, then renamed
over the target with :func:`os.replace`, which is atomic on POSIX and Windows. A failure at any
point (an exception, a full disk, Ctrl-C, SIGKILL) leaves the previous file intact and, at
worst, a stale ``.<name>.tmp-*`` file that the next write to the same target removes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import AdlearnError

__all__ = ["atomic_write", "check_writable_dir", "TMP_MARK"]

TMP_MARK = ".tmp-"
"""Part of the name of every temporary file or folder: what stale-file clean-up looks for."""


def check_writable_dir(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and make sure files can be written there; one clear error if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AdlearnError(f"{what} {folder} is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".probe{TMP_MARK}"):
            pass
    except OSError as err:
        raise AdlearnError(f"cannot write to {what} {folder} ({err.strerror}); choose a writable folder") from err
    return folder


def _remove_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path`` atomically.

    >>> with atomic_write("results.json", "w") as f:   # doctest: +SKIP
    ...     f.write("{}")
    """
    path = Path(path)
    if path.is_dir():
        raise AdlearnError(f"{path} is a folder; give a file name, e.g. {path / 'model.pt'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TMP_MARK}")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
