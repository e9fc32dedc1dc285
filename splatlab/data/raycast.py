"""Ray casting of coloured triangle meshes with splatlab's OpenCV cameras (trimesh + embreex).

The generator renders with this module: Lambert plus ambient shading under one light fixed in the world,
linear-light shading converted to sRGB, a white background and supersampling for anti-aliasing.

Rays are built here from :class:`splatlab.cameras.Cameras` (pixel centres at +0.5, rows top-down), so image
row ``v`` is the camera's +y (down) direction; no flip is needed afterwards. The convention test in
``tests/test_data_make.py`` projects mesh vertices with the same cameras to guard this.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from splatlab.cameras import Cameras

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------------


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] to linear light. [..., 3]"""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] to sRGB values. [..., 3]"""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


# ----------------------------------------------------------------------------------------------------------
# Meshes
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadingConfig:
    """The fixed lighting of every render."""

    light_dir: tuple[float, float, float] = (0.45, -0.35, 0.82)  # direction towards the light, world (z up)
    ambient: float = 0.38  # ambient term, times the albedo
    diffuse: float = 0.72  # Lambert term, times the albedo and max(0, n·l)
    background: float = 1.0  # background grey level (1 = white)


class ColoredMesh:
    """A triangle mesh with per-face sRGB colours and smooth vertex normals, centred and scaled to radius 1.

    Args:
        vertices: Vertex positions, already normalised. [V, 3]
        faces: Vertex indices of the triangles. [F, 3]
        face_colors: sRGB colours in [0, 1]. [F, 3]
        vertex_normals: Unit normals used for smooth shading. [V, 3]
    """

    def __init__(self, vertices, faces, face_colors, vertex_normals) -> None:
        import trimesh

        self.vertices = np.asarray(vertices, dtype=np.float64)
        self.faces = np.asarray(faces, dtype=np.int64)
        self.face_colors = np.asarray(face_colors, dtype=np.float64)
        self.vertex_normals = np.asarray(vertex_normals, dtype=np.float64)
        assert self.vertices.ndim == 2 and self.vertices.shape[1] == 3
        assert self.faces.ndim == 2 and self.faces.shape[1] == 3
        assert self.face_colors.shape == (len(self.faces), 3)
        assert self.vertex_normals.shape == self.vertices.shape
        self.trimesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        self.face_normals = np.asarray(self.trimesh.face_normals, dtype=np.float64)
        self.albedo_linear = srgb_to_linear(self.face_colors)
        self.center = 0.5 * (self.vertices.min(0) + self.vertices.max(0))  # bounding sphere, to skip rays
        self.bound = float(np.linalg.norm(self.vertices - self.center, axis=1).max()) * 1.001 + 1e-9
        self.intersector = make_intersector(self.trimesh)

    def __len__(self) -> int:
        return len(self.faces)


def make_intersector(mesh):
    """trimesh's Embree intersector, or its pure-Python one (much slower) when embreex is missing."""
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector

        return RayMeshIntersector(mesh)
    except Exception:  # embreex missing or broken
        from trimesh.ray.ray_triangle import RayMeshIntersector

        log.warning("embreex is not available; ray casting falls back to trimesh's slower intersector")
        return RayMeshIntersector(mesh)


def _face_colors_of(mesh) -> np.ndarray:
    """sRGB face colours in [0, 1] of a trimesh mesh, from face colours or a material's base colour. [F, 3]"""
    visual = mesh.visual
    if visual.kind == "face" or visual.kind == "vertex":
        return np.asarray(visual.face_colors[:, :3], dtype=np.float64) / 255.0
    material = getattr(visual, "material", None)
    base = getattr(material, "baseColorFactor", None)
    if base is None:
        base = getattr(material, "main_color", None)
    if base is None:
        return np.full((len(mesh.faces), 3), 0.6)
    base = np.asarray(base, dtype=np.float64)[:3]
    base = base / 255.0 if base.max() > 1.0 else base
    return np.tile(base, (len(mesh.faces), 1))


