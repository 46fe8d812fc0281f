"""Saving never destroys the previous file; loading a damaged or foreign file is one clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import adlearn
from adlearn.errors import AdlearnError
from adlearn.models import MeanImage, PaDiM


@pytest.fixture(scope="module")
def padim(train_images) -> PaDiM:
    return PaDiM(backbone="tf_efficientnet_lite0", pretrained="auto", d=10, sigma=1.0, device="cpu").fit(train_images)


def _rewrite(path: Path, edit) -> Path:
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)
    return path


def test_save_to_a_folder_is_a_clear_error(padim, tmp_path) -> None:
    with pytest.raises(AdlearnError, match="is a folder"):
        padim.save(tmp_path)


def test_a_failing_save_keeps_the_previous_file(padim, tmp_path, monkeypatch, test_images) -> None:
    path = padim.save(tmp_path / "model.pt")
    def broken_save(obj, handle):  # writes half a file, then the disk is full
        handle.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space"):
        padim.save(path)
    monkeypatch.undo()
    restored = adlearn.load(path, device="cpu")
    torch.testing.assert_close(restored.predict(test_images).score, padim.predict(test_images).score)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "the temporary file is removed"


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from adlearn.models import MeanImage
    from tests.conftest import nominal_images

    model = MeanImage(sigma=1.0, device="cpu").fit(nominal_images(4) * 0.5)

    def slow_save(obj, handle):
        handle.write(b"PK\\x03\\x04 the first bytes of a new model")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)  # killed here, mid-write

    torch.save = slow_save
    model.save(sys.argv[1])
    """
)


def test_a_process_killed_mid_save_leaves_the_old_file_loadable(train_images, test_images, tmp_path) -> None:
    path = tmp_path / "model.pt"
    old = MeanImage(sigma=1.0, device="cpu").fit(train_images)
    old.save(path)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=root)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    restored = adlearn.load(path, device="cpu")
    torch.testing.assert_close(restored.predict(test_images).score, old.predict(test_images).score)
    stale = [p for p in tmp_path.iterdir() if p.name != "model.pt"]
    assert stale, "the killed writer leaves its temporary file behind"
    old.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "the next save cleans it up"


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c["params"].update(bogus=1), "does not take"),
        (lambda c: c.pop("state_dict"), "incomplete"),
        (lambda c: c["state_dict"].pop("mean"), "lacks learned state"),
        (lambda c: c["state_dict"].pop("_extra_state"), "does not hold"),
        (lambda c: c["state_dict"].update(unexpected=torch.zeros(1)), "does not hold"),
        (lambda c: c.update(model="NoSuchModel"), "unknown to this adlearn"),
        (lambda c: c["state_dict"].update(whitening=c["state_dict"]["whitening"][:, :5, :5]), "mis-shaped"),
        (lambda c: c["state_dict"].update(channel_idx=c["state_dict"]["channel_idx"][:3]), "mis-shaped"),
    ],
)
def test_damaged_files_are_clear_errors(padim, tmp_path, edit, fragment) -> None:
    path = _rewrite(padim.save(tmp_path / "model.pt"), edit)
    with pytest.raises(AdlearnError, match=fragment) as err:
        adlearn.load(path)
    assert str(path) in str(err.value)


def test_ddad_files_of_adlearn_0_1_load(tmp_path) -> None:
    """0.1 stored DDAD's UNet as six separate arguments; they load into today's ``denoiser``."""
    from adlearn.models import DDAD

    old = {"base_channels": 8, "channel_mults": [1, 2], "layers_per_block": 1, "attention_levels": [],
           "heads": 4, "dropout": 0.0}
    params = DDAD._upgrade_params({"input_size": 16, **old})
    assert DDAD(**params, device="cpu").denoiser == {**old, "channel_mults": (1, 2), "attention_levels": ()}
