"""Read MAD-layout class folders (MAD-Sim, MAD-Real, LEGO-MAD) without ever writing into them.

Layout of one class folder (e.g. ``01Gorilla/``), as the PAD and SplatPose loaders read it::

    transforms.json                      camera_angle_x + frames[{file_path, transform_matrix}] (OpenGL c2w)
    train/good/{0..N}.png                posed training views (RGB or RGBA on white)
    test/{good,Burrs,Missing,Stains}/{k}.png
    ground_truth/{Burrs,Missing,Stains}/{k}_mask.png   nonzero = anomalous; good has no masks
    license, readme                      text
    test_poses.json                      LEGO-MAD only: OpenCV viewmat + K per test image (evaluation only)

Names are matched numerically (``10.png`` after ``9.png``). RGBA is composited on white, grayscale replicated,
16-bit images scaled by 1/65535, palette images expanded. ``size=`` downscales images with area
interpolation, masks with nearest neighbour, and scales K to match. Every image is decoded fully (a truncated
file is an error naming it), and every pose must be a finite rigid transform (:func:`pose_problem`), with a
finite positive ``camera_angle_x``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splatlab.cameras import Cameras, focal_from_fov, intrinsics, opengl_c2w_to_viewmat

GOOD = "good"
DEFECT_TYPES: tuple[str, ...] = ("Burrs", "Missing", "Stains")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class TrainViews:
    """The posed training views of one class.

    Args:
        images: RGB on white, float32 in [0, 1]. [V, H, W, 3]
        cameras: Their cameras (OpenCV viewmats, K in pixels of ``images``). [V]
        paths: The image files. [V]
        class_dir: The class folder they were read from, or None.
        size: The ``size=`` they were loaded with (None = as stored).
    """

    images: torch.Tensor
    cameras: Cameras
    paths: list[Path]
    class_dir: Path | None = None  # the class folder they were read from (recorded in a run's config.json)
    size: int | None = None  # the longer side they were loaded at; None = as stored


@dataclass(frozen=True)
class TestSample:
    """One test view.

    Args:
        image: RGB on white, float32 in [0, 1]. [H, W, 3]
        label: 0 for good, 1 for defective.
        defect: "good", "Burrs", "Missing" or "Stains" (or another folder name).
        mask: Anomalous pixels; all False for good views. [H, W]
        path: The image file.
    """

    image: torch.Tensor
    label: int
    defect: str
    mask: torch.Tensor
    path: Path


@dataclass(frozen=True)
class MADClass:
    """One class folder: training views and test samples.

    Args:
        name: Folder name, e.g. "01Gorilla".
        train: The posed training views.
        test: Test samples, good first, then defect types in folder order, numeric within each.
    """

    name: str
    train: TrainViews
    test: list[TestSample]


@dataclass(frozen=True)
class TestPoses:
    """Ground-truth poses of test images, for pose evaluation only.

    Args:
        paths: Image paths relative to the class folder, e.g. "test/Burrs/3.png". [T]
        cameras: Their cameras. [T]
    """

    paths: list[str]
    cameras: Cameras


# ----------------------------------------------------------------------------------------------------------
# Names and images
# ----------------------------------------------------------------------------------------------------------


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically: "9.png" < "10.png", "01Cat" < "02Dog"."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def image_files(folder: Path) -> list[Path]:
    """Image files of a folder in numeric order (other files are ignored here; `data check` flags them)."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _target_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(W, H) after scaling the longer side to ``size`` (no change when None)."""
    if size is None:
        return width, height
    if int(size) <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


# Pillow modes of more than 8 bits per sample: 16-bit grayscale and 32-bit integer (what 16-bit PNGs open as).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(path: Path) -> tuple[np.ndarray, list[str]]:
    """Decode an image file fully: float32 RGB on white [H, W, 3] and notes on what was converted.

    The notes ("16-bit", "palette") are what ``splatlab data check`` warns about. Raises ``ValueError``
    naming the file when it cannot be decoded completely (truncated, zero bytes, not an image).
    """
    from PIL import Image

    notes = []
    try:
        with Image.open(path) as im:
            im.load()  # decodes every pixel: a truncated file fails here, not later
            if im.mode in _WIDE_MODES:
                notes.append(f"{im.mode} (16-bit) image, scaled to [0, 1] by 1/65535")
                gray = np.asarray(im, dtype=np.float32) / 65535.0
                rgb = np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=-1)
            elif im.mode in ("F",):
                raise ValueError("floating-point image files are not supported; save as 8- or 16-bit PNG")
            else:
                if im.mode == "P":
                    notes.append("palette image, expanded to RGB")
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
                    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])  # composite on white
                else:
                    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    return rgb, notes


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """An image as float32 RGB on white, optionally resized (area interpolation). [H, W, 3]"""
    from PIL import Image

    rgb, _ = decode_image(path)
    H, W = rgb.shape[:2]
    w, h = _target_size(W, H, size)
    if (w, h) != (W, H):
        chans = [
            Image.fromarray(rgb[..., c], mode="F").resize((w, h), Image.Resampling.BOX) for c in range(3)
        ]
        rgb = np.stack([np.asarray(c, dtype=np.float32) for c in chans], axis=-1)
    return np.clip(rgb, 0.0, 1.0)


