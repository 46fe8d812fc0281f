"""The one training loop of the package (autoencoders, VAE, diffusion denoisers …).

``train(network, loss_fn, data, ...)`` minimises ``loss_fn(network, images)`` over nominal images:

* **devices and processes** through Hugging Face ``accelerate``: the same code runs on one CPU,
  one GPU, or N processes with DDP (``accelerate launch --num_processes N script.py``, or
  ``accelerate.notebook_launcher`` / ``debug_launcher`` from Python); data are sharded per process;
* **mixed precision** with ``torch.autocast`` (``"fp16"`` with a gradient scaler, ``"bf16"``;
  ``"auto"`` = fp16 on CUDA, none on CPU) — bf16 also runs on CPU, so the path is tested there;
* gradient clipping, a tqdm bar with the running loss, a :class:`History` to plot;
* determinism: (seed, epoch) fixes the data order, augmentation and noise of every epoch, and
  the validation noise is the same every epoch;
* **early stopping** on a validation split carved out of the *training* images (never the test
  set); the best weights are restored at the end;
* **checkpoint / resume**: state after every epoch in ``checkpoint``; a re-run resumes there.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, PartialState
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .env import progress_bar, seeded
from .errors import AdlearnError
from .batches import check_images, images_of

__all__ = ["History", "train", "split_validation", "steps_per_epoch", "make_accelerator"]

LossFn = Callable[[nn.Module, Tensor], Tensor]
Precision = Literal["auto", "no", "fp16", "bf16"]


@dataclass
class History:
    """Per-epoch record of a training run (``val_loss`` is empty without a validation split)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def epochs(self) -> int:
        return len(self.train_loss)


def make_accelerator(device: torch.device, seed: int) -> Accelerator:
    """An ``Accelerator`` for ``device``; under ``accelerate launch`` it follows the launcher.

    The seedable sampler makes the data order a function of (seed, epoch) only, which is what
    lets a resumed run continue exactly. ``accelerate`` keeps one global state per process; a
    notebook that trains on CPU and then on CUDA would otherwise be refused, so a single-process
    state is reset when the device changes.
    """
    config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if PartialState._shared_state and PartialState().num_processes != launched:
        # a process forked by a launcher after this one trained alone inherits a stale state
        AcceleratorState._reset_state(reset_partial_state=True)
    try:
        return Accelerator(cpu=device.type == "cpu", dataloader_config=config)
    except ValueError:
        if AcceleratorState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(cpu=device.type == "cpu", dataloader_config=config)


