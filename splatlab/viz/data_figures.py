"""Figures of a MAD-layout class: the camera rig in 3D (plotly), test images with mask outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from splatlab.cameras import Cameras

_DEFECT_COLORS = {"good": "#2ca02c", "Burrs": "#d62728", "Missing": "#9467bd", "Stains": "#ff7f0e"}


def frustum_lines(cameras: Cameras, depth: float = 0.35) -> np.ndarray:
    """Polyline points of camera frusta (centre → 4 image corners at ``depth``, then the image rectangle),
    one camera after the other, separated by NaN rows (plotly's line breaks). [C*11, 3]"""
    c2w = cameras.c2w.detach().cpu().double().numpy()
    K = cameras.Ks.detach().cpu().double().numpy()
    W, H = cameras.width, cameras.height
    out = []
    for T, k in zip(c2w, K, strict=True):
        corners = []
        for u, v in ((0, 0), (W, 0), (W, H), (0, H)):
            x = np.array([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], 1.0]) * depth
            corners.append(T[:3, :3] @ x + T[:3, 3])
        c = T[:3, 3]
        a, b, cc, d = corners
        out += [c, a, b, c, cc, d, c, a, d, cc, b]  # 11 points trace all 8 edges
        out.append(np.full(3, np.nan))
    return np.asarray(out)


def rig_figure(
    train: Cameras,
    test: Cameras | None = None,
    test_labels: list[str] | None = None,
    points: np.ndarray | None = None,
    depth: float = 0.35,
    title: str = "Camera rig",
):
    """A plotly 3D figure of the training rig (blue frusta), test poses (coloured by type) and the object.

    Args:
        train: Training cameras. [C]
        test: Test cameras, if known (LEGO-MAD's test_poses.json). [T]
        test_labels: Defect type per test camera ("good", "Burrs"…). [T]
        points: Object points to draw, e.g. mesh vertices. [N, 3]
        depth: Frustum depth in world units.

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    if points is not None:
        p = np.asarray(points)
        fig.add_trace(
            go.Scatter3d(
                x=p[:, 0],
                y=p[:, 1],
                z=p[:, 2],
                mode="markers",
                name="object",
                marker=dict(size=1.5, color="#555555"),
            )
        )
    lines = frustum_lines(train, depth)
    fig.add_trace(
        go.Scatter3d(
            x=lines[:, 0],
            y=lines[:, 1],
            z=lines[:, 2],
            mode="lines",
            name=f"train ({len(train)})",
            line=dict(color="#1f77b4", width=2),
        )
    )
    if test is not None:
        labels = list(test_labels) if test_labels is not None else ["test"] * len(test)
        if len(labels) != len(test):
            raise ValueError(f"test_labels has {len(labels)} entries for {len(test)} test cameras")
        for kind in dict.fromkeys(labels):
            idx = [i for i, k in enumerate(labels) if k == kind]
            seg = frustum_lines(test[idx], depth)
            fig.add_trace(
                go.Scatter3d(
                    x=seg[:, 0],
                    y=seg[:, 1],
                    z=seg[:, 2],
                    mode="lines",
                    name=f"test {kind} ({len(idx)})",
                    line=dict(color=_DEFECT_COLORS.get(kind, "#333333"), width=3),
                )
            )
    fig.update_layout(
        title=title,
        scene=dict(aspectmode="data", xaxis_title="x", yaxis_title="y", zaxis_title="z (up)"),
        margin=dict(l=0, r=0, t=40, b=0),
        legend=dict(itemsizing="constant"),
    )
    return fig


def class_rig_figure(class_dir: str | Path, points: np.ndarray | None = None, depth: float = 0.35):
    """:func:`rig_figure` for a class folder: training poses from transforms.json, test poses from
    test_poses.json when present (LEGO-MAD). Reads no images."""
    from splatlab.cameras import focal_from_fov, intrinsics, opengl_c2w_to_viewmat
    from splatlab.data.mad import image_size, load_test_poses, read_transforms

    class_dir = Path(class_dir)
    angle, frames = read_transforms(class_dir)
    W, H = image_size(frames[0][0])
    viewmats = opengl_c2w_to_viewmat(torch.stack([c2w for _, c2w in frames])).float()
    train = Cameras(viewmats, intrinsics(focal_from_fov(angle, W), W, H, n=len(frames)), W, H)
    test, labels = None, None
    if (class_dir / "test_poses.json").is_file():
        poses = load_test_poses(class_dir)
        test, labels = poses.cameras, [Path(p).parent.name for p in poses.paths]
    return rig_figure(
        train, test, labels, points, depth, title=f"{class_dir.name}: camera rig and test poses"
    )


def defect_grid(samples, per_type: int = 4, types: tuple[str, ...] | None = None, outline: str = "red"):
    """A matplotlib grid of test images, one row per defect type, with the mask outlined.

    Args:
        samples: Test samples (``MADClass.test``), each with ``image`` [H, W, 3], ``mask`` [H, W], ``defect``.
        per_type: Images per row.
        types: Row order; by default "good" then the defect types present.
        outline: Colour of the mask outline.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    present = list(dict.fromkeys(s.defect for s in samples))
    rows = list(types) if types is not None else sorted(present, key=lambda k: (k != "good", k))
    if not rows:
        raise ValueError("defect_grid: no samples")
    fig, axes = plt.subplots(len(rows), per_type, figsize=(1.8 * per_type, 1.9 * len(rows)), squeeze=False)
    for r, kind in enumerate(rows):
        chosen = [s for s in samples if s.defect == kind][:per_type]
        for c in range(per_type):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(kind, fontsize=10)
            if c >= len(chosen):
                continue
            s = chosen[c]
            image = s.image.numpy() if torch.is_tensor(s.image) else np.asarray(s.image)
            mask = s.mask.numpy() if torch.is_tensor(s.mask) else np.asarray(s.mask)
            ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=outline, linewidths=0.8)
            ax.set_title(Path(str(s.path)).name, fontsize=7)
    fig.tight_layout()
    return fig
