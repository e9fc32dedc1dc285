"""Synthetic surface defects for the LEGO-MAD generator: Burrs, Missing and Stains, like MAD's three types.

A defect is placed at a visible surface point of a test view (a hit of that view's rays) and applied to the
same rays, so the normal and the defective render share one pose and the mask is the set of pixels the
defect changes. Sizes are in object radii (the mesh is scaled to radius 1).

- **Burrs**: a few small spikes or a lump of extra material in the local surface colour.
- **Missing**: a spherical chunk carved out of the object; the cut shows the material inside.
- **Stains**: an irregular colour blotch on the surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from splatlab.data.mad import DEFECT_TYPES
from splatlab.data.raycast import (
    ColoredMesh,
    Hits,
    first_hits,
    linear_to_srgb,
    smooth_normals,
    srgb_to_linear,
)

# Stain colours (sRGB); the one farthest from the surface colour is used.
_STAIN_PALETTE = np.array(
    [
        [0.24, 0.14, 0.07],  # dark brown (oil, dirt)
        [0.12, 0.12, 0.14],  # near black
        [0.62, 0.10, 0.08],  # red
        [0.10, 0.28, 0.62],  # blue ink
        [0.93, 0.90, 0.80],  # pale paint
    ]
)


@dataclass(frozen=True)
class DefectConfig:
    """Sizes and acceptance of synthetic defects."""

    radius_range: tuple[float, float] = (0.07, 0.15)  # defect radius in object radii (MAD: small to a few %)
    min_view_cos: float = 0.4  # the defect spot must face the camera at least this much (cos of the angle)
    min_mask_fraction: float = 0.004  # discard a view whose mask is below this fraction of the silhouette
    min_mask_pixels: int = 3  # ... or below this many pixels
    mask_coverage: float = 0.5  # a pixel is anomalous when at least this fraction of its samples changed
    max_tries: int = 12  # attempts (new pose and spot) before giving up on one test image


@dataclass(frozen=True)
class Defect:
    """One defect instance in world coordinates.

    Args:
        kind: "Burrs", "Missing" or "Stains".
        center: Surface point where it sits. [3]
        normal: Surface normal there, towards the camera that chose it. [3]
        radius: Size in object radii.
        params: Type-specific parameters (blob centres, spike tips, colours…).
    """

    kind: str
    center: np.ndarray
    normal: np.ndarray
    radius: float
    params: dict = field(default_factory=dict)


def _tangents(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to the unit vector ``n`` and to each other. ([3], [3])"""
    a = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    t1 = np.cross(n, a)
    t1 /= np.linalg.norm(t1)
    return t1, np.cross(n, t1)


def sample_defect(
    kind: str, hits: Hits, dirs: np.ndarray, rng: np.random.Generator, cfg: DefectConfig
) -> Defect | None:
    """Pick a visible surface spot among a view's hits and draw a defect of type ``kind`` there.

    Args:
        kind: One of :data:`DEFECT_TYPES`.
        hits: The normal render's first hits of the view's rays. [R]
        dirs: The rays' unit directions. [R, 3]

    Returns:
        The defect, or None when no sample faces the camera enough.
    """
    if kind not in DEFECT_TYPES:
        raise ValueError(f"kind must be one of {DEFECT_TYPES}, got {kind!r}")
    facing = -np.einsum("ij,ij->i", hits.normals, dirs)
    candidates = np.flatnonzero(hits.hit & (facing > cfg.min_view_cos))
    if len(candidates) == 0:
        return None
    i = int(rng.choice(candidates))
    p0, n0 = hits.points[i].copy(), hits.normals[i].copy()
    r = float(rng.uniform(*cfg.radius_range))
    t1, t2 = _tangents(n0)
    params: dict = {}
    if kind == "Stains":
        k = int(rng.integers(3, 6))
        ang = rng.uniform(0, 2 * np.pi, k)
        dist = rng.uniform(0.0, 0.55, k) * r
        params["blob_centers"] = p0 + dist[:, None] * (np.cos(ang)[:, None] * t1 + np.sin(ang)[:, None] * t2)
        params["blob_radii"] = rng.uniform(0.35, 0.6, k) * r
        base = np.sqrt(np.clip(hits.albedo[i], 0, 1))  # rough perceptual distance in a gamma-ish space
        dist_col = np.linalg.norm(np.sqrt(srgb_to_linear(_STAIN_PALETTE)) - base, axis=1)
        top = np.argsort(-dist_col)[:2]
        params["color_linear"] = srgb_to_linear(_STAIN_PALETTE[int(rng.choice(top))])
        params["opacity"] = float(rng.uniform(0.8, 0.95))
    elif kind == "Burrs":
        params["albedo"] = hits.albedo[i].copy()
        params["lump"] = bool(rng.random() < 0.3)
        n_spikes = 1 if params["lump"] else int(rng.integers(1, 4))
        spikes = []
        for _ in range(n_spikes):
            ang = rng.uniform(0, 2 * np.pi)
            off = rng.uniform(0.0, 0.5) * r * (np.cos(ang) * t1 + np.sin(ang) * t2)
            tilt = rng.normal(scale=0.35, size=2)
            axis = n0 + tilt[0] * t1 + tilt[1] * t2
            axis /= np.linalg.norm(axis)
            spikes.append((p0 + off, axis, rng.uniform(0.35, 0.6) * r, rng.uniform(1.0, 2.0) * r))
        params["spikes"] = spikes
    else:  # Missing
        depth = rng.uniform(0.15, 0.45)
        params["sphere_center"] = p0 - depth * r * n0
    return Defect(kind=kind, center=p0, normal=n0, radius=r, params=params)


