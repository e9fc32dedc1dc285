"""Coarse pose: retrieve the training views that look most like a query image.

The retrieved views' cameras are the starting poses of the gradient refinement (:mod:`splatlab.pose`).
Two methods, chosen by name:

- ``"features"``: cosine similarity of global descriptors from the offline ImageNet EfficientNet-lite0
  (:func:`splatlab.features.global_descriptor`: stages pooled to a coarse grid, so the descriptor changes
  with the viewpoint). One network pass per query and a matrix product; the default.
- ``"sift"``: OpenCV SIFT keypoints, mutual nearest neighbours and Lowe's ratio test; the similarity is the
  number of matches that pass. It needs no learned weights and mirrors SplatPose's idea of counting LoFTR
  matches against every training view (LoFTR's weights are not available offline).

The descriptors of the training views are computed once and cached on disk as a ``.pt`` file whose name
holds a hash of the views (images, cameras) and of the method's settings, so a changed model or data set
never reuses a stale cache. The file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from splatlab.atomic import open_atomic
from splatlab.cameras import Cameras

log = logging.getLogger(__name__)

Method = Literal["features", "sift"]
METHODS: tuple[str, ...] = ("features", "sift")

__all__ = ["METHODS", "Retriever", "check_query"]


def check_query(query, height: int | None = None, width: int | None = None, name: str = "query") -> Tensor:
    """Validate an RGB query image and return it as float32 [H, W, 3].

    Raises ``ValueError`` for anything but an RGB float image in [0, 1] (of exactly ``height × width`` when
    given): a grayscale [H, W] or [H, W, 1] image, an RGBA image, a batch, another size, or NaN values.
    """
    if isinstance(query, np.ndarray):
        query = torch.from_numpy(query)
    if not torch.is_tensor(query):
        raise ValueError(f"{name} must be a tensor or array [H, W, 3], got {type(query).__name__}")
    if query.ndim == 2 or (query.ndim == 3 and query.shape[-1] == 1):
        raise ValueError(f"{name} is grayscale {tuple(query.shape)}; pass an RGB image [H, W, 3]")
    if query.ndim == 3 and query.shape[-1] == 4:
        raise ValueError(f"{name} is RGBA {tuple(query.shape)}; composite it on white to RGB [H, W, 3] first")
    if query.ndim != 3 or query.shape[-1] != 3:
        raise ValueError(f"{name} must be one RGB image [H, W, 3] (channels last), got {tuple(query.shape)}")
    if height is not None and width is not None and tuple(query.shape[:2]) != (height, width):
        raise ValueError(
            f"{name} is {query.shape[0]}x{query.shape[1]} (HxW) but the model's views are {height}x{width}; "
            "load it at the training size (e.g. load_mad_class(..., size=...))"
        )
    if not query.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1], got dtype {query.dtype}")
    if not bool(torch.isfinite(query).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return query.float()


def _views_hash(images: Tensor, cameras: Cameras, settings: str) -> str:
    h = hashlib.sha1()
    h.update(settings.encode())
    h.update(np.ascontiguousarray(images.detach().cpu().numpy().astype(np.float32)).tobytes())
    h.update(np.ascontiguousarray(cameras.viewmats.detach().cpu().numpy().astype(np.float32)).tobytes())
    h.update(np.ascontiguousarray(cameras.Ks.detach().cpu().numpy().astype(np.float32)).tobytes())
    return h.hexdigest()[:16]


def _to_gray_u8(image: Tensor) -> np.ndarray:
    rgb = (image.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    return (rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)


class Retriever:
    """Nearest training views of a query image, from cached descriptors of the training views.

    Build it with :meth:`build`; then :meth:`top_k` ranks the training views for a query.

    Args:
        cameras: The training views' cameras. [V]
        method: ``"features"`` or ``"sift"``.
        descriptors: ``"features"``: unit-norm descriptors [V, D]; ``"sift"``: one float32 array [n_i, 128]
            of SIFT descriptors per view.
        settings: The method's settings (for the cache key and for the query side).
        images: The training views, kept for display and for held-out evaluation. [V, H, W, 3]
    """

    def __init__(
        self, cameras: Cameras, method: str, descriptors, settings: dict, images: Tensor | None = None
    ):
        self.cameras = cameras
        self.method = method
        self.descriptors = descriptors
        self.settings = dict(settings)
        self.images = images

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        images: Tensor,
        cameras: Cameras,
        method: str = "features",
        cache_dir: str | os.PathLike | None = None,
        stages: tuple[int, ...] = (1, 2, 3, 4),
        grid: int = 4,
        ratio: float = 0.75,
        device=None,
    ) -> Retriever:
        """Describe the training views (or load their cached descriptors).

        Args:
            images: Training views, RGB on white in [0, 1]. [V, H, W, 3]
            cameras: Their cameras; width and height must match ``images``. [V]
            method: ``"features"`` (EfficientNet-lite0 global descriptors) or ``"sift"`` (match counts).
            cache_dir: Folder for the ``.pt`` cache, typically the run folder; None disables caching.
            stages: Feature stages pooled into the ``"features"`` descriptor.
            grid: Cells per side of the pooled layout of the ``"features"`` descriptor.
            ratio: Lowe's ratio-test threshold of the ``"sift"`` method.
            device: Where descriptors are computed and kept; None means the device of ``images``.
        """
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not torch.is_tensor(images) or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be RGB views [V, H, W, 3], got {shape}")
        if len(cameras) != len(images):
            raise ValueError(f"cameras has {len(cameras)} views but images has {len(images)}")
        if (cameras.height, cameras.width) != tuple(images.shape[1:3]):
            raise ValueError(
                f"cameras are {cameras.height}x{cameras.width} "
                f"but images are {images.shape[1]}x{images.shape[2]}"
            )
        device = images.device if device is None else torch.device(device)
        settings = (
            {"stages": tuple(int(s) for s in stages), "grid": int(grid)}
            if method == "features"
            else {"ratio": float(ratio)}
        )
        path = None
        if cache_dir is not None:
            cache_dir = Path(cache_dir)
            if not cache_dir.is_dir():
                raise FileNotFoundError(f"cache_dir {cache_dir} does not exist")
            key = _views_hash(images, cameras, f"{method}:{sorted(settings.items())}")
            path = cache_dir / f"retrieval_{method}_{key}.pt"
            if path.is_file():
                try:
                    descriptors = torch.load(path, map_location=device, weights_only=True)
                    log.info("loaded cached %s descriptors from %s", method, path)
                    return cls(cameras, method, _from_saved(method, descriptors), settings, images)
                except Exception as exc:  # a corrupt or foreign file: recompute and overwrite it
                    log.warning("ignoring unreadable retrieval cache %s (%s)", path, exc)
        if method == "features":
            descriptors = _feature_descriptors(images, settings, device)
        else:
            descriptors = [_sift_descriptors(img) for img in images]
        if path is not None:
            saved = descriptors.cpu() if method == "features" else [torch.from_numpy(d) for d in descriptors]
            with open_atomic(path) as f:
                torch.save(saved, f)
            log.info("cached %s descriptors of %d views at %s", method, len(images), path)
        return cls(cameras, method, descriptors, settings, images)

    # -- queries ---------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.cameras)

    def similarities(self, query: Tensor) -> Tensor:
        """Similarity of the query to every training view (cosine, or SIFT match count). [V]

        Args:
            query: RGB image on white in [0, 1], the size of the training views. [H, W, 3]
        """
        query = check_query(query, self.cameras.height, self.cameras.width)
        if self.method == "features":
            from splatlab.features import global_descriptor

            q = global_descriptor(
                query[None].to(self.descriptors.device), self.settings["stages"], self.settings["grid"]
            )[0]
            return (self.descriptors @ q).float().cpu()
        q = _sift_descriptors(query)
        return torch.tensor([float(_count_matches(q, d, self.settings["ratio"])) for d in self.descriptors])

    def top_k(
        self, query: Tensor, k: int = 1, exclude: Tensor | list[int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` most similar training views, best first.

        Args:
            query: RGB image on white in [0, 1], the size of the training views. [H, W, 3]
            k: How many views to return (at most the number of views).
            exclude: Indices of views to skip, e.g. the query's own view in a held-out test. [E]

        Returns:
            ``(indices [k] long, similarities [k] float)``.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        sim = self.similarities(query).clone()
        if exclude is not None:
            sim[torch.as_tensor(exclude, dtype=torch.long)] = -float("inf")
        k = min(int(k), int(torch.isfinite(sim).sum()))
        if k < 1:
            raise ValueError("top_k: every training view is excluded")
        values, indices = torch.topk(sim, k)
        return indices, values


def _from_saved(method: str, saved):
    if method == "features":
        return saved
    return [t.numpy() for t in saved]


def _feature_descriptors(images: Tensor, settings: dict, device, batch: int = 32) -> Tensor:
    from splatlab.features import global_descriptor

    out = [
        global_descriptor(
            images[i : i + batch].to(device), settings["stages"], settings["grid"], device=device
        )
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


def _sift_descriptors(image: Tensor) -> np.ndarray:
    """SIFT descriptors of one RGB image. [n, 128] float32 (n may be 0)"""
    import cv2

    _, desc = cv2.SIFT_create().detectAndCompute(_to_gray_u8(image), None)
    return np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)


def _count_matches(a: np.ndarray, b: np.ndarray, ratio: float) -> int:
    """Mutual nearest-neighbour matches between ``a`` and ``b`` that pass Lowe's ratio test.

    Mutual matching counts each keypoint once, so a view with many keypoints cannot outscore the query's
    own view by matching many of its keypoints to the same query keypoint.
    """
    import cv2

    if len(a) < 2 or len(b) < 2:
        return 0
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    back = {m.queryIdx: m.trainIdx for m in matcher.match(b, a)}  # best a for every b
    pairs = matcher.knnMatch(a, b, k=2)
    return sum(
        1
        for p in pairs
        if len(p) == 2 and p[0].distance < ratio * p[1].distance and back.get(p[0].trainIdx) == p[0].queryIdx
    )