def read_mask(path: Path, size: int | None = None) -> np.ndarray:
    """A mask as bool (nonzero = anomalous), optionally resized (nearest neighbour). [H, W]"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im) if im.mode in _WIDE_MODES else np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable mask image ({exc})") from exc
    if arr.ndim != 2:
        raise ValueError(f"{path}: not a readable mask image (shape {arr.shape})")
    H, W = arr.shape
    w, h = _target_size(W, H, size)
    if (w, h) != (W, H):
        arr = np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST))
    return arr > 0


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc


# ----------------------------------------------------------------------------------------------------------
# transforms.json
# ----------------------------------------------------------------------------------------------------------


def resolve_frame_path(class_dir: Path, file_path: str) -> Path:
    """The image file of a ``transforms.json`` frame; NeRF-style paths may omit ".png"."""
    p = (Path(class_dir) / file_path).resolve() if not Path(file_path).is_absolute() else Path(file_path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        for suffix in IMAGE_SUFFIXES:
            if p.with_name(p.name + suffix).is_file():
                return p.with_name(p.name + suffix)
        return p.with_name(p.name + ".png")
    return p


def pose_problem(c2w: torch.Tensor, tol: float = 1e-3) -> str | None:
    """What is wrong with a camera→world matrix, or None: it must be finite and rigid.

    Rigid: the rotation block is orthonormal (``|RᵀR − I| <= tol`` entry-wise) with determinant +1 (not a
    reflection, not singular), and the last row is ``[0, 0, 0, 1]``. [4, 4]
    """
    m = torch.as_tensor(c2w, dtype=torch.float64)
    if m.shape != (4, 4):
        return f"shape {tuple(m.shape)}, not [4, 4]"
    if not bool(torch.isfinite(m).all()):
        return "holds NaN or inf"
    R = m[:3, :3]
    det = float(torch.linalg.det(R))
    if abs(det) < 1e-6:
        return "rotation block is singular (determinant 0)"
    err = float((R.T @ R - torch.eye(3, dtype=m.dtype)).abs().max())
    if err > tol or det < 0:
        return f"not a rigid transform (rotation not orthonormal: |RᵀR − I| = {err:.3g}, det {det:.3g})"
    if float((m[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=m.dtype)).abs().max()) > tol:
        return f"last row is {m[3].tolist()}, not [0, 0, 0, 1]"
    return None


def transforms_problems(path: Path, angle: float, frames: list[tuple[Path, torch.Tensor]]) -> list[str]:
    """Every problem of a parsed ``transforms.json`` (camera angle, poses), each line naming ``path``."""
    problems = []
    if not (math.isfinite(angle) and 0.0 < angle < math.pi):
        problems.append(f"{path}: camera_angle_x is {angle}; it must be a finite angle in (0, pi) radians")
    for file, c2w in frames:
        problem = pose_problem(c2w)
        if problem:
            problems.append(f"{path}: the transform_matrix of frame {file.name} {problem}")
    return problems


def read_transforms(
    class_dir: Path, validate: bool = True
) -> tuple[float, list[tuple[Path, torch.Tensor]]]:
    """``camera_angle_x`` and (image path, OpenGL camera→world [4, 4]) per frame, in file order.

    Raises ``ValueError`` naming ``transforms.json`` and the frame for a malformed file and, with
    ``validate``, a ``camera_angle_x`` that is not a finite angle in (0, π) or a pose that
    :func:`pose_problem` rejects (``data check`` validates itself, to list every problem).
    """
    path = Path(class_dir) / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; this class has no training poses (MAD-Real classes may lack it)"
        )
    try:
        meta = json.loads(path.read_text())
        angle = float(meta["camera_angle_x"])
        frames = [
            (
                resolve_frame_path(class_dir, f["file_path"]),
                torch.tensor(f["transform_matrix"], dtype=torch.float64),
            )
            for f in meta["frames"]
        ]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed transforms.json ({type(exc).__name__}: {exc})") from exc
    if any(c2w.shape != (4, 4) for _, c2w in frames):
        file = next(f for f, c2w in frames if c2w.shape != (4, 4))
        raise ValueError(f"{path}: the transform_matrix of frame {file.name} is not [4, 4]")
    problems = transforms_problems(path, angle, frames) if validate else []
    if problems:
        n = len(problems) - 1
        more = f" (and {n} more problems; run `splatlab data check`)" if n else ""
        raise ValueError(problems[0] + more)
    if not frames:
        raise ValueError(f"{path}: no frames; the class has no training views")
    return angle, frames


# ----------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------


def load_train(class_dir: Path, size: int | None = None) -> TrainViews:
    """The posed training views of a class (frames sorted numerically by file name)."""
    class_dir = Path(class_dir)
    angle, frames = read_transforms(class_dir)
    frames = sorted(frames, key=lambda f: natural_key(f[0].name))
    images, viewmats = [], []
    for file, c2w in frames:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: image of a frame in {class_dir / 'transforms.json'} is missing")
        images.append(read_image(file, size))
        viewmats.append(opengl_c2w_to_viewmat(c2w).float())
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{class_dir / 'train'}: training images differ in size: {sorted(shapes)}")
    W0, H0 = image_size(frames[0][0])
    H, W = images[0].shape[:2]
    Ks = intrinsics(focal_from_fov(angle, W0), W0, H0, n=len(frames))
    cams = Cameras(torch.stack(viewmats), Ks, W0, H0)
    if (W, H) != (W0, H0):
        cams = cams.resized(W, H)
    return TrainViews(torch.from_numpy(np.stack(images)), cams, [f for f, _ in frames], class_dir, size)


def load_test(class_dir: Path, size: int | None = None) -> list[TestSample]:
    """The test samples of a class: good first, then the defect folders, numeric order within each."""
    class_dir = Path(class_dir)
    test_dir = class_dir / "test"
    if not test_dir.is_dir():
        return []
    kinds = sorted(
        (d.name for d in test_dir.iterdir() if d.is_dir()), key=lambda k: (k != GOOD, natural_key(k))
    )
    samples = []
    for kind in kinds:
        for file in image_files(test_dir / kind):
            image = torch.from_numpy(read_image(file, size))
            if kind == GOOD:
                mask = torch.zeros(image.shape[:2], dtype=torch.bool)
            else:
                mpath = class_dir / "ground_truth" / kind / f"{file.stem}_mask.png"
                if not mpath.is_file():
                    raise FileNotFoundError(f"{mpath}: mask of defect image {file} is missing")
                mask = torch.from_numpy(read_mask(mpath, size))
                if mask.shape != image.shape[:2]:
                    raise ValueError(
                        f"{mpath}: mask is {tuple(mask.shape)} but {file} is {tuple(image.shape[:2])}"
                    )
            samples.append(TestSample(image, int(kind != GOOD), kind, mask, file))
    return samples


def load_mad_class(class_dir: str | Path, size: int | None = None) -> MADClass:
    """Load one MAD-layout class folder: posed training views and test samples. Never writes to it.

    Args:
        class_dir: The class folder, e.g. ``MAD-Sim/01Gorilla`` or ``data/lego-mad/01Cat``.
        size: Optional target size of the longer image side in pixels (images area-averaged, masks nearest,
            K scaled).

    Returns:
        The class; raises ``FileNotFoundError``/``ValueError`` naming the file on bad input.
    """
    class_dir = Path(class_dir)
    if not class_dir.is_dir():
        raise FileNotFoundError(f"{class_dir}: class folder not found")
    return MADClass(class_dir.name, load_train(class_dir, size), load_test(class_dir, size))


def list_classes(root: str | Path) -> list[Path]:
    """Class folders under a dataset root (those holding train/ or test/), in numeric name order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    dirs = [d for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())]
    return sorted(dirs, key=lambda d: natural_key(d.name))


