"""Cameras, conventions and SE(3) helpers.

Conventions (the same as gsplat and viser):

- Camera axes are OpenCV's: +x right, +y down, +z forward (into the scene).
- ``viewmats`` are world→camera matrices [C, 4, 4]; ``c2w`` are camera→world matrices.
- Intrinsics ``Ks`` [C, 3, 3] hold pixels: ``u = fx * x / z + cx``; pixel centres sit at +0.5.
- Blender/NeRF ``transforms.json`` stores camera→world matrices with OpenGL axes (+y up, +z backward).
  They are converted once, by :func:`opengl_c2w_to_viewmat`, and never inline.
- se(3) vectors are ``(rho, phi)``: translation part first, then the rotation vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Flips the y and z axes: OpenGL camera axes <-> OpenCV camera axes (its own inverse).
_GL_TO_CV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


# ----------------------------------------------------------------------------------------------------------
# The camera batch
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cameras:
    """A batch of pinhole cameras that share one image size.

    Args:
        viewmats: World→camera matrices, OpenCV axes. [C, 4, 4]
        Ks: Intrinsic matrices in pixels. [C, 3, 3]
        width: Image width in pixels.
        height: Image height in pixels.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        v, k = self.viewmats, self.Ks
        if v.ndim != 3 or v.shape[-2:] != (4, 4):
            raise ValueError(f"viewmats must be [C, 4, 4], got {tuple(v.shape)}")
        if k.ndim != 3 or k.shape[-2:] != (3, 3) or k.shape[0] != v.shape[0]:
            raise ValueError(f"Ks must be [C, 3, 3] with C={v.shape[0]}, got {tuple(k.shape)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width and height must be positive, got {self.width}x{self.height}")

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, index) -> Cameras:
        """Select cameras by an int, slice, list or bool/long tensor; always returns a batch."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def c2w(self) -> Tensor:
        """Camera→world matrices. [C, 4, 4]"""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """Camera centres in world coordinates. [C, 3]"""
        return camera_centers(self.viewmats)

    def to(self, device=None, dtype=None) -> Cameras:
        return Cameras(
            self.viewmats.to(device=device, dtype=dtype),
            self.Ks.to(device=device, dtype=dtype),
            self.width,
            self.height,
        )

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras for another image size: focal lengths and principal point scale with it."""
        sx, sy = width / self.width, height / self.height
        scale = torch.tensor([[sx, sx, sx], [sy, sy, sy], [1.0, 1.0, 1.0]], dtype=self.Ks.dtype)
        return Cameras(self.viewmats, self.Ks * scale.to(self.Ks.device), int(width), int(height))

    @staticmethod
    def cat(batches: list[Cameras]) -> Cameras:
        if not batches:
            raise ValueError("Cameras.cat needs at least one batch")
        w, h = batches[0].width, batches[0].height
        if any((b.width, b.height) != (w, h) for b in batches):
            raise ValueError("Cameras.cat: all batches must share one image size")
        return Cameras(torch.cat([b.viewmats for b in batches]), torch.cat([b.Ks for b in batches]), w, h)


# ----------------------------------------------------------------------------------------------------------
# Intrinsics and conventions
# ----------------------------------------------------------------------------------------------------------


def focal_from_fov(camera_angle_x: float, width: int) -> float:
    """Focal length in pixels from NeRF's horizontal field of view (radians) and the image width."""
    if not 0.0 < camera_angle_x < math.pi:
        raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {camera_angle_x}")
    return 0.5 * width / math.tan(0.5 * camera_angle_x)


def intrinsics(focal: float, width: int, height: int, n: int = 1, device=None) -> Tensor:
    """Pinhole intrinsics with square pixels and the principal point at the image centre. [n, 3, 3]"""
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], device=device)
    return K.expand(n, 3, 3).clone()


def opengl_c2w_to_viewmat(c2w_gl: Tensor) -> Tensor:
    """Blender/NeRF camera→world (OpenGL axes) to an OpenCV world→camera viewmat. [..., 4, 4]"""
    flip = _GL_TO_CV.to(c2w_gl)
    return torch.linalg.inv(c2w_gl @ flip)


def viewmat_to_opengl_c2w(viewmat: Tensor) -> Tensor:
    """OpenCV world→camera viewmat to a Blender/NeRF camera→world matrix (OpenGL axes). [..., 4, 4]"""
    flip = _GL_TO_CV.to(viewmat)
    return torch.linalg.inv(viewmat) @ flip


