"""Image batches in, image batches out: the checks and the iteration every model shares.

A model sees its data through two doors only: :func:`check_images` for a tensor the user passes
to ``predict`` (or ``fit``), and :func:`iter_images` for the training data. Both raise one
:class:`~adlearn.errors.AdlearnError` that says what is wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Iterator

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from .errors import AdlearnError

__all__ = ["check_images", "as_dataset", "images_of", "iter_images"]

_CONVERTIBLE = (torch.float64, torch.float16, torch.bfloat16)


def check_images(images: Any, *, what: str = "images") -> Tensor:
    """Validate a batch of images, a float tensor ``[B,3,H,W]`` in [0,1]; returns it as float32.

    float64, float16 and bfloat16 images are converted to float32 (every model computes in
    float32; mixed precision is a training option, not an input format).
    """
    if not isinstance(images, Tensor):
        raise AdlearnError(
            f"{what} must be a torch.Tensor of shape [B,3,H,W], got {type(images).__name__}; "
            "convert with torchvision.transforms.functional.to_tensor or torch.as_tensor"
        )
    if images.ndim == 3:
        raise AdlearnError(
            f"{what} must be a batch [B,3,H,W], got one image of shape {tuple(images.shape)}; "
            "add the batch dimension with images.unsqueeze(0)"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise AdlearnError(
            f"{what} must have shape [B,3,H,W], got {tuple(images.shape)}; grey images need "
            "3 channels (images.expand(-1, 3, -1, -1)), channels-last arrays need permute(0, 3, 1, 2)"
        )
    if not images.is_floating_point():
        raise AdlearnError(
            f"{what} must be floating point in [0,1], got dtype {images.dtype}; "
            "for uint8 images use images.float() / 255"
        )
    if images.shape[0] == 0:
        raise AdlearnError(f"{what} is an empty batch (shape {tuple(images.shape)})")
    if images.dtype in _CONVERTIBLE:
        images = images.float()
    elif images.dtype != torch.float32:
        raise AdlearnError(f"{what} have dtype {images.dtype}; pass float32 images (images.float())")
    if not torch.isfinite(images).all():
        raise AdlearnError(f"{what} contain NaN or infinite values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise AdlearnError(
            f"{what} must lie in [0,1], got values in [{lo:.3g}, {hi:.3g}]; models normalise "
            "internally, so pass un-normalised images (uint8 images: divide by 255)"
        )
    return images


def as_dataset(data: Any) -> Dataset | DataLoader:
    """Accept a Dataset, a DataLoader, a tensor of images, or a list of datasets (their union,
    for one model over several categories); reject anything empty."""
    if isinstance(data, Tensor):
        data = TensorDataset(check_images(data, what="training images"))
    elif isinstance(data, Sequence) and not isinstance(data, (str, Dataset)) and len(data) > 0:
        if not all(isinstance(part, Dataset) for part in data):
            raise AdlearnError(
                "fit takes one Dataset, DataLoader or tensor, or a list of Datasets (one per category); "
                f"got a list of {sorted({type(part).__name__ for part in data})}"
            )
        data = ConcatDataset(data)
    if not isinstance(data, (Dataset, DataLoader)):
        raise AdlearnError(
            f"fit expects a Dataset, a DataLoader, a tensor [N,3,H,W] or a list of Datasets, "
            f"got {type(data).__name__}"
        )
    try:
        size = len(data)
    except TypeError:  # an iterable-style dataset: its size is only known once iterated
        size = None
    if size == 0:
        raise AdlearnError(
            "cannot fit on an empty training set; check that the train/good folder holds images "
            "(see adlearn.datasets.MVTecAD) or that your dataset is not filtered to nothing"
        )
    return data


def images_of(batch: Any) -> Tensor:
    """The image tensor of a collated batch (a dict of samples, a tuple, or a tensor)."""
    if isinstance(batch, dict):
        if "label" in batch and torch.as_tensor(batch["label"]).ne(0).any():
            paths = batch.get("path", [])
            labels = torch.as_tensor(batch["label"]).tolist()
            bad = [p for p, lab in zip(paths, labels) if lab != 0][:3]
            raise AdlearnError(
                f"fit received anomalous images (label 1), e.g. {bad}; one-class models learn "
                "from nominal images only: fit on the train split"
            )
        return batch["image"]
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def iter_images(
    data: Dataset | DataLoader, batch_size: int, device: torch.device, *, shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[Tensor]:
    """Yield validated training batches ``float[B,3,H,W]`` on ``device``, all of one size.

    A DataLoader is used as given; a Dataset is batched here.
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=generator
    )
    seen, size = 0, None
    for batch in loader:
        images = check_images(images_of(batch), what="training images")
        if size is not None and images.shape[-2:] != size:
            raise AdlearnError(
                f"training images differ in size ({tuple(size)} and {tuple(images.shape[-2:])}); "
                "resize them to one size, e.g. MVTecAD(..., image_size=256)"
            )
        size = images.shape[-2:]
        seen += len(images)
        yield images.to(device, non_blocking=True)
    if seen == 0:
        raise AdlearnError("cannot fit on an empty training set: the data loader yielded no images")
