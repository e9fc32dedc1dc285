"""LEGO-MAD: generate MAD-style datasets from the shipped LEGO meshes or any mesh (``splatlab data make``).

Per class the generator writes MAD's layout (see :mod:`splatlab.data.mad`): a training rig like MAD's
(every 15° of azimuth on several elevation rings), random test poses around the object with and without
defects (Burrs, Missing, Stains), masks from rendering normal and defective at the same pose, MAD's
Blender/OpenGL ``transforms.json`` for the training views, and ``test_poses.json`` with the OpenCV viewmat
and K of every test image (for pose evaluation only; the detector never reads it).

Everything is written to a temporary folder beside the output and renamed into place at the end, so an
interrupted run leaves no half-written dataset. Same seed, same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from splatlab.atomic import replace_dir
from splatlab.cameras import Cameras, intrinsics, look_at, ring_rig, spherical_eye, viewmat_to_opengl_c2w
from splatlab.data.defect_geometry import defective_mesh, geometry_mask
from splatlab.data.defects import DEFECT_TYPES, DefectConfig, apply_defect, sample_defect
from splatlab.data.pbr import PBRScene, RealismConfig, develop
from splatlab.data.raycast import (
    ColoredMesh,
    ShadingConfig,
    camera_rays,
    first_hits,
    load_mesh,
    paste,
    resolve,
    shade,
    sphere_window,
    srgb_to_linear,
    to_uint8,
)

log = logging.getLogger(__name__)

_LICENSE_TEXT = (
    "Images and masks rendered by splatlab's LEGO-MAD generator (`splatlab data make`).\n"
    "Geometry: {source}.\n"
    "Use them under the geometry's licence terms, with its attribution.\n"
)


@dataclass(frozen=True)
class MakeConfig:
    """How a LEGO-MAD dataset is generated; defaults make the default dataset."""

    size: int = 128  # image width and height in pixels
    seed: int = 0  # master seed; every class derives its own generator from it and its name
    supersample: int = 3  # samples per pixel side (supersample² per pixel), box-filtered for anti-aliasing
    elevations_deg: tuple[float, ...] = (-30.0, -5.0, 20.0, 45.0, 70.0)  # training rings (5 × 24 = 120 views)
    azimuth_step_deg: float = 15.0  # azimuth spacing of the training rig, like MAD's
    radius: float = 4.0  # camera distance from the object centre (object radius is 1)
    focal_per_width: float = 150.0 / 128.0  # focal length in pixels / image width (object ≈ 40–60% of frame)
    test_good: int = 10  # defect-free test images per class
    test_per_defect: int = 10  # test images per defect type
    test_elevation_deg: tuple[float, float] = (-40.0, 75.0)  # elevation range of random test poses
    test_radius_jitter: float = 0.05  # relative jitter of the test camera distance
    min_rig_angle_deg: float = 2.0  # test viewing directions stay at least this far from every rig camera
    shading: ShadingConfig = field(default_factory=ShadingConfig)  # light and background
    defects: DefectConfig = field(default_factory=DefectConfig)  # defect sizes and acceptance
    # "raycast": the fast, clean control (Lambert + ambient); "mitsuba": the physically based look
    renderer: Literal["raycast", "mitsuba"] = "raycast"
    realism: RealismConfig = field(default_factory=RealismConfig)  # material, lights, camera of "mitsuba"

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size: {self.size} px is too small; LEGO-MAD needs at least 16 px")
        if self.renderer not in ("raycast", "mitsuba"):
            raise ValueError(f"renderer: must be 'raycast' or 'mitsuba', got {self.renderer!r}")
        if self.realism.spp < 1:
            raise ValueError(f"realism.spp: must be at least 1, got {self.realism.spp}")

    @property
    def focal(self) -> float:
        return self.focal_per_width * self.size


# The named looks of ``splatlab data make --look``: each sets the renderer and its realism fields together.
# "real" adds what the clean world lacks: glossy plastic, soft shadows, sensor noise, and exposure and white
# balance jitter per image, under one light for training and test views (as MAD's renders and photos).
# "real-relit" also turns, dims and warms the test views' key light: the lighting change studied in
# notebook 08.
_REAL = RealismConfig(noise=0.012, exposure_jitter=0.06, white_balance_jitter=0.025)
LOOKS: dict[str, dict] = {
    "clean": {"renderer": "raycast"},
    "real": {"renderer": "mitsuba", "realism": _REAL},
    "real-relit": {
        "renderer": "mitsuba",
        "realism": replace(
            _REAL, test_light_rotation_deg=40.0, test_light_strength=0.85, test_light_kelvin=5200.0
        ),
    },
}


def look_config(look: str, **fields) -> MakeConfig:
    """The ``MakeConfig`` of a named look (see :data:`LOOKS`), with other fields set by keyword."""
    if look not in LOOKS:
        raise ValueError(f"--look: unknown look {look!r}; choose one of {', '.join(LOOKS)}")
    return MakeConfig(**{**LOOKS[look], **fields})


# ----------------------------------------------------------------------------------------------------------
# Locations of the shipped meshes and the default dataset
# ----------------------------------------------------------------------------------------------------------


def data_dir() -> Path:
    """The repository's ``data/`` folder: ``$SPLATLAB_DATA`` if set, else beside the package."""
    env = os.environ.get("SPLATLAB_DATA")
    if env:
        return Path(env).expanduser().resolve()
    import splatlab

    return Path(splatlab.__file__).resolve().parents[1] / "data"


