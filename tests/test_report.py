"""The report folder: written atomically, with the expected files; the figures draw."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
import torch

from splatlab.detect import ClassRun, Detection
from splatlab.report import markdown_report, write_report
from splatlab.viz.anomaly_figures import plot_example_grid, plot_overlay, plot_roc_curves, plot_terms


def _run(name: str, method: str, seed: int) -> ClassRun:
    rng = np.random.default_rng(seed)
    labels = np.array([0, 0, 0, 1, 1, 1])
    masks = np.zeros((6, 16, 16), bool)
    masks[3:, 4:8, 4:8] = True
    maps = rng.random((6, 16, 16)) + 2 * masks
    scores = maps.max(axis=(1, 2))
    t = np.full(6, 0.1)
    run = ClassRun(
        name,
        method,
        scores,
        labels,
        ["good"] * 3 + ["Burrs", "Stains", "Stains"],
        maps,
        masks,
        {"coarse": t, "refine": t, "render": t, "score": t, "total": 4 * t},
    )
    img = torch.rand(16, 16, 3)
    det = Detection(
        img,
        img,
        torch.eye(4),
        torch.from_numpy(maps[3]).float(),
        torch.from_numpy(maps[3]).float(),
        float(scores[3]),
        1.5,
        True,
        {"total": 0.4},
    )
    run.examples, run.example_positions = [det], [3]
    return run


def _summary():
    row = {
        "name": "01Cat",
        "image_auroc": 100.0,
        "pixel_auroc": 99.0,
        "aupro": 95.0,
        "seconds_per_query": 0.4,
        "per_defect": {"Burrs": {"n": 1, "image_auroc": 100.0, "pixel_auroc": 98.0, "aupro": 90.0}},
        "stage_seconds": {"coarse": 0.1, "refine": 0.2},
        "pose_auc": {"10": 80.0},
        "decision": {"tpr": 1.0, "fpr": 0.0, "accuracy": 1.0},
    }
    base = {
        "mean_image_auroc": 70.0,
        "mean_pixel_auroc": 90.0,
        "mean_aupro": 80.0,
        "seconds_per_query": 1.0,
        "classes": [{"name": "01Cat", "image_auroc": 70.0}],
    }
    return {
        "classes": [row],
        "mean_image_auroc": 100.0,
        "mean_pixel_auroc": 99.0,
        "mean_aupro": 95.0,
        "baselines": {"memory_bank": base},
        "meta": {"size": 128},
    }


def test_write_report_is_atomic_and_complete(tmp_path):
    runs = {"01Cat": {"full": _run("01Cat", "full", 0), "memory_bank": _run("01Cat", "memory_bank", 1)}}
    out = write_report(tmp_path / "rep", _summary(), runs)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "examples_01Cat.png",
        "results.json",
        "roc_curves.png",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]  # no temporary folder left behind
    text = (out / "README.md").read_text()
    assert "| 01Cat | 100.0 | 99.0 | 95.0 | 80.0 | 0.40 | 100 / 0 |" in text
    assert "memory bank" in text and "![roc_curves.png](roc_curves.png)" in text
    assert json.loads((out / "results.json").read_text())["mean_aupro"] == 95.0
    for png in ("roc_curves.png", "examples_01Cat.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the modes of ordinary files and folders (tempfile alone would make the folder 0700)
    from splatlab.atomic import dir_mode, file_mode

    assert stat.S_IMODE(out.stat().st_mode) == dir_mode()
    assert all(stat.S_IMODE(p.stat().st_mode) == file_mode() for p in out.iterdir())
    # Writing again replaces the folder as a whole.
    write_report(tmp_path / "rep", dict(_summary(), mean_aupro=1.0))
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["README.md", "results.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_markdown_handles_missing_pixel_metrics():
    s = _summary()
    s["classes"][0]["pixel_auroc"] = float("nan")
    assert "| 01Cat | 100.0 | – |" in markdown_report(s)


def test_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, m = torch.rand(16, 16, 3), torch.rand(8, 8)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8, 4:8] = True
    figs = [
        plot_overlay(img, m, mask, title="x"),
        plot_terms({"rgb": m, "stage1": m * 2}, query=img, reference=img, blur_sigma=1.0),
        plot_roc_curves({"a": ([0.1, 0.2, 0.9], [0, 0, 1]), "b": ([0.5, 0.2, 0.1], [0, 0, 1])}),
        plot_example_grid(
            [{"query": img, "reference": img, "map": m, "mask": mask, "title": "Burrs"}] * 2, vmax=1
        ),
    ]
    assert len(figs[1].axes) == 4 and len(figs[3].axes) == 9  # 8 panels + the one shared colour bar
    assert "a (100.0)" in [t.get_text() for t in figs[2].axes[0].get_legend().get_texts()]
    for f in figs:
        plt.close(f)


def _bar_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_ylabel() for ax in fig.axes]


def test_maps_of_a_class_share_one_scale_with_the_threshold_marked():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splatlab.anomaly import calibrate
    from splatlab.viz.anomaly_figures import PER_IMAGE, MapScale

    g = torch.Generator().manual_seed(0)
    good = 0.1 * torch.rand(6, 8, 8, generator=g)
    cal = calibrate(good, "cosine")
    scale = MapScale.calibrated(cal)
    assert scale.vmin == cal.pixel_median and scale.threshold == cal.threshold
    assert scale.vmax == pytest.approx(cal.pixel_median + 2 * (cal.threshold - cal.pixel_median))
    img = torch.ones(16, 16, 3)
    quiet, loud = good[0], good[0] + 5.0 * cal.threshold  # a good map and a defective one
    rows = [{"query": img, "reference": img, "map": m, "title": t} for m, t in ((quiet, "a"), (loud, "b"))]
    fig = plot_example_grid(rows, scale=scale)
    ims = [ax.images[0] for ax in fig.axes[:8] if ax.images and ax.images[0].get_array().ndim == 2]
    assert len(ims) == 2 and {im.get_clim() for im in ims} == {(scale.vmin, scale.vmax)}  # one scale
    # the good map stays cold: below the threshold colour everywhere; the bad one saturates
    assert float(ims[0].norm(ims[0].get_array()).max()) < 0.5 < float(ims[1].norm(ims[1].get_array()).min())
    assert "threshold" in _bar_texts(fig) and "calibrated scale" in " ".join(_bar_texts(fig))
    per_image = plot_example_grid(rows)
    assert PER_IMAGE in _bar_texts(per_image)  # per-image stretching is labelled as such
    shared = MapScale.shared([quiet, loud])
    assert shared.vmin == 0.0 and shared.vmax == pytest.approx(float(loud.max()))
    for f in (fig, per_image):
        plt.close(f)
