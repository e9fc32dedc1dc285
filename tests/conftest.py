import pytest
import torch

from splatlab.cameras import intrinsics, look_at, spherical_eye


@pytest.fixture
def two_cameras():
    """Two cameras 3–3.5 units from the origin, looking at it: (viewmats [2,4,4], Ks [2,3,3], W, H)."""
    eye = spherical_eye(torch.tensor([0.0, 90.0]), torch.tensor([20.0, -10.0]), torch.tensor([3.0, 3.5]))
    return look_at(eye), intrinsics(60.0, 40, 32, n=2), 40, 32


def random_gaussians(n: int, seed: int = 0, dtype=torch.float32, spread: float = 0.4):
    """Random activated Gaussian parameters (means, quats, scales, opacities, colours)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.randn(n, 3, generator=g) * spread).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    scales = (torch.rand(n, 3, generator=g) * 0.08 + 0.02).to(dtype)
    opacities = (torch.rand(n, generator=g) * 0.85 + 0.1).to(dtype)
    colors = torch.rand(n, 3, generator=g).to(dtype)
    return means, quats, scales, opacities, colors