def shipped_classes() -> list[dict]:
    """Entries of ``data/meshes/classes.json``: name, mesh file, LDraw part, title, authors."""
    manifest = data_dir() / "meshes" / "classes.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"{manifest}: the LEGO-MAD mesh manifest is missing (run data/build_meshes.py)"
        )
    return json.loads(manifest.read_text())


def default_dataset(size: int = 128, seed: int = 0, look: str = "clean") -> Path:
    """The default LEGO-MAD dataset (all shipped classes) of a look, generated on first use; returns its root.

    The default (clean look, 128 px, seed 0) lives in ``data/lego-mad/``; other settings in
    ``data/cache/lego-mad-{size}px-seed{seed}/``, other looks in ``data/cache/lego-mad-{look}-...``.
    Generation writes a temporary folder and renames it, so a present folder is always complete.
    """
    cfg = look_config(look, size=size, seed=seed)  # validates the look first
    root = data_dir()
    if (size, seed, look) == (128, 0, "clean"):
        out = root / "lego-mad"
    else:
        tag = "" if look == "clean" else f"{look}-"
        out = root / "cache" / f"lego-mad-{tag}{size}px-seed{seed}"
    if out.is_dir():
        made = out / "make_config.json"
        wanted = json.loads(json.dumps(asdict(cfg)))
        if made.is_file() and json.loads(made.read_text()).get("config") == wanted:
            return out
        log.warning("%s was made with other settings; making it again (it is replaced when done)", out)
        return make_dataset(out, cfg, replace=True)
    make_dataset(out, cfg)
    return out


# ----------------------------------------------------------------------------------------------------------
# Rendering one view
# ----------------------------------------------------------------------------------------------------------


def _window_rays(mesh: ColoredMesh, cameras: Cameras, index: int, cfg: MakeConfig, margin: float = 0.0):
    """Rays of the pixels that may see the bounding ball grown by ``margin``: (o [R,3], d [R,3], window)."""
    window = sphere_window(cameras, index, mesh.center, mesh.bound + margin)
    o, d = camera_rays(cameras, index, cfg.supersample, window)
    return o.reshape(-1, 3), d.reshape(-1, 3), window