def split_validation(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """Carve a seeded validation subset out of the training images (≥ 2 images, else none)."""
    n_val = int(round(len(data) * fraction))
    if fraction <= 0 or n_val < 2 or len(data) - n_val < 2:
        return data, None
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(data, order[n_val:]), Subset(data, order[:n_val])


def steps_per_epoch(data: Dataset | DataLoader | Tensor, batch_size: int, val_fraction: float, seed: int) -> int:
    """The optimiser steps one epoch of :func:`train` takes on ``data`` (per process): a DataLoader's
    length, else the batches of the training part left by :func:`split_validation`."""
    if isinstance(data, DataLoader):
        return len(data)
    train_set, _ = split_validation(data, val_fraction, seed)
    return len(train_set) // batch_size if _drops_last(len(train_set), batch_size) else 1


def _drops_last(n_images: int, batch_size: int) -> bool:
    """A last, smaller batch is dropped unless it would be the only one."""
    return n_images > batch_size


def _precision(mixed_precision: Precision, device: torch.device) -> torch.dtype | None:
    if mixed_precision == "auto":
        mixed_precision = "fp16" if device.type == "cuda" else "no"
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise AdlearnError(f"mixed_precision must be 'auto', 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
    return {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def _batches(loader: DataLoader, augment: Callable[[Tensor], Tensor] | None, device: torch.device) -> Iterator[Tensor]:
    for batch in loader:
        images = check_images(images_of(batch), what="training images").to(device, non_blocking=True)
        yield augment(images) if augment is not None else images


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise AdlearnError(f"optimizer must be 'adam' or 'adamw', got {name!r}")


@torch.no_grad()
def _validate(network: nn.Module, loss_fn: LossFn, loader: DataLoader, device: torch.device,
              autocast: Callable[[], contextlib.AbstractContextManager], seed: int) -> float:
    """Mean validation loss with the same noise every epoch, so epochs compare fairly."""
    network.eval()
    total, count = 0.0, 0
    with seeded(seed, device):
        for images in _batches(loader, None, device):
            with autocast():
                total += loss_fn(network, images).float().item() * len(images)
            count += len(images)
    network.train()
    return total / count


def train(
    network: nn.Module,
    loss_fn: LossFn,
    data: Dataset | DataLoader | Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    optimizer: Literal["adam", "adamw"] = "adam",
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    mixed_precision: Precision = "auto",
    val_fraction: float = 0.1,
    patience: int | None = None,
    augment: Callable[[Tensor], Tensor] | None = None,
    checkpoint: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    desc: str = "train",
    progress: bool = True,
) -> History:
    """Train ``network`` in place to minimise ``loss_fn(network, images)``; returns the :class:`History`.

    ``data`` holds nominal images: a Dataset of samples or a tensor ``[N,3,H,W]`` in [0,1] (batched
    here, with a validation split of ``val_fraction``), or a DataLoader, used as given — its
    batches, sampler and workers — with no validation split (hold images out yourself).
    ``patience``: stop after that many epochs without a better validation loss (``None``: never).
    """
    if epochs < 1:
        raise AdlearnError(f"epochs must be ≥ 1, got {epochs}")
    if isinstance(data, Tensor):
        data = TensorDataset(check_images(data, what="training images"))
    device = torch.device(device) if device is not None else next(network.parameters()).device
    accelerator = make_accelerator(device, seed)
    dtype = _precision(mixed_precision, accelerator.device)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=dtype == torch.float16)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(accelerator.device.type, dtype=dtype, enabled=dtype is not None)

    if isinstance(data, DataLoader):
        loader, val_loader = data, None
    else:
        train_set, val_set = split_validation(data, val_fraction, seed)
        loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                            drop_last=_drops_last(len(train_set), batch_size))
        val_loader = DataLoader(val_set, batch_size=batch_size) if val_set is not None else None
    opt = _optimizer(optimizer, [p for p in network.parameters() if p.requires_grad], lr, weight_decay)
    wrapped, opt, loader = accelerator.prepare(network, opt, loader)

    history, best_state, start = History(), None, 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if ckpt_path is not None and ckpt_path.is_file():
        start, history, best_state = _resume(ckpt_path, accelerator.unwrap_model(wrapped), opt, scaler)

    bar = progress_bar(range(start, epochs), desc=desc, unit="epoch",
                       enabled=progress and accelerator.is_main_process)
    wrapped.train()
    for epoch in bar:
        loader.set_epoch(epoch)  # data order from (seed, epoch); augmentation and noise likewise:
        torch.manual_seed(hash((seed, epoch, accelerator.process_index)) % 2**63)
        tic, total, count = time.perf_counter(), torch.zeros((), device=accelerator.device), 0
        for images in _batches(loader, augment, accelerator.device):
            with autocast():
                loss = loss_fn(wrapped, images)
            if not torch.isfinite(loss):
                raise AdlearnError(f"the loss became {loss.item()} in epoch {epoch}: lower lr or use mixed_precision='no'")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(scaler.scale(loss))
            if grad_clip is not None:
                scaler.unscale_(opt)
                accelerator.clip_grad_norm_(wrapped.parameters(), grad_clip)
            scaler.step(opt)
            scaler.update()
            total += loss.detach().float() * len(images)
            count += len(images)
        sums = accelerator.reduce(torch.stack([total, torch.tensor(float(count), device=accelerator.device)]), "sum")
        history.train_loss.append((sums[0] / sums[1]).item())
        history.seconds.append(time.perf_counter() - tic)
        postfix = {"loss": f"{history.train_loss[-1]:.4g}"}
        if val_loader is not None:
            history.val_loss.append(_validate(wrapped, loss_fn, val_loader, accelerator.device, autocast, seed))
            postfix["val"] = f"{history.val_loss[-1]:.4g}"
            if history.best_epoch is None or history.val_loss[-1] < history.val_loss[history.best_epoch]:
                history.best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(wrapped).state_dict().items()}
        bar.set_postfix(postfix)
        if ckpt_path is not None and accelerator.is_main_process:
            _save(ckpt_path, epoch, history, accelerator.unwrap_model(wrapped), opt, scaler, best_state)
        if patience is not None and history.best_epoch is not None and epoch - history.best_epoch >= patience:
            history.stopped_early = True
            break
    accelerator.wait_for_everyone()
    if best_state is not None:
        network.load_state_dict(best_state)
    if accelerator.num_processes > 1:  # BatchNorm statistics stay per process: all end with rank 0's state
        for tensor in network.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
    network.eval()
    return history


def _save(path: Path, epoch: int, history: History, network: nn.Module, opt: torch.optim.Optimizer,
          scaler: torch.amp.GradScaler, best_state: dict[str, Tensor] | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"epoch": epoch, "history": asdict(history), "network": network.state_dict(),
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "best_state": best_state}, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a half-written checkpoint


def _resume(path: Path, network: nn.Module, opt: torch.optim.Optimizer,
            scaler: torch.amp.GradScaler) -> tuple[int, History, dict[str, Tensor] | None]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state["network"])
    except RuntimeError as err:
        raise AdlearnError(f"checkpoint {path} belongs to another network ({err}); delete it to start afresh") from err
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return state["epoch"] + 1, History(**state["history"]), state["best_state"]

