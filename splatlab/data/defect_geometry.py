"""Defects as edits of the mesh itself, for renderers that need geometry (the Mitsuba look).

:mod:`splatlab.data.defects` applies a defect to the rays of one view, which is all the ray caster needs. A
path tracer needs the defective object as a mesh. This module builds it from the same :class:`Defect`, so a
defect drawn for a view sits at the same place in both looks:

- **Burrs**: the spikes or lump are added to the object.
- **Stains**: the faces near the stain are subdivided finely and those whose centre lies in a blob take the
  stain's colour, so the blotch keeps its irregular outline.
- **Missing**: the faces near the carving ball are subdivided, those inside the ball removed, and the crater
  is closed with the part of the ball's surface that lies inside the object. LDraw meshes are not watertight,
  so "inside" is decided by the generalized winding number (Jacobson et al. 2013), which tolerates holes.

The mask of a defective view is then the set of pixels whose visible surface (hit, depth or colour) differs
between the normal and the defective mesh (:func:`geometry_mask`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from splatlab.cameras import Cameras
from splatlab.data.defects import Defect, burr_mesh
from splatlab.data.raycast import ColoredMesh, camera_rays, first_hits, linear_to_srgb, sphere_window


def winding_number(mesh: ColoredMesh, points: np.ndarray) -> np.ndarray:
    """Generalized winding number of points with respect to a triangle soup: ≈1 inside, ≈0 outside. [P]

    Args:
        points: Query points. [P, 3]
    """
    tris = np.ascontiguousarray(mesh.vertices[mesh.faces], dtype=np.float64)  # [F, 3, 3]
    return _winding_numbers(tris, np.ascontiguousarray(points, dtype=np.float64))


@njit(cache=True)
def _winding_numbers(tris: np.ndarray, points: np.ndarray) -> np.ndarray:
    # Sum of the triangles' signed solid angles (Van Oosterom & Strackee) over 4π.
    out = np.empty(len(points))
    for p in range(len(points)):
        total = 0.0
        for f in range(len(tris)):
            ax, ay, az = (
                tris[f, 0, 0] - points[p, 0],
                tris[f, 0, 1] - points[p, 1],
                tris[f, 0, 2] - points[p, 2],
            )
            bx, by, bz = (
                tris[f, 1, 0] - points[p, 0],
                tris[f, 1, 1] - points[p, 1],
                tris[f, 1, 2] - points[p, 2],
            )
            cx, cy, cz = (
                tris[f, 2, 0] - points[p, 0],
                tris[f, 2, 1] - points[p, 1],
                tris[f, 2, 2] - points[p, 2],
            )
            la = np.sqrt(ax * ax + ay * ay + az * az)
            lb = np.sqrt(bx * bx + by * by + bz * bz)
            lc = np.sqrt(cx * cx + cy * cy + cz * cz)
            det = ax * (by * cz - bz * cy) - ay * (bx * cz - bz * cx) + az * (bx * cy - by * cx)
            den = (
                la * lb * lc
                + (ax * bx + ay * by + az * bz) * lc
                + (bx * cx + by * cy + bz * cz) * la
                + (cx * ax + cy * ay + cz * az) * lb
            )
            total += 2.0 * np.arctan2(det, den)
        out[p] = total / (4.0 * np.pi)
    return out


def refine_near(mesh: ColoredMesh, center: np.ndarray, radius: float, max_edge: float) -> ColoredMesh:
    """The surface with the faces within ``radius`` of ``center`` split until no edge exceeds ``max_edge``.

    New vertices take normals interpolated over their original face, so smooth shading is unchanged.
    """
    import trimesh

    tris = mesh.vertices[mesh.faces]
    closest = trimesh.triangles.closest_point(tris, np.broadcast_to(center, (len(tris), 3)))
    near = np.linalg.norm(closest - center, axis=1) < radius
    if not near.any():
        return mesh
    v, f, src = trimesh.remesh.subdivide_to_size(
        mesh.vertices, mesh.faces[near], max_edge, max_iter=16, return_index=True
    )
    src_face = np.flatnonzero(near)[src]  # original face of each new face
    corners = mesh.vertices[mesh.faces[src_face]]  # [f, 3, 3]
    bary = trimesh.triangles.points_to_barycentric(
        np.repeat(corners, 3, axis=0), v[f].reshape(-1, 3)
    ).reshape(-1, 3, 3)  # [f, corner, weight]
    n = np.einsum("fkw,fwj->fkj", bary, mesh.vertex_normals[mesh.faces[src_face]]).reshape(-1, 3)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    keep = np.flatnonzero(~near)
    base = len(mesh.vertices)
    return ColoredMesh(
        np.concatenate([mesh.vertices, v[f].reshape(-1, 3)]),
        np.concatenate([mesh.faces[keep], base + np.arange(3 * len(f)).reshape(-1, 3)]),
        np.concatenate([mesh.face_colors[keep], mesh.face_colors[src_face]]),
        np.concatenate([mesh.vertex_normals, n]),
    )


def defective_mesh(defect: Defect, mesh: ColoredMesh, detail: int = 24) -> ColoredMesh:
    """The object with ``defect`` built into its geometry and colours.

    Args:
        detail: Faces near the defect are split to edges of at most ``radius / detail``.
    """
    r = defect.radius
    if defect.kind == "Burrs":
        burr = burr_mesh(defect)
        return _concatenate(mesh, burr)
    if defect.kind == "Stains":
        return _stain_mesh(defect, refine_near(mesh, defect.center, 1.6 * r, r / detail))
    fine = refine_near(mesh, defect.params["sphere_center"], 1.05 * r, r / detail)
    return _carve(defect, fine, inside_of=mesh)


def _concatenate(a: ColoredMesh, b: ColoredMesh) -> ColoredMesh:
    return ColoredMesh(
        np.concatenate([a.vertices, b.vertices]),
        np.concatenate([a.faces, b.faces + len(a.vertices)]),
        np.concatenate([a.face_colors, b.face_colors]),
        np.concatenate([a.vertex_normals, b.vertex_normals]),
    )


def _stain_mesh(defect: Defect, mesh: ColoredMesh) -> ColoredMesh:
    """Faces whose centre passes the ray caster's stain test take the stain's colour."""
    p = defect.params
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    rel = centroids - defect.center
    near = np.abs(rel @ defect.normal) < 0.6 * defect.radius
    near &= mesh.face_normals @ defect.normal > 0.2  # not the other side of a thin part
    d = np.linalg.norm(centroids[:, None] - p["blob_centers"][None], axis=-1) / p["blob_radii"][None]
    inside = near & (d < 1.0).any(axis=1)
    a = p["opacity"]
    albedo = mesh.albedo_linear.copy()
    albedo[inside] = (1 - a) * albedo[inside] + a * p["color_linear"]
    colors = mesh.face_colors.copy()
    colors[inside] = linear_to_srgb(albedo[inside])
    return ColoredMesh(mesh.vertices, mesh.faces, colors, mesh.vertex_normals)


def _carve(defect: Defect, mesh: ColoredMesh, inside_of: ColoredMesh, sphere_detail: int = 4) -> ColoredMesh:
    """Remove the faces inside the ball and close the crater with the ball's wall inside the object.

    ``inside_of`` is the same surface with fewer faces (before refinement), for the winding numbers.
    """
    import trimesh

    c, r = defect.params["sphere_center"], defect.radius
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    kept = np.linalg.norm(centroids - c, axis=1) >= r
    removed = np.flatnonzero(~kept)
    ball = trimesh.creation.icosphere(subdivisions=sphere_detail, radius=r)
    bv = np.asarray(ball.vertices) + c
    bf = np.asarray(ball.faces)[:, ::-1]  # inward-facing: the wall is seen from inside the ball
    wall = winding_number(inside_of, bv[bf].mean(axis=1)) > 0.5
    # The wall shows the material's inside: the colour of the carved surface nearest the centre, darkened.
    if len(removed):
        nearest = removed[np.argmin(np.linalg.norm(centroids[removed] - defect.center, axis=1))]
    else:
        nearest = int(np.argmin(np.linalg.norm(centroids - defect.center, axis=1)))
    wall_color = linear_to_srgb(0.8 * mesh.albedo_linear[nearest])
    base = len(mesh.vertices)
    return ColoredMesh(
        np.concatenate([mesh.vertices, bv]),
        np.concatenate([mesh.faces[kept], bf[wall] + base]),
        np.concatenate([mesh.face_colors[kept], np.tile(wall_color, (int(wall.sum()), 1))]),
        np.concatenate([mesh.vertex_normals, (c - bv) / r]),
    )


def geometry_mask(
    good: ColoredMesh, bad: ColoredMesh, cameras: Cameras, index: int, supersample: int, coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose visible surface differs between two meshes, and the defective object's coverage.

    A sample differs where one mesh is hit and the other not, or the depth or the colour of the first hit
    differs. A pixel is in the mask when at least ``coverage`` of its ``supersample²`` samples differ.

    Returns:
        ``(mask [H, W] bool, alpha [H, W] coverage of ``bad``)``.
    """
    H, W, s = cameras.height, cameras.width, supersample
    windows = [sphere_window(cameras, index, m.center, m.bound) for m in (good, bad)]
    y0, y1 = min(w[0] for w in windows), max(w[1] for w in windows)
    x0, x1 = min(w[2] for w in windows), max(w[3] for w in windows)
    mask, alpha = np.zeros((H, W), dtype=bool), np.zeros((H, W))
    if y1 <= y0 or x1 <= x0:
        return mask, alpha
    o, d = (a.reshape(-1, 3) for a in camera_rays(cameras, index, s, (y0, y1, x0, x1)))
    hg, _ = first_hits(good, o, d)
    hb, _ = first_hits(bad, o, d)
    both = hg.hit & hb.hit
    moved = np.zeros(len(o), dtype=bool)
    moved[both] = np.abs(hg.t[both] - hb.t[both]) > 1e-5
    recolored = np.abs(hg.albedo - hb.albedo).max(axis=1) > 1e-6
    changed = (hg.hit != hb.hit) | moved | (both & recolored)
    h, w = y1 - y0, x1 - x0
    mask[y0:y1, x0:x1] = changed.reshape(h, s, w, s).mean(axis=(1, 3)) >= coverage
    alpha[y0:y1, x0:x1] = hb.hit.reshape(h, s, w, s).mean(axis=(1, 3))
    return mask, alpha