def render_view(
    mesh: ColoredMesh, cameras: Cameras, index: int, cfg: MakeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Render one defect-free view.

    Returns:
        ``(image [H, W, 3] sRGB float in [0, 1], alpha [H, W] coverage)``.
    """
    s, H, W = cfg.supersample, cameras.height, cameras.width
    o, d, win = _window_rays(mesh, cameras, index, cfg)
    hits, _ = first_hits(mesh, o, d)
    h, w = win[1] - win[0], win[3] - win[2]
    image, alpha = resolve(shade(hits, cfg.shading), hits.hit, h, w, s)
    return paste(image, win, H, W, cfg.shading.background), paste(alpha, win, H, W, 0.0)


def _visible_enough(mask: np.ndarray, coverage: np.ndarray, cfg: MakeConfig) -> bool:
    """Whether a defect's mask is large enough against the normal object's silhouette to keep the view."""
    silhouette = max(float((coverage > 0.5).sum()), 1.0)
    return mask.sum() >= max(cfg.defects.min_mask_pixels, cfg.defects.min_mask_fraction * silhouette)


def render_defective(
    mesh: ColoredMesh, cameras: Cameras, index: int, kind: str, rng: np.random.Generator, cfg: MakeConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Render one view with a random defect of type ``kind`` at a visible spot.

    Returns:
        ``(image [H, W, 3], mask [H, W] bool, alpha [H, W] coverage of the defective object)``, or None when
        the defect's mask is empty or too small (not visible enough).
    """
    s, H, W = cfg.supersample, cameras.height, cameras.width
    o, d, win = _window_rays(mesh, cameras, index, cfg)
    hits, _ = first_hits(mesh, o, d)
    defect = sample_defect(kind, hits, d, rng, cfg.defects)
    if defect is None:
        return None
    if kind == "Burrs":  # burrs may stick out of the bounding ball: widen the window to hold them
        by0, by1, bx0, bx1 = sphere_window(cameras, index, defect.center, 3.2 * defect.radius)
        wider = (min(win[0], by0), max(win[1], by1), min(win[2], bx0), max(win[3], bx1))
        if wider != win:
            win = wider
            o, d = (a.reshape(-1, 3) for a in camera_rays(cameras, index, s, win))
            hits, _ = first_hits(mesh, o, d)
    h, w = win[1] - win[0], win[3] - win[2]
    bad = apply_defect(defect, mesh, o, d, hits)
    rgb_good, rgb_bad = shade(hits, cfg.shading), shade(bad, cfg.shading)
    changed = (np.abs(rgb_bad - rgb_good).max(axis=1) > 1e-4) | (bad.hit != hits.hit)
    mask = changed.reshape(h, s, w, s).mean(axis=(1, 3)) >= cfg.defects.mask_coverage
    image, alpha = resolve(rgb_bad, bad.hit, h, w, s)
    if not _visible_enough(mask, hits.hit.reshape(h, s, w, s).mean(axis=(1, 3)), cfg):
        return None
    bg = cfg.shading.background
    return paste(image, win, H, W, bg), paste(mask, win, H, W, False), paste(alpha, win, H, W, 0.0)


def _develop(scene: PBRScene, cameras: Cameras, index: int, cfg: MakeConfig, image_rng: np.random.Generator):
    """Path-trace one view and develop it: ``(image [H, W, 3] sRGB, alpha [H, W])``."""
    radiance, alpha = scene.render(cameras, index, seed=int(image_rng.integers(2**31)))
    bg = float(srgb_to_linear(np.array(cfg.shading.background)))
    return develop(radiance, alpha, cfg.realism, image_rng, background=bg), alpha


def render_defective_pbr(
    mesh: ColoredMesh,
    cameras: Cameras,
    index: int,
    kind: str,
    rng: np.random.Generator,
    cfg: MakeConfig,
    image_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`render_defective` for the Mitsuba look: the defect is drawn the same way (same ``rng`` draws),
    built into the mesh, its mask ray-cast from the normal and the defective geometry, then path-traced under
    the test lighting. ``image_rng`` draws the render's seed and the camera effects."""
    o, d, _ = _window_rays(mesh, cameras, index, cfg)
    hits, _ = first_hits(mesh, o, d)
    defect = sample_defect(kind, hits, d, rng, cfg.defects)
    if defect is None:
        return None
    bad = defective_mesh(defect, mesh)
    mask, alpha_good = geometry_mask(mesh, bad, cameras, index, cfg.supersample, cfg.defects.mask_coverage)
    if not _visible_enough(mask, alpha_good, cfg):
        return None
    scene = PBRScene(bad, cfg.realism, cfg.realism.test_lighting(), f"{kind} defect")
    image, alpha = _develop(scene, cameras, index, cfg, image_rng)
    return image, mask, alpha


def render_look(
    mesh: ColoredMesh, cameras: Cameras, index: int, cfg: MakeConfig, test: bool = False, seed: int = 0
) -> np.ndarray:
    """One defect-free view as ``cfg``'s renderer draws it, under the training (or test) light. [H, W, 3]"""
    if cfg.renderer == "raycast":
        return render_view(mesh, cameras, index, cfg)[0]
    lighting = cfg.realism.test_lighting() if test else cfg.realism.light
    scene = PBRScene(mesh, cfg.realism, lighting)
    return _develop(scene, cameras, index, cfg, np.random.default_rng(seed))[0]


def _image_rng(cfg: MakeConfig, name: str, number: int, train: bool) -> np.random.Generator:
    """The stream of one image's render seed and camera effects, apart from the poses' and defects' stream.

    Training views do not depend on the seed, like the rig: a new seed draws a new test set for the same
    training capture, so a development split reuses the trained splats.
    """
    seed = [] if train else [int(cfg.seed)]
    return np.random.default_rng(np.random.SeedSequence([*seed, zlib.crc32(name.encode()), 1, number]))


# ----------------------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------------------


def train_cameras(cfg: MakeConfig) -> Cameras:
    """The training rig: ``len(elevations) × 360/step`` cameras looking at the origin. [C]"""
    return ring_rig(cfg.elevations_deg, cfg.azimuth_step_deg, cfg.radius, cfg.focal, cfg.size, cfg.size)


def random_test_camera(rng: np.random.Generator, cfg: MakeConfig, rig: Cameras) -> Cameras:
    """One random pose around the object, uniform on the elevation band and away from the rig. [1]"""
    lo, hi = (math.sin(math.radians(e)) for e in cfg.test_elevation_deg)
    rig_dirs = torch.nn.functional.normalize(rig.centers.double(), dim=-1)
    for _ in range(1000):
        az = rng.uniform(0.0, 360.0)
        el = math.degrees(math.asin(rng.uniform(lo, hi)))
        r = cfg.radius * (1.0 + rng.uniform(-cfg.test_radius_jitter, cfg.test_radius_jitter))
        eye = spherical_eye(
            torch.tensor(az, dtype=torch.float64),
            torch.tensor(el, dtype=torch.float64),
            torch.tensor(r, dtype=torch.float64),
        )
        cos = (rig_dirs @ (eye / eye.norm())).max().clamp(-1, 1)
        if math.degrees(math.acos(float(cos))) >= cfg.min_rig_angle_deg:
            break
    viewmat = look_at(eye.float())[None]
    return Cameras(viewmat, intrinsics(cfg.focal, cfg.size, cfg.size, 1), cfg.size, cfg.size)


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _matrix(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(x), 8) for x in row] for row in t.double().tolist()]