def camera_centers(viewmats: Tensor) -> Tensor:
    """Camera centres in world coordinates, ``-R^T t``. [..., 3]"""
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    return -(R.transpose(-1, -2) @ t[..., None])[..., 0]


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """OpenCV viewmats of cameras at ``eye`` looking at ``target`` with world ``up`` (default +z).

    Args:
        eye: Camera centres. [..., 3]
        target: Points looked at; the origin by default. [..., 3]
        up: World up direction; +z by default. [..., 3]

    Returns:
        World→camera matrices. [..., 4, 4]
    """
    eye = torch.as_tensor(eye, dtype=torch.float32) if not torch.is_tensor(eye) else eye
    target = torch.zeros_like(eye) if target is None else torch.as_tensor(target).to(eye)
    up = eye.new_tensor([0.0, 0.0, 1.0]) if up is None else torch.as_tensor(up).to(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up.expand_as(forward), dim=-1)
    if (right.norm(dim=-1) < 1e-6).any():
        raise ValueError("look_at: the viewing direction is parallel to `up`; choose another up vector")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    R_c2w = torch.stack([right, down, forward], dim=-1)  # columns are the camera axes in the world
    viewmat = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    viewmat[..., :3, :3] = R_c2w.transpose(-1, -2)
    viewmat[..., :3, 3] = -(R_c2w.transpose(-1, -2) @ eye[..., None])[..., 0]
    viewmat[..., 3, 3] = 1.0
    return viewmat


def spherical_eye(azimuth_deg: Tensor, elevation_deg: Tensor, radius: Tensor) -> Tensor:
    """Points on a sphere around the origin (z up; azimuth from +x towards +y). [..., 3]"""
    az, el = torch.deg2rad(azimuth_deg), torch.deg2rad(elevation_deg)
    return torch.stack(
        [
            radius * torch.cos(el) * torch.cos(az),
            radius * torch.cos(el) * torch.sin(az),
            radius * torch.sin(el),
        ],
        dim=-1,
    )


def ring_rig(
    elevations_deg: tuple[float, ...] = (-30.0, 0.0, 30.0, 60.0),
    azimuth_step_deg: float = 15.0,
    radius: float = 4.0,
    focal: float = 150.0,
    width: int = 128,
    height: int = 128,
) -> Cameras:
    """Cameras on rings of constant elevation around the origin, all looking at it, like MAD's rig.

    Returns:
        ``len(elevations_deg) * (360 / azimuth_step_deg)`` cameras, ring by ring.
    """
    if azimuth_step_deg <= 0 or radius <= 0:
        raise ValueError("azimuth_step_deg and radius must be positive")
    az = torch.arange(0.0, 360.0, azimuth_step_deg)
    el = torch.tensor(elevations_deg, dtype=torch.float32)
    el_grid, az_grid = torch.meshgrid(el, az, indexing="ij")
    eye = spherical_eye(
        az_grid.reshape(-1), el_grid.reshape(-1), torch.full_like(az_grid.reshape(-1), radius)
    )
    viewmats = look_at(eye)
    return Cameras(viewmats, intrinsics(focal, width, height, n=len(viewmats)), width, height)


# ----------------------------------------------------------------------------------------------------------
# SE(3)
# ----------------------------------------------------------------------------------------------------------


def _hat(phi: Tensor) -> Tensor:
    """Skew-symmetric matrices of rotation vectors. [..., 3] -> [..., 3, 3]"""
    x, y, z = phi.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).reshape(phi.shape[:-1] + (3, 3))


