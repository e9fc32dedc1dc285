import io
import math

import numpy as np
import pytest
import torch

from splatlab.cameras import look_at
from splatlab.splats import random_splats
from splatlab.viz.display import (
    frustum_shape,
    heat_overlay,
    png_bytes,
    splats_to_viser,
    to_uint8,
    viewmat_to_pose,
)


def test_splats_to_viser_known_covariance_colour_opacity():
    s = random_splats(2, seed=0)
    with torch.no_grad():
        s["quats"][:] = torch.tensor([[2.0, 0, 0, 0], [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
        s["scales"][:] = torch.log(torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]]))
        s["opacities"][:] = torch.tensor([0.0, 2.0])
        s["sh0"][:] = 0.0
    p = splats_to_viser(s)
    cov = torch.from_numpy(p["covariances"])
    torch.testing.assert_close(cov[0], torch.diag(torch.tensor([0.01, 0.04, 0.09])))
    # 90 degrees about z swaps the x and y variances
    torch.testing.assert_close(cov[1], torch.diag(torch.tensor([0.04, 0.01, 0.09])), atol=1e-6, rtol=0)
    opacities = torch.from_numpy(p["opacities"][:, 0])
    torch.testing.assert_close(opacities, torch.sigmoid(torch.tensor([0.0, 2.0])))
    torch.testing.assert_close(torch.from_numpy(p["rgbs"]), torch.full((2, 3), 0.5))
    assert p["centers"].shape == (2, 3) and p["opacities"].shape == (2, 1)


def test_splats_to_viser_names_missing_key():
    with pytest.raises(ValueError, match="sh0"):
        splats_to_viser({"means": torch.zeros(1, 3), "quats": torch.ones(1, 4), "scales": torch.zeros(1, 3),
                         "opacities": torch.zeros(1)})


def test_frustum_pose_is_camera_to_world_in_opencv_axes():
    import viser.transforms as vtf

    eye = torch.tensor([3.0, -1.0, 2.0])
    viewmat = look_at(eye)
    wxyz, position = viewmat_to_pose(viewmat)
    c2w = vtf.SE3.from_rotation_and_translation(vtf.SO3(wxyz), position).as_matrix()
    torch.testing.assert_close(torch.from_numpy(c2w).float(), torch.linalg.inv(viewmat), atol=1e-5, rtol=0)
    # the frustum's +z (OpenCV forward, as viser draws it) points at the origin the camera looks at
    forward = vtf.SO3(wxyz).as_matrix()[:, 2]
    np.testing.assert_allclose(forward, (-eye / eye.norm()).numpy(), atol=1e-6)


def test_frustum_shape_from_intrinsics():
    fov, aspect = frustum_shape(torch.tensor([[50.0, 0, 40], [0, 50.0, 50], [0, 0, 1]]), 80, 100)
    assert math.isclose(fov, math.pi / 2) and math.isclose(aspect, 0.8)


def test_heat_overlay_resizes_and_maps_extremes():
    img = torch.zeros(8, 8, 3)
    amap = torch.zeros(4, 4)
    amap[0, 0] = 1.0
    out = heat_overlay(img, amap, alpha=1.0, cmap="gray")
    assert out.shape == (8, 8, 3)
    assert out[0, 0].min() > 0.5 and out[-1, -1].max() == 0.0


def test_to_uint8_shrinks_longer_side_and_rounds():
    img = torch.full((20, 40, 3), 0.5)
    out = to_uint8(img, max_side=10)
    assert out.shape == (5, 10, 3) and out.dtype == np.uint8 and (out == 128).all()
    assert to_uint8(np.ones((3, 4, 3), np.float32)).max() == 255
    with pytest.raises(ValueError, match="image"):
        to_uint8(torch.zeros(4, 4))


def test_png_bytes_round_trip():
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(png_bytes(img))))
    np.testing.assert_array_equal(back, img)
