"""The command line: a light ``--help``, one clear line per user error, documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adlearn import cli
from adlearn.datasets import make_synthetic
from adlearn.errors import AdlearnError

HELP_PROBE = """
import sys, time
start = time.perf_counter()
from adlearn.cli import main
for argv in (["--help"], ["demo", "--help"], ["fit", "--help"]):
    try:
        main(argv)
    except SystemExit as exit:
        assert exit.code == 0, exit.code
print(time.perf_counter() - start, any(m == "torch" or m.startswith("torch.") for m in sys.modules),
      file=sys.stderr)
"""


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit.value.code, out, err


def _one_line_error(code: int, err: str) -> str:
    assert code == cli.EXIT_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adlearn: error: "), err  # no traceback
    return lines[0]


def _forbid(monkeypatch, *names: str) -> None:
    """Make ``adlearn.datasets.<name>`` fail: proves a command stopped before doing any work."""
    import adlearn.datasets

    def work(*args, **kwargs):
        raise AssertionError("the command started working before checking its arguments")

    for name in names:
        monkeypatch.setattr(adlearn.datasets, name, work)


def test_help_is_fast_and_imports_no_torch() -> None:
    probe = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, check=True)
    seconds, torch_imported = probe.stderr.split()
    assert torch_imported == "False", "adlearn --help imported torch"
    assert float(seconds) < 1.0, f"adlearn --help took {seconds} s"


def test_exit_codes_are_documented() -> None:
    for text in (cli.__doc__, cli.build_parser().format_help()):
        for code in (cli.EXIT_ERROR, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED):
            assert str(code) in text


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["fit", "MeanImage"],
    ["--profile", "huge", "models"],
    ["fit", "MeanImage", "root", "fabric", "--image-size", "0"],
    ["fit", "MeanImage", "root", "fabric", "--image-size", "-64"],
    ["evaluate", "m.pt", "root", "fabric", "--image-size", "big"],
    ["--seed", "-1", "models"],
])
def test_bad_arguments_exit_2(argv, capsys) -> None:
    code, _, err = _run(argv, capsys)
    assert code == cli.EXIT_USAGE
    assert "usage: adlearn" in err


def test_missing_data_root_is_one_line_and_exit_1(tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_root"
    code, _, err = _run(["fit", "MeanImage", str(missing), "fabric", "-o", str(tmp_path / "m.pt")], capsys)
    assert str(missing) in _one_line_error(code, err)


def test_unknown_model_is_refused_before_any_work(tmp_path, capsys, monkeypatch) -> None:
    _forbid(monkeypatch, "MVTecAD", "make_synthetic")
    code, _, err = _run(["fit", "NoSuchModel", str(tmp_path), "fabric", "-o", str(tmp_path / "m.pt")], capsys)
    assert "'NoSuchModel'" in _one_line_error(code, err) and "MeanImage" in err
    code, _, err = _run(["demo", "--models", "MeanImage", "NoSuchModel", "--out", str(tmp_path / "out")], capsys)
    assert "'NoSuchModel'" in _one_line_error(code, err)


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A plain file where a folder is expected."""
    path = tmp_path / "blocker"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("where", ["a_file", "below_a_file"])
def test_unwritable_demo_output_fails_before_data_generation(where, blocker, capsys, monkeypatch) -> None:
    _forbid(monkeypatch, "make_synthetic")
    out = blocker if where == "a_file" else blocker / "demo"
    code, _, err = _run(["demo", "--models", "MeanImage", "--out", str(out)], capsys)
    assert str(out) in _one_line_error(code, err)


@pytest.mark.parametrize("where", ["a_folder", "below_a_file"])
def test_unwritable_model_file_fails_before_fitting(where, tmp_path, blocker, capsys, monkeypatch) -> None:
    _forbid(monkeypatch, "MVTecAD")
    output = tmp_path if where == "a_folder" else blocker / "model.pt"
    code, _, err = _run(["fit", "MeanImage", str(tmp_path), "fabric", "-o", str(output)], capsys)
    assert str(output) in _one_line_error(code, err)
    assert blocker.read_text() == "not a folder"


def test_a_multi_line_message_is_printed_on_one_line(capsys, monkeypatch) -> None:
    def fails(args):
        raise AdlearnError("first line\n  second line")

    monkeypatch.setattr(cli, "cmd_models", fails)
    code, _, err = _run(["models"], capsys)
    assert _one_line_error(code, err) == "adlearn: error: first line second line"


def test_ctrl_c_exits_130_with_one_line(capsys, monkeypatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_models", interrupted)
    code, _, err = _run(["models"], capsys)
    assert code == cli.EXIT_INTERRUPTED
    assert err.strip() == "adlearn: interrupted"


def test_fit_then_evaluate_a_mean_image(tmp_path, capsys) -> None:
    root = make_synthetic(tmp_path / "data", categories=["fabric"], image_size=32, n_train=3, n_test_good=2,
                          n_test_defect=1, progress=False)
    model_file = tmp_path / "models" / "mean.pt"
    common = [str(root), "fabric", "--image-size", "32"]
    code, out, _ = _run(["--profile", "fast", "fit", "MeanImage", *common, "-o", str(model_file)], capsys)
    assert code == 0 and model_file.is_file() and str(model_file) in out
    code, out, _ = _run(["--profile", "fast", "evaluate", str(model_file), *common], capsys)
    assert code == 0
    metrics = json.loads(out[out.index("{"):])
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_images"] == 2 + 5


def test_demo_writes_its_table_and_figure(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ADLEARN_DATA", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, stdout, _ = _run(["--profile", "fast", "demo", "--models", "MeanImage", "--categories", "fabric",
                            "--out", str(out)], capsys)
    assert code == 0 and "| MeanImage | fabric |" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["demo_MeanImage_fabric.png", "demo_results.json"]
    rows = json.loads((out / "demo_results.json").read_text())["rows"]
    assert [(r["model"], r["category"]) for r in rows] == [("MeanImage", "fabric")]
    assert (out / "demo_MeanImage_fabric.png").read_bytes().startswith(b"\x89PNG")


def test_models_lists_the_registry(capsys) -> None:
    from adlearn.models import REGISTRY

    code, out, _ = _run(["models"], capsys)
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == sorted(REGISTRY)


def test_a_closed_pipe_ends_quietly() -> None:
    """``adlearn models | head -1``: the reader leaves early; no traceback, exit 128 + SIGPIPE."""
    probe = "import runpy, sys; sys.argv[0] = 'adlearn'; runpy.run_module('adlearn.cli', run_name='__main__')"
    done = subprocess.run(f"{sys.executable} -c \"{probe}\" models | head -c 1", shell=True,
                          capture_output=True, text=True, executable="/bin/bash", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_cli_module_runs_as_a_script_and_checks_paths_before_loading_torch(blocker) -> None:
    probe = "import runpy, sys; sys.argv[0] = 'adlearn'\ntry: runpy.run_module('adlearn.cli', run_name='__main__')\n"
    probe += "finally: print('torch' in sys.modules, file=sys.stderr)"
    for argv in (["demo", "--out", str(blocker)], ["fit", "PaDiM", "root", "fabric", "-o", str(blocker / "m.pt")]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True)
        assert done.returncode == cli.EXIT_ERROR
        message, torch_imported = done.stderr.splitlines()
        assert message.startswith("adlearn: error: ") and str(blocker) in message
        assert torch_imported == "False"
