"""The contract every adlearn model obeys, written once.

A model is a ``torch.nn.Module`` with scikit-learn's shape:

* ``__init__`` takes hyper-parameters only. This class records them: every argument of a
  subclass's ``__init__`` becomes an attribute of the same name (lists become tuples) and part of
  :meth:`~AnomalyModel.get_params`, and ``_check_params`` validates them once — no method file
  repeats ``self.x = x`` (diffusers' ``register_to_config``, scikit-learn's ``get_params``). It
  also adds the keyword-only ``device=None`` (CUDA when present, else CPU) to every model's
  signature and initialises the module before the subclass's body registers its buffers;
* ``fit(data)`` learns from scratch and returns ``self`` — ``data`` is a Dataset or DataLoader of
  samples (``{"image": float[3,H,W] in [0,1], "label": 0, ...}``), a tensor ``float[N,3,H,W]``,
  or a list of Datasets (one model for several categories); ``warm_start=True`` continues;
* ``predict(images)`` maps ``float[B,3,H,W]`` in [0,1] to a :class:`Prediction` whose
  ``score[i]`` and ``anomaly_map[i]`` depend on image ``i`` only;
* ``save(path)`` / :func:`load` round-trip the hyper-parameters and every learned tensor.

A method declares, next to its class, the settings each run profile gives it (``profiles``, like
timm's ``default_cfgs``), so :func:`adlearn.models.build` needs nothing else to know about it.
Subclasses implement ``_build(load_weights)`` (create sub-modules such as the backbone),
``_fit(data)`` and ``_predict(images)``; this class does the checking, the device placement,
the batching and the serialisation so that no model repeats it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._version import __version__
from ..backbones import FeatureExtractor
from ..batches import as_dataset, check_images
from ..env import resolve_device
from ..errors import AdlearnError
from ..files import atomic_write
from ..prediction import Prediction, concat_predictions
from ..profiles import Profile

__all__ = ["Prediction", "AnomalyModel", "REGISTRY", "load"]

FORMAT = "adlearn-model/1"

REGISTRY: dict[str, type["AnomalyModel"]] = {}
"""Every concrete model class by name; filled by :meth:`AnomalyModel.__init_subclass__`."""

_SKIPPED = ("self", "device")


def _plain(value: Any) -> Any:
    """Hyper-parameters as plain, comparable, safely saved values: sequences become tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a model's ``__init__``: initialise the module on ``device``, record the arguments as
    attributes, run the body (which registers buffers), then validate — once, at the outermost
    ``__init__`` of the class hierarchy."""
    signature = inspect.signature(init)
    names = tuple(
        p.name for p in signature.parameters.values()
        if p.name not in _SKIPPED and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )

    @functools.wraps(init)
    def __init__(self: AnomalyModel, *args: Any, device: str | torch.device | None = None, **kwargs: Any) -> None:
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError as err:
            raise AdlearnError(
                f"{type(self).__name__}: {err}; its hyper-parameters are {list(type(self)._param_names())}"
            ) from None
        bound.apply_defaults()
        outermost = "_recording_params" not in self.__dict__
        if outermost:
            AnomalyModel.__init__(self, device=device)
            self.__dict__["_recording_params"] = True
        for name in names:
            self.__dict__[name] = _plain(bound.arguments[name])
        init(self, *args, **kwargs)
        if outermost:
            del self.__dict__["_recording_params"]
            self._check_params()

    device = inspect.Parameter("device", inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation="str | torch.device | None")
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))  # before **kwargs
    __init__.__signature__ = signature.replace(parameters=[*params[:at], device, *params[at:]])
    __init__._hyper_parameters = names  # type: ignore[attr-defined]
    return __init__


class AnomalyModel(nn.Module):
    """Base class of every adlearn model (see the module docstring for the contract)."""

    name: ClassVar[str]
    profiles: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    """Constructor arguments per run profile (``"fast"``, ``"book"``, ``"paper"``) that override
    the defaults (which are the paper's); a profile not listed uses the defaults."""
    _learned_attrs: ClassVar[tuple[str, ...]] = ()
    """Non-tensor values learned in ``fit`` that ``save`` must keep (tensors are buffers)."""

    def __init__(self, *, device: str | torch.device | None = None) -> None:
        super().__init__()
        self._device = resolve_device(device)
        self.fitted_ = False
        self._built = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])
        if "name" in cls.__dict__:  # concrete models declare a name; helpers and mixins do not
            REGISTRY[cls.name] = cls

    @property
    def device(self) -> torch.device:
        """Where the model computes: the ``device`` argument, then wherever ``.to(...)`` moved it."""
        tensor = next(itertools.chain(self.parameters(), self.buffers()), None)
        return self._device if tensor is None else tensor.device

    # --- hyper-parameters (scikit-learn style) --------------------------------------------
    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        """The hyper-parameters of every ``__init__`` along the class hierarchy, base classes first."""
        names: dict[str, None] = {}
        for klass in reversed(cls.__mro__):
            names.update(dict.fromkeys(getattr(klass.__dict__.get("__init__"), "_hyper_parameters", ())))
        return tuple(names)

    @classmethod
    def params_for(cls, profile: str | Profile) -> dict[str, Any]:
        """The constructor arguments that run profile ``profile`` sets for this model."""
        name = profile.name if isinstance(profile, Profile) else profile
        return dict(cls.profiles.get(name, {}))

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments (hyper-parameters) of this model."""
        return {name: getattr(self, name) for name in self._param_names()}

    def _check_params(self) -> None:
        """Validate the hyper-parameters; called once, at the end of construction."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())

    # --- the three verbs ------------------------------------------------------------------
    def fit(self, data: Any, *, warm_start: bool = False) -> "AnomalyModel":
        """Learn from nominal images, from scratch; returns ``self``.

        ``warm_start=True`` keeps the trained networks and continues training them (statistics-
        based models re-estimate from ``data`` either way). A ``fit`` that fails leaves the model
        unfitted, never half-updated.
        """
        data = as_dataset(data)
        if not warm_start:
            self._built = False  # fresh sub-modules: nothing learned before survives
        self.fitted_ = False
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
        pred = concat_predictions([self._predict(images[i : i + step]) for i in range(0, len(images), step)])
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

    def _check_image_size(self, images: Tensor, *, fitting: bool = False) -> None:
        """For models with per-position state: record the training size (saved with the model),
        then insist on it."""
        size = tuple(images.shape[-2:])
        if fitting:
            self.image_size_ = size
        elif "image_size_" not in self.__dict__:  # a file of adlearn 0.1 (MeanImage) did not keep it
            raise AdlearnError(f"this {type(self).__name__} was saved without its training image size: refit it")
        elif size != self.image_size_:
            raise AdlearnError(
                f"{type(self).__name__} keeps state per pixel position, so it scores images of the size "
                f"it was fitted on ({self.image_size_[0]}×{self.image_size_[1]}); got {size[0]}×{size[1]}: "
                "resize the images (e.g. MVTecAD(..., image_size=...)) or refit"
            )

    def _build_feature_extractor(self, layers: tuple[int, ...], load_weights: bool) -> None:
        """``self.feature_extractor``: the frozen ``self.backbone`` pyramid at ``layers``, with
        ``self.pretrained``'s weights (none when restoring a file, whose own record then wins);
        records ``pretrained_`` and ``weights_``, the exact weight tag loaded (or ``"random"``)."""
        pretrained = self.pretrained if load_weights else False
        self.feature_extractor = FeatureExtractor(self.backbone, layers, pretrained=pretrained)
        self.pretrained_ = self.feature_extractor.pretrained
        self.weights_ = self.feature_extractor.weights

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
        fixed_size = {"image_size_": self.image_size_} if "image_size_" in self.__dict__ else {}
        return {"fitted_": self.fitted_, **fixed_size, **{a: getattr(self, a) for a in self._learned_attrs}}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def save(self, path: str | Path) -> Path:
        """Write hyper-parameters and every learned tensor to ``path`` (a ``torch.save`` file).

        Written to a temporary file and renamed over ``path``: a failure midway (an error, a
        full disk, Ctrl-C, a killed process) leaves any previous file at ``path`` intact.
        """
        if not self.fitted_:
            raise AdlearnError(f"{type(self).__name__} is not fitted: there is nothing to save yet")
        path = Path(path)
        state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in self.state_dict().items()}
        with atomic_write(path) as handle:
            torch.save({"format": FORMAT, "adlearn_version": __version__, "model": type(self).__name__,
                        "params": self.get_params(), "state_dict": state}, handle)
        return path

    def _learned_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape each learned buffer must have, given the hyper-parameters and the rest of the
        learned state; :func:`load` checks a file against it (override in a model)."""
        return {}

    @classmethod
    def _upgrade_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Hyper-parameters saved by an older adlearn, in today's names (override where they changed)."""
        return params

    @classmethod
    def _upgrade_state(cls, state: dict[str, Any]) -> dict[str, Any]:
        """A state dict saved by an older adlearn, with what it lacks filled in (override where it grew)."""
        return state

    def _materialise_buffers(self, state_dict: dict[str, Any]) -> None:
        """Give the learned buffers that are ``None`` until ``fit`` the shape stored in ``state_dict``."""
        for name in self._unset_buffers():
            if name in state_dict:
                self._buffers[name] = torch.empty_like(state_dict[name])

    def _unset_buffers(self) -> list[str]:
        """The model's own buffers (what ``fit`` learns, registered as ``None``) still unset.

        Sub-modules are left alone: torch's own modules keep optional buffers as ``None`` for good
        (``nn.InstanceNorm2d`` without running statistics)."""
        return [name for name, buf in self._buffers.items() if buf is None]