def class_seed(seed: int, name: str) -> np.random.SeedSequence:
    """Per-class random stream: the master seed and a stable hash of the class name."""
    return np.random.SeedSequence([int(seed), zlib.crc32(name.encode())])


def make_class(mesh: ColoredMesh, name: str, out_dir: Path, cfg: MakeConfig, source: str = "") -> dict:
    """Write one MAD-layout class folder ``out_dir/name`` and return its summary (counts, tries).

    Args:
        mesh: The object, normalised to radius 1.
        name: Class folder name, e.g. "01Cat".
        out_dir: Dataset root (already a temporary folder when called from :func:`make_dataset`).
        source: Attribution line for the class's ``license`` file.
    """
    from tqdm.auto import tqdm

    cdir = out_dir / name
    rng = np.random.default_rng(class_seed(cfg.seed, name))
    rig = train_cameras(cfg)
    pbr = cfg.renderer == "mitsuba"
    train_scene = PBRScene(mesh, cfg.realism, cfg.realism.light, source or name) if pbr else None
    frames = []
    for i in tqdm(range(len(rig)), desc=f"{name} train", leave=False):
        if pbr:
            image, _ = _develop(train_scene, rig, i, cfg, _image_rng(cfg, name, i, train=True))
        else:
            image, _ = render_view(mesh, rig, i, cfg)
        _save_png(cdir / "train" / "good" / f"{i}.png", to_uint8(image))
        frames.append(
            {
                "file_path": f"./train/good/{i}.png",
                "transform_matrix": _matrix(viewmat_to_opengl_c2w(rig.viewmats[i])),
            }
        )
    angle_x = 2.0 * math.atan(0.5 * cfg.size / cfg.focal)
    (cdir / "transforms.json").write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames}, indent=1))

    poses, tries = [], {}
    jobs = [("good", k) for k in range(cfg.test_good)]
    jobs += [(kind, k) for kind in DEFECT_TYPES for k in range(cfg.test_per_defect)]
    test_scene = PBRScene(mesh, cfg.realism, cfg.realism.test_lighting(), source or name) if pbr else None
    for number, (kind, k) in enumerate(tqdm(jobs, desc=f"{name} test", leave=False)):
        image_rng = _image_rng(cfg, name, number, train=False)
        for attempt in range(1, cfg.defects.max_tries + 1):
            n_tries = attempt
            cam = random_test_camera(rng, cfg, rig)
            if kind == "good":
                if pbr:
                    image, _ = _develop(test_scene, cam, 0, cfg, image_rng)
                else:
                    image, _ = render_view(mesh, cam, 0, cfg)
                break
            if pbr:
                result = render_defective_pbr(mesh, cam, 0, kind, rng, cfg, image_rng)
            else:
                result = render_defective(mesh, cam, 0, kind, rng, cfg)
            if result is not None:
                image, mask, _ = result
                _save_png(cdir / "ground_truth" / kind / f"{k}_mask.png", mask.astype(np.uint8) * 255)
                break
        else:
            raise ValueError(
                f"{name}: no visible {kind} defect after {cfg.defects.max_tries} tries; "
                "loosen defects.min_mask_fraction or enlarge defects.radius_range"
            )
        tries[kind] = tries.get(kind, 0) + n_tries
        _save_png(cdir / "test" / kind / f"{k}.png", to_uint8(image))
        poses.append(
            {
                "file_path": f"test/{kind}/{k}.png",
                "viewmat": _matrix(cam.viewmats[0]),
                "K": _matrix(cam.Ks[0]),
            }
        )
    (cdir / "test_poses.json").write_text(
        json.dumps(
            {
                "convention": "OpenCV axes (+x right, +y down, +z forward); viewmat = world->camera; "
                "K in pixels",
                "width": cfg.size,
                "height": cfg.size,
                "frames": poses,
            },
            indent=1,
        )
    )
    (cdir / "license").write_text(_LICENSE_TEXT.format(source=source or f"user mesh for {name}"))
    (cdir / "readme").write_text(
        f"LEGO-MAD class {name}: {len(rig)} training views (train/good, posed in transforms.json), "
        f"{len(jobs)} test views (test/<type>), masks in ground_truth/<type>/<k>_mask.png, "
        f"{cfg.size}x{cfg.size} px. Made by `splatlab data make`.\n"
    )
    return {
        "name": name,
        "train": len(rig),
        "test": {k: sum(1 for j in jobs if j[0] == k) for k in ("good",) + DEFECT_TYPES},
        "tries": tries,
    }


