"""Fitting across processes: sharding the training data and merging what each process learned.

Launch the same script N times (``torchrun --nproc_per_node N fit.py``, or ``accelerate launch``);
each process reads its shard, and the sufficient statistics are merged exactly by all-reduce,
so N processes fit what one process would. Every helper is a no-op in a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from .errors import AdlearnError

__all__ = ["world_size", "shard", "check_sharded", "all_reduce_moments"]


def world_size() -> int:
    """Number of processes of the running job (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shard(data: Dataset | DataLoader) -> Dataset | DataLoader:
    """This process's share of the training data: images r, r + W, … of a Dataset for process r
    of W; a DataLoader (or iterable dataset) is returned as is — it is sharded by its sampler."""
    world = world_size()
    if world == 1 or isinstance(data, (DataLoader, IterableDataset)):
        return data
    if len(data) < world:
        raise AdlearnError(
            f"{len(data)} training images cannot be shared among {world} processes; use fewer processes"
        )
    return Subset(data, range(dist.get_rank(), len(data), world))


def check_sharded(data: Dataset | DataLoader, n_local: int, device: torch.device) -> None:
    """Refuse a DataLoader that gave every process the whole data set (each image counted W times)."""
    loader = isinstance(data, DataLoader) and not isinstance(data.dataset, IterableDataset)
    size = len(data.dataset) if loader else None
    whole = torch.tensor([int(size is not None and n_local == size)], device=device)
    dist.all_reduce(whole, op=dist.ReduceOp.MIN)
    if whole.item():
        raise AdlearnError(
            f"every process read all {size} training images: the DataLoader is not sharded. Pass the "
            "Dataset itself (the model shards it by rank) or a DataLoader with a DistributedSampler"
        )


def all_reduce_moments(n: int, mean: Tensor, m2: Tensor) -> tuple[int, Tensor, Tensor]:
    """Merge every process's count, mean ``[..., d]`` and scatter ``[..., d, d]`` (Chan's update, summed):

    n = Σ_r n_r,   μ = Σ_r n_r μ_r / n,   M2 = Σ_r [M2_r + n_r (μ_r − μ)(μ_r − μ)ᵀ].

    ``m2`` is updated in place (no second d×d buffer); returns ``(n, μ, M2)``.
    """
    count = torch.tensor([float(n)], dtype=torch.float64, device=mean.device)
    dist.all_reduce(count)
    total = int(count.item())
    weighted_mean = mean * n
    dist.all_reduce(weighted_mean)
    merged_mean = weighted_mean / total
    delta = (mean - merged_mean).reshape(-1, mean.shape[-1])
    m2.view(-1, *m2.shape[-2:]).baddbmm_(delta.unsqueeze(2), delta.unsqueeze(1), alpha=n)
    dist.all_reduce(m2)
    return total, merged_mean, m2