def apply_defect(
    defect: Defect, mesh: ColoredMesh, origins: np.ndarray, dirs: np.ndarray, hits: Hits
) -> Hits:
    """The hits of the same rays on the defective object; ``changed`` marks the samples it altered.

    Args:
        origins: Ray origins. [R, 3]
        dirs: Unit ray directions. [R, 3]
        hits: The normal render's first hits. [R]

    Returns:
        New hits. [R]
    """
    out = hits.copy()
    out.changed[:] = False
    if defect.kind == "Stains":
        _apply_stain(defect, out)
    elif defect.kind == "Burrs":
        _apply_burr(defect, origins, dirs, out)
    else:
        _apply_missing(defect, mesh, origins, dirs, out)
    return out


def _apply_stain(defect: Defect, out: Hits) -> None:
    p = defect.params
    rel = out.points - defect.center
    near = out.hit & (np.abs(rel @ defect.normal) < 0.6 * defect.radius)
    near &= out.normals @ defect.normal > 0.2  # not the other side of a thin part
    idx = np.flatnonzero(near)
    if len(idx) == 0:
        return
    d = np.linalg.norm(out.points[idx, None, :] - p["blob_centers"][None], axis=-1) / p["blob_radii"][None]
    inside = idx[(d < 1.0).any(axis=1)]
    a = p["opacity"]
    out.albedo[inside] = (1 - a) * out.albedo[inside] + a * p["color_linear"]
    out.changed[inside] = True


def burr_mesh(defect: Defect) -> ColoredMesh:
    import trimesh

    parts = []
    for base, axis, radius, height in defect.params["spikes"]:
        if defect.params["lump"]:
            m = trimesh.creation.icosphere(subdivisions=2, radius=1.0)
            m.apply_scale([radius * 1.6, radius * 1.6, height * 0.45])
            start = base - 0.1 * height * axis
        else:
            m = trimesh.creation.cone(radius=radius, height=height, sections=12)
            start = base - 0.3 * height * axis  # sink the base into the surface
        z = np.array([0.0, 0.0, 1.0])
        rot = trimesh.geometry.align_vectors(z, axis)
        rot[:3, 3] = start
        m.apply_transform(rot)
        parts.append(m)
    burr = trimesh.util.concatenate(parts)
    colors = np.tile(linear_to_srgb(defect.params["albedo"]), (len(burr.faces), 1))
    return ColoredMesh(burr.vertices, burr.faces, colors, burr.vertex_normals)


