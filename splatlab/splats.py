"""Gaussian splat parameters: creation, activations and the standard 3DGS PLY file.

Parameters are kept as gsplat's examples keep them, in a ``torch.nn.ParameterDict``:

========== ============ ==========================================
key        shape        stored as
========== ============ ==========================================
means      [N, 3]       world coordinates
quats      [N, 4]       quaternion wxyz (unnormalised)
scales     [N, 3]       log of the standard deviations
opacities  [N]          logit of the opacity
sh0        [N, 1, 3]    degree-0 SH coefficient
shN        [N, K-1, 3]  higher SH coefficients (K = (degree+1)^2)
========== ============ ==========================================
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from splatlab.atomic import open_atomic
from splatlab.render.sh import num_sh_bases, rgb_to_sh

log = logging.getLogger(__name__)

PARAM_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def splats_from_points(
    points: Tensor,
    colors: Tensor | None = None,
    sh_degree: int = 0,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    seed: int = 0,
) -> torch.nn.ParameterDict:
    """Splats centred on given points, sized by the distance to their 3 nearest neighbours.

    Args:
        points: Centres. [N, 3]
        colors: RGB colours in [0, 1]; grey by default. [N, 3]
        sh_degree: Highest SH degree the splats will carry.
        init_opacity: Opacity of every splat.
        init_scale: Multiplier on the nearest-neighbour distance.
        seed: Seed of the random rotations.

    Returns:
        The parameters, on the device of ``points``.
    """
    if points.ndim != 2 or points.shape[-1] != 3 or len(points) == 0:
        raise ValueError(f"points must be a non-empty [N, 3] tensor, got {tuple(points.shape)}")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points contains NaN or Inf values")
    if not 0.0 < init_opacity < 1.0:
        raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
    n, device = len(points), points.device
    if colors is None:
        colors = torch.full((n, 3), 0.5, device=device)
    if colors.shape != (n, 3):
        raise ValueError(f"colors must be [N, 3] with N={n}, got {tuple(colors.shape)}")
    g = torch.Generator().manual_seed(seed)
    dist = knn_distance(points, k=3).clamp_min(1e-7)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1)
    shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
    params = {
        "means": points.detach().float(),
        "quats": quats.to(device),
        "scales": torch.log(dist * init_scale)[:, None].repeat(1, 3),
        "opacities": torch.full((n,), math.log(init_opacity / (1 - init_opacity)), device=device),
        "sh0": rgb_to_sh(colors.float())[:, None, :],
        "shN": shN.to(device),
    }
    return torch.nn.ParameterDict({k: torch.nn.Parameter(v.float().contiguous()) for k, v in params.items()})


def random_splats(
    n: int,
    extent: float = 1.3,
    sh_degree: int = 0,
    init_opacity: float = 0.1,
    init_scale: float = 1.0,
    seed: int = 0,
    device=None,
) -> torch.nn.ParameterDict:
    """Splats at uniform random points in the cube ``[-extent, extent]^3`` with random colours.

    SplatPose starts from 100k such points in [-1.3, 1.3]^3; CPU presets use fewer.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    points = (torch.rand(n, 3, generator=g) * 2 - 1) * extent
    colors = torch.rand(n, 3, generator=g)
    splats = splats_from_points(points, colors, sh_degree, init_opacity, init_scale, seed)
    return splats.to(device) if device is not None else splats


def knn_distance(points: Tensor, k: int = 3) -> Tensor:
    """Root-mean-square distance of each point to its k nearest neighbours. [N, 3] -> [N]"""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    k_eff = min(k, len(pts) - 1)
    if k_eff < 1:
        return torch.ones(len(pts), dtype=points.dtype, device=points.device) * 0.01
    dist, _ = cKDTree(pts).query(pts, k=k_eff + 1)  # the first neighbour is the point itself
    rms = np.sqrt((dist[:, 1:] ** 2).mean(axis=1))
    return torch.from_numpy(rms).to(dtype=torch.float32, device=points.device)


def sh_degree_of(splats) -> int:
    """The SH degree that the splats' coefficients can hold."""
    k = 1 + splats["shN"].shape[1]
    degree = int(round(math.sqrt(k))) - 1
    if num_sh_bases(degree) != k:
        raise ValueError(f"shN holds {k - 1} coefficients per channel, which is no SH degree")
    return degree


