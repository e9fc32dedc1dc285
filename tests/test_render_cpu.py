"""The fast CPU backend (Numba) against the readable PyTorch reference and gsplat's own PyTorch projection.

Tiny scenes only; no timings here (see benchmarks/render.py).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading

import pytest
import torch

from splatlab.render import render
from splatlab.render.cpu import project_cpu, rasterize_cpu
from splatlab.render.reference import project_torch, rasterize_torch

W, H = 40, 28  # several tiles, partial tiles on the right and bottom edges


def _look_at(eye, target=(0.0, 0.0, 0.0)):
    eye = torch.tensor(eye, dtype=torch.float64)
    f = torch.nn.functional.normalize(torch.tensor(target, dtype=torch.float64) - eye, dim=0)
    right = torch.nn.functional.normalize(
        torch.linalg.cross(f, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0
    )
    down = torch.linalg.cross(f, right)
    R = torch.stack([right, down, f])
    V = torch.eye(4, dtype=torch.float64)
    V[:3, :3] = R
    V[:3, 3] = -R @ eye
    return V


def _scene(n=60, seed=0, cams=((2.5, -1.2, 0.8), (-1.0, 2.6, 1.2), (0.4, 0.3, -2.9)), width=W, height=H):
    """Random Gaussians around the origin, seen by several cameras (float64, activated parameters)."""
    g = torch.Generator().manual_seed(seed)
    s = dict(
        means=0.6 * torch.randn(n, 3, generator=g, dtype=torch.float64),
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        scales=torch.exp(
            torch.empty(n, 3, dtype=torch.float64).uniform_(math.log(0.03), math.log(0.15), generator=g)
        ),
        opacities=torch.empty(n, dtype=torch.float64).uniform_(0.2, 0.95, generator=g),
        viewmats=torch.stack([_look_at(e) for e in cams]),
    )
    f = 0.9 * width
    K = torch.tensor(
        [[f, 0.0, width / 2 + 0.7], [0.0, 1.05 * f, height / 2 - 0.4], [0.0, 0.0, 1.0]], dtype=torch.float64
    )
    s["Ks"] = K.expand(len(cams), 3, 3).clone()
    return s


def _close(actual, expected, rtol, atol=1e-7, name=""):
    """|a - e| <= rtol * max|e| + atol, elementwise (a relative tolerance on the tensor's scale)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    assert err <= rtol * scale + atol, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


def _render_grads(backend, s, colors, sh_degree, background, mode, dtype, seed=1):
    """Render, back-propagate a random linear loss on colours and alphas; return outputs and leaf grads."""
    leaves = {k: v.to(dtype).clone().requires_grad_(True) for k, v in s.items() if k != "Ks"}
    col = colors.to(dtype).clone().requires_grad_(True)
    bg = None if background is None else background.to(dtype).clone().requires_grad_(True)
    img, alpha, meta = render(
        leaves["means"],
        leaves["quats"],
        leaves["scales"],
        leaves["opacities"],
        col,
        leaves["viewmats"],
        s["Ks"].to(dtype),
        W,
        H,
        sh_degree=sh_degree,
        background=bg,
        render_mode=mode,
        backend=backend,
    )
    meta["means2d"].retain_grad()
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(img.shape, generator=g, dtype=torch.float64).to(dtype)
    w2 = torch.randn(alpha.shape, generator=g, dtype=torch.float64).to(dtype)
    ((img * w1).sum() + (alpha * w2).sum()).backward()
    grads = {k: v.grad for k, v in leaves.items()}
    grads["colors"] = col.grad
    if bg is not None:
        grads["background"] = bg.grad
    grads["means2d"] = meta["means2d"].grad
    return img.detach(), alpha.detach(), meta, grads


CASES = [
    # (sh_degree, D of plain colours, background, render_mode)
    pytest.param(0, None, True, "RGB", id="sh0-white"),
    pytest.param(3, None, False, "RGB+ED", id="sh3-ED"),
    pytest.param(None, 1, True, "RGB", id="plain-D1"),
    pytest.param(None, 3, False, "RGB+ED", id="plain-D4"),
]


@pytest.mark.parametrize("sh_degree,D,use_bg,mode", CASES)
def test_render_cpu_matches_reference(sh_degree, D, use_bg, mode):
    s = _scene()
    n, C = s["means"].shape[0], s["viewmats"].shape[0]
    g = torch.Generator().manual_seed(3)
    if sh_degree is not None:
        colors = 0.5 * torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
        ncol = 3
    else:
        colors = torch.rand(C, n, D, generator=g, dtype=torch.float64)  # per-camera colours
        ncol = D
    background = torch.rand(C, ncol, generator=g, dtype=torch.float64) if use_bg else None
    img, alpha, meta, grads = _render_grads("cpu", s, colors, sh_degree, background, mode, torch.float32)
    ref_img, ref_alpha, ref_meta, ref_grads = _render_grads(
        "torch", s, colors, sh_degree, background, mode, torch.float64
    )
    assert img.dtype == torch.float32 and alpha.shape == (C, H, W, 1)
    assert 0.05 < alpha.mean() < 0.95  # a scene with both coverage and holes
    assert torch.equal(meta["radii"], ref_meta["radii"])
    if mode == "RGB+ED":  # expected depth divides by alpha: compare it where alpha is not tiny
        _close(img[..., :-1], ref_img[..., :-1], 0, 1e-4, "colors")
        m = ref_alpha[..., 0] > 0.05
        _close(img[..., -1][m], ref_img[..., -1][m], 1e-5, 1e-4, "expected depth")
    else:
        _close(img, ref_img, 0, 1e-4, "colors")
    _close(alpha, ref_alpha, 0, 1e-4, "alphas")
    for k, ref in ref_grads.items():
        assert grads[k] is not None, k
        _close(grads[k], ref, 2e-4, 1e-6, k)


def test_projection_matches_reference_with_culling():
    """Near-plane, behind-camera and off-screen Gaussians are culled exactly as in the reference."""
    s = _scene(n=80, seed=5)
    s["means"][:6] = torch.tensor(
        [[0.0, 0.0, 3.0], [0.1, 0.1, 2.9]] * 3, dtype=torch.float64
    )  # near/behind cams
    s["means"][6:10] *= 40.0  # far outside the frustum
    s["opacities"][10:13] = torch.tensor([0.001, 1.0 / 255.0 - 1e-5, 1.0], dtype=torch.float64)
    args = (
        s["means"],
        torch.nn.functional.normalize(s["quats"], dim=-1),
        s["scales"],
        s["opacities"],
        s["viewmats"],
        s["Ks"],
        W,
        H,
    )
    radii, means2d, depths, conics = project_cpu(*[a.float() if torch.is_tensor(a) else a for a in args])
    r_radii, r_means2d, r_depths, r_conics = project_torch(*args)
    assert radii.dtype == torch.int32 and radii.shape == r_radii.shape
    assert torch.equal(radii, r_radii)
    assert (radii == 0).any() and (radii > 0).any()
    valid = (radii > 0).all(-1)
    _close(means2d[valid], r_means2d[valid], 1e-6, 1e-5, "means2d")
    _close(depths, r_depths, 1e-6, 1e-6, "depths")
    _close(conics[valid], r_conics[valid], 1e-5, 1e-7, "conics")
    assert (r_depths < 0.01).any(), "the scene must contain Gaussians behind the near plane"


def test_projection_matches_gsplat_torch_impl():
    """Conventions checked against gsplat's own pure-PyTorch projection (opacity-free 3.33-sigma boxes)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    s = _scene(n=120, seed=7)
    quats = torch.nn.functional.normalize(s["quats"], dim=-1)
    covars, _ = _quat_scale_to_covar_preci(quats, s["scales"], compute_preci=False)
    g_radii, g_means2d, g_depths, g_conics, _ = _fully_fused_projection(
        s["means"], covars, s["viewmats"], s["Ks"], W, H, eps2d=0.3, near_plane=0.01, far_plane=1e10
    )
    # opacities=None gives gsplat's plain 3.33-sigma box; with opacity 1 the box is
    # min(3.33, sqrt(2 ln 255)) = 3.329 sigma, so radii may differ by a pixel there.
    radii, means2d, depths, conics = project_cpu(
        s["means"].float(),
        quats.float(),
        s["scales"].float(),
        None,
        s["viewmats"].float(),
        s["Ks"].float(),
        W,
        H,
    )
    assert math.sqrt(2 * math.log(255.0)) < 3.33
    assert torch.equal(radii, g_radii)
    valid = (radii > 0).all(-1)
    assert valid.sum() > 50
    _close(means2d[valid], g_means2d[valid], 1e-6, 1e-5, "means2d")
    _close(depths, g_depths, 1e-6, 1e-6, "depths")
    _close(conics[valid], g_conics[valid], 1e-5, 1e-7, "conics")
    r1, *_ = project_cpu(
        s["means"].float(),
        quats.float(),
        s["scales"].float(),
        torch.ones(120),
        s["viewmats"].float(),
        s["Ks"].float(),
        W,
        H,
    )
    assert ((r1 - g_radii).abs() <= 1).all() and torch.equal(r1 > 0, g_radii > 0)


def test_projection_gradients_match_reference():
    """d(means2d, depths, conics) w.r.t. means, quats, scales and viewmats, directly on the projection."""
    s = _scene(n=50, seed=11)
    s["quats"] = torch.nn.functional.normalize(s["quats"], dim=-1)
    g = torch.Generator().manual_seed(2)
    out = {}
    for name, fn, dt in (("cpu", project_cpu, torch.float32), ("ref", project_torch, torch.float64)):
        leaves = [s[k].to(dt).clone().requires_grad_(True) for k in ("means", "quats", "scales", "viewmats")]
        radii, means2d, depths, conics = fn(
            leaves[0], leaves[1], leaves[2], s["opacities"].to(dt), leaves[3], s["Ks"].to(dt), W, H
        )
        valid = (radii > 0).all(-1)
        if name == "cpu":
            w = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (means2d, depths, conics)]
        loss = sum(
            ((t * wi.to(dt)) * (valid[..., None] if t.ndim == 3 else valid)).sum()
            for t, wi in zip((means2d, depths, conics), w, strict=True)
        )
        loss.backward()
        out[name] = [leaf.grad for leaf in leaves]
    for k, a, b in zip(("means", "quats", "scales", "viewmats"), out["cpu"], out["ref"], strict=True):
        _close(a, b, 1e-4, 1e-7, k)


def test_gaussian_straddling_tile_corner():
    """One Gaussian centred exactly on the corner of four tiles renders identically in all of them."""
    C, D = 1, 3
    means2d = torch.tensor([[[16.0, 16.0]]])
    conics = torch.tensor([[[1 / 9.0, 0.0, 1 / 9.0]]])  # isotropic, sigma = 3 px
    colors = torch.ones(C, 1, D)
    opac = torch.tensor([[0.9]])
    radii = torch.tensor([[[10, 10]]], dtype=torch.int32)
    depths = torch.ones(C, 1)
    img, alpha = rasterize_cpu(means2d, conics, colors, opac, radii, depths, 32, 32)
    ref, ref_alpha = rasterize_torch(means2d, conics, colors, opac, radii, depths, 32, 32)
    _close(img, ref, 0, 1e-6, "colors")
    _close(alpha, ref_alpha, 0, 1e-6, "alphas")
    a = alpha[0, :, :, 0]
    assert a[15, 15] > 0.8 and torch.allclose(a, a.flip(0)) and torch.allclose(a, a.flip(1))
    assert (a[16:, 16:] > 0).sum() == (a[:16, :16] > 0).sum() > 20


@pytest.mark.parametrize("N", [0, 5])
def test_empty_and_fully_culled_scenes(N):
    """No Gaussians, or all behind the camera: background everywhere, zero gradients, no crash."""
    s = _scene(n=N, seed=1, cams=((0.0, -3.0, 0.0), (3.0, 0.0, 0.0)))
    if N:
        s["means"] = torch.tensor([[0.0, -6.0, 0.0]], dtype=torch.float64).repeat(N, 1)  # behind both cameras
        s["viewmats"][1] = _look_at((0.0, 6.0, 0.0), (0.0, 12.0, 0.0))
    leaves = {
        k: s[k].float().requires_grad_(True) for k in ("means", "quats", "scales", "opacities", "viewmats")
    }
    colors = torch.rand(N, 3, requires_grad=True)
    bg = torch.tensor([0.2, 0.4, 0.6])
    img, alpha, meta = render(
        leaves["means"],
        leaves["quats"],
        leaves["scales"],
        leaves["opacities"],
        colors,
        leaves["viewmats"],
        s["Ks"].float(),
        W,
        H,
        background=bg,
        backend="cpu",
    )
    assert img.shape == (2, H, W, 3) and alpha.shape == (2, H, W, 1)
    assert torch.equal(img, bg.expand(2, H, W, 3)) and torch.equal(alpha, torch.zeros(2, H, W, 1))
    assert (meta["radii"] == 0).all()
    (img.sum() + alpha.sum()).backward()
    for k, v in leaves.items():
        assert v.grad is None or (v.grad == 0).all(), k
    if N:
        ref, ref_alpha, _ = render(
            *[s[k].float() for k in ("means", "quats", "scales", "opacities")],
            colors.detach(),
            s["viewmats"].float(),
            s["Ks"].float(),
            W,
            H,
            background=bg,
            backend="torch",
        )
        assert torch.equal(img, ref)


@pytest.mark.parametrize("D", [1, 2, 4, 5])
def test_rasterize_any_channel_count_and_coercion(D):
    """Any D; float64, non-contiguous and int64 inputs give the float32-contiguous result (in float64)."""
    s = _scene(n=40, seed=2)
    q = torch.nn.functional.normalize(s["quats"], dim=-1).float()
    radii, means2d, depths, conics = project_cpu(
        s["means"].float(),
        q,
        s["scales"].float(),
        s["opacities"].float(),
        s["viewmats"].float(),
        s["Ks"].float(),
        W,
        H,
    )
    C, n = depths.shape
    colors = torch.rand(C, n, D)
    opac = s["opacities"].float()[None].expand(C, -1)  # stride-0, non-contiguous
    bg = torch.rand(C, D)
    img, alpha = rasterize_cpu(means2d, conics, colors, opac, radii, depths, W, H, bg)
    ref, ref_alpha = rasterize_torch(means2d, conics, colors, opac, radii, depths, W, H, bg)
    _close(img, ref, 0, 1e-5, "colors")
    _close(alpha, ref_alpha, 0, 1e-5, "alphas")
    # float64, transposed (non-contiguous) storage, int64 radii
    m64 = means2d.double().transpose(0, 1).contiguous().transpose(0, 1)
    assert not m64.is_contiguous()
    img64, alpha64 = rasterize_cpu(
        m64, conics.double(), colors.double(), opac.double(), radii.long(), depths.double(), W, H, bg.double()
    )
    assert img64.dtype == torch.float64 and alpha64.dtype == torch.float64
    _close(img64, img, 0, 1e-7, "float64 colors")


def test_float64_gradients_and_no_grad_inputs():
    """Gradients come back in the inputs' dtype; inputs that need no gradient get none."""
    s = _scene(n=30, seed=4)
    means = s["means"].clone().requires_grad_(True)
    viewmats = s["viewmats"].clone().requires_grad_(True)
    q = torch.nn.functional.normalize(s["quats"], dim=-1)
    radii, means2d, depths, conics = project_cpu(
        means, q, s["scales"], s["opacities"], viewmats, s["Ks"], W, H
    )
    assert means2d.dtype == torch.float64
    C, n = depths.shape
    img, alpha = rasterize_cpu(
        means2d,
        conics,
        torch.rand(C, n, 3, dtype=torch.float64),
        s["opacities"][None].expand(C, -1),
        radii,
        depths,
        W,
        H,
    )
    img.sum().backward()
    assert means.grad.dtype == torch.float64 and viewmats.grad.dtype == torch.float64
    assert means.grad.abs().sum() > 0 and viewmats.grad.abs().sum() > 0


def test_concurrent_renders_from_threads():
    """Two Python threads rendering at once (e.g. a viewer callback during training) must not crash."""
    s = _scene(n=50, seed=6)
    args = [s[k].float() for k in ("means", "quats", "scales", "opacities")]
    colors = torch.rand(50, 3)
    expected = render(*args, colors, s["viewmats"].float(), s["Ks"].float(), W, H, backend="cpu")[0]
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(
                    render(*args, colors, s["viewmats"].float(), s["Ks"].float(), W, H, backend="cpu")[0]
                )
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 10
    assert all(torch.equal(r, expected) for r in results)


def test_bad_device_raises_value_error():
    """The kernel refuses tensors on a device it cannot read (meta stands in for CUDA here)."""
    x = torch.zeros(1, 3, device="meta")
    with pytest.raises(ValueError, match="means"):
        project_cpu(
            x,
            torch.zeros(1, 4),
            torch.ones(1, 3),
            torch.ones(1),
            torch.eye(4)[None],
            torch.eye(3)[None],
            8,
            8,
        )


@pytest.mark.parametrize("tile_size", [8, 32])
def test_other_tile_sizes(tile_size):
    """Tiles of 8 (half a vector row) and 32 (two row segments) give the reference's image."""
    s = _scene(n=60, seed=8)
    q = torch.nn.functional.normalize(s["quats"], dim=-1).float()
    radii, means2d, depths, conics = project_cpu(
        s["means"].float(),
        q,
        s["scales"].float(),
        s["opacities"].float(),
        s["viewmats"].float(),
        s["Ks"].float(),
        W,
        H,
    )
    C, n = depths.shape
    colors = torch.rand(C, n, 3)
    opac = s["opacities"].float()[None].expand(C, -1).contiguous()
    img, alpha = rasterize_cpu(means2d, conics, colors, opac, radii, depths, W, H, tile_size=tile_size)
    ref, ref_alpha = rasterize_torch(means2d, conics, colors, opac, radii, depths, W, H, tile_size=tile_size)
    _close(img, ref, 0, 1e-5, "colors")
    _close(alpha, ref_alpha, 0, 1e-5, "alphas")


def test_alpha_clamp_and_early_stop():
    """Near-opaque Gaussians: alpha clamps at 0.999 (no gradient through the clamp), pixels stop early."""
    s = _scene(n=80, seed=9)
    s["opacities"][::2] = 0.9995  # o * exp(-sigma) > 0.999 near their centres
    s["scales"] = s["scales"] * 2.0  # overlapping: transmittance reaches 1e-4 on many pixels
    colors = torch.rand(80, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    img, alpha, meta, grads = _render_grads("cpu", s, colors, None, None, "RGB", torch.float32)
    ref_img, ref_alpha, _, ref_grads = _render_grads("torch", s, colors, None, None, "RGB", torch.float64)
    assert (ref_alpha > 0.995).any(), "the scene must saturate some pixels"
    _close(img, ref_img, 0, 1e-4, "colors")
    _close(alpha, ref_alpha, 0, 1e-4, "alphas")
    for k, ref in ref_grads.items():  # T is recovered by division by 1 - alpha: looser in float32
        _close(grads[k], ref, 2e-3, 1e-6, k)


def test_early_stop_is_exclusive():
    """Three opaque Gaussians on one spot: the second would take T below 1e-4, so only the first counts."""
    means2d = torch.tensor([[[7.5, 7.5]] * 3], requires_grad=True)  # on the centre of pixel (7, 7)
    conics = torch.tensor([[[0.5, 0.0, 0.5]] * 3])
    colors = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], requires_grad=True)
    opac = torch.ones(1, 3)
    radii = torch.full((1, 3, 2), 6, dtype=torch.int32)
    depths = torch.tensor([[1.0, 2.0, 3.0]])
    img, alpha = rasterize_cpu(means2d, conics, colors, opac, radii, depths, 16, 16)
    ref, ref_alpha = rasterize_torch(means2d, conics, colors, opac, radii, depths, 16, 16)
    _close(img, ref, 0, 1e-6, "colors")
    assert img[0, 7, 7, 1] == 0 and img[0, 7, 7, 2] == 0 and abs(alpha[0, 7, 7, 0].item() - 0.999) < 1e-3
    img[0, 7, 7].sum().backward()
    assert colors.grad[0, 1:].abs().sum() == 0 and colors.grad[0, 0].abs().sum() > 0


