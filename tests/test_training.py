"""The shared training loop: it learns, it is deterministic, it resumes, it scales out."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adlearn.errors import AdlearnError
from adlearn.training import split_validation, train
from tests.conftest import nominal_images


def tiny_autoencoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 4, 2, 1), nn.Sigmoid())


def l2(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return (network(images) - images).pow(2).mean()


IMAGES = nominal_images(24, size=32)


def test_loss_decreases_and_history_is_recorded() -> None:
    net = tiny_autoencoder()
    history = train(net, l2, IMAGES, epochs=6, lr=1e-2, batch_size=8, progress=False)
    assert history.epochs == 6 and len(history.val_loss) == 6 and len(history.seconds) == 6
    assert history.train_loss[-1] < 0.8 * history.train_loss[0]
    assert not net.training, "the network comes back in eval mode"


def test_same_seed_same_weights() -> None:
    a, b = tiny_autoencoder(), tiny_autoencoder()
    train(a, l2, IMAGES, epochs=2, lr=1e-2, batch_size=8, seed=3, progress=False)
    train(b, l2, IMAGES, epochs=2, lr=1e-2, batch_size=8, seed=3, progress=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_resume_continues_where_it_stopped(tmp_path) -> None:
    ckpt = tmp_path / "run.ckpt"
    straight = tiny_autoencoder()
    full = train(straight, l2, IMAGES, epochs=4, lr=1e-2, batch_size=8, val_fraction=0, progress=False)
    resumed = tiny_autoencoder()
    train(resumed, l2, IMAGES, epochs=2, lr=1e-2, batch_size=8, val_fraction=0, checkpoint=ckpt, progress=False)
    history = train(resumed, l2, IMAGES, epochs=4, lr=1e-2, batch_size=8, val_fraction=0, checkpoint=ckpt,
                    progress=False)
    assert history.epochs == 4
    assert history.train_loss == pytest.approx(full.train_loss, rel=1e-5)
    for pa, pb in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(pa, pb)


def test_early_stopping_restores_the_best_weights() -> None:
    net = tiny_autoencoder()
    history = train(net, l2, IMAGES, epochs=30, lr=0.3, batch_size=8, patience=2, progress=False)
    best = min(history.val_loss)
    assert history.val_loss[history.best_epoch] == best
    if history.stopped_early:
        assert history.epochs - 1 - history.best_epoch == 2


def test_validation_split_is_carved_from_training_images() -> None:
    train_set, val_set = split_validation(torch.utils.data.TensorDataset(IMAGES), 0.25, seed=0)
    assert len(train_set) == 18 and len(val_set) == 6
    assert not set(train_set.indices) & set(val_set.indices)
    assert split_validation(torch.utils.data.TensorDataset(IMAGES[:3]), 0.25, seed=0)[1] is None


def test_bf16_autocast_path_runs_on_cpu() -> None:
    history = train(tiny_autoencoder(), l2, IMAGES, epochs=2, lr=1e-2, batch_size=8, mixed_precision="bf16",
                    progress=False)
    assert all(torch.isfinite(torch.tensor(history.train_loss)))


def test_bad_arguments_are_clear() -> None:
    with pytest.raises(AdlearnError, match="epochs"):
        train(tiny_autoencoder(), l2, IMAGES, epochs=0, lr=1e-2)
    with pytest.raises(AdlearnError, match="mixed_precision"):
        train(tiny_autoencoder(), l2, IMAGES, epochs=1, lr=1e-2, mixed_precision="fp8")
    with pytest.raises(AdlearnError, match="loss became"):
        train(tiny_autoencoder(), lambda n, x: n(x).sum() * float("nan"), IMAGES, epochs=1, lr=1e-2, progress=False)


def _train_and_record(path: str) -> None:
    from accelerate import PartialState

    history = train(tiny_autoencoder(), l2, IMAGES, epochs=5, lr=1e-2, batch_size=4, val_fraction=0, progress=False)
    state = PartialState()
    torch.save({"loss": history.train_loss, "processes": state.num_processes}, f"{path}.{state.process_index}")


def test_two_cpu_processes_train_like_one(tmp_path) -> None:
    """DDP over 2 gloo processes (batch 4 each) against 1 process with the same global batch of 8."""
    from accelerate import debug_launcher

    debug_launcher(_train_and_record, args=(str(tmp_path / "ddp"),), num_processes=2)
    ranks = [torch.load(tmp_path / f"ddp.{r}") for r in (0, 1)]
    assert all(r["processes"] == 2 for r in ranks)
    assert ranks[0]["loss"] == ranks[1]["loss"], "losses are all-reduced: every process logs the same"
    single = train(tiny_autoencoder(), l2, IMAGES, epochs=5, lr=1e-2, batch_size=8, val_fraction=0, progress=False)
    ddp = ranks[0]["loss"]
    assert ddp[-1] < 0.8 * ddp[0] and single.train_loss[-1] < 0.8 * single.train_loss[0]
    assert ddp[-1] == pytest.approx(single.train_loss[-1], rel=0.2)