def load_mesh(path: str | Path, up_axis: str = "z") -> ColoredMesh:
    """Load any trimesh-readable mesh (PLY/GLB/OBJ…), centre it, scale it to radius 1 and orient it outward.

    Args:
        path: The mesh file.
        up_axis: The file's up axis, "z" (splatlab's world) or "y" (glTF); y-up files are turned z-up.

    Returns:
        The mesh, with the bounding-box centre at the origin and the farthest vertex at distance 1.
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mesh file not found")
    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:
        raise ValueError(f"{path}: trimesh cannot read this mesh ({exc})") from exc
    if isinstance(loaded, trimesh.Scene):
        parts = []
        for node in loaded.graph.nodes_geometry:
            transform, name = loaded.graph[node]
            geom = loaded.geometry[name].copy()
            colors = _face_colors_of(loaded.geometry[name])
            geom.apply_transform(transform)
            parts.append((geom, colors))
    else:
        parts = [(loaded, _face_colors_of(loaded))]
    parts = [(g, c) for g, c in parts if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not parts:
        raise ValueError(f"{path}: the file holds no triangles")
    vertices, faces, colors, normals, offset = [], [], [], [], 0
    for geom, col in parts:
        vertices.append(np.asarray(geom.vertices, dtype=np.float64))
        faces.append(np.asarray(geom.faces, dtype=np.int64) + offset)
        colors.append(col)
        normals.append(np.asarray(geom.vertex_normals, dtype=np.float64))
        offset += len(geom.vertices)
    v, f, c, n = map(np.concatenate, (vertices, faces, colors, normals))
    if up_axis == "y":  # (x, y, z) -> (x, -z, y): glTF's +y becomes +z
        rot = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
        v, n = v @ rot.T, n @ rot.T
    elif up_axis != "z":
        raise ValueError(f"up_axis must be 'z' or 'y', got {up_axis!r}")
    v = v - 0.5 * (v.min(0) + v.max(0))
    v = v / np.linalg.norm(v, axis=1).max()
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    mesh = ColoredMesh(v, f, c, n)
    return orient_outward(mesh)


def orient_outward(mesh: ColoredMesh, n_rays: int = 4096, seed: int = 0) -> ColoredMesh:
    """Flip all faces if rays from outside mostly hit back faces (the winding then points inward)."""
    g = np.random.default_rng(seed)
    eye = g.normal(size=(n_rays, 3))
    eye = 3.0 * eye / np.linalg.norm(eye, axis=1, keepdims=True)
    target = g.uniform(-0.3, 0.3, size=(n_rays, 3))
    d = target - eye
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    tri, ray, _ = mesh.intersector.intersects_id(eye, d, multiple_hits=False, return_locations=True)
    if len(tri) == 0:
        return mesh
    facing = np.einsum("ij,ij->i", mesh.face_normals[tri], d[ray])
    if np.mean(facing > 0) > 0.5:
        return ColoredMesh(mesh.vertices, mesh.faces[:, ::-1], mesh.face_colors, -mesh.vertex_normals)
    return mesh


# ----------------------------------------------------------------------------------------------------------
# Rays and hits
# ----------------------------------------------------------------------------------------------------------


def sphere_window(
    cameras: Cameras, index: int, center: np.ndarray, radius: float
) -> tuple[int, int, int, int]:
    """Pixel window ``(y0, y1, x0, x1)`` that holds a ball's whole image (exact tangent bounds, 1 px margin).

    Rays outside it cannot hit the ball. The whole image when the ball reaches behind the camera.
    """
    W, H = cameras.width, cameras.height
    viewmat = cameras.viewmats[index].detach().cpu().double().numpy()
    K = cameras.Ks[index].detach().cpu().double().numpy()
    c = viewmat[:3, :3] @ np.asarray(center, dtype=np.float64) + viewmat[:3, 3]  # camera coordinates

    def extent(a: float, f: float, c0: float, size: int) -> tuple[int, int]:
        # Planes through the camera centre tangent to the ball bound its image along one image axis.
        dist = math.hypot(a, c[2])
        if dist <= radius or c[2] <= 0:
            return 0, size
        theta, alpha = math.atan2(a, c[2]), math.asin(radius / dist)
        if theta - alpha <= -0.5 * math.pi + 1e-6 or theta + alpha >= 0.5 * math.pi - 1e-6:
            return 0, size
        lo, hi = f * math.tan(theta - alpha) + c0, f * math.tan(theta + alpha) + c0
        return int(np.clip(math.floor(lo) - 1, 0, size)), int(np.clip(math.ceil(hi) + 1, 0, size))

    x0, x1 = extent(c[0], K[0, 0], K[0, 2], W)
    y0, y1 = extent(c[1], K[1, 1], K[1, 2], H)
    return y0, y1, x0, x1


def camera_rays(
    cameras: Cameras, index: int, supersample: int = 1, window: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """World-space rays through ``supersample²`` stratified points of every pixel of one camera.

    Args:
        window: Optional pixel window ``(y0, y1, x0, x1)``; only its pixels get rays.

    Returns:
        ``(origins [h*s, w*s, 3], directions [h*s, w*s, 3])``, unit directions, rows top-down (+y down); h, w
        are the window's (the image's by default).
    """
    s = int(supersample)
    y0, y1, x0, x1 = window if window is not None else (0, cameras.height, 0, cameras.width)
    viewmat = cameras.viewmats[index].detach().cpu().double().numpy()
    K = cameras.Ks[index].detach().cpu().double().numpy()
    u = x0 + (np.arange((x1 - x0) * s) + 0.5) / s  # pixel coordinates of the samples; pixel centres at +0.5
    v = y0 + (np.arange((y1 - y0) * s) + 0.5) / s
    uu, vv = np.meshgrid(u, v, indexing="xy")
    x = (uu - K[0, 2]) / K[0, 0]
    y = (vv - K[1, 2]) / K[1, 1]
    d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
    R, t = viewmat[:3, :3], viewmat[:3, 3]
    d = d_cam @ R  # = (R^T d_cam^T)^T: camera -> world
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = np.broadcast_to(-R.T @ t, d.shape).copy()
    return o, d


def paste(crop: np.ndarray, window: tuple[int, int, int, int], H: int, W: int, fill: float) -> np.ndarray:
    """Put a window's pixels into a full image filled with ``fill``. [h, w, ...] -> [H, W, ...]"""
    y0, y1, x0, x1 = window
    full = np.full((H, W) + crop.shape[2:], fill, dtype=crop.dtype)
    full[y0:y1, x0:x1] = crop
    return full


