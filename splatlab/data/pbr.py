"""The physically based look of LEGO-MAD: Mitsuba 3 path tracing of rough ABS plastic.

The ray caster (:mod:`splatlab.data.raycast`) is the clean control: Lambert plus ambient under one light.
This look renders the same meshes and cameras with Mitsuba 3 (``scalar_rgb``, multi-threaded over image
blocks) and adds what breaks pose-agnostic detection in practice:

- ABS as a rough dielectric coating over the part's colour (``roughplastic``, GGX), so highlights move with
  the view; one material per colour of the part.
- Soft self-shadowing from an area key light plus a uniform environment light.
- Optionally a different key light for the test views (direction, intensity, colour temperature), sensor
  noise, and exposure and white-balance jitter per image.

The object is rendered with an alpha channel and composited on the white background in linear light, so the
background stays white as in MAD; exposure, white balance and noise apply to the object's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from splatlab.cameras import Cameras
from splatlab.data.raycast import ColoredMesh, linear_to_srgb


@dataclass(frozen=True)
class Lighting:
    """A key area light plus a uniform environment, in the world frame (z up, object radius 1)."""

    direction: tuple[float, float, float] = (0.45, -0.35, 0.82)  # towards the key light (the clean look's)
    strength: float = 0.85  # key irradiance at the object, as the Lambert factor it gives a white surface
    size: float = 2.5  # side of the square key light at distance 6: larger gives softer shadows
    kelvin: float = 6500.0  # colour temperature of the key light (6500 K = white)
    environment: float = 0.32  # radiance of the uniform environment light (ambient fill)


@dataclass(frozen=True)
class RealismConfig:
    """Material, lighting and camera effects of the physically based look."""

    roughness: float = 0.12  # GGX alpha of the plastic's coating: ~0.02 mirror-like, ~0.5 matte
    ior: float = 1.54  # refractive index of ABS
    spp: int = 64  # path-traced samples per pixel
    max_depth: int = 5  # longest light path (bounces + 1)
    light: Lighting = field(default_factory=Lighting)  # the lighting of the training views
    test_light_rotation_deg: float = 0.0  # the test views' key light turned about the world z axis by this
    test_light_strength: float = 1.0  # ... its strength times this
    test_light_kelvin: float = 6500.0  # ... and this colour temperature
    noise: float = 0.0  # sensor noise: std of the signal at full scale (shot noise ∝ sqrt, plus a floor)
    exposure_jitter: float = 0.0  # std of the log exposure, drawn per image
    white_balance_jitter: float = 0.0  # std of the log gain of red and blue against green, per image

    def test_lighting(self) -> Lighting:
        """The lighting of the test views: the training lighting changed as configured."""
        a = math.radians(self.test_light_rotation_deg)
        x, y, z = self.light.direction
        turned = (x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a), z)
        return replace(
            self.light,
            direction=turned,
            strength=self.light.strength * self.test_light_strength,
            kelvin=self.test_light_kelvin,
        )


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """Linear RGB tint of a black body at ``kelvin``: 1 at 6500 K, mean 1. [3]

    Planck's law at the primaries' dominant wavelengths (610 / 550 / 465 nm), relative to 6500 K.
    """
    if not (math.isfinite(kelvin) and kelvin > 0):
        raise ValueError(f"colour temperature must be a positive number of kelvin, got {kelvin}")
    lam = np.array([610e-9, 550e-9, 465e-9])
    c2 = 1.4388e-2  # second radiation constant h·c/k, m·K

    def planck(t: float) -> np.ndarray:
        return lam**-5 / np.expm1(c2 / (lam * t))

    rgb = planck(kelvin) / planck(6500.0)
    return rgb / rgb.mean()


def _mitsuba():
    """The mitsuba module with an RGB variant set (scalar_rgb unless an RGB variant is already active)."""
    try:
        import mitsuba as mi
    except ImportError as exc:  # pragma: no cover - mitsuba is a dependency
        raise ImportError("the realistic look needs Mitsuba 3: pip install mitsuba") from exc
    if mi.variant() is None or not mi.variant().endswith("_rgb"):
        mi.set_variant("scalar_rgb")
        mi.set_log_level(mi.LogLevel.Warn)
    return mi


class PBRScene:
    """One object under one lighting, ready to render from any camera.

    Args:
        mesh: The object (normalised to radius 1); one plastic material per distinct face colour.
        cfg: Material and render settings.
        lighting: The lights.
        name: Used in error messages (e.g. the mesh file).
    """

    def __init__(self, mesh: ColoredMesh, cfg: RealismConfig, lighting: Lighting, name: str = "mesh") -> None:
        mi = _mitsuba()
        self.cfg = cfg
        colors, label = np.unique(mesh.albedo_linear, axis=0, return_inverse=True)
        label = label.reshape(-1)
        scene: dict = {
            "type": "scene",
            "integrator": {"type": "path", "max_depth": int(cfg.max_depth), "hide_emitters": True},
        }
        try:
            for k, color in enumerate(colors):
                scene[f"part{k}"] = self._submesh(mi, mesh, np.flatnonzero(label == k), color, f"part{k}")
            scene.update(self._lights(mi, lighting))
            self.scene = mi.load_dict(scene)
        except RuntimeError as exc:
            raise ValueError(f"{name}: Mitsuba cannot build this mesh's scene ({exc})") from exc

    def _submesh(self, mi, mesh: ColoredMesh, faces: np.ndarray, color: np.ndarray, name: str):
        f = mesh.faces[faces]
        used, local = np.unique(f.reshape(-1), return_inverse=True)
        props = mi.Properties()
        props["bsdf"] = mi.load_dict(
            {
                "type": "roughplastic",
                "distribution": "ggx",
                "alpha": float(self.cfg.roughness),
                "int_ior": float(self.cfg.ior),
                "diffuse_reflectance": {"type": "rgb", "value": [float(x) for x in np.clip(color, 0, 1)]},
            }
        )
        m = mi.Mesh(name, len(used), len(f), props=props, has_vertex_normals=True, has_vertex_texcoords=False)
        params = mi.traverse(m)
        params["vertex_positions"] = mesh.vertices[used].astype(np.float32).reshape(-1)
        params["faces"] = local.astype(np.uint32)
        params["vertex_normals"] = mesh.vertex_normals[used].astype(np.float32).reshape(-1)
        params.update()
        return m

    @staticmethod
    def _lights(mi, lighting: Lighting) -> dict:
        d = np.asarray(lighting.direction, dtype=np.float64)
        d = d / np.linalg.norm(d)
        distance, half = 6.0, 0.5 * lighting.size
        # Radiance L of a square of area A at distance D gives irradiance ≈ L·A/D² = π·strength.
        radiance = math.pi * lighting.strength * distance**2 / (4.0 * half * half)
        up = [0.0, 0.0, 1.0] if abs(d[2]) < 0.95 else [0.0, 1.0, 0.0]
        to_world = mi.ScalarTransform4f().look_at(origin=(distance * d).tolist(), target=[0, 0, 0], up=up)
        tint = kelvin_to_rgb(lighting.kelvin)
        return {
            "key": {
                "type": "rectangle",
                "to_world": to_world @ mi.ScalarTransform4f().scale([half, half, 1.0]),
                "emitter": {"type": "area", "radiance": {"type": "rgb", "value": (radiance * tint).tolist()}},
            },
            "environment": {
                "type": "constant",
                "radiance": {"type": "rgb", "value": [lighting.environment] * 3},
            },
        }

    def render(self, cameras: Cameras, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Path-trace one camera.

        Returns:
            ``(radiance [H, W, 3] linear, premultiplied by coverage, alpha [H, W] coverage)``.
        """
        image = self.render_channels(cameras, index, seed)
        return image[..., :3], np.clip(image[..., 3], 0.0, 1.0)

    def render_channels(self, cameras: Cameras, index: int, seed: int, integrator=None) -> np.ndarray:
        """Render one camera with the scene's path tracer or another Mitsuba integrator (e.g. ``aov``).

        Returns:
            The film's channels, box-filtered over ``cfg.spp`` samples per pixel. [H, W, channels]
        """
        mi = _mitsuba()
        W, H = cameras.width, cameras.height
        K = cameras.Ks[index].detach().cpu().double().numpy()
        c2w = np.linalg.inv(cameras.viewmats[index].detach().cpu().double().numpy())
        # OpenCV camera (+x right, +y down, +z forward) -> Mitsuba's (+x left, +y up, +z forward).
        c2w = c2w @ np.diag([-1.0, -1.0, 1.0, 1.0])
        sensor = mi.load_dict(
            {
                "type": "perspective",
                "fov": math.degrees(2.0 * math.atan(0.5 * W / K[0, 0])),
                "fov_axis": "x",
                # Mitsuba measures the offset in film widths/heights, along its own (flipped) axes.
                "principal_point_offset_x": float(-(K[0, 2] - 0.5 * W) / W),
                "principal_point_offset_y": float(-(K[1, 2] - 0.5 * H) / H),
                "to_world": mi.ScalarTransform4f(c2w.tolist()),
                "film": {
                    "type": "hdrfilm",
                    "width": W,
                    "height": H,
                    "pixel_format": "rgba",
                    "rfilter": {"type": "box"},  # the same pixel footprint as the ray caster's masks
                },
                "sampler": {"type": "independent", "sample_count": int(self.cfg.spp)},
            }
        )
        image = mi.render(
            self.scene, sensor=sensor, integrator=integrator, spp=int(self.cfg.spp), seed=int(seed)
        )
        return np.array(image, dtype=np.float64)


