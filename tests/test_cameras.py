import math

import pytest
import torch
from torch.testing import assert_close

from splatlab.cameras import (
    Cameras,
    camera_centers,
    focal_from_fov,
    intrinsics,
    look_at,
    opengl_c2w_to_viewmat,
    perturb_viewmat,
    pose_error,
    ring_rig,
    se3_exp,
    se3_log,
    so3_exp,
    so3_log,
    viewmat_to_opengl_c2w,
)


def test_look_at_known_answer():
    # A camera on +x looking at the origin with z up: right = +y, down = -z, forward = -x.
    v = look_at(torch.tensor([4.0, 0.0, 0.0]))
    expected = torch.tensor([[0, 1, 0, 0], [0, 0, -1, 0], [-1, 0, 0, 4], [0, 0, 0, 1]], dtype=torch.float32)
    assert_close(v, expected)
    # The origin lands at the image centre, 4 units in front.
    assert_close((v @ torch.tensor([0.0, 0, 0, 1]))[:3], torch.tensor([0.0, 0, 4]))


def test_look_at_rejects_parallel_up():
    with pytest.raises(ValueError, match="parallel"):
        look_at(torch.tensor([0.0, 0.0, 3.0]))


def test_opengl_conversion_round_trip_and_axes():
    v = look_at(torch.tensor([1.0, -2.0, 0.5]))
    c2w_gl = viewmat_to_opengl_c2w(v)
    assert_close(opengl_c2w_to_viewmat(c2w_gl), v, atol=1e-6, rtol=0)
    # OpenGL looks down -z: the GL camera's -z axis is the OpenCV camera's +z (forward) axis.
    fwd_cv = torch.linalg.inv(v)[:3, 2]
    assert_close(-c2w_gl[:3, 2], fwd_cv)
    # Same centre in both.
    assert_close(c2w_gl[:3, 3], camera_centers(v))


def test_focal_from_fov():
    assert focal_from_fov(math.radians(90.0), 200) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="camera_angle_x"):
        focal_from_fov(0.0, 100)


def test_se3_known_values():
    xi = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    assert_close(se3_exp(xi)[:3, 3], xi[:3])  # pure translation
    R = so3_exp(torch.tensor([0.0, 0.0, math.pi / 2]))
    assert_close(R, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]), atol=1e-6, rtol=0)


def test_se3_round_trip():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(200, 6, generator=g, dtype=torch.float64)
    phi = xi[:, 3:]
    xi[:, 3:] = (
        phi / phi.norm(dim=-1, keepdim=True) * torch.rand(200, 1, generator=g, dtype=torch.float64) * 3.0
    )
    assert_close(se3_log(se3_exp(xi)), xi, atol=1e-9, rtol=1e-7)
    # Near pi and at zero.
    near_pi = torch.tensor([[0.1, 0.2, 0.3, 0.0, math.pi - 1e-6, 0.0]], dtype=torch.float64)
    assert_close(se3_exp(se3_log(se3_exp(near_pi))), se3_exp(near_pi), atol=1e-6, rtol=0)
    assert_close(so3_log(torch.eye(3, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))


def test_se3_exp_gradient_finite_at_zero():
    xi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(se3_exp, (xi,))


def test_pose_error_and_perturb():
    v = look_at(torch.tensor([0.0, -3.0, 1.0]))
    w = perturb_viewmat(v, 7.5, translation=0.2, seed=3)
    rot, trans = pose_error(w, v)
    assert rot.item() == pytest.approx(7.5, abs=1e-3)
    assert trans.item() == pytest.approx(0.2, abs=1e-5)
    assert pose_error(v, v)[0].item() == pytest.approx(0.0, abs=1e-3)


def test_ring_rig_and_batch():
    cams = ring_rig(elevations_deg=(0.0, 30.0), azimuth_step_deg=15.0, radius=4.0, width=64, height=48)
    assert len(cams) == 48
    assert_close(cams.centers.norm(dim=-1), torch.full((48,), 4.0))
    # Every camera sees the origin at its principal point.
    origin = torch.tensor([0.0, 0.0, 0.0, 1.0])
    p = (cams.viewmats @ origin)[:, :3]
    uv = (cams.Ks @ p[..., None])[..., 0]
    assert_close(uv[:, :2] / uv[:, 2:], torch.tensor([32.0, 24.0]).expand(48, 2))
    sub = cams[3]
    assert len(sub) == 1 and sub.width == 64
    half = cams.resized(32, 24)
    assert_close(half.Ks[:, 0, 2], torch.full((48,), 16.0))


def test_cameras_validation():
    with pytest.raises(ValueError, match="viewmats"):
        Cameras(torch.eye(4), intrinsics(10.0, 8, 8), 8, 8)
    with pytest.raises(ValueError, match="width and height"):
        Cameras(torch.eye(4)[None], intrinsics(10.0, 8, 8), 0, 8)