def _attribution(entry: dict) -> str:
    authors = ", ".join(entry.get("authors", [])) or "unknown"
    return (
        f'LDraw part {entry.get("part")} "{entry.get("title")}" by {authors}; '
        "LDraw.org Parts Library, CC BY 4.0 (via Debian's ldraw-parts-free)"
    )


def make_dataset(
    out: Path,
    cfg: MakeConfig = MakeConfig(),
    classes: list[str] | None = None,
    meshes: dict[str, Path] | None = None,
    up: str = "auto",
    replace: bool = False,
) -> Path:
    """Generate a dataset at ``out`` (which must not exist yet, unless ``replace``), atomically.

    Args:
        out: The dataset root to create.
        cfg: Generation settings.
        classes: Shipped class names to make (all when None and no ``meshes`` are given).
        meshes: Extra classes from user meshes, ``{name: mesh file}``.
        up: Up axis of user meshes: "z", "y" or "auto" (y for glTF, z otherwise).
        replace: Replace a dataset already at ``out`` (a stale cache) once the new one is complete.

    Returns:
        ``out``.
    """
    out = Path(out).expanduser().resolve()
    if not replace and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not empty; choose another --out")
    todo: list[tuple[str, Path, str, str]] = []  # name, mesh, up axis, attribution
    if classes or not meshes:
        shipped = {e["name"]: e for e in shipped_classes()}
        for name in classes or list(shipped):
            if name not in shipped:
                raise ValueError(f"--classes: unknown class {name!r}; shipped classes: {', '.join(shipped)}")
            e = shipped[name]
            todo.append((name, data_dir() / "meshes" / e["mesh"], "z", _attribution(e)))
    for name, path in (meshes or {}).items():
        path = Path(path)
        axis = ("y" if path.suffix.lower() in (".glb", ".gltf") else "z") if up == "auto" else up
        todo.append((name, path, axis, f"user mesh {path.name}"))
    # written beside out and renamed into place; a copy another process finished first is kept
    with replace_dir(out, keep_existing=not replace) as tmp:
        summaries = []
        for name, path, axis, source in todo:
            log.info("making class %s from %s", name, path)
            summaries.append(make_class(load_mesh(path, up_axis=axis), name, tmp, cfg, source))
        (tmp / "make_config.json").write_text(
            json.dumps({"config": asdict(cfg), "classes": summaries}, indent=1)
        )
    return out