def load(path: str | Path, *, device: str | torch.device | None = None) -> AnomalyModel:
    """Restore a model written by :meth:`AnomalyModel.save` (no network access needed)."""
    path = Path(path)
    if not path.is_file():
        raise AdlearnError(f"no saved model at {path}; save one with model.save({str(path)!r})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file; torch's text would suggest weights_only=False
        raise AdlearnError(f"{path} is not a readable adlearn model file ({type(err).__name__}: it is truncated, "
                           "damaged or another program's file); re-save the model with model.save(path)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AdlearnError(f"{path} is not an adlearn model file (expected format {FORMAT!r})")
    missing = [key for key in ("model", "params", "state_dict") if key not in ckpt]
    if missing:
        raise AdlearnError(f"{path} is an incomplete adlearn model file (no {missing}); re-save the model")
    name = ckpt["model"]
    if name not in REGISTRY:
        raise AdlearnError(f"{path} holds a {name!r} model, unknown to this adlearn; known: {sorted(REGISTRY)}")
    written_by = f"written by adlearn {ckpt.get('adlearn_version', '?')}, this is {__version__}"
    cls = REGISTRY[name]
    try:
        model = cls(**cls._upgrade_params(dict(ckpt["params"])), device=device)
    except AdlearnError as err:
        raise AdlearnError(f"{path} ({written_by}) has hyper-parameters this {name} does not take: {err}; "
                           "refit and save the model with this version") from None
    state = cls._upgrade_state(dict(ckpt["state_dict"]))
    model._ensure_built(load_weights=False)
    model._materialise_buffers(state)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise AdlearnError(f"{path} ({written_by}) does not hold what a {name} learns: {err}; "
                           "refit and save the model again") from None
    unset = model._unset_buffers()
    lost = [a for a in cls._learned_attrs if not hasattr(model, a)]
    if model.fitted_ and (unset or lost):
        raise AdlearnError(f"{path} ({written_by}) lacks learned state {unset + lost}; refit and save again")
    wrong = {name: (tuple(getattr(model, name).shape), shape) for name, shape in model._learned_shapes().items()
             if tuple(getattr(model, name).shape) != tuple(shape)}
    if model.fitted_ and wrong:
        detail = ", ".join(f"{n} is {got}, expected {want}" for n, (got, want) in wrong.items())
        raise AdlearnError(f"{path} ({written_by}) holds mis-shaped learned tensors ({detail}); refit and save again")
    model.to(model.device)
    model.eval()
    return model
