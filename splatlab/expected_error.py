"""The splats' expected error: where the anomaly map of a *good* view is high, as a field on the Gaussians.

A render of the good object differs from a photo of it even where nothing is wrong: highlights the splats
draw too weakly or a little off, sensor and Monte Carlo noise on fine texture, silhouettes. On a realistic
look these false peaks, not the defects, decide the image score. They sit on the same parts of the object
from view to view (a glossy head, a printed stripe), so they can be learnt from defect-free data:

1. each training view ``v`` is compared with its own render (the view's known pose), giving a good map
   ``m_v``;
2. every Gaussian ``i`` collects the map where it is drawn, weighted by its blending weight ``w_i(p)``:
   ``a_iv = Σ_p w_i(p) m_v(p)`` and ``b_iv = Σ_p w_i(p)``. Both are gradients of one render with respect to
   the Gaussians' colours, so any differentiable backend computes them; they are kept per view;
3. at a query's pose the field is a kernel regression over the training views' directions:
   ``e_i = (Σ_v k_v a_iv + κ μ) / (Σ_v k_v b_iv + κ)``, with ``k_v = exp((cos θ_v − 1) / σ²)`` (≈ a Gaussian
   of std σ in θ_v, the angle between the query's and view v's camera seen from the object's centre),
   ``μ`` the mean of the maps over the object and ``κ = 1`` a prior that keeps rarely seen Gaussians at
   ``μ``. A highlight moves with the view, so the views near the query's say best where it will be;
   ``σ = None`` weighs every view alike (a view-independent field);
4. the field is rendered like a colour (:func:`render_expected_error`) and the map is divided by it:
   ``map / (E + floor · μ)`` (:func:`normalize_map`). The floor keeps parts the model always gets right
   from turning noise into peaks.

Only good training views are used, never test images: all of them, including the views training held out
(the splats did not fit those, so they show the error of a new view best). A held-out view that calibrates
the threshold leaves its own map out (``exclude``), as a test view has none. The sums are fitted once per
class and map setting and kept in the run folder (:func:`expected_error_path`); σ and the floor apply at the
query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from splatlab.anomaly import AnomalyConfig, anomaly_map, gaussian_blur, resize_map
from splatlab.atomic import write_bytes

log = logging.getLogger(__name__)

PRIOR_WEIGHT = 1.0  # κ: pixels' worth of blending weight at the mean error given to every Gaussian


@dataclass(frozen=True)
class ExpectedError:
    """Per-Gaussian, per-training-view sums of the good maps (see the module doc), and their mean."""

    weighted: Tensor  # a_iv: view v's good map summed where Gaussian i is drawn, blending-weighted. [N, V]
    weights: Tensor  # b_iv: Gaussian i's blending weight summed over view v's pixels. [N, V]
    directions: Tensor  # unit vectors from the object's centre towards each view's camera. [V, 3]
    centre: Tensor  # the object's centre (the mean of the Gaussians' centres). [3]
    mean: float  # μ: mean map value over the object in the training views
    key: str  # fit_key of the map settings it was fitted with
    views: Tensor | None = None  # the training-view index of each column; None: 0 .. V-1. [V]

    def __post_init__(self) -> None:
        n, v = self.weighted.shape
        assert self.weights.shape == (n, v) and self.directions.shape == (v, 3), (
            self.weights.shape, self.directions.shape)
        if self.views is None:
            object.__setattr__(self, "views", torch.arange(v))
        assert self.views.shape == (v,), self.views.shape

    @property
    def num_gaussians(self) -> int:
        return int(self.weighted.shape[0])

    def values(
        self, viewmat: Tensor | None = None, view_sigma: float | None = None, exclude: list[int] | None = None
    ) -> Tensor:
        """The expected map value of each Gaussian seen from ``viewmat`` (world→camera [4, 4]), with the
        views weighted by a kernel of std ``view_sigma`` degrees (None: every view alike) and the training
        views in ``exclude`` left out (a held-out view being calibrated leaves out its own map). [N]"""
        if view_sigma is None:
            k = torch.ones(self.weighted.shape[1], device=self.weighted.device)
        else:
            if viewmat is None:
                raise ValueError("view_sigma needs the query's viewmat")
            cos = self.directions @ _directions(viewmat.to(self.centre), self.centre)
            k = torch.exp((cos - 1.0) / math.radians(view_sigma) ** 2)
        if exclude:
            k = k * ~torch.isin(self.views.to(k.device), torch.as_tensor(list(exclude), device=k.device))
        num, den = self.weighted.float() @ k, self.weights.float() @ k
        return (num + PRIOR_WEIGHT * self.mean) / (den + PRIOR_WEIGHT)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file beside it, then rename)."""
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "weighted": self.weighted.detach().cpu(),
                    "weights": self.weights.detach().cpu(), "directions": self.directions.cpu(),
                    "centre": self.centre.cpu(), "mean": float(self.mean), "key": self.key,
                    "views": self.views.cpu()}, buf)
        return write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExpectedError:
        path = Path(path)
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("format") != FORMAT:
                raise ValueError(f"{path}: written by an older splatlab (format {d.get('format', 1)})")
            return cls(d["weighted"].float(), d["weights"].float(), d["directions"].float(),
                       d["centre"].float(), float(d["mean"]), str(d["key"]), d["views"].long())
        except (RuntimeError, KeyError, TypeError, AttributeError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{path}: not an expected-error file ({exc})") from exc


FORMAT = 3  # per-view sums and their views' indices; 2: fitted without calibration's views; 1: no views


def _directions(viewmats: Tensor, centre: Tensor) -> Tensor:
    """Unit vectors from ``centre`` towards the cameras of world→camera matrices. [..., 4, 4] -> [..., 3]"""
    from splatlab.cameras import camera_centers

    return F.normalize(camera_centers(viewmats) - centre, dim=-1)


_QUERY_TIME = ("error_floor", "error_view_sigma")  # AnomalyConfig fields the sums do not depend on


def fit_key(anomaly: AnomalyConfig) -> str:
    """A short hash of the map settings a field depends on (all but the floor and σ, applied at the query)."""
    fields = {k: v for k, v in dataclasses.asdict(anomaly).items() if k not in _QUERY_TIME}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]


