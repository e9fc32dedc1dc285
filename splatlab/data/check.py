"""Validate MAD-layout folders (``splatlab data check DIR [--json]``).

Never writes. Every problem names the file it is about. Checked: a missing or malformed ``transforms.json``;
a ``camera_angle_x`` that is not a finite positive angle; a pose that is not finite or not rigid (rotation
not orthonormal, a reflection, a singular matrix); a frame whose image is missing; a training image without a
frame; every image and mask decoded fully (truncated, zero-byte or corrupt files); a mask without a test
image or of another size; a defect image without a mask; a non-image file inside an image folder; an empty
class. Warnings (converted on loading, not errors): 16-bit and palette images.
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tyro

from splatlab.data.mad import (
    GOOD,
    IMAGE_SUFFIXES,
    decode_image,
    natural_key,
    read_mask,
    read_transforms,
    transforms_problems,
)


@dataclass
class ClassReport:
    """What ``data check`` found in one class folder.

    Args:
        name: Folder name.
        path: Folder path.
        views: Number of posed training views (frames in transforms.json).
        test: Test image count per folder ("good", "Burrs", …).
        masks: Mask count per defect folder.
        image_size: (width, height) of the first image, or None.
        problems: One line per problem, each starting with the file it is about.
        warnings: One line per conversion the loader will make (16-bit, palette), each naming the file.
    """

    name: str
    path: str
    views: int = 0
    test: dict[str, int] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _images_and_strays(folder: Path, report: ClassReport) -> list[Path]:
    """Image files of a folder (numeric order); any other file is reported as a problem."""
    images = []
    for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        elif p.name.startswith("."):  # hidden files (.DS_Store…) are harmless
            continue
        else:
            report.problems.append(f"{p}: not an image file inside an image folder")
    return images


def _size(path: Path, report: ClassReport, mask: bool = False) -> tuple[int, int] | None:
    """(width, height) of an image or mask, decoded fully; a problem is reported when it cannot be."""
    try:
        if mask:
            h, w = read_mask(path).shape
            return w, h
        rgb, notes = decode_image(path)
    except ValueError as exc:
        report.problems.append(str(exc))
        return None
    report.warnings += [f"{path}: {note}" for note in notes]
    return rgb.shape[1], rgb.shape[0]


def check_class(class_dir: str | Path) -> ClassReport:
    """Check one class folder; the report lists every problem found (empty = valid)."""
    class_dir = Path(class_dir)
    report = ClassReport(name=class_dir.name, path=str(class_dir))
    train_dir = class_dir / "train" / GOOD
    train_images = _images_and_strays(train_dir, report) if train_dir.is_dir() else []
    # Training poses.
    try:
        angle, frames = read_transforms(class_dir, validate=False)
        report.problems += transforms_problems(class_dir / "transforms.json", angle, frames)
    except (FileNotFoundError, ValueError) as exc:
        report.problems.append(str(exc))
        frames = []
    report.views = len(frames)
    framed = set()
    for file, _ in frames:
        framed.add(file.resolve())
        if not file.is_file():
            report.problems.append(f"{file}: image of a frame in transforms.json is missing")
    if frames:
        for img in train_images:
            if img.resolve() not in framed:
                report.problems.append(f"{img}: training image without a frame in transforms.json")
    sizes = {}
    for img in train_images:
        size = _size(img, report)
        report.image_size = report.image_size or size
    # Test images and masks.
    test_dir, gt_dir = class_dir / "test", class_dir / "ground_truth"
    kinds = (
        sorted((d.name for d in test_dir.iterdir() if d.is_dir()), key=natural_key)
        if test_dir.is_dir()
        else []
    )
    for kind in kinds:
        images = _images_and_strays(test_dir / kind, report)
        report.test[kind] = len(images)
        for img in images:
            isz = _size(img, report)
            if kind == GOOD:
                continue
            mask = gt_dir / kind / f"{img.stem}_mask.png"
            if not mask.is_file():
                report.problems.append(f"{img}: defect image without a mask (expected {mask})")
            else:
                sizes[img] = (isz, _size(mask, report, mask=True))
    if gt_dir.is_dir():
        for kdir in sorted((d for d in gt_dir.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name)):
            masks = _images_and_strays(kdir, report)
            report.masks[kdir.name] = len(masks)
            for mask in masks:
                stem = mask.stem[: -len("_mask")] if mask.stem.endswith("_mask") else mask.stem
                candidates = [test_dir / kdir.name / f"{stem}{s}" for s in IMAGE_SUFFIXES]
                if not any(c.is_file() for c in candidates):
                    report.problems.append(f"{mask}: mask without a test image (expected {candidates[0]})")
    for img, (isz, msz) in sizes.items():
        if isz and msz and isz != msz:
            report.problems.append(
                f"{gt_dir / img.parent.name / (img.stem + '_mask.png')}: mask is {msz[0]}x{msz[1]} "
                f"but its image {img} is {isz[0]}x{isz[1]}"
            )
    if report.image_size is None and sizes:
        report.image_size = next(iter(sizes.values()))[0]
    if not train_images and not any(report.test.values()):
        report.problems.insert(0, f"{class_dir}: empty class (no training or test images)")
    return report


def is_class_dir(path: Path) -> bool:
    """Whether a folder looks like one class (rather than a dataset root)."""
    return any((path / n).exists() for n in ("train", "test", "ground_truth", "transforms.json"))


def check_dataset(path: str | Path) -> list[ClassReport]:
    """Check a dataset root (every sub-folder is a class) or a single class folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: folder not found")
    if is_class_dir(path):
        return [check_class(path)]
    classes = sorted(
        (d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: natural_key(d.name),
    )
    if not classes:
        report = ClassReport(name=path.name, path=str(path), problems=[f"{path}: no class folders inside"])
        return [report]
    return [check_class(d) for d in classes]


def check_cli(dir: tyro.conf.Positional[Path], json: bool = False) -> int:
    """Validate a MAD-layout folder (dataset root or one class) and print a per-class summary.

    Args:
        dir: Dataset root or class folder.
        json: Print the reports as JSON instead of a table.
    """
    reports = check_dataset(dir)  # a missing folder is a user error, reported by splatlab.cli
    if json:
        print(jsonlib.dumps([asdict(r) for r in reports], indent=1))
    else:
        types = sorted({k for r in reports for k in r.test}, key=lambda k: (k != GOOD, natural_key(k)))
        header = f"{'class':<16} {'views':>5} " + " ".join(f"{t:>8}" for t in types) + "  size      problems"
        print(header)
        for r in reports:
            size = f"{r.image_size[0]}x{r.image_size[1]}" if r.image_size else "-"
            counts = " ".join(f"{r.test.get(t, 0):>8}" for t in types)
            print(f"{r.name:<16} {r.views:>5} {counts}  {size:<9} {len(r.problems)}")
        for r in reports:
            for p in r.problems:
                print(f"ERROR {p}")
            for w in r.warnings:
                print(f"WARNING {w}")
    n = sum(len(r.problems) for r in reports)
    if n:
        print(f"{n} problem(s) found in {dir}")
        return 1
    return 0