def _apply_burr(defect: Defect, origins: np.ndarray, dirs: np.ndarray, out: Hits) -> None:
    burr = burr_mesh(defect)
    reach = np.linalg.norm(burr.vertices - defect.center, axis=1).max()
    # Only rays that pass near the burr can hit it.
    oc = defect.center - origins
    along = np.einsum("ij,ij->i", oc, dirs)
    miss_dist = np.linalg.norm(oc - along[:, None] * dirs, axis=1)
    idx = np.flatnonzero(miss_dist < reach * 1.05)
    if len(idx) == 0:
        return
    bh, _ = first_hits(burr, origins[idx], dirs[idx])
    closer = bh.hit & (bh.t < out.t[idx])
    j = idx[closer]
    out.hit[j] = True
    out.t[j] = bh.t[closer]
    out.points[j] = bh.points[closer]
    out.normals[j] = bh.normals[closer]
    out.albedo[j] = bh.albedo[closer]
    out.changed[j] = True


def _apply_missing(defect: Defect, mesh: ColoredMesh, origins, dirs, out: Hits, max_steps: int = 24) -> None:
    c, r = defect.params["sphere_center"], defect.radius
    oc = origins - c
    b = np.einsum("ij,ij->i", oc, dirs)
    disc = b * b - (np.einsum("ij,ij->i", oc, oc) - r * r)
    t0 = np.where(disc > 0, -b - np.sqrt(np.clip(disc, 0, None)), np.inf)
    t1 = np.where(disc > 0, -b + np.sqrt(np.clip(disc, 0, None)), -np.inf)
    # Rays whose first hit lies inside the carved ball see something else.
    idx = np.flatnonzero(out.hit & (out.t >= t0) & (out.t <= t1))
    if len(idx) == 0:
        return
    o, d, t_exit = origins[idx], dirs[idx], t1[idx]
    # Walk along each ray through the hits inside the ball; "inside" = last hit entered the material.
    t_cur = out.t[idx].copy()
    _, face = first_hits(mesh, o, d)
    inside = _entering(mesh, face, d)
    entry_albedo = np.where(inside[:, None], mesh.albedo_linear[np.maximum(face, 0)], 0.0)
    active = np.ones(len(idx), dtype=bool)
    next_t = np.full(len(idx), np.inf)
    next_face = np.full(len(idx), -1)
    for _ in range(max_steps):
        a = np.flatnonzero(active)
        if len(a) == 0:
            break
        eps = 1e-4
        h, f = first_hits(mesh, o[a] + (t_cur[a] + eps)[:, None] * d[a], d[a])
        t_new = t_cur[a] + eps + h.t
        beyond = ~h.hit | (t_new > t_exit[a])
        done = a[beyond]
        next_t[done] = np.where(h.hit[beyond], t_new[beyond], np.inf)
        next_face[done] = f[beyond]
        active[done] = False
        cont = a[~beyond]
        t_cur[cont] = t_new[~beyond]
        ent = _entering(mesh, f[~beyond], d[cont])
        inside[cont] = ent
        entry_albedo[cont[ent]] = mesh.albedo_linear[f[~beyond][ent]]
    inside &= ~active  # rays still walking after max_steps: treat as leaving the ball empty
    # Inside the material when leaving the ball: the cut surface (the ball's inner wall) is visible.
    wall = idx[inside]
    p_wall = origins[wall] + t_exit[inside][:, None] * dirs[wall]
    n_wall = (c - p_wall) / r
    out.points[wall], out.t[wall], out.normals[wall] = p_wall, t_exit[inside], n_wall
    out.albedo[wall] = 0.8 * entry_albedo[inside]
    # Otherwise the next surface behind the ball, or the background.
    rest = np.flatnonzero(~inside)
    found = np.isfinite(next_t[rest])
    k, tk, fk = idx[rest[found]], next_t[rest[found]], next_face[rest[found]]
    pk = origins[k] + tk[:, None] * dirs[k]
    out.points[k], out.t[k] = pk, tk
    out.normals[k] = smooth_normals(mesh, fk, pk, dirs[k])
    back = ~_entering(mesh, fk, dirs[k])  # a back face: we look into the hollow inside
    out.albedo[k] = mesh.albedo_linear[fk] * np.where(back, 0.55, 1.0)[:, None]
    gone = idx[rest[~found]]
    out.hit[gone] = False
    out.t[gone] = np.inf
    out.changed[idx] = True


def _entering(mesh: ColoredMesh, face: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Whether rays hitting ``face`` enter the material (they hit its front side). [R]"""
    return np.einsum("ij,ij->i", mesh.face_normals[np.maximum(face, 0)], d) < 0
