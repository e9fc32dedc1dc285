"""Photometric alignment: known answers, the background is kept, gradients flow."""

import pytest
import torch

from splatlab.appearance import align_render, fit_appearance


def _scene(seed=0):
    g = torch.Generator().manual_seed(seed)
    alpha = torch.zeros(2, 16, 16, 1)
    alpha[:, 4:12, 3:13] = 1.0
    alpha[:, 4:12, 2] = 0.5  # a soft edge
    color = torch.rand(2, 16, 16, 3, generator=g) * 0.8 * alpha  # premultiplied object colour
    return color + (1 - alpha), alpha, color


def test_gain_and_offset_are_recovered():
    render, alpha, color = _scene()
    gain, offset = torch.tensor([[0.7, 0.9, 1.2], [1.1, 1.0, 0.8]]), torch.tensor([[0.05, -0.02, 0.0]] * 2)
    query = gain[:, None, None] * color + offset[:, None, None] * alpha + (1 - alpha)
    g, o = fit_appearance(render, alpha, query, "affine", ridge=0.0)
    torch.testing.assert_close(g, gain, atol=1e-4, rtol=0)
    torch.testing.assert_close(o, offset, atol=1e-4, rtol=0)
    torch.testing.assert_close(align_render(render, alpha, query, "affine"), query, atol=5e-3, rtol=0)
    g_only, o_only = fit_appearance(
        render, alpha, gain[:, None, None] * color + (1 - alpha), "gain", ridge=0.0
    )
    torch.testing.assert_close(g_only, gain, atol=1e-4, rtol=0)
    assert (o_only == 0).all()


def test_background_kept_identity_and_ridge():
    render, alpha, _ = _scene(1)
    query = torch.rand_like(render)
    aligned = align_render(render, alpha, query, "affine")
    torch.testing.assert_close(aligned[alpha[..., 0] == 0], render[alpha[..., 0] == 0])  # white stays white
    assert align_render(render, alpha, query, "none") is render
    g, o = fit_appearance(render, alpha, render, "affine")
    torch.testing.assert_close(g, torch.ones(2, 3), atol=1e-5, rtol=0)  # a render matches itself
    empty = torch.zeros_like(alpha)
    g, _ = fit_appearance(torch.ones_like(render), empty, query, "gain")
    torch.testing.assert_close(g, torch.ones(2, 3))  # no object pixels: the identity
    with pytest.raises(ValueError, match="appearance"):
        fit_appearance(render, alpha, query, "curves")


def test_gradient_flows_through_the_fit():
    render, alpha, _ = _scene(2)
    render = render.clone().requires_grad_(True)
    query = 0.8 * render.detach() + 0.1
    align_render(render, alpha, query, "affine").sub(query).abs().mean().backward()
    assert render.grad is not None and torch.isfinite(render.grad).all() and render.grad.abs().sum() > 0
