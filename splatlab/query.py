"""Query images: from a user's file or array to the model's input, saying what was converted.

- :func:`read_query`: a file as an array (images decoded fully, ``.npy`` as stored);
- :func:`prepare_query`: any accepted array to float32 RGB at the model's size, keeping the aspect ratio
  (white padding, :func:`query_padding`); anything else is a ``ValueError`` naming the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splatlab.anomaly import resize_images

log = logging.getLogger(__name__)

QUERY_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")

__all__ = ["QUERY_SUFFIXES", "prepare_query", "query_padding", "read_query"]


def read_query(path: Path) -> np.ndarray:
    """A query file as an array: images decoded fully (RGB on white), ``.npy`` as stored. [H, W, C]"""
    from splatlab.data.mad import decode_image

    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable .npy array ({exc})") from exc
    rgb, notes = decode_image(path)
    for note in notes:
        log.info("%s: %s", path, note)
    return rgb


def prepare_query(query, height: int, width: int, name: str = "query") -> Tensor:
    """Turn a user's image into float32 RGB [height, width, 3] in [0, 1], saying what was converted.

    Accepted: float images in [0, 1] or uint8 images in [0, 255]; RGB [H, W, 3]; grayscale [H, W] or
    [H, W, 1] (replicated to RGB); RGBA [H, W, 4] (composited on white, like MAD's loader). Another size
    keeps its aspect ratio: the image is **padded** with white (centred) to the model's aspect ratio, then
    resized (bilinear, antialiased) to the model's views, with a warning. Padding, not cropping: MAD-style
    objects sit on white, so a pad adds only background, while a crop could cut off the part with the
    defect. :func:`query_padding` gives the pad, so maps can be cut back to the image as given.

    Args:
        query: The image. [H, W, 3], [H, W, 4], [H, W] or [H, W, 1]
        height: The model's image height.
        width: The model's image width.
        name: What to call the image in messages (its file name, for a user's file).

    Raises:
        ValueError: Any other layout (a batch, 2 or 5+ channels), a non-numeric dtype, NaN/inf, or values
            outside [0, 1] (float) / [0, 255] (uint8); the message starts with ``name``.
    """
    if isinstance(query, np.ndarray):
        query = torch.from_numpy(np.ascontiguousarray(query))
    if not torch.is_tensor(query):
        raise ValueError(f"{name}: must be a tensor or array [H, W, 3], got {type(query).__name__}")
    if query.dtype == torch.uint8:
        query = query.float() / 255.0
    elif not query.is_floating_point():
        raise ValueError(f"{name}: must be float in [0, 1] or uint8, got dtype {query.dtype}")
    query = query.float()
    if not bool(torch.isfinite(query).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    if query.ndim == 2:
        query = query[..., None]
    if query.ndim != 3:
        raise ValueError(
            f"{name}: must be one image [H, W, 3] (channels last), got {tuple(query.shape)}; "
            "detect() takes one image at a time"
        )
    c = query.shape[-1]
    if c == 1:
        log.info("%s is grayscale; replicating it to RGB", name)
        query = query.expand(-1, -1, 3)
    elif c == 4:
        log.info("%s is RGBA; compositing it on white", name)
        query = query[..., :3] * query[..., 3:] + (1.0 - query[..., 3:])
    elif c != 3:
        raise ValueError(
            f"{name}: has {c} channels {tuple(query.shape)}; pass RGB [H, W, 3], RGBA "
            "[H, W, 4] or grayscale [H, W]"
        )
    if query.min() < -1e-3 or query.max() > 1 + 1e-3:
        raise ValueError(
            f"{name}: values span [{float(query.min()):.3g}, {float(query.max()):.3g}]; expected "
            "[0, 1] (float) or [0, 255] (uint8)"
        )
    query = query.clamp(0, 1)
    if tuple(query.shape[:2]) != (height, width):
        top, left, ph, pw = query_padding(query.shape[0], query.shape[1], height, width)
        if (ph, pw) != tuple(query.shape[:2]):
            canvas = torch.ones(ph, pw, 3, dtype=query.dtype, device=query.device)  # white, as MAD's
            canvas[top : top + query.shape[0], left : left + query.shape[1]] = query
            log.warning(
                "%s: is %dx%d (WxH), another aspect ratio than the model's %dx%d; padded with white to "
                "%dx%d and resized to %dx%d",
                name, query.shape[1], query.shape[0], width, height, pw, ph, width, height,
            )
            query = canvas
        else:
            log.warning("%s: is %dx%d (WxH); resized to the model's %dx%d",
                        name, query.shape[1], query.shape[0], width, height)
        query = resize_images(query[None], (height, width))[0].clamp(0, 1)
    return query.contiguous()


def query_padding(h: int, w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """How :func:`prepare_query` pads an ``h × w`` image to the model's aspect ``height : width``.

    Returns:
        ``(top, left, padded_h, padded_w)``: the image sits at ``[top : top + h, left : left + w]`` of the
        white ``padded_h × padded_w`` canvas (the image itself when the aspect ratios agree).
    """
    if h * width == w * height:
        return 0, 0, h, w
    if w * height > h * width:  # wider than the model: pad top and bottom
        ph = max(h, round(w * height / width))
        return (ph - h) // 2, 0, ph, w
    pw = max(w, round(h * width / height))
    return 0, (pw - w) // 2, h, pw