def test_non_finite_kernel_inputs_do_not_crash():
    """NaN/Inf that bypass the dispatcher's checks reach the kernel: no crash, the bad Gaussian is ignored."""
    means2d = torch.tensor([[[float("nan"), 4.0], [float("inf"), 3.0], [8.0, 8.0], [1e30, -1e30]]])
    conics = torch.tensor([[[0.5, 0.0, 0.5]] * 4])
    colors = torch.ones(1, 4, 2)
    opac = torch.full((1, 4), 0.5)
    radii = torch.full((1, 4, 2), 5, dtype=torch.int32)
    img, alpha = rasterize_cpu(means2d, conics, colors, opac, radii, torch.ones(1, 4), 16, 16)
    assert torch.isfinite(img).all() and alpha.max() > 0.4
    r, m2, d, c = project_cpu(
        torch.tensor([[0.0, 0.0, float("nan")]]),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.ones(1, 3),
        torch.ones(1),
        torch.eye(4)[None],
        torch.tensor([[[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]]]),
        16,
        16,
    )
    assert (r == 0).all()


def test_parallel_and_serial_paths_agree(monkeypatch):
    """Small inputs project and bin on one thread, large ones in parallel: both give the same result."""
    from splatlab.render import cpu

    s = _scene(n=200, seed=12)
    colors = torch.rand(200, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = []
    for limit in (10**9, 0):  # all serial, then all parallel
        monkeypatch.setattr(cpu, "_SERIAL_BELOW", limit)
        outs.append(_render_grads("cpu", s, colors, None, None, "RGB", torch.float32))
    (img_s, alpha_s, _, g_s), (img_p, alpha_p, _, g_p) = outs
    assert torch.equal(img_s, img_p) and torch.equal(alpha_s, alpha_p)
    for k in g_s:
        _close(g_p[k], g_s[k], 1e-6, 1e-9, k)


def test_threading_layer_prefers_tbb_then_workqueue():
    # a fresh process: the layer is fixed by the first parallel launch
    code = (
        "import importlib.metadata, numba, torch\n"
        "from splatlab.render import render\n"
        "g = torch.Generator().manual_seed(0)\n"
        "n = 20000\n"
        "V = torch.eye(4)[None].clone()\n"
        "V[0, 2, 3] = 3.0\n"
        "means, quats = torch.randn(n, 3, generator=g) * 0.3, torch.randn(n, 4, generator=g)\n"
        "render(means, quats, torch.full((n, 3), 0.02), torch.full((n,), 0.5), torch.rand(n, 3), V,\n"
        "       torch.tensor([[[50.0, 0, 32], [0, 50.0, 32], [0, 0, 1]]]), 64, 64, backend='cpu')\n"
        "try:\n"
        "    has_tbb = bool(importlib.metadata.version('tbb'))\n"
        "except importlib.metadata.PackageNotFoundError:\n"
        "    has_tbb = False\n"
        "print(numba.threading_layer(), has_tbb)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    layer, has_tbb = out.stdout.split()
    assert layer == ("tbb" if has_tbb == "True" else "workqueue")


def test_backward_is_deterministic():
    # gradient buffers are per tile part, summed in part order: the same bits whichever thread ran which part
    g = torch.Generator().manual_seed(5)
    n = 3000
    means = (torch.randn(n, 3, generator=g) * 0.4).requires_grad_(True)
    quats = torch.randn(n, 4, generator=g).requires_grad_(True)
    scales = torch.full((n, 3), 0.03).requires_grad_(True)
    opacities = torch.full((n,), 0.7).requires_grad_(True)
    colors = torch.rand(n, 3, generator=g).requires_grad_(True)
    V = torch.eye(4)[None].clone()
    V[0, 2, 3] = 3.0
    K = torch.tensor([[[90.0, 0, 48], [0, 90.0, 48], [0, 0, 1]]])
    grads = []
    for _ in range(3):
        img, _, _ = render(means, quats, scales, opacities, colors, V, K, 96, 96, backend="cpu")
        leaves = (means, quats, scales, opacities, colors)
        grads.append(torch.autograd.grad((img * torch.linspace(0, 1, 96)[:, None, None]).sum(), leaves))
    for other in grads[1:]:
        for a, b in zip(grads[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_colour_kernel_matches_torch(degree):
    from splatlab.render.cpu_sh import eval_sh_cpu
    from splatlab.render.sh import eval_sh

    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(3, 40, 3, generator=g, requires_grad=True)
    coeffs = (0.5 * torch.randn(40, 16, 3, generator=g)).requires_grad_(True)
    ours, ref = eval_sh_cpu(degree, dirs, coeffs), eval_sh(degree, dirs, coeffs)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    w = torch.randn(ref.shape, generator=g)
    kw = dict(allow_unused=True, materialize_grads=True)  # degree 0 does not depend on the direction
    got = torch.autograd.grad((ours * w).sum(), (dirs, coeffs), **kw)
    want = torch.autograd.grad((ref * w).sum(), (dirs, coeffs), **kw)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    d64 = torch.randn(2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c64 = torch.randn(5, 16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, c: eval_sh_cpu(degree, d, c), (d64, c64))


def test_viewmat_gradient_alone_equals_the_full_backward():
    """With fixed splats (pose refinement) the projection's backward computes the viewmat part only."""
    s = _scene(n=80, seed=3)
    args = {k: s[k].float() for k in ("means", "quats", "scales", "opacities")}
    colors = torch.rand(80, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for params_grad in (True, False):
        p = {k: v.clone().requires_grad_(params_grad) for k, v in args.items()}
        vm = s["viewmats"].float().clone().requires_grad_(True)
        splats = (p["means"], p["quats"], p["scales"], p["opacities"], colors)
        img, _, _ = render(*splats, vm, s["Ks"].float(), W, H, backend="cpu")
        img.square().sum().backward()
        grads.append(vm.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
