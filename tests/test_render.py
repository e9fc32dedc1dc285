"""The render() entry point, the PyTorch reference, and the gsplat backend (CUDA only)."""

import math

import pytest
import torch
from torch.testing import assert_close

from conftest import random_gaussians
from splatlab.render import render, resolve_backend
from splatlab.render.reference import project_torch, quat_to_rotmat
from splatlab.render.sh import eval_sh

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_projection_agrees_with_gsplat_torch_impl(two_cameras):
    from gsplat.cuda._torch_impl import _fully_fused_projection

    viewmats, Ks, W, H = two_cameras
    means, quats, scales, _, _ = random_gaussians(400, seed=1, spread=0.8)
    quats = torch.nn.functional.normalize(quats, dim=-1)
    R = quat_to_rotmat(quats)
    covars = R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)
    r_ref, m_ref, d_ref, c_ref, _ = _fully_fused_projection(means, covars, viewmats, Ks, W, H)
    radii, means2d, depths, conics = project_torch(means, quats, scales, torch.ones(400), viewmats, Ks, W, H)
    visible = (r_ref > 0).all(-1)
    assert visible.sum() > 100
    assert_close(means2d[visible], m_ref[visible], atol=1e-4, rtol=1e-5)
    assert_close(depths, d_ref)
    assert_close(conics[visible], c_ref[visible], atol=1e-5, rtol=1e-4)
    # gsplat's torch impl uses 3.33 sigma; at opacity 1 we use min(3.33, sqrt(2 ln 255)) = 3.329.
    assert ((radii[visible] - r_ref[visible]).abs() <= 1).all()
    assert ((radii > 0).all(-1) == visible).float().mean() > 0.99


def test_sh_agrees_with_gsplat():
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(0)
    dirs, coeffs = torch.randn(64, 3, generator=g), torch.randn(64, 16, 3, generator=g)
    for degree in range(4):
        ref = _spherical_harmonics(degree, torch.nn.functional.normalize(dirs, dim=-1), coeffs)
        assert_close(eval_sh(degree, dirs, coeffs), torch.clamp_min(ref + 0.5, 0.0))


def _gradcheck_inputs(two_cameras, n=5):
    viewmats, _, _, _ = two_cameras
    params = [p.double() for p in random_gaussians(n, seed=3, spread=0.3)]
    params[2] = params[2] * 3  # larger Gaussians: smooth images on a tiny canvas
    return params, viewmats.double()


def test_reference_gradcheck_all_inputs(two_cameras):
    (means, quats, scales, opac, colors), viewmats = _gradcheck_inputs(two_cameras)
    Ks = torch.tensor([[30.0, 0, 10], [0, 30.0, 8], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    last = viewmats[:, 3:, :]  # gradcheck must not perturb the constant last row

    def f(m, q, s, o, c, v34):
        img, alpha, _ = render(
            m,
            q,
            s,
            o,
            c,
            torch.cat([v34, last], 1),
            Ks,
            20,
            16,
            backend="torch",
            render_mode="RGB+ED",
            background=torch.ones(3, dtype=torch.float64),
        )
        return img, alpha

    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors, viewmats[:, :3])]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_reference_gradcheck_sh3(two_cameras):
    (means, quats, scales, opac, _), viewmats = _gradcheck_inputs(two_cameras)
    Ks = torch.tensor([[30.0, 0, 10], [0, 30.0, 8], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3)
    coeffs = torch.randn(5, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.3
    last = viewmats[:, 3:, :]

    def f(m, c, v34):
        return render(
            m, quats, scales, opac, c, torch.cat([v34, last], 1), Ks, 20, 16, sh_degree=3, backend="torch"
        )[0]

    inputs = [t.clone().requires_grad_() for t in (means, coeffs, viewmats[:, :3])]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_one_gaussian_known_answer():
    # An isotropic Gaussian at the image centre, 2 units away: peak alpha = opacity, Gaussian falloff.
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]]])
    img, alpha, meta = render(
        torch.tensor([[0.0, 0.0, 2.0]]),
        torch.tensor([[1.0, 0, 0, 0]]),
        torch.full((1, 3), 0.1),
        torch.tensor([0.8]),
        torch.ones(1, 3),
        viewmat,
        K,
        32,
        32,
        backend="torch",
    )
    sigma_px2 = (50.0 * 0.1 / 2.0) ** 2 + 0.3  # projected variance plus the low-pass filter
    dx = 0.5  # pixel (16, 16)'s centre is half a pixel from the mean in x and in y
    expected = 0.8 * math.exp(-0.5 * (2 * dx * dx) / sigma_px2)
    assert alpha[0, 16, 16, 0].item() == pytest.approx(expected, rel=1e-5)
    assert meta["radii"][0, 0].tolist() == [math.ceil(3.33 * math.sqrt(sigma_px2))] * 2


def test_empty_and_culled_scenes(two_cameras):
    viewmats, Ks, W, H = two_cameras
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    img, alpha, _ = render(*empty, viewmats, Ks, W, H, backend="torch", background=torch.ones(3))
    assert_close(img, torch.ones(2, H, W, 3)) and assert_close(alpha, torch.zeros(2, H, W, 1))
    means, quats, scales, opac, colors = random_gaussians(20)
    behind = means - 50 * torch.linalg.inv(viewmats[0])[:3, 2]  # far behind camera 0
    img, alpha, meta = render(
        behind, quats, scales, opac, colors, viewmats[:1], Ks[:1], W, H, backend="torch"
    )
    assert (meta["radii"] == 0).all() and alpha.abs().max() == 0


