"""One :func:`render` entry point for 3D Gaussian splatting, with three backends.

- ``"cpu"``: a compiled (Numba) tile rasterizer with analytic gradients. The default for CPU tensors.
- ``"torch"``: a short, readable PyTorch reference of the same maths (slow; the oracle in tests).
- ``"gsplat"``: ``gsplat.rasterization`` and its CUDA kernels. ``"auto"`` picks it for CUDA tensors only,
  so CPU work never touches gsplat (whose first CUDA call may try a JIT build).

All CPU backends follow gsplat 1.5.3's numerical conventions, so that a model trained on a GPU renders
the same on a CPU:

- pixel centres at +0.5; 16×16 tiles; Gaussians blended front to back by camera-space depth;
- a 0.3 px² low-pass filter added to every 2D covariance (``eps2d``);
- alpha = min(0.999, opacity · exp(-σ)) (gsplat 1.5.3 clamps at 0.999, where the original 3DGS used 0.99),
  and contributions below 1/255 skipped;
- a pixel stops before the Gaussian that would bring its transmittance to 1e-4 or below;
- screen boxes of 3.33 σ (≈ 3 σ), tightened by opacity to where alpha could reach 1/255;
- Gaussians nearer than ``near_plane`` or farther than ``far_plane`` are culled, as are those off-screen.

The return value has gsplat's shape: ``(colors [C, H, W, D], alphas [C, H, W, 1], meta)``, and ``meta``
carries the keys ``gsplat.strategy.DefaultStrategy`` reads (``means2d``, ``radii``, ``width``, ``height``,
``n_cameras``, ``gaussian_ids``), so gsplat's densification works on CPU renders too.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal

import torch
from torch import Tensor

from splatlab.render.sh import SH_C0, eval_sh

Backend = Literal["auto", "cpu", "torch", "gsplat"]
RenderMode = Literal["RGB", "RGB+ED", "ED"]

__all__ = ["render", "resolve_backend"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that ``backend="auto"`` means on ``device``: gsplat on CUDA, the CPU kernel otherwise."""
    if backend not in ("auto", "cpu", "torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'cpu', 'torch' or 'gsplat', got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "cpu"
    if backend == "gsplat" and device.type != "cuda":
        raise ValueError("backend='gsplat' needs CUDA tensors; use backend='cpu' (or 'auto') on a CPU")
    if backend in ("cpu", "torch") and device.type != "cpu":
        raise ValueError(f"backend={backend!r} runs on the CPU, but the tensors are on {device}")
    return backend


def render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    backend: Backend = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: int = 16,
    check: bool = True,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Render 3D Gaussians into C cameras (activated parameters, as ``gsplat.rasterization`` takes).

    Args:
        means: Centres. [N, 3]
        quats: Rotations as quaternions wxyz; normalised here. [N, 4]
        scales: Standard deviations (activated, i.e. ``exp`` of the stored log-scales). [N, 3]
        opacities: Opacities in [0, 1] (activated, i.e. ``sigmoid`` of the stored logits). [N]
        colors: Colours [N, D] or [C, N, D], or SH coefficients [N, K, 3] when ``sh_degree`` is set.
        viewmats: World→camera matrices, OpenCV axes. [C, 4, 4]
        Ks: Intrinsics in pixels. [C, 3, 3]
        width: Image width in pixels.
        height: Image height in pixels.
        sh_degree: SH degree to evaluate ``colors`` with (0–3); ``None`` means plain colours.
        background: Colour behind the Gaussians, e.g. white ``torch.ones(3)``. [D] or [C, D]
        render_mode: ``"RGB"``, ``"RGB+ED"`` (colour plus expected depth) or ``"ED"``.
        backend: ``"auto"``, ``"cpu"``, ``"torch"`` or ``"gsplat"``.
        near_plane: Gaussians nearer than this (camera z) are culled.
        far_plane: Gaussians farther than this are culled.
        eps2d: Low-pass filter added to 2D covariances, in px².
        tile_size: Tile edge in pixels (16, as gsplat).
        check: Validate every argument (shapes, finiteness, cameras); an inner loop whose inputs were
            checked once (pose refinement) passes False to skip the per-call cost.

    Returns:
        ``colors`` [C, H, W, D'] (D' = D, D+1 for RGB+ED, 1 for ED), ``alphas`` [C, H, W, 1] and ``meta``.
    """
    if not check:
        colors, background = _unchecked(colors, means, viewmats, background)
    else:
        colors, background = _validate(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
            sh_degree,
            background,
            render_mode,
        )
    width, height = int(width), int(height)
    name = resolve_backend(backend, means.device)
    if name == "gsplat":
        return _render_gsplat(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmats,
            Ks,
            width,
            height,
            sh_degree=sh_degree,
            background=background,
            render_mode=render_mode,
            near_plane=near_plane,
            far_plane=far_plane,
            eps2d=eps2d,
            tile_size=tile_size,
        )
    if name == "cpu":
        from splatlab.render.cpu import project_cpu as project
        from splatlab.render.cpu import rasterize_cpu as rasterize
        from splatlab.render.cpu_sh import eval_sh_cpu
    else:
        from splatlab.render.reference import project_torch as project
        from splatlab.render.reference import rasterize_torch as rasterize

    C = viewmats.shape[0]
    quats = torch.nn.functional.normalize(quats, dim=-1)
    radii, means2d, depths, conics = project(
        means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane
    )
    if sh_degree == 0:  # view-independent colour: skip the view directions (a hot path in training)
        colors = torch.clamp_min(colors[:, 0, :] * SH_C0 + 0.5, 0.0)[None].expand(C, -1, -1)
    elif sh_degree is not None:
        campos = torch.linalg.inv(viewmats)[:, :3, 3]  # camera centres: gradients reach the pose too
        sh = eval_sh_cpu if name == "cpu" and colors.ndim == 3 else eval_sh
        colors = sh(sh_degree, means[None, :, :] - campos[:, None, :], colors)
    elif colors.ndim == 2:
        colors = colors[None].expand(C, -1, -1)
    if render_mode != "RGB":
        depth = depths[..., None]
        colors = depth if render_mode == "ED" else torch.cat([colors, depth], dim=-1)
        if background is not None:
            zero = background.new_zeros(C, 1)
            background = zero if render_mode == "ED" else torch.cat([background, zero], dim=-1)
    out_colors, out_alphas = rasterize(
        means2d,
        conics,
        colors.contiguous(),
        opacities[None].expand(C, -1).contiguous(),
        radii,
        depths,
        width,
        height,
        background,
        tile_size,
    )
    if render_mode != "RGB":  # accumulated depth -> expected depth
        ed = out_colors[..., -1:] / out_alphas.clamp_min(1e-10)
        out_colors = torch.cat([out_colors[..., :-1], ed], dim=-1)
    meta = {
        "backend": name,
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "width": width,
        "height": height,
        "n_cameras": C,
        "tile_size": tile_size,
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,  # dense layout, as gsplat with packed=False
    }
    return out_colors, out_alphas, meta


def _per_camera(background: Tensor, like: Tensor, C: int) -> Tensor:
    """The background as [C, D], in the dtype and device of ``like``."""
    background = background.to(like)
    return background.expand(C, -1) if background.ndim == 1 else background


def _unchecked(colors, means, viewmats, background):
    """What :func:`_validate` returns, without its checks: colours and a [C, D] background."""
    if background is not None:
        background = _per_camera(background, means, viewmats.shape[0])
    return colors, background


def _render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kw):
    import gsplat  # lazily: only ever for CUDA tensors

    background = kw.pop("background")
    C = viewmats.shape[0]
    out_colors, out_alphas, meta = gsplat.rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats,
        Ks,
        width,
        height,
        backgrounds=None if background is None else background.expand(C, -1),
        packed=False,
        rasterize_mode="classic",
        **kw,
    )
    meta["backend"] = "gsplat"
    return out_colors, out_alphas, meta


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _validate(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, background, mode
):
    """Raise one clear ValueError per bad argument; return colours and a [C, D] background."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(msg)

    for name, t in (
        ("means", means),
        ("quats", quats),
        ("scales", scales),
        ("opacities", opacities),
        ("colors", colors),
        ("viewmats", viewmats),
        ("Ks", Ks),
    ):
        need(torch.is_tensor(t), f"{name} must be a torch.Tensor, got {type(t).__name__}")
        need(t.is_floating_point(), f"{name} must be a floating-point tensor, got {t.dtype}")
        need(bool(torch.isfinite(t).all()), f"{name} contains NaN or Inf values")
    need(means.ndim == 2 and means.shape[-1] == 3, f"means must be [N, 3], got {tuple(means.shape)}")
    N = means.shape[0]
    need(quats.shape == (N, 4), f"quats must be [N, 4] with N={N}, got {tuple(quats.shape)}")
    need(bool((quats.norm(dim=-1) > 1e-12).all()), "quats contains zero quaternions")
    need(scales.shape == (N, 3), f"scales must be [N, 3] with N={N}, got {tuple(scales.shape)}")
    need(opacities.shape == (N,), f"opacities must be [N] with N={N}, got {tuple(opacities.shape)}")
    need(
        viewmats.ndim == 3 and viewmats.shape[1:] == (4, 4),
        f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}",
    )
    C = viewmats.shape[0]
    need(C > 0, "viewmats is empty: pass at least one camera")
    need(Ks.shape == (C, 3, 3), f"Ks must be [C, 3, 3] with C={C} (as viewmats), got {tuple(Ks.shape)}")
    need(
        _is_int(width) and _is_int(height) and width > 0 and height > 0,
        f"width and height must be positive ints, got width={width!r}, height={height!r}",
    )
    last_row = viewmats.new_tensor([0.0, 0.0, 0.0, 1.0])
    need(
        bool(torch.allclose(viewmats[:, 3, :], last_row.expand(C, 4))),
        "viewmats must have last row [0, 0, 0, 1]",
    )
    need(
        bool((torch.linalg.det(viewmats[:, :3, :3]).abs() > 1e-8).all()),
        "viewmats has a non-invertible rotation part",
    )
    need(
        bool((Ks[:, 0, 0] > 0).all() and (Ks[:, 1, 1] > 0).all()),
        "Ks must have positive focal lengths fx, fy",
    )
    if sh_degree is not None:
        need(
            isinstance(sh_degree, int) and 0 <= sh_degree <= 3,
            f"sh_degree must be 0..3 or None, got {sh_degree!r}",
        )
        need(
            colors.ndim == 3
            and colors.shape[0] == N
            and colors.shape[-1] == 3
            and colors.shape[1] >= (sh_degree + 1) ** 2,
            f"with sh_degree={sh_degree}, colors must be SH coefficients [N, K>={(sh_degree + 1) ** 2}, 3], "
            f"got {tuple(colors.shape)}",
        )
        D = 3
    else:
        need(
            (colors.ndim == 2 and colors.shape[0] == N) or (colors.ndim == 3 and colors.shape[:2] == (C, N)),
            f"colors must be [N, D] or [C, N, D] with N={N}, C={C} (or pass sh_degree), "
            f"got {tuple(colors.shape)}",
        )
        D = colors.shape[-1]
    need(mode in ("RGB", "RGB+ED", "ED"), f"render_mode must be 'RGB', 'RGB+ED' or 'ED', got {mode!r}")
    if background is not None:
        need(torch.is_tensor(background), "background must be a tensor")
        background = _per_camera(background, means, C)
        need(
            background.shape == (C, D),
            f"background must be [D] or [C, D] with D={D}, got {tuple(background.shape)}",
        )
    return colors, background
