"""SPADE: the chunked nearest-neighbour search against brute force, and the model against a
from-scratch implementation of Eqs. 1–2 with no chunking at all."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from adlearn.errors import AdlearnError
from adlearn import knn
from adlearn.knn import nearest_neighbours
from adlearn.models import SPADE
from adlearn.ops import gaussian_blur


def _brute_force(query: torch.Tensor, vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pairwise distance at once, in float64: the definition, without any memory bound."""
    distances = (query.double()[:, None, :] - vectors.double()[None, :, :]).pow(2).sum(-1).sqrt()
    return distances.topk(k, dim=1, largest=False)


@pytest.mark.parametrize("chunk_size", [1, 7, 30, 10_000])  # 7 and 30 divide nothing: the remainder counts
@pytest.mark.parametrize("block_entries", [13, 2**20])  # 13: blocks of one query row
@pytest.mark.parametrize("k", [1, 3])
def test_chunked_search_equals_brute_force(chunk_size, block_entries, k, monkeypatch) -> None:
    monkeypatch.setattr(knn, "BLOCK_ENTRIES", block_entries)
    g = torch.Generator().manual_seed(0)
    gallery = torch.randn(23, 5, 8, generator=g) + 3.0  # 23 items of 5 vectors; an offset tests cancellation
    query = torch.randn(11, 8, generator=g) + 3.0
    distance, index = nearest_neighbours(query, gallery, k, chunk_size=chunk_size)
    expected_distance, expected_index = _brute_force(query, gallery.reshape(-1, 8), k)
    torch.testing.assert_close(distance.double(), expected_distance, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, expected_index)
    without_index, none = nearest_neighbours(query, gallery, k, chunk_size=chunk_size, return_index=False)
    assert none is None and torch.equal(without_index, distance)


@pytest.mark.parametrize("chunk_size", [4, 9])
def test_search_restricted_to_rows(chunk_size) -> None:
    g = torch.Generator().manual_seed(1)
    gallery = torch.randn(10, 3, 4, generator=g).half()  # float16 storage, float32 computation
    query = torch.randn(6, 4, generator=g)
    rows = torch.tensor([7, 2, 9, 4])
    distance, index = nearest_neighbours(query, gallery, 2, rows=rows, chunk_size=chunk_size)
    expected_distance, expected_index = _brute_force(query, gallery[rows].reshape(-1, 4).float(), 2)
    torch.testing.assert_close(distance.double(), expected_distance, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, expected_index)


def test_bad_k_is_a_clear_error() -> None:
    with pytest.raises(AdlearnError, match="k=7"):
        nearest_neighbours(torch.rand(2, 3), torch.rand(2, 3, 3), 7)


def _spade_from_scratch(
    model: SPADE, train: torch.Tensor, test: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 1–2 written out: all distances at once, float64, no chunks, no stored gallery."""
    train_global, train_pyramid = model.extract(train)
    test_global, test_pyramid = model.extract(test)
    knn_distance, knn_index = _brute_force(test_global, train_global, model.k)
    score = knn_distance.mean(1)  # Eq. 1
    maps = []
    for train_f, test_f in zip(train_pyramid, test_pyramid):
        per_image = []
        for b in range(len(test)):
            gallery = train_f[knn_index[b]].permute(0, 2, 3, 1).reshape(-1, train_f.shape[1])  # all positions
            queries = test_f[b].flatten(1).T
            per_image.append(
                _brute_force(queries, gallery, model.kappa)[0].mean(1).view(test_f.shape[-2:])
            )  # Eq. 2
        layer = torch.stack(per_image).float().unsqueeze(1)
        maps.append(
            F.interpolate(layer, size=test.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
        )
    return score.float(), gaussian_blur(torch.stack(maps).mean(0), model.sigma)


@pytest.mark.parametrize("kappa", [1, 3])
def test_spade_equals_the_equations(train_images, test_images, kappa) -> None:
    model = SPADE(
        backbone="tf_efficientnet_lite0",
        pretrained="auto",
        k=4,
        kappa=kappa,
        sigma=1.0,
        gallery_dtype="float32",
        chunk_size=50,
        batch_size=5,
        device="cpu",
    ).fit(train_images)
    prediction = model.predict(test_images)
    score, anomaly_map = _spade_from_scratch(model, train_images, test_images)
    torch.testing.assert_close(prediction.score, score, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(prediction.anomaly_map, anomaly_map, rtol=1e-4, atol=1e-4)


def test_float16_gallery_is_half_the_memory_and_agrees(train_images, test_images) -> None:
    kwargs = dict(backbone="tf_efficientnet_lite0", pretrained="auto", k=4, sigma=1.0, device="cpu")
    half = SPADE(**kwargs).fit(train_images)
    full = SPADE(gallery_dtype="float32", **kwargs).fit(train_images)
    assert half.gallery.dtype == torch.float16 and half.gallery.nbytes * 2 == full.gallery.nbytes
    c_h_w = [24 * 16 * 16, 40 * 8 * 8, 112 * 4 * 4]  # lite0 layers 1-3 at 64 px
    assert half.gallery.shape == (16, sum(c_h_w))
    a, b = half.predict(test_images), full.predict(test_images)
    torch.testing.assert_close(a.score, b.score, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map, rtol=1e-2, atol=1e-2)


def test_k_larger_than_the_training_set_uses_all_images(train_images, test_images) -> None:
    with pytest.warns(UserWarning, match="only 16 training images"):
        model = SPADE(backbone="tf_efficientnet_lite0", pretrained="auto", device="cpu").fit(train_images)
    assert model.k == 50 and model.k_ == 16
    exact = SPADE(backbone="tf_efficientnet_lite0", pretrained="auto", k=16, device="cpu").fit(train_images)
    torch.testing.assert_close(model.predict(test_images).score, exact.predict(test_images).score)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"gallery_dtype": "int8"}, "gallery_dtype"),
        ({"kappa": 0}, "kappa=0"),
        ({"layers": (1, 1)}, "distinct"),
    ],
)
def test_bad_hyper_parameters_fail_clearly(kwargs, fragment) -> None:
    with pytest.raises(AdlearnError, match=None) as err:  # at construction, before any work
        SPADE(backbone="tf_efficientnet_lite0", pretrained="auto", k=4, device="cpu", **kwargs)
    assert fragment in str(err.value)


def test_global_feature_is_the_pooled_last_stage(train_images) -> None:
    """For ResNets f_y is torchvision's ``avgpool`` output: layer4, globally average-pooled."""
    model = SPADE(backbone="resnet18", pretrained=False, k=2, device="cpu").fit(train_images[:4])
    full = timm.create_model("resnet18", pretrained=False).eval()
    missing, _ = full.load_state_dict(model.feature_extractor.model.state_dict(), strict=False)
    assert missing == ["fc.weight", "fc.bias"]  # same weights; the classifier is unused
    x = (train_images[:2] - model.feature_extractor.mean) / model.feature_extractor.std
    with torch.no_grad():
        expected = full.forward_head(full.forward_features(x), pre_logits=True)
    torch.testing.assert_close(model.extract(train_images[:2])[0], expected)
    assert model.global_features.shape == (4, 512)