def test_default_strategy_steps_on_cpu_render(two_cameras):
    from gsplat.strategy import DefaultStrategy

    from splatlab.cameras import Cameras
    from splatlab.splats import random_splats, render_splats

    viewmats, Ks, W, H = two_cameras
    splats = random_splats(300, extent=0.5, seed=0)
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in splats.items()}
    strategy = DefaultStrategy(refine_start_iter=0, refine_every=1, reset_every=1000, grow_grad2d=1e-12)
    state = strategy.initialize_state()
    strategy.check_sanity(splats, optimizers)

    cameras = Cameras(viewmats, Ks, W, H)

    def step():
        return render_splats(splats, cameras, backend="torch")

    step()[0].mean().backward()  # one plain step, so that Adam has state to keep consistent
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad()
    img, _, meta = step()
    strategy.step_pre_backward(splats, optimizers, state, step=1, info=meta)
    img.mean().backward()
    assert meta["means2d"].grad is not None and meta["means2d"].grad.abs().sum() > 0
    strategy.step_post_backward(splats, optimizers, state, step=1, info=meta, packed=False)
    n = len(splats["means"])
    assert n != 300  # grew (tiny grow threshold) and/or pruned
    for k, opt in optimizers.items():
        assert opt.param_groups[0]["params"][0] is splats[k]
        assert opt.state[splats[k]]["exp_avg"].shape == splats[k].shape


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(means=torch.zeros(5, 2)), "means"),
        (lambda a: a.update(quats=torch.zeros(4, 4)), "quats"),
        (lambda a: a.update(scales=a["scales"].clone().fill_(float("nan"))), "scales contains NaN"),
        (lambda a: a.update(opacities=torch.full((4,), float("inf"))), "opacities contains NaN or Inf"),
        (lambda a: a.update(colors=torch.rand(3, 3)), "colors"),
        (lambda a: a.update(viewmats=torch.zeros(2, 4, 4)), "viewmats"),
        (lambda a: a.update(Ks=torch.eye(3)[None].expand(3, 3, 3)), "Ks must be"),
        (lambda a: a.update(Ks=torch.zeros(2, 3, 3)), "focal"),
        (lambda a: a.update(width=0), "width and height"),
        (lambda a: a.update(background=torch.ones(4)), "background"),
    ],
)
def test_bad_input_raises_clear_error(two_cameras, change, match):
    viewmats, Ks, W, H = two_cameras
    means, quats, scales, opac, colors = random_gaussians(4)
    args = dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opac,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=W,
        height=H,
        background=None,
    )
    change(args)
    with pytest.raises(ValueError, match=match):
        render(**args, backend="torch")


def test_backend_choice():
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("gsplat", torch.device("cpu"))
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("vulkan", torch.device("cpu"))


def test_auto_backend_never_imports_gsplat_on_cpu():
    import subprocess
    import sys

    code = (
        "import sys, torch; from splatlab.splats import random_splats, render_splats; "
        "from splatlab.cameras import ring_rig; "
        "render_splats(random_splats(50), ring_rig(width=16, height=16)[0], backend='auto'); "
        "assert 'gsplat' not in sys.modules, 'gsplat imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.gsplat
@cuda
def test_gsplat_backend_matches_cpu(two_cameras):
    viewmats, Ks, W, H = two_cameras
    means, quats, scales, opac, colors = random_gaussians(500, seed=5)
    cpu_img, cpu_alpha, _ = render(
        means, quats, scales, opac, colors, viewmats, Ks, W, H, backend="cpu", background=torch.ones(3)
    )
    dev = [t.cuda() for t in (means, quats, scales, opac, colors, viewmats, Ks)]
    gs_img, gs_alpha, meta = render(
        *dev[:5], dev[5], dev[6], W, H, backend="auto", background=torch.ones(3).cuda()
    )
    assert meta["backend"] == "gsplat"
    assert_close(gs_img.cpu(), cpu_img, atol=1e-3, rtol=0)
    assert_close(gs_alpha.cpu(), cpu_alpha, atol=1e-3, rtol=0)


def test_sh_degree_zero_shortcut_matches_full_evaluation(two_cameras):
    viewmats, Ks, W, H = two_cameras
    means, quats, scales, opac, _ = random_gaussians(200, seed=7)
    coeffs = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(1))
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    per_camera = eval_sh(0, means[None] - campos[:, None], coeffs[None].expand(2, -1, -1, -1))
    a, _, _ = render(means, quats, scales, opac, coeffs, viewmats, Ks, W, H, sh_degree=0, backend="torch")
    b, _, _ = render(means, quats, scales, opac, per_camera, viewmats, Ks, W, H, backend="torch")
    assert_close(a, b)


def test_unchecked_render_is_the_checked_one(two_cameras):
    # check=False (inner loops whose inputs were checked once) skips validation, nothing else
    viewmats, Ks, W, H = two_cameras
    means, quats, scales, opac, _ = random_gaussians(200, seed=3)
    coeffs = torch.randn(200, 9, 3, generator=torch.Generator().manual_seed(2))
    kw = dict(sh_degree=2, background=torch.ones(3), backend="cpu")
    a = render(means, quats, scales, opac, coeffs, viewmats, Ks, W, H, **kw)
    b = render(means, quats, scales, opac, coeffs, viewmats, Ks, W, H, check=False, **kw)
    assert_close(a[0], b[0])
    assert_close(a[1], b[1])
