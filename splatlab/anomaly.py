"""Anomaly maps (query vs. a reference rendered at the estimated pose) and their calibration.

SplatPose's recipe (Kruse et al. 2024; ``AnomalyConfig.paper()``, ``method="splatpose"``), with every image
first resized to 224 × 224:

- an RGB term: the squared difference of the normalised images, ``((q - 0.5)/0.5 - (r - 0.5)/0.5)²``,
  summed over the three channels;
- a feature term per stage of the ImageNet EfficientNet-lite0 (stages 1–4, see :mod:`splatlab.features`):
  the squared difference of the two feature maps summed over channels, upsampled bilinearly to 224²;
- the map is the sum of all terms, blurred with a Gaussian of σ = 4 px; the image score is its maximum.

Other methods, by name, for teaching and ablation: ``"rgb"`` (the RGB term only), ``"features"`` (the
feature terms only) and ``"ssim"`` (1 − the local SSIM, averaged over channels). :func:`anomaly_terms`
returns each term on its own (before the blur, which is linear, so the blurred terms sum to the map).

``"cosine"``, the default, is this toolkit's variant, made for references that are renders of a slightly
imperfect model
at a slightly wrong pose. Per stage (stage 1 only by default: 24 channels, stride 4), each query feature
is compared with the *best-matching* reference feature within ``shift`` cells (±4 px at 224² for stage 1)
by cosine distance, ``min_Δ 1 − cos(f_q(p), f_r(p + Δ))``; the result is upsampled, summed over stages and
blurred like the recipe. Two things it ignores that the recipe counts: the contrast of fine texture the
splats reproduce only in part (cosine looks at the direction of a feature, not its length), and details
that sit a pixel or two from where the render puts them. It was chosen on a development split of LEGO-MAD
(seed 1: the same training views, 30 good and 30 defective new test images per class), never on the
benchmark's test images: mean image AUROC 87.2 (recipe) → 92.7 (cosine, shift 1), with the 1500-step
``cpu`` splats of the time; stage 1 with squared distances and no shift gave 89.1, cosine without the
shift 90.6, shift 2 92.1, a symmetric match 88.7, an object-centred crop and per-term normalisation by
held-out good maps did not help.

**Calibration** (:func:`calibrate`) uses defect-free data only: the maps of held-out good views of the
class. It stores a per-class normalisation and a decision threshold:

- ``threshold`` = ``median + k · σ``, with ``median`` the median of the held-out good image scores and
  ``σ = 1.4826 · MAD`` a robust standard deviation (MAD: median absolute deviation from the median; the
  factor makes it the standard deviation for normal data). ``k = 3.5`` is the usual cut-off for such robust
  z-scores. Being robust matters here: a held-out view whose pose is hard can score like a defect (one of
  02Puppy's 15 scores is 2.5× the next), and a rule built on the worst good score then misses most
  defects. On the development split the robust rule caught 74 % of the defects at 0.6 % false alarms,
  against 63 % at 2.2 % for the 0.99 quantile plus half its spread above the median;
- ``normalize(x) = (x − pixel_median) / (threshold − pixel_median)``: 0 is a typical pixel of a good map, 1 is
  the decision threshold, so a normalised map reads "how far towards 'defective' is this pixel" the same
  way in every class. SplatPose min–max normalises maps over the test set; we never look at test data.

A monotone per-class normalisation does not change any AUROC/AUPRO; it matters for the yes/no decision,
for comparing classes and for showing maps on one colour scale.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from splatlab.atomic import write_json

log = logging.getLogger(__name__)

Method = Literal["splatpose", "rgb", "features", "ssim", "cosine"]
METHODS: tuple[str, ...] = ("splatpose", "rgb", "features", "ssim", "cosine")
# Feature stages each method compares when AnomalyConfig.stages is None.
DEFAULT_STAGES: dict[str, tuple[int, ...]] = {
    "splatpose": (1, 2, 3, 4),
    "features": (1, 2, 3, 4),
    "cosine": (1,),
}


@dataclass(frozen=True)
class AnomalyConfig:
    """How an anomaly map is computed; the defaults are the best measured (``cosine``), see ``paper()``."""

    # "cosine" (shift-tolerant cosine distance of features, see the module docstring; the default, chosen
    # on a development split), "splatpose" (RGB + features: the paper's recipe), "rgb", "features" or
    # "ssim" (1 − SSIM)
    method: Method = "cosine"
    size: int = 224  # both images are resized to size × size; maps come out at this size
    # EfficientNet-lite0 stages of the feature terms; None: the method's (1–4, or 1 for "cosine")
    stages: tuple[int, ...] | None = None
    shift: int = 1  # "cosine": a query feature may match a reference feature up to this many cells away
    blur_sigma: float = 4.0  # σ in pixels (at `size`) of the Gaussian blur of the map; 0 disables it
    # σ in pixels (at `size`) of a Gaussian blur of both images before they are compared: sensor and
    # render noise the splats do not have (1.0: chosen on the development splits of both looks, with the
    # expected error below, see docs/realism.md); 0 (SplatPose) compares the images as they are
    presmooth: float = 1.0
    rgb_weight: float = 1.0  # weight of the RGB term in "splatpose"
    feature_weight: float = 1.0  # weight of the (summed) feature terms in "splatpose"
    ssim_window: int = 11  # side of the Gaussian SSIM window (σ = 1.5), for "ssim"
    # Photometric alignment of the rendered reference to the query before the map (splatlab.appearance):
    # "none" (SplatPose), "gain" or "affine" per colour channel; applied by splatlab.detect, which has the
    # render's alpha
    appearance: str = "affine"
    # The map is divided by the splats' expected map at the query's pose (fitted on the class's good
    # training views, splatlab.expected_error) plus this fraction of its mean: peaks the model makes on good
    # views too (highlights, noisy texture) count less. Chosen on the realistic look's development split,
    # see docs/realism.md; None compares without it (SplatPose). Applied by splatlab.detect (it has the pose)
    error_floor: float | None = 0.25
    # The expected error seen from the query: training views weighted by a Gaussian kernel of this std (in
    # degrees) in the angle between their camera's direction and the query's, so highlights that move with
    # the view are expected where they are (15: chosen on the realistic look's development split, see
    # docs/realism.md); None weighs every training view alike
    error_view_sigma: float | None = 15.0

    def __post_init__(self) -> None:
        from splatlab.appearance import APPEARANCES

        if self.appearance not in APPEARANCES:
            raise ValueError(f"appearance must be one of {APPEARANCES}, got {self.appearance!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if int(self.size) < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}")
        if self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be >= 0, got {self.blur_sigma}")
        if self.presmooth < 0:
            raise ValueError(f"presmooth must be >= 0, got {self.presmooth}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd and >= 3, got {self.ssim_window}")
        if self.error_floor is not None and not (math.isfinite(self.error_floor) and self.error_floor > 0):
            raise ValueError(f"error_floor must be a positive number or None, got {self.error_floor}")
        if self.error_view_sigma is not None and not (
            math.isfinite(self.error_view_sigma) and self.error_view_sigma > 0
        ):
            raise ValueError(
                f"error_view_sigma must be a positive number or None, got {self.error_view_sigma}"
            )
        if self.shift < 0:
            raise ValueError(f"shift must be >= 0, got {self.shift}")
        if self.stages is None:  # frozen: resolve the method's default once, here
            object.__setattr__(self, "stages", DEFAULT_STAGES.get(self.method, (1, 2, 3, 4)))
        object.__setattr__(self, "stages", tuple(int(x) for x in self.stages))

    @classmethod
    def paper(cls, **overrides) -> AnomalyConfig:
        """SplatPose's recipe as the paper gives it: RGB + EfficientNet stages 1-4, blurred, σ = 4, with the
        images compared as they are (no alignment, no blur before, no division by the expected error)."""
        recipe = {"method": "splatpose", "appearance": "none", "presmooth": 0.0, "error_floor": None}
        return cls(**{**recipe, **overrides})

    @property
    def uses_features(self) -> bool:
        return self.method in ("splatpose", "features", "cosine")


# ----------------------------------------------------------------------------------------------------------
# Images in, maps out
# ----------------------------------------------------------------------------------------------------------


def _as_batch(images, name: str) -> tuple[Tensor, bool]:
    """[H, W, 3] or [B, H, W, 3] float images -> ([B, H, W, 3] float32, was it batched)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise ValueError(f"{name} must be a tensor or array [B, H, W, 3], got {type(images).__name__}")
    batched = images.ndim == 4
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise ValueError(f"{name} must be RGB [H, W, 3] or [B, H, W, 3], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got {images.dtype}")
    return images.float(), batched


