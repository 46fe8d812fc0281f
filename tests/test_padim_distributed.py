"""PaDiM fitted by 2 CPU processes (gloo, all-reduce of the streamed statistics) equals 1 process.

Spawned with ``torch.multiprocessing``; the processes meet through a file store in ``tmp_path``,
so nothing touches the network.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from adlearn.errors import AdlearnError
from adlearn.models import PaDiM
from tests.conftest import nominal_images

SETTINGS = dict(backbone="tf_efficientnet_lite0", pretrained="auto", d=20, batch_size=4, device="cpu")
WORLD = 2


def _state(model: PaDiM, test: torch.Tensor) -> dict:
    return {
        "n": model.n_train_,
        "mean": model.mean,
        "whitening": model.whitening,
        "map": model.predict(test).anomaly_map,
    }


def _fit_in_process(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        images, test = nominal_images(15, seed=0), nominal_images(2, seed=1)
        from_dataset = PaDiM(**SETTINGS).fit(images)  # 15 images: shards of 8 and 7, sharded by PaDiM
        sampler = DistributedSampler(TensorDataset(images[:14]), shuffle=False)  # 14: no padding
        from_sampler = PaDiM(**SETTINGS).fit(
            DataLoader(TensorDataset(images[:14]), batch_size=3, sampler=sampler)
        )
        try:
            PaDiM(**SETTINGS).fit(DataLoader(TensorDataset(images), batch_size=4))
            unsharded_error = ""
        except AdlearnError as err:
            unsharded_error = str(err)
        torch.save(
            {
                "dataset": _state(from_dataset, test),
                "sampler": _state(from_sampler, test),
                "unsharded_error": unsharded_error,
            },
            f"{out}.{rank}",
        )
    finally:
        dist.destroy_process_group()


def _assert_same_fit(distributed: dict, single: PaDiM, test: torch.Tensor) -> None:
    expected = _state(single, test)
    assert distributed["n"] == expected["n"]
    torch.testing.assert_close(distributed["mean"], expected["mean"])  # float32 tolerances
    # W = L⁻¹ of a covariance from 15 images: its conditioning amplifies float32 rounding of the sums
    torch.testing.assert_close(distributed["whitening"], expected["whitening"], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(distributed["map"], expected["map"], rtol=1e-4, atol=1e-4)


def test_two_processes_fit_like_one(tmp_path) -> None:
    mp.spawn(_fit_in_process, args=(str(tmp_path / "store"), str(tmp_path / "rank")), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank.{r}", weights_only=True) for r in range(WORLD)]
    images, test = nominal_images(15, seed=0), nominal_images(2, seed=1)
    single_15 = PaDiM(**SETTINGS).fit(images)
    single_14 = PaDiM(**SETTINGS).fit(images[:14])
    for rank in ranks:
        _assert_same_fit(rank["dataset"], single_15, test)
        _assert_same_fit(rank["sampler"], single_14, test)
        assert "not sharded" in rank["unsharded_error"]
    torch.testing.assert_close(ranks[0]["dataset"]["map"], ranks[1]["dataset"]["map"], rtol=0, atol=0)