def expected_error_path(run_dir: str | os.PathLike, anomaly: AnomalyConfig) -> Path:
    """Where a run keeps the field fitted for these map settings."""
    return Path(run_dir) / f"expected_error_{fit_key(anomaly)}.pt"


def _render_colours(splats, colours: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int,
                    eps2d: float, backend: str) -> tuple[Tensor, Tensor]:
    """Render per-Gaussian values as colours on black. ([H, W, D], alpha [H, W])"""
    from splatlab.render import render
    from splatlab.splats import activated

    p = {k: v.detach() for k, v in activated(splats).items()}
    img, alpha, _ = render(
        p["means"], p["quats"], p["scales"], p["opacities"], colours, viewmat[None], K[None], width, height,
        background=torch.zeros(colours.shape[-1], device=colours.device), eps2d=eps2d, backend=backend,
    )
    return img[0], alpha[0, ..., 0]


def fit_expected_error(
    splats,
    views,
    anomaly: AnomalyConfig,
    *,
    background: Tensor,
    eps2d: float,
    backend: str = "auto",
    indices: list[int] | None = None,
    progress: bool = True,
) -> ExpectedError:
    """Fit the field from the class's training views, each compared with its render at its own pose.

    Args:
        splats: The good object's splats.
        views: The class's training views (:class:`splatlab.data.TrainViews`). [V]
        anomaly: The map settings (``error_floor`` and ``error_view_sigma`` apply later, at the query).
        background: The render background. [3]
        eps2d: The splats' 2D low-pass, as trained.
        backend: Renderer backend.
        indices: The views to fit on; None: all. [V']
        progress: Show a progress bar.
    """
    from splatlab.appearance import align_render
    from splatlab.cameras import Cameras
    from splatlab.splats import render_splats

    cams = views.cameras
    dev = splats["means"].device
    n = splats["means"].shape[0]
    indices = list(range(len(views.images))) if indices is None else list(indices)
    weighted = torch.zeros(n, len(indices), device=dev)
    weights = torch.zeros(n, len(indices), device=dev)
    total = count = 0.0
    for j, i in enumerate(tqdm(indices, desc="expected error", disable=not progress, leave=False)):
        vm, K = cams.viewmats[i].to(dev, torch.float32), cams.Ks[i].to(dev, torch.float32)
        with torch.no_grad():
            img, alpha, _ = render_splats(splats, Cameras(vm[None], K[None], cams.width, cams.height),
                                          background=background, backend=backend, eps2d=eps2d)
            photo = views.images[i].to(dev, torch.float32)[None]
            if anomaly.appearance != "none":
                img = align_render(img, alpha, photo, anomaly.appearance, background)
            good = resize_map(anomaly_map(photo, img.clamp(0, 1), anomaly)[0], (cams.height, cams.width))
        obj = alpha[0, ..., 0] > 0.5
        total += float(good[obj].sum())
        count += float(obj.sum())
        colours = torch.zeros(n, 2, device=dev, requires_grad=True)
        out, _ = _render_colours(splats, colours, vm, K, cams.width, cams.height, eps2d, backend)
        ((out[..., 0] * good).sum() + out[..., 1].sum()).backward()
        weighted[:, j] = colours.grad[:, 0]
        weights[:, j] = colours.grad[:, 1]
    mean = total / max(count, 1.0)
    centre = splats["means"].detach().float().mean(dim=0)
    directions = _directions(cams.viewmats[indices].to(dev, torch.float32), centre)
    log.info("expected error fitted on %d good views: mean %.4g over the object", len(indices), mean)
    return ExpectedError(weighted, weights, directions, centre, mean, fit_key(anomaly), torch.tensor(indices))


def render_expected_error(splats, expected: ExpectedError, viewmat: Tensor, K: Tensor, width: int,
                          height: int, *, view_sigma: float | None, eps2d: float,
                          backend: str = "auto", exclude: list[int] | None = None) -> Tensor:
    """The expected map at a pose: the field seen from there (views weighted by a kernel of std
    ``view_sigma`` degrees, ``AnomalyConfig.error_view_sigma``; None: all alike; the training views in
    ``exclude`` left out), rendered like a colour, ``μ`` off the object. [H, W]"""
    dev = splats["means"].device
    colours = expected.values(viewmat, view_sigma, exclude).to(dev)[:, None].contiguous()
    with torch.no_grad():
        vm, K = viewmat.to(dev, torch.float32), K.to(dev, torch.float32)
        out, alpha = _render_colours(splats, colours, vm, K, width, height, eps2d, backend)
    seen = alpha > 0.01
    return torch.where(seen, out[..., 0] / alpha.clamp_min(0.01), torch.full_like(alpha, expected.mean))


def normalize_map(
    amap: Tensor, expected_map: Tensor, expected: ExpectedError, config: AnomalyConfig
) -> Tensor:
    """``map / (E + floor · μ)``, E resized to the map and blurred like it. [S, S] -> [S, S]"""
    assert amap.ndim == 2 and expected_map.ndim == 2, (amap.shape, expected_map.shape)
    e = gaussian_blur(resize_map(expected_map, tuple(amap.shape))[None], config.blur_sigma)[0]
    return amap / (e.to(amap.device) + float(config.error_floor) * expected.mean)