def resize_images(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize (antialiased when shrinking) of channels-last images. [B, H, W, 3] -> [B, h, w, 3]"""
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if tuple(images.shape[1:3]) == hw:
        return images
    x = images.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1)


def resize_map(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of anomaly maps, e.g. from 224² back to the query's size.

    Args:
        maps: Anomaly maps. [H, W] or [B, H, W]
        size: Target (height, width).

    Returns:
        The maps at ``size``. [h, w] or [B, h, w]
    """
    if maps.ndim not in (2, 3):
        raise ValueError(f"maps must be [H, W] or [B, H, W], got {tuple(maps.shape)}")
    single = maps.ndim == 2
    x = maps[None, None] if single else maps[:, None]
    if tuple(x.shape[-2:]) != (int(size[0]), int(size[1])):
        shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
        x = F.interpolate(
            x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False, antialias=shrink
        )
    return x[0, 0] if single else x[:, 0]


def _gaussian_kernel(sigma: float, truncate: float = 4.0, device=None) -> Tensor:
    radius = max(1, int(truncate * sigma + 0.5))  # as scipy.ndimage.gaussian_filter
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, truncated at 4σ, mirror padding (scipy's ``mode="mirror"``).

    Args:
        maps: Maps to blur. [B, H, W]
        sigma: Standard deviation in pixels; 0 returns the maps unchanged.

    Returns:
        Blurred maps. [B, H, W]
    """
    if sigma <= 0:
        return maps
    assert maps.ndim == 3, maps.shape
    k = _gaussian_kernel(float(sigma), device=maps.device).to(maps.dtype)
    r = (len(k) - 1) // 2
    x = maps[:, None]
    # Reflect padding needs r < size; fall back to replicate for tiny maps.
    mode = "reflect" if r < min(maps.shape[-2:]) else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x[:, 0]


def _blur_images(images: Tensor, sigma: float) -> Tensor:
    """:func:`gaussian_blur` of every channel of channels-last images. [B, H, W, C] -> [B, H, W, C]"""
    B, H, W, C = images.shape
    x = images.permute(0, 3, 1, 2).reshape(B * C, H, W)
    return gaussian_blur(x, sigma).reshape(B, C, H, W).permute(0, 2, 3, 1)


def ssim_map(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Local SSIM of two image batches (data range 1), averaged over channels, same size as the input.

    Args:
        a: Images in [0, 1]. [B, H, W, 3]
        b: Images in [0, 1]. [B, H, W, 3]
        window: Side of the Gaussian window (odd).
        sigma: σ of the window in pixels.

    Returns:
        SSIM in [-1, 1], 1 where the images agree. [B, H, W]
    """
    assert a.shape == b.shape and a.ndim == 4, (a.shape, b.shape)
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    C = x.shape[1]
    g = torch.exp(-0.5 * ((torch.arange(window, device=a.device) - window // 2) / sigma) ** 2)
    g = (g / g.sum()).to(x.dtype)
    w = (g[:, None] * g[None, :]).expand(C, 1, window, window).contiguous()
    r = window // 2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, (r, r, r, r), mode="reflect"), w, groups=C)

    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=1)


def shifted_cosine_distance(query_feats: Tensor, reference_feats: Tensor, shift: int) -> Tensor:
    """Per cell, the cosine distance of the query feature to its best match among nearby reference features.

    ``d(p) = min over |Δy|, |Δx| <= shift of 1 − cos(q(p), r(p + Δ))``, reference borders replicated.
    One-sided on purpose: every query feature needs a counterpart in the reference, so new material (a burr,
    a stain) and the surface a missing chunk exposes stand out; ``shift = 0`` is the plain cosine distance.

    Args:
        query_feats: Query feature maps. [B, C, h, w]
        reference_feats: Reference feature maps. [B, C, h, w]
        shift: Search radius in cells.

    Returns:
        Distances in [0, 2]. [B, h, w]
    """
    assert query_feats.shape == reference_feats.shape and query_feats.ndim == 4, (
        query_feats.shape,
        reference_feats.shape,
    )
    q, r = F.normalize(query_feats, dim=1), F.normalize(reference_feats, dim=1)
    if shift:
        r = F.pad(r, (shift,) * 4, mode="replicate")
    h, w = q.shape[-2:]
    best = None
    for dy in range(2 * shift + 1):
        for dx in range(2 * shift + 1):
            sim = (q * r[:, :, dy : dy + h, dx : dx + w]).sum(dim=1)
            best = sim if best is None else torch.maximum(best, sim)
    return (1.0 - best).clamp_min(0.0)


def anomaly_terms(
    query, reference, config: AnomalyConfig = AnomalyConfig(), device: torch.device | str | None = None
) -> dict[str, Tensor]:
    """Each term of the anomaly map on its own, at ``config.size``², before the blur.

    Args:
        query: Query images, RGB in [0, 1]. [H, W, 3] or [B, H, W, 3]
        reference: Reference images (the object rendered at the query's pose). [H', W', 3] or [B, H', W', 3]
        config: Method and sizes.
        device: Where to compute; None means the device of ``query``.

    Returns:
        ``{"rgb": ..., "stage1": ..., ...}`` for "splatpose", the matching subset for "rgb"/"features",
        ``{"ssim": 1 − SSIM}`` for "ssim", ``{"cosine1": ...}`` (one per stage) for "cosine"; each
        [B, S, S] (or [S, S] for unbatched input). Their sum, weighted as in ``config``, blurred, is
        :func:`anomaly_map`.
    """
    q, batched = _as_batch(query, "query")
    r, _ = _as_batch(reference, "reference")
    if q.shape[0] != r.shape[0]:
        raise ValueError(f"query and reference must hold as many images, got {q.shape[0]} and {r.shape[0]}")
    dev = q.device if device is None else torch.device(device)
    S = int(config.size)
    q, r = resize_images(q.to(dev), S).clamp(0, 1), resize_images(r.to(dev), S).clamp(0, 1)
    if config.presmooth > 0:
        q, r = (_blur_images(x, config.presmooth) for x in (q, r))
    terms: dict[str, Tensor] = {}
    if config.method in ("splatpose", "rgb"):
        terms["rgb"] = (((q - 0.5) / 0.5 - (r - 0.5) / 0.5) ** 2).sum(dim=-1)
    if config.uses_features:
        from splatlab.features import get_extractor

        ext = get_extractor(config.stages, dev)
        with torch.no_grad():
            feats = ext(torch.cat([q, r]))
        B = q.shape[0]
        for stage, f in zip(config.stages, feats, strict=True):
            if config.method == "cosine":
                d = shifted_cosine_distance(f[:B], f[B:], config.shift)[:, None]
                name = f"cosine{stage}"
            else:
                d = ((f[:B] - f[B:]) ** 2).sum(dim=1, keepdim=True)
                name = f"stage{stage}"
            terms[name] = F.interpolate(d, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
    if config.method == "ssim":
        terms["ssim"] = (1.0 - ssim_map(q, r, config.ssim_window)).clamp_min(0.0)  # rounding can exceed 1
    return terms if batched else {k: v[0] for k, v in terms.items()}


def combine_terms(terms: dict[str, Tensor], config: AnomalyConfig = AnomalyConfig()) -> Tensor:
    """Weighted sum of the terms of :func:`anomaly_terms`, blurred: the anomaly map. [B, S, S] or [S, S]"""
    total = None
    for name, t in terms.items():
        w = 1.0
        if config.method == "splatpose":
            w = config.rgb_weight if name == "rgb" else config.feature_weight
        total = w * t if total is None else total + w * t
    if total is None:
        raise ValueError("terms is empty")
    single = total.ndim == 2
    out = gaussian_blur(total[None] if single else total, config.blur_sigma)
    return out[0] if single else out


def anomaly_map(
    query, reference, config: AnomalyConfig = AnomalyConfig(), device: torch.device | str | None = None
) -> Tensor:
    """The anomaly map of a query against a reference rendered at its pose, at ``config.size``².

    Args:
        query: Query images, RGB in [0, 1]. [H, W, 3] or [B, H, W, 3]
        reference: Reference images, RGB in [0, 1]. [H', W', 3] or [B, H', W', 3]
        config: Method, size, blur.
        device: Where to compute; None means the device of ``query``.

    Returns:
        Maps, higher = more anomalous. [S, S] or [B, S, S]
    """
    return combine_terms(anomaly_terms(query, reference, config, device), config)


def image_score(maps: Tensor) -> Tensor:
    """Image anomaly score = the maximum of the map. [B, H, W] -> [B] (or [H, W] -> [])"""
    return maps.amax(dim=(-2, -1))


# ----------------------------------------------------------------------------------------------------------
# Calibration from good data only
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationConfig:
    """How the decision threshold is set from held-out good views."""

    k: float = 3.5  # threshold = median + k · 1.4826 · MAD of the good image scores (robust z-score)
    source: Literal["pose", "gt_pose"] = "pose"  # held-out views rendered at the pose pipeline's estimate
    #   ("pose": same conditions as a test query, honest) or at their known pose ("gt_pose": no pose error,
    #   so a lower, optimistic threshold)
    holdout_every: int = 8  # held-out good views: every n-th training view (training's eval split)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.k) and self.k > 0):
            raise ValueError(f"k must be a positive number, got {self.k}")
        if self.source not in ("pose", "gt_pose"):
            raise ValueError(f"source must be 'pose' or 'gt_pose', got {self.source!r}")
        if self.holdout_every < 2:
            raise ValueError(f"holdout_every must be >= 2, got {self.holdout_every}")


@dataclass(frozen=True)
class Calibration:
    """A per-class normalisation and decision threshold from held-out good views (no test data)."""

    method: str  # anomaly method the numbers belong to (a map of another method is not comparable)
    source: str  # "pose" or "gt_pose": how the held-out views were rendered
    n_views: int  # number of held-out good views
    pixel_median: float  # median pixel value of their maps: 0 after normalisation
    score_median: float  # median image score of the good views
    score_sigma: float  # robust spread of the good image scores: 1.4826 · their MAD
    k: float  # threshold = score_median + k · score_sigma, see CalibrationConfig
    threshold: float  # raw image scores above this are called defective: 1 after normalisation
    good_scores: tuple[float, ...] = ()  # the held-out good image scores, for plots

    def normalize(self, x):
        """Map raw map values or scores to the calibrated scale (0 typical good pixel, 1 threshold)."""
        return (x - self.pixel_median) / max(self.threshold - self.pixel_median, 1e-12)

    def decide(self, score) -> bool | np.ndarray:
        """True (defective) where the raw image score exceeds the threshold."""
        out = np.asarray(score.detach().cpu() if torch.is_tensor(score) else score) > self.threshold
        return bool(out) if out.ndim == 0 else out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["good_scores"] = list(self.good_scores)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        d = dict(d)
        d["good_scores"] = tuple(float(s) for s in d.get("good_scores", ()))
        return cls(**d)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically (temp file beside it, then rename)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
        write_json(path, self.to_dict(), indent=1)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no calibration file at {path}")
        try:
            d = json.loads(path.read_text())
            if isinstance(d, dict) and "margin" in d and "k" not in d:
                raise ValueError(
                    f"{path} was written by an older splatlab (quantile-and-margin threshold); "
                    "calibrate again"
                )
            return cls.from_dict(d)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise ValueError(f"{path}: not a calibration file ({exc})") from exc


_MAD_TO_SIGMA = 1.4826  # MAD × this = standard deviation, for normally distributed data


def calibrate(
    good_maps: Tensor | Sequence[Tensor],
    method: str = "splatpose",
    config: CalibrationConfig = CalibrationConfig(),
) -> Calibration:
    """Per-class normalisation and threshold from the anomaly maps of held-out *good* views.

    Args:
        good_maps: Maps of defect-free views only (never test images). [M, H, W]
        method: The anomaly method that made them (stored, to refuse mixing methods later).
        config: The robust z-score cut-off ``k`` and the source label to record.

    Returns:
        The calibration; a warning is logged when fewer than 5 views are given.
    """
    maps = torch.stack(list(good_maps)) if not torch.is_tensor(good_maps) else good_maps
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"good_maps must be [M, H, W] with M >= 1, got {tuple(maps.shape)}")
    maps = maps.detach().float().cpu()
    if not bool(torch.isfinite(maps).all()):
        raise ValueError("good_maps hold NaN or inf")
    if maps.shape[0] < 5:
        log.warning("calibrating from only %d good views; the threshold will be rough", maps.shape[0])
    scores = image_score(maps).double().numpy()
    med = float(np.median(scores))
    sigma = _MAD_TO_SIGMA * float(np.median(np.abs(scores - med)))
    if sigma == 0.0:  # more than half the good scores tie: fall back to the plain standard deviation
        log.warning("the held-out good scores have zero MAD; using their standard deviation instead")
        sigma = float(np.std(scores))
    threshold = med + config.k * sigma
    # Median of a subsample of pixels is plenty and keeps this cheap for many views.
    flat = maps.reshape(-1)
    step = max(1, flat.numel() // 1_000_000)
    pixel_median = float(flat[::step].median())
    if not math.isfinite(threshold) or threshold <= pixel_median:
        threshold = pixel_median + 1e-6
    return Calibration(
        method=method,
        source=config.source,
        n_views=int(maps.shape[0]),
        pixel_median=pixel_median,
        score_median=med,
        score_sigma=sigma,
        k=config.k,
        threshold=float(threshold),
        good_scores=tuple(float(s) for s in scores),
    )


__all__ = [
    "METHODS",
    "AnomalyConfig",
    "Calibration",
    "CalibrationConfig",
    "anomaly_map",
    "anomaly_terms",
    "calibrate",
    "combine_terms",
    "gaussian_blur",
    "image_score",
    "resize_images",
    "resize_map",
    "shifted_cosine_distance",
    "ssim_map",
]
