"""setup(), profiles and build()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import adlearn
from adlearn.env import resolve_device
from adlearn.errors import AdlearnError
from adlearn.models import PaDiM, build
from adlearn.profiles import PROFILES, get_profile


def test_setup_picks_profile_seed_threads_and_prints_one_line(capsys, monkeypatch) -> None:
    monkeypatch.setenv("ADLEARN_PROFILE", "fast")
    cfg = adlearn.setup(seed=3, threads=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "profile=fast" in lines[0] and "threads=1" in lines[0]
    assert cfg.profile.name == "fast" and torch.get_num_threads() == 1
    first = torch.rand(3)
    adlearn.setup(seed=3, threads=1, verbose=False)
    assert torch.equal(first, torch.rand(3))


def test_default_profile_is_book_on_cpu(monkeypatch) -> None:
    monkeypatch.delenv("ADLEARN_PROFILE", raising=False)
    cfg = adlearn.setup(verbose=False, threads=1)
    assert cfg.profile.name == ("paper" if torch.cuda.is_available() else "book")


def test_unknown_profile_and_device_are_clear_errors() -> None:
    with pytest.raises(AdlearnError, match="fast"):
        adlearn.setup("huge", verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(AdlearnError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(AdlearnError, match="invalid device"):
        resolve_device("gpu0")


def test_profiles_are_frozen_and_ordered_by_cost() -> None:
    fast, book, paper = (PROFILES[n] for n in ("fast", "book", "paper"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.image_size = 512
    assert fast.image_size <= book.image_size <= paper.image_size
    assert fast.n_train < book.n_train < paper.n_train
    assert get_profile(book) is book


def test_build_applies_profile_then_overrides() -> None:
    fast = build("PaDiM", profile="fast")
    assert fast.backbone == PaDiM.profiles["fast"]["backbone"] == PaDiM.params_for(get_profile("fast"))["backbone"]
    paper = build("PaDiM", profile="paper", d=7)
    assert paper.backbone == "wide_resnet50_2.tv_in1k" and paper.d == 7
    with pytest.raises(AdlearnError, match="available"):
        build("NoSuchModel")