@dataclass
class Hits:
    """First hits of a flat batch of R rays (``hit`` false: background).

    Args:
        hit: Whether the ray hit the object. [R]
        t: Distance along the ray (inf where missed). [R]
        points: Hit points. [R, 3]
        normals: Unit shading normals, facing the ray origin. [R, 3]
        albedo: Linear-light albedo. [R, 3]
        changed: Samples a defect changed (used for masks). [R]
    """

    hit: np.ndarray
    t: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    albedo: np.ndarray
    changed: np.ndarray

    def copy(self) -> Hits:
        return Hits(
            *(a.copy() for a in (self.hit, self.t, self.points, self.normals, self.albedo, self.changed))
        )


def first_hits(mesh: ColoredMesh, origins: np.ndarray, dirs: np.ndarray) -> tuple[Hits, np.ndarray]:
    """Cast rays at a mesh and return the shading inputs of the nearest hits plus the hit face ids.

    Args:
        origins: Ray origins. [R, 3]
        dirs: Unit ray directions. [R, 3]

    Returns:
        ``(hits, face [R])`` with face = -1 where a ray missed.
    """
    R = len(origins)
    oc = mesh.center - origins
    along = np.einsum("ij,ij->i", oc, dirs)
    near = np.flatnonzero(np.einsum("ij,ij->i", oc, oc) - along**2 < mesh.bound**2)  # rays meeting the sphere
    tri, ray, loc = mesh.intersector.intersects_id(
        origins[near], dirs[near], multiple_hits=False, return_locations=True
    )
    ray = near[ray]
    face = np.full(R, -1, dtype=np.int64)
    face[ray] = tri
    hits = Hits(
        hit=face >= 0,
        t=np.full(R, np.inf),
        points=np.zeros((R, 3)),
        normals=np.zeros((R, 3)),
        albedo=np.zeros((R, 3)),
        changed=np.zeros(R, dtype=bool),
    )
    if len(tri):
        hits.points[ray] = loc
        hits.t[ray] = np.einsum("ij,ij->i", loc - origins[ray], dirs[ray])
        hits.normals[ray] = smooth_normals(mesh, tri, loc, dirs[ray])
        hits.albedo[ray] = mesh.albedo_linear[tri]
    return hits, face


def smooth_normals(mesh: ColoredMesh, tri: np.ndarray, points: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Barycentric interpolation of vertex normals, turned to face the viewer (two-sided). [R, 3]"""
    import trimesh

    corners = mesh.vertices[mesh.faces[tri]]
    bary = trimesh.triangles.points_to_barycentric(corners, points)
    n = np.einsum("rk,rkj->rj", bary, mesh.vertex_normals[mesh.faces[tri]])
    bad = ~np.isfinite(n).all(1) | (np.linalg.norm(n, axis=1) < 1e-6)
    n[bad] = mesh.face_normals[tri[bad]]
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    flip = np.einsum("ij,ij->i", n, dirs) > 0
    n[flip] *= -1.0
    return n


def shade(hits: Hits, shading: ShadingConfig) -> np.ndarray:
    """Lambert plus ambient in linear light, background where missed. [R, 3] linear"""
    light = np.asarray(shading.light_dir, dtype=np.float64)
    light = light / np.linalg.norm(light)
    lambert = np.clip(hits.normals @ light, 0.0, None)
    rgb = hits.albedo * (shading.ambient + shading.diffuse * lambert)[:, None]
    bg = srgb_to_linear(np.full(3, shading.background))
    return np.where(hits.hit[:, None], rgb, bg)


def resolve(rgb_linear: np.ndarray, hit: np.ndarray, H: int, W: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Average the ``s×s`` samples of each pixel in linear light (box filter) and convert to sRGB.

    Args:
        rgb_linear: Shaded samples, rows top-down. [H*s*W*s, 3]
        hit: Sample coverage. [H*s*W*s]

    Returns:
        ``(image [H, W, 3] sRGB float in [0, 1], alpha [H, W] coverage in [0, 1])``.
    """
    rgb = rgb_linear.reshape(H, s, W, s, 3).mean(axis=(1, 3))
    alpha = hit.reshape(H, s, W, s).mean(axis=(1, 3))
    return linear_to_srgb(rgb), alpha


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to uint8 with rounding. [H, W, C]"""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
