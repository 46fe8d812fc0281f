"""The contract every adlearn model obeys, written once.

A model is a ``torch.nn.Module`` with scikit-learn's shape:

* ``__init__`` stores hyper-parameters only (attributes named exactly like the arguments);
* ``fit(data)`` learns and returns ``self`` — ``data`` is a Dataset or DataLoader of samples
  (``{"image": float[3,H,W] in [0,1], "label": 0, ...}``), or a tensor ``float[N,3,H,W]``;
* ``predict(images)`` maps ``float[B,3,H,W]`` in [0,1] to a :class:`Prediction` whose
  ``score[i]`` and ``anomaly_map[i]`` depend on image ``i`` only;
* ``save(path)`` / :func:`load` round-trip the hyper-parameters and every learned tensor.

Subclasses implement ``_build(load_weights)`` (create sub-modules such as the backbone),
``_fit(data)`` and ``_predict(images)``; this class does the checking, the device placement,
the batching and the serialisation so that no model repeats it.
"""

from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .._version import __version__
from ..env import resolve_device
from ..errors import AdlearnError

__all__ = ["Prediction", "AnomalyModel", "REGISTRY", "load", "iter_images", "images_of", "check_images"]

FORMAT = "adlearn-model/1"

REGISTRY: dict[str, type["AnomalyModel"]] = {}
"""Every concrete model class by name; filled by :meth:`AnomalyModel.__init_subclass__`."""


@dataclass
class Prediction:
    """What ``predict`` returns. Higher = more anomalous."""

    score: Tensor
    """float[B]: image anomaly score."""
    anomaly_map: Tensor
    """float[B,H,W]: per-pixel anomaly score at the input's resolution."""
    reconstruction: Tensor | None = None
    """float[B,3,H,W] in [0,1] for reconstruction-based models (AE, VAE, DDAD, DiAD)."""

    def to(self, device: str | torch.device) -> "Prediction":
        return Prediction(**{f.name: _to(getattr(self, f.name), device) for f in fields(self)})

    def cpu(self) -> "Prediction":
        return self.to("cpu")

    def __len__(self) -> int:
        return len(self.score)


def _to(value: Tensor | None, device: str | torch.device) -> Tensor | None:
    return None if value is None else value.to(device)


def check_images(images: Any, *, what: str = "images") -> Tensor:
    """Validate a batch of images: a float tensor ``[B,3,H,W]`` with values in [0,1]."""
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
    """Accept a Dataset, a DataLoader or a tensor of images; reject anything empty."""
    if isinstance(data, Tensor):
        data = TensorDataset(check_images(data, what="training images"))
    if not isinstance(data, (Dataset, DataLoader)):
        raise AdlearnError(
            f"fit expects a Dataset, a DataLoader or a tensor [N,3,H,W], got {type(data).__name__}"
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
    """Yield validated image batches ``float[B,3,H,W]`` on ``device`` from a dataset or loader."""
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=generator
    )
    seen = 0
    for batch in loader:
        images = check_images(images_of(batch), what="training images")
        seen += len(images)
        yield images.to(device, non_blocking=True)
    if seen == 0:
        raise AdlearnError("cannot fit on an empty training set: the data loader yielded no images")