def activated(splats) -> dict[str, Tensor]:
    """The parameters as :func:`splatlab.render.render` takes them (scales exp'd, opacities sigmoid'd)."""
    return {
        "means": splats["means"],
        "quats": splats["quats"],
        "scales": torch.exp(splats["scales"]),
        "opacities": torch.sigmoid(splats["opacities"]),
        "colors": torch.cat([splats["sh0"], splats["shN"]], dim=1),
    }


def render_splats(splats, cameras, sh_degree: int | None = None, background: Tensor | None = None, **kwargs):
    """Render splats into a :class:`splatlab.cameras.Cameras` batch; returns ``render()``'s triple.

    Args:
        splats: The parameters (``ParameterDict`` or dict with the keys above).
        cameras: The cameras to render.
        sh_degree: SH degree to use; all the splats hold by default.
        background: Background colour, e.g. white ``torch.ones(3)``. [3]
        **kwargs: Passed to :func:`splatlab.render.render` (``backend``, ``render_mode``, ...).
    """
    from splatlab.render import render

    p = activated(splats)
    degree = sh_degree_of(splats) if sh_degree is None else sh_degree
    return render(
        p["means"],
        p["quats"],
        p["scales"],
        p["opacities"],
        p["colors"],
        cameras.viewmats,
        cameras.Ks,
        cameras.width,
        cameras.height,
        sh_degree=degree,
        background=background,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------------------
# PLY, in the layout every 3DGS viewer reads
# ----------------------------------------------------------------------------------------------------------


def _ply_columns(n_rest: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(splats, path: str | os.PathLike) -> Path:
    """Write splats as a binary 3DGS PLY file, atomically (temp file, then rename).

    The layout is the original 3DGS one: ``x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*``, with
    ``f_rest`` channel-major (all red coefficients, then green, then blue), log scales and logit opacities.
    """
    from plyfile import PlyData, PlyElement

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    with torch.no_grad():
        n = splats["means"].shape[0]
        rest = splats["shN"].detach().cpu().transpose(1, 2).reshape(n, -1)  # [N, 3*(K-1)] channel-major
        data = (
            torch.cat(
                [
                    splats["means"].detach().cpu(),
                    torch.zeros(n, 3),
                    splats["sh0"].detach().cpu().reshape(n, 3),
                    rest,
                    splats["opacities"].detach().cpu()[:, None],
                    splats["scales"].detach().cpu(),
                    splats["quats"].detach().cpu(),
                ],
                dim=1,
            )
            .numpy()
            .astype(np.float32)
        )
    columns = _ply_columns(rest.shape[1])
    vertex = np.empty(n, dtype=[(c, "f4") for c in columns])
    for i, c in enumerate(columns):
        vertex[c] = data[:, i]
    with open_atomic(path, "wb") as f:
        PlyData([PlyElement.describe(vertex, "vertex")]).write(f)
    return path


def load_ply(path: str | os.PathLike, device=None) -> torch.nn.ParameterDict:
    """Read a 3DGS PLY file (ours, gsplat's exporter's, or the original 3DGS code's) into parameters."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such PLY file: {path}")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
        names = set(vertex.data.dtype.names)
        needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
        needed += [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
        missing = [c for c in needed if c not in names]
        if missing:
            raise ValueError(f"{path} is not a 3DGS splat PLY: missing properties {missing}")
        n_rest = len([c for c in names if c.startswith("f_rest_")])
        if n_rest % 3 or num_sh_bases(round(math.sqrt(n_rest // 3 + 1)) - 1) != n_rest // 3 + 1:
            raise ValueError(f"{path}: {n_rest} f_rest properties do not match any SH degree")

        def cols(keys):
            return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], axis=1))

        n = len(vertex.data)
        rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    except ValueError:
        raise
    except Exception as exc:  # plyfile raises many kinds of errors on truncated or foreign files
        raise ValueError(f"cannot read {path} as a PLY file: {exc}") from exc
    params = {
        "means": cols(["x", "y", "z"]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "opacities": cols(["opacity"])[:, 0],
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        "shN": rest.reshape(n, 3, n_rest // 3).transpose(1, 2),
    }
    bad = [k for k, v in params.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{path}: non-finite values in {bad}")
    return torch.nn.ParameterDict(
        {
            k: torch.nn.Parameter(v.contiguous().to(device) if device else v.contiguous())
            for k, v in params.items()
        }
    )