def _so3_coefficients(theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """sin(t)/t, (1-cos t)/t^2 and (t - sin t)/t^3, with Taylor series near 0 so gradients stay finite."""
    small = theta2 < 1e-6
    t2 = torch.where(small, torch.ones_like(theta2), theta2)  # a safe value for the closed form
    t = torch.sqrt(t2)
    a = torch.where(small, 1.0 - theta2 / 6.0 + theta2**2 / 120.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24.0 + theta2**2 / 720.0, (1.0 - torch.cos(t)) / t2)
    c = torch.where(small, 1.0 / 6.0 - theta2 / 120.0 + theta2**2 / 5040.0, (t - torch.sin(t)) / (t2 * t))
    return a, b, c


def so3_exp(phi: Tensor) -> Tensor:
    """Rotation matrices from rotation vectors (Rodrigues). [..., 3] -> [..., 3, 3]"""
    a, b, _ = _so3_coefficients((phi * phi).sum(-1))
    K = _hat(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device)
    return eye + a[..., None, None] * K + b[..., None, None] * (K @ K)


def se3_exp(xi: Tensor) -> Tensor:
    """4×4 rigid transforms from se(3) vectors ``(rho, phi)``; differentiable at 0. [..., 6] -> [..., 4, 4]"""
    if xi.shape[-1] != 6:
        raise ValueError(f"se3_exp expects [..., 6], got {tuple(xi.shape)}")
    rho, phi = xi[..., :3], xi[..., 3:]
    a, b, c = _so3_coefficients((phi * phi).sum(-1))
    K = _hat(phi)
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device)
    KK = K @ K
    R = eye + a[..., None, None] * K + b[..., None, None] * KK
    V = eye + b[..., None, None] * K + c[..., None, None] * KK  # left Jacobian of SO(3)
    T = torch.zeros(xi.shape[:-1] + (4, 4), dtype=xi.dtype, device=xi.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = (V @ rho[..., None])[..., 0]
    T[..., 3, 3] = 1.0
    return T


def so3_log(R: Tensor) -> Tensor:
    """Rotation vectors of rotation matrices, robust near 0 and near pi. [..., 3, 3] -> [..., 3]"""
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    cos = ((trace - 1.0) / 2.0).clamp(-1.0, 1.0)
    skew = (
        torch.stack(
            [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], dim=-1
        )
        / 2.0
    )  # = sin(theta) * axis
    sin = skew.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    # General case: axis from the skew part.
    scale = torch.where(sin > 1e-7, theta / sin.clamp_min(1e-12), 1.0 + theta**2 / 6.0)
    phi = skew * scale[..., None]
    # Near pi the skew part vanishes: take the axis from the symmetric part (R + I) / 2 = a a^T.
    near_pi = cos < -0.999
    if near_pi.any():
        sym = (R[near_pi] + torch.eye(3, dtype=R.dtype, device=R.device)) / 2.0
        diag = torch.diagonal(sym, dim1=-2, dim2=-1)
        k = diag.argmax(dim=-1)
        col = sym[torch.arange(len(k)), :, k]
        axis = col / col[torch.arange(len(k)), k].clamp_min(1e-12).sqrt()[..., None]
        axis = torch.nn.functional.normalize(axis, dim=-1)
        # Pick the sign that agrees with the (small) skew part.
        sign = torch.where((axis * skew[near_pi]).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
        phi = phi.clone()
        phi[near_pi] = axis * sign[..., None] * theta[near_pi][..., None]
    return phi


def se3_log(T: Tensor) -> Tensor:
    """se(3) vectors ``(rho, phi)`` of 4×4 rigid transforms. [..., 4, 4] -> [..., 6]"""
    R, t = T[..., :3, :3], T[..., :3, 3]
    phi = so3_log(R)
    theta2 = (phi * phi).sum(-1)
    _, b, c = _so3_coefficients(theta2)
    K = _hat(phi)
    eye = torch.eye(3, dtype=T.dtype, device=T.device)
    V = eye + b[..., None, None] * K + c[..., None, None] * (K @ K)
    rho = torch.linalg.solve(V, t[..., None])[..., 0]
    return torch.cat([rho, phi], dim=-1)


def rotation_angle_deg(R: Tensor) -> Tensor:
    """Angle of rotation matrices in degrees, via atan2 for accuracy at small angles. [..., 3, 3] -> [...]"""
    trace = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2]
    skew = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], dim=-1
    )
    return torch.rad2deg(torch.atan2(skew.norm(dim=-1), trace - 1.0))


def pose_error(viewmat_est: Tensor, viewmat_gt: Tensor) -> tuple[Tensor, Tensor]:
    """Rotation error (degrees) and translation error (distance between camera centres, world units).

    Args:
        viewmat_est: Estimated world→camera matrices. [..., 4, 4]
        viewmat_gt: Ground-truth world→camera matrices. [..., 4, 4]

    Returns:
        ``(rot_deg [...], trans [...])``.
    """
    R_rel = viewmat_est[..., :3, :3] @ viewmat_gt[..., :3, :3].transpose(-1, -2)
    rot = rotation_angle_deg(R_rel)
    trans = (camera_centers(viewmat_est) - camera_centers(viewmat_gt)).norm(dim=-1)
    return rot, trans


def perturb_viewmat(viewmat: Tensor, angle_deg: float, translation: float = 0.0, seed: int = 0) -> Tensor:
    """Rotate a camera by exactly ``angle_deg`` about a random axis through the world origin's view.

    The rotation is applied in the camera frame about the camera centre, and the centre is moved by
    ``translation`` in a random direction. Used by the basin analysis and tests. [4, 4] -> [4, 4]
    """
    g = torch.Generator().manual_seed(seed)
    axis = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
    shift = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
    dR = so3_exp(axis * math.radians(angle_deg))
    c2w = torch.linalg.inv(viewmat.double())
    c2w_new = c2w.clone()
    c2w_new[:3, :3] = c2w[:3, :3] @ dR
    c2w_new[:3, 3] = c2w[:3, 3] + translation * shift
    return torch.linalg.inv(c2w_new).to(viewmat)