def develop(
    radiance: np.ndarray,
    alpha: np.ndarray,
    cfg: RealismConfig,
    rng: np.random.Generator,
    background: float = 1.0,
) -> np.ndarray:
    """The camera: exposure and white balance jitter, sensor noise, compositing on white, sRGB.

    Args:
        radiance: Linear object radiance, premultiplied by coverage. [H, W, 3]
        alpha: Object coverage. [H, W]
        rng: Draws this image's exposure, white balance and noise.
        background: The background's linear grey level.

    Returns:
        The sRGB image in [0, 1]. [H, W, 3]
    """
    gain = math.exp(rng.normal(0.0, cfg.exposure_jitter)) if cfg.exposure_jitter > 0 else 1.0
    wb = np.ones(3)
    if cfg.white_balance_jitter > 0:
        wb[[0, 2]] = np.exp(rng.normal(0.0, cfg.white_balance_jitter, 2))
    rgb = radiance * gain * wb
    if cfg.noise > 0:  # shot noise (variance ∝ signal) plus a read-noise floor, on the object only
        sigma = cfg.noise * np.sqrt(np.clip(rgb, 0.0, None) + 0.05)
        rgb = rgb + alpha[..., None] * sigma * rng.standard_normal(rgb.shape)
    return linear_to_srgb(rgb + (1.0 - alpha[..., None]) * background)
