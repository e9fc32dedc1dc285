import math

import pytest
import torch
from pytorch_msssim import ssim as ref_ssim

from splatlab.losses import photometric_loss, psnr, ssim


def _pair(seed=0, b=2, h=24, w=20):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(b, h, w, 3, generator=g)
    c = (a + 0.1 * torch.randn(b, h, w, 3, generator=g)).clamp(0, 1)
    return a, c


def test_identical_images_give_zero_loss_and_unit_ssim():
    a, _ = _pair()
    torch.testing.assert_close(photometric_loss(a, a), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim(a, a), torch.tensor(1.0), atol=1e-6, rtol=0)
    assert math.isinf(psnr(a, a).item())


def test_loss_matches_formula_and_reference_ssim():
    a, c = _pair()
    ref = ref_ssim(a.permute(0, 3, 1, 2), c.permute(0, 3, 1, 2), data_range=1.0, win_size=11, win_sigma=1.5)
    expect = 0.8 * (a - c).abs().mean() + 0.2 * (1 - ref)
    torch.testing.assert_close(photometric_loss(a, c), expect)
    # a single channels-last image equals the batch of one
    torch.testing.assert_close(photometric_loss(a[0], c[0]), photometric_loss(a[:1], c[:1]))
    assert ssim(a, c, reduce=False).shape == (2,)


def test_psnr_known_answer():
    a = torch.zeros(4, 4, 3)
    b = torch.full((4, 4, 3), 0.1)  # mse 0.01 -> 20 dB
    torch.testing.assert_close(psnr(a, b), torch.tensor(20.0))


def test_loss_has_gradient():
    a, c = _pair()
    a.requires_grad_(True)
    photometric_loss(a, c).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_bad_inputs():
    a, c = _pair()
    with pytest.raises(ValueError, match="same shape"):
        photometric_loss(a, c[:1])
    with pytest.raises(ValueError, match="11x11"):
        photometric_loss(a[:, :8, :8], c[:, :8, :8])
    with pytest.raises(ValueError, match="pred"):
        ssim(a[0, 0], c[0, 0])


@pytest.mark.parametrize("shape", [(2, 24, 20, 3), (1, 11, 13, 3)])
@pytest.mark.parametrize("target_grad", [True, False])  # False: the compiled path of training and pose
def test_fused_ssim_matches_pytorch_msssim_value_and_gradient(shape, target_grad):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(*shape, generator=g, requires_grad=True)
    c = (a.detach() + 0.1 * torch.randn(*shape, generator=g)).clamp(0, 1).requires_grad_(target_grad)
    wrt = (a, c) if target_grad else (a,)
    for reduce in (True, False):
        ours = ssim(a, c, reduce=reduce)
        ref = ref_ssim(
            a.permute(0, 3, 1, 2), c.permute(0, 3, 1, 2), data_range=1.0, size_average=reduce, win_size=11,
            win_sigma=1.5,
        )
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
        w = torch.rand(ours.shape, generator=g)  # an arbitrary upstream gradient
        got = torch.autograd.grad((ours * w).sum(), wrt)
        want = torch.autograd.grad((ref * w).sum(), wrt)
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5 * float(y.abs().max()), rtol=0)


def test_fused_ssim_gradcheck():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(1, 13, 12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.rand(1, 13, 12, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ssim(x, y), (a, c))