def load_test_poses(class_dir: str | Path, size: int | None = None) -> TestPoses:
    """Ground-truth OpenCV poses of a class's test images from ``test_poses.json`` (evaluation only).

    The order matches :func:`load_test` (good first, then defect folders, numeric within each), so
    ``zip(load_mad_class(d).test, load_test_poses(d).paths)`` pairs them.

    Args:
        class_dir: The class folder.
        size: Optional target size of the longer image side; K is scaled to it.
    """
    path = Path(class_dir) / "test_poses.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; only generated (LEGO-MAD) classes have test poses")
    try:
        meta = json.loads(path.read_text())
        W, H = int(meta["width"]), int(meta["height"])
        frames = [(f["file_path"], f["viewmat"], f["K"]) for f in meta["frames"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed test_poses.json ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise ValueError(f"{path}: no frames")

    def order(item):
        parts = Path(item[0]).parts
        kind = parts[-2] if len(parts) >= 2 else ""
        return (kind != GOOD, natural_key(kind), natural_key(Path(item[0]).name))

    frames.sort(key=order)
    cams = Cameras(
        torch.tensor([f[1] for f in frames], dtype=torch.float32),
        torch.tensor([f[2] for f in frames], dtype=torch.float32),
        W,
        H,
    )
    w, h = _target_size(W, H, size)
    return TestPoses([f[0] for f in frames], cams.resized(w, h) if (w, h) != (W, H) else cams)
