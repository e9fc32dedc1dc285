"""A PatchCore-style memory bank: pose-agnostic anomaly detection by brute force, for comparison.

PatchCore (Roth et al., CVPR 2022) keeps the mid-level CNN patch features of every normal training image
in a memory bank; a test patch is as anomalous as the distance to its nearest neighbour in the bank. Here
the bank holds the patches of *all* training views, so any pose of the object finds similar patches
somewhere — that is its "pose-agnostic" trick, and its weakness: a patch that is normal at one place of the
object (a stain that looks like an eye) is found elsewhere in the bank and not flagged.

Recipe (close to PatchCore's defaults, with EfficientNet-lite0 instead of WideResNet-50):

- images resized to 224²; features of stages 2 and 3 (40 and 80 channels, strides 8 and 16); stage 3
  upsampled to stage 2's 28 × 28 grid; each averaged over a 3 × 3 neighbourhood; concatenated (120-d);
- optional greedy k-center coreset (on a seeded random projection) keeps ``coreset_ratio`` of the patches
  (off by default: the exact bank is the strongest version of the baseline and fast enough here);
- patch score = Euclidean distance to the nearest bank patch; the 28² map is upsampled bilinearly to 224²
  and blurred with σ = 4; image score = its maximum.

The other two baselines (coarse pose only; the nearest training image) share the pipeline and live in
:func:`splatlab.detect.detect` (``mode="coarse"`` and ``mode="nearest"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from splatlab.anomaly import gaussian_blur, resize_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryBankConfig:
    """Settings of the PatchCore-style baseline."""

    stages: tuple[int, ...] = (2, 3)  # EfficientNet-lite0 stages whose patches fill the bank
    size: int = 224  # images are resized to size × size; maps come out at this size
    neighbourhood: int = 3  # side of the local average that gives each patch some context (1 = none)
    coreset_ratio: float | None = (
        None  # fraction of patches kept by greedy k-center (PatchCore: 0.01–0.25); None
    )
    #   keeps all: exact and, for ~100k patches, still cheap (one matrix product per query)
    projection_dim: int = 128  # random projection used only to pick the coreset
    blur_sigma: float = 4.0  # σ of the blur of the upsampled map
    chunk: int = 4096  # query patches per distance block (memory vs speed)
    seed: int = 0  # seed of the projection and of the coreset's first point

    def __post_init__(self) -> None:
        if self.coreset_ratio is not None and not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1] or None, got {self.coreset_ratio}")
        if self.neighbourhood < 1 or self.neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be odd and >= 1, got {self.neighbourhood}")


def greedy_coreset(x: Tensor, n: int, projection_dim: int = 128, seed: int = 0) -> Tensor:
    """Indices of n points chosen by greedy k-center (farthest point first) on a random projection.

    Args:
        x: Points. [P, D]
        n: How many to keep (1 <= n <= P).
        projection_dim: Dimension of the seeded Gaussian projection (no projection when >= D).
        seed: Seed of the projection and of the first point.

    Returns:
        Indices into ``x``, in the order they were picked. [n]
    """
    P = x.shape[0]
    if not 1 <= n <= P:
        raise ValueError(f"n must be in [1, {P}], got {n}")
    g = torch.Generator().manual_seed(seed)
    z = x.float()
    if projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=g) / projection_dim**0.5
        z = z @ proj.to(z.device)
    first = int(torch.randint(P, (1,), generator=g))
    picked = [first]
    dist = (z - z[first]).pow(2).sum(1)
    for _ in range(n - 1):
        i = int(torch.argmax(dist))
        picked.append(i)
        dist = torch.minimum(dist, (z - z[i]).pow(2).sum(1))
    return torch.tensor(picked, dtype=torch.long, device=x.device)


class MemoryBank:
    """Nearest-neighbour patch distances to the training views' features.

    Build it with :meth:`fit`; :meth:`maps` gives anomaly maps of new images.

    Args:
        bank: Patch features of the normal images. [P, D]
        config: The settings it was built with.
    """

    def __init__(self, bank: Tensor, config: MemoryBankConfig = MemoryBankConfig()):
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ValueError(f"bank must be [P, D] with P >= 1, got {tuple(bank.shape)}")
        self.bank = bank
        self.config = config

    @staticmethod
    def patch_features(images: Tensor, config: MemoryBankConfig = MemoryBankConfig(), device=None) -> Tensor:
        """Locally averaged, concatenated patch features on the first stage's grid.

        Args:
            images: RGB in [0, 1]. [B, H, W, 3]
            config: Stages, size, neighbourhood.
            device: Where to run; None means the device of ``images``.

        Returns:
            Patch features. [B, D, h, w]
        """
        from splatlab.features import get_extractor

        dev = images.device if device is None else torch.device(device)
        x = resize_images(images.float().to(dev), config.size)
        with torch.no_grad():
            feats = get_extractor(config.stages, dev)(x)
        h, w = feats[0].shape[-2:]
        k = config.neighbourhood
        out = []
        for f in feats:
            if k > 1:
                f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
            if f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1)

    @classmethod
    def fit(
        cls, images: Tensor, config: MemoryBankConfig = MemoryBankConfig(), device=None, batch: int = 16
    ) -> MemoryBank:
        """Fill the bank with the patches of normal images (e.g. all training views).

        Args:
            images: Defect-free RGB images in [0, 1]. [V, H, W, 3]
            config: Settings.
            device: Where to run; None means the device of ``images``.
            batch: Images per feature pass.
        """
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(
                f"images must be [V, H, W, 3] with V >= 1, got {getattr(images, 'shape', images)}"
            )
        parts = []
        for i in range(0, len(images), batch):
            f = cls.patch_features(images[i : i + batch], config, device)
            parts.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
        bank = torch.cat(parts)
        if config.coreset_ratio is not None and config.coreset_ratio < 1.0:
            n = max(1, int(round(config.coreset_ratio * len(bank))))
            bank = bank[greedy_coreset(bank, n, config.projection_dim, config.seed)]
        log.info("memory bank: %d patches of %d dims from %d images", len(bank), bank.shape[1], len(images))
        return cls(bank.contiguous(), config)

    def maps(self, images: Tensor, device=None) -> Tensor:
        """Anomaly maps: nearest-neighbour distance per patch, upsampled and blurred.

        Args:
            images: RGB in [0, 1]. [B, H, W, 3] or [H, W, 3]

        Returns:
            Maps at ``config.size``². [B, S, S] (or [S, S] for one image)
        """
        single = images.ndim == 3
        images = images[None] if single else images
        cfg = self.config
        f = self.patch_features(images, cfg, device or self.bank.device)
        B, D, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, D)
        bank = self.bank.to(q.device)
        d = torch.cat(
            [torch.cdist(q[i : i + cfg.chunk], bank).amin(dim=1) for i in range(0, len(q), cfg.chunk)]
        )
        m = F.interpolate(
            d.reshape(B, 1, h, w), size=(cfg.size, cfg.size), mode="bilinear", align_corners=False
        )
        m = gaussian_blur(m[:, 0], cfg.blur_sigma).cpu()
        return m[0] if single else m


def run_memory_bank(
    bank: MemoryBank, test: list, name: str = "", indices: list[int] | None = None, batch: int = 8
):
    """Score test samples with the memory bank; returns a :class:`splatlab.detect.ClassRun`.

    Args:
        bank: A fitted memory bank.
        test: Test samples (:class:`splatlab.data.TestSample`). [T]
        name: Class name for the record.
        indices: Which samples to run; all by default. [M]
        batch: Images per pass.
    """
    import time

    import numpy as np

    from splatlab.anomaly import image_score, resize_map
    from splatlab.detect import ClassRun

    indices = list(range(len(test))) if indices is None else list(indices)
    if not indices:
        raise ValueError("run_memory_bank: no test samples to run")
    maps, secs = [], []
    for s in range(0, len(indices), batch):
        chunk = [test[i] for i in indices[s : s + batch]]
        t0 = time.perf_counter()
        m = bank.maps(torch.stack([t.image for t in chunk]))
        secs += [(time.perf_counter() - t0) / len(chunk)] * len(chunk)
        maps += [resize_map(mi, tuple(t.image.shape[:2])) for mi, t in zip(m, chunk, strict=True)]
    secs_a = np.array(secs)
    zeros = np.zeros_like(secs_a)
    return ClassRun(
        name=name,
        method="memory_bank",
        scores=np.array([float(image_score(m)) for m in maps]),
        labels=np.array([test[i].label for i in indices]),
        defects=[test[i].defect for i in indices],
        maps=np.stack([m.numpy() for m in maps]),
        masks=np.stack([test[i].mask.numpy() for i in indices]),
        times={
            "coarse": zeros,
            "hypotheses": zeros,
            "refine": zeros,
            "render": zeros,
            "score": secs_a,
            "total": secs_a,
        },
        indices=indices,
    )


__all__ = ["MemoryBank", "MemoryBankConfig", "greedy_coreset", "run_memory_bank"]
