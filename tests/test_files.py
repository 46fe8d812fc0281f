"""adlearn.files: atomic writes keep the old file on failure; only dead processes' temporaries are removed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adlearn.errors import AdlearnError
from adlearn.files import atomic_write, check_writable_dir, check_writable_file, remove_stale, temp_prefix


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _temporary_of(pid: int, folder, name: str):
    path = folder / temp_prefix(name).replace(f"-{os.getpid()}@", f"-{pid}@") / "images"
    path.mkdir(parents=True)
    return path.parent


def test_a_failed_write_keeps_the_previous_file(tmp_path) -> None:
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["results.json"]


def test_written_files_get_normal_permissions(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "new.png") as f:
            f.write(b"png")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.png").stat().st_mode & 0o777 == 0o644


def test_only_temporaries_of_dead_processes_are_removed(tmp_path) -> None:
    live, dead = _child(), _child()
    dead.kill()
    dead.wait()
    try:
        mine = _temporary_of(os.getpid(), tmp_path, "data")
        kept = _temporary_of(live.pid, tmp_path, "data")
        gone = _temporary_of(dead.pid, tmp_path, "data")
        other = _temporary_of(dead.pid, tmp_path, "other")
        remove_stale(tmp_path, "data")
        assert mine.is_dir() and kept.is_dir() and other.is_dir() and not gone.exists()
    finally:
        live.kill()
        live.wait()
    remove_stale(tmp_path, "data")
    assert not kept.exists()


def test_output_paths_are_checked_with_one_clear_error(tmp_path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    for check, path, fragment in [
        (check_writable_dir, blocker, "is a file, not a folder"),
        (check_writable_dir, blocker / "sub", "cannot write to"),
        (check_writable_file, tmp_path, "is a folder; give a file name"),
        (check_writable_file, blocker / "model.pt", "cannot write output file"),
    ]:
        with pytest.raises(AdlearnError, match=fragment) as err:
            check(path)
        assert str(path) in str(err.value)
    assert check_writable_file(tmp_path / "new" / "model.pt") == tmp_path / "new" / "model.pt"