class AnomalyModel(nn.Module):
    """Base class of every adlearn model (see the module docstring for the contract)."""

    name: ClassVar[str]
    _learned_attrs: ClassVar[tuple[str, ...]] = ()
    """Non-tensor values learned in ``fit`` that ``save`` must keep (tensors are buffers)."""

    def __init__(self, *, device: str | torch.device | None = None) -> None:
        super().__init__()
        self._device = resolve_device(device)
        self.fitted_ = False
        self._built = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # concrete models declare a name; helpers and mixins do not
            REGISTRY[cls.name] = cls

    @property
    def device(self) -> torch.device:
        """Where the model computes: the ``device`` argument, then wherever ``.to(...)`` moved it."""
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return self._device if tensor is None else tensor.device

    # --- hyper-parameters (scikit-learn style) --------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name for p in sig.parameters.values()
            if p.name not in ("self", "device") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (hyper-parameters) of this model."""
        return {name: getattr(self, name) for name in self._param_names()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())

    # --- the three verbs ------------------------------------------------------------------
    def fit(self, data: Any) -> "AnomalyModel":
        """Learn from nominal images; returns ``self``."""
        data = as_dataset(data)
        self._ensure_built(load_weights=True)
        self.eval()  # frozen parts (backbones, BatchNorm) stay in eval mode; trained parts switch
        self._fit(data)
        self.eval()
        self.fitted_ = True
        return self

    @torch.inference_mode()
    def predict(self, images: Tensor, *, batch_size: int | None = None) -> Prediction:
        """Score a batch ``float[B,3,H,W]`` in [0,1]; returns a :class:`Prediction` on the model's device."""
        self._check_fitted()
        images = check_images(images).to(self.device)
        self.eval()
        step = batch_size or getattr(self, "batch_size", None) or len(images)
        parts = [self._predict(images[i : i + step]) for i in range(0, len(images), step)]
        pred = _concat(parts)
        b, _, h, w = images.shape
        if pred.score.shape != (b,) or pred.anomaly_map.shape != (b, h, w):
            raise RuntimeError(  # a bug in the model, not the user's fault
                f"{type(self).__name__}._predict returned score {tuple(pred.score.shape)} and map "
                f"{tuple(pred.anomaly_map.shape)} for input {tuple(images.shape)}"
            )
        return pred

    def _check_fitted(self) -> None:
        """Refuse to use a model before ``fit`` (or :func:`load`) gave it its learned state."""
        if not self.fitted_:
            raise AdlearnError(f"{type(self).__name__} is not fitted yet: call .fit(train_data) first")

    # --- hooks for subclasses --------------------------------------------------------------
    def _build(self, load_weights: bool) -> None:
        """Create sub-modules. ``load_weights=False`` when restoring from a file (no downloads)."""

    def _fit(self, data: Dataset | DataLoader) -> None:
        raise NotImplementedError

    def _predict(self, images: Tensor) -> Prediction:
        raise NotImplementedError

    def _ensure_built(self, load_weights: bool) -> None:
        if not self._built:
            self._build(load_weights)
            self._built = True
        self.to(self.device)

    # --- persistence ---------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"fitted_": self.fitted_, **{a: getattr(self, a) for a in self._learned_attrs}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, path: str | Path) -> Path:
        """Write hyper-parameters and every learned tensor to ``path`` (a ``torch.save`` file)."""
        if not self.fitted_:
            raise AdlearnError(f"{type(self).__name__} is not fitted: there is nothing to save yet")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items() if isinstance(v, Tensor)}
        state.update({k: v for k, v in self.state_dict().items() if not isinstance(v, Tensor)})
        torch.save(
            {"format": FORMAT, "adlearn_version": __version__, "model": type(self).__name__,
             "params": self.get_params(), "state_dict": state},
            path,
        )
        return path

    def _materialise_buffers(self, state_dict: dict[str, Any]) -> None:
        """Give buffers that are ``None`` until ``fit`` the shape stored in ``state_dict``."""
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            for buf_name, buf in list(module._buffers.items()):
                key = prefix + buf_name
                if buf is None and key in state_dict:
                    module._buffers[buf_name] = torch.empty_like(state_dict[key])


def _concat(parts: list[Prediction]) -> Prediction:
    if len(parts) == 1:
        return parts[0]
    merged = {}
    for f in fields(Prediction):
        values = [getattr(p, f.name) for p in parts]
        merged[f.name] = None if values[0] is None else torch.cat(values)
    return Prediction(**merged)


def load(path: str | Path, *, device: str | torch.device | None = None) -> AnomalyModel:
    """Restore a model written by :meth:`AnomalyModel.save` (no network access needed)."""
    path = Path(path)
    if not path.is_file():
        raise AdlearnError(f"no saved model at {path}; save one with model.save({str(path)!r})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise AdlearnError(f"{path} is not a readable adlearn model file ({err}); re-save the model") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AdlearnError(f"{path} is not an adlearn model file (expected format {FORMAT!r})")
    name = ckpt["model"]
    if name not in REGISTRY:
        raise AdlearnError(f"{path} holds a {name!r} model, unknown to this adlearn; known: {sorted(REGISTRY)}")
    model = REGISTRY[name](**ckpt["params"], device=device)
    model._ensure_built(load_weights=False)
    model._materialise_buffers(ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.to(model.device)
    model.eval()
    return model