def make_cli(
    out: Path,
    classes: tuple[str, ...] = (),
    mesh: tuple[Path, ...] = (),
    name: tuple[str, ...] = (),
    size: int = 128,
    seed: int = 0,
    supersample: int = 3,
    test_good: int = 10,
    test_per_defect: int = 10,
    up: Literal["auto", "y", "z"] = "auto",
    look: str = "clean",
    spp: int | None = None,
) -> int:
    """Generate a MAD-style dataset from the shipped LEGO parts or any mesh.

    Args:
        out: Output dataset root; must not exist yet.
        classes: Shipped classes to make (default: all, unless --mesh is given).
        mesh: Mesh files readable by trimesh (GLB/OBJ/PLY…), one extra class each.
        name: Class folder names for --mesh, one per file (default: the files' names without suffix).
        size: Image width and height in pixels.
        seed: Random seed; the same seed gives the same bytes.
        supersample: Samples per pixel side for anti-aliasing.
        test_good: Defect-free test images per class.
        test_per_defect: Test images per defect type.
        up: Up axis of --mesh: auto (y for glTF, else z), y or z.
        look: "clean" (the fast ray caster: Lambert + ambient), "real" (Mitsuba 3 path tracing: glossy
            plastic, soft shadows, sensor noise, exposure jitter) or "real-relit" ("real" with another
            light for the test views).
        spp: Path-traced samples per pixel of the "real" look (default 64).
    """
    cfg = look_config(
        look, size=size, seed=seed, supersample=supersample, test_good=test_good,
        test_per_defect=test_per_defect,
    )
    if spp is not None:
        cfg = replace(cfg, realism=replace(cfg.realism, spp=spp))
    meshes = [Path(m) for m in mesh]
    names = list(name) or [m.stem for m in meshes]
    if len(names) != len(meshes):
        raise ValueError(f"--name: {len(names)} names for {len(meshes)} --mesh files; give one per file")
    if len(set(names)) != len(names):
        raise ValueError(f"--name: class names must differ, got {', '.join(names)}")
    root = make_dataset(out, cfg, list(classes) or None, dict(zip(names, meshes, strict=True)) or None, up)
    print(f"wrote {root}")
    return 0


__all__ = [
    "LOOKS",
    "MakeConfig",
    "look_config",
    "render_defective_pbr",
    "render_look",
    "data_dir",
    "default_dataset",
    "make_class",
    "make_dataset",
    "make_cli",
    "render_view",
    "render_defective",
    "shipped_classes",
    "train_cameras",
    "random_test_camera",
]
