"""Studies of the realistic look: one knob of the data against detection, with and without a fix.

A study turns one knob of :class:`splatlab.data.pbr.RealismConfig` through a few values. For each value it
generates a dataset (cached under the study's folder, keyed by the value), trains the splats (cached by
:func:`splatlab.train.ensure_trained`: knobs that only change the test views reuse one model) and evaluates
every class once per variant of the evaluation: by default without the fixes adopted for the realistic look
(photometric alignment, :mod:`splatlab.appearance`; division by the expected error,
:mod:`splatlab.expected_error`) and with them.

Knobs:

- ``"roughness"``: the GGX alpha of the plastic's coating, from mirror-like (0.02) to matte (0.5);
- ``"light_change"``: how far the test views' key light differs from the training views', from 0 (the same)
  to 1 (turned by 60° about the vertical, 30 % dimmer, 6500 K → 4000 K);
- ``"noise"``: the sensor noise of every image (training and test).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from splatlab.data.make import MakeConfig, make_dataset
from splatlab.evaluate import EvalConfig, evaluate

log = logging.getLogger(__name__)

KNOBS: tuple[str, ...] = ("roughness", "light_change", "noise")
# label -> EvalConfig fields replaced: the pipeline without the realistic look's fixes, and as adopted
VARIANTS: dict[str, dict] = {
    "without the fixes": {"appearance": "none", "error_floor": None},
    "with the fixes": {},
}


def with_knob(cfg: MakeConfig, knob: str, value: float) -> MakeConfig:
    """``cfg`` with one realism knob set (see the module doc)."""
    r = cfg.realism
    if knob == "roughness":
        r = replace(r, roughness=float(value))
    elif knob == "light_change":
        a = float(value)
        r = replace(
            r,
            test_light_rotation_deg=60.0 * a,
            test_light_strength=1.0 - 0.3 * a,
            test_light_kelvin=6500.0 - 2500.0 * a,
        )
    elif knob == "noise":
        r = replace(r, noise=float(value))
    else:
        raise ValueError(f"knob: unknown {knob!r}; choose one of {', '.join(KNOBS)}")
    return replace(cfg, renderer="mitsuba", realism=r)


def study(
    knob: str,
    values: list[float],
    base: MakeConfig,
    classes: list[str],
    root: str | Path,
    evaluation: EvalConfig | None = None,
    variants: dict[str, dict] | None = None,
    runs_root: str | Path | None = None,
) -> list[dict]:
    """Detection against one knob of the realistic look.

    Args:
        knob: One of :data:`KNOBS`.
        values: The knob's values. [V]
        base: The generator settings the knob is applied to (a small, fast look for teaching).
        classes: Shipped classes to make and evaluate.
        root: Folder of the study's datasets (``{knob}-{value}/``), made on first use.
        evaluation: How each class is evaluated, before each variant's fields replace its own. None: the
            pipeline alone (no baselines, no compared maps, no calibration).
        variants: Label -> ``EvalConfig`` fields to replace; None: :data:`VARIANTS` (without and with the
            fixes).
        runs_root: Where the trained splats are cached.

    Returns:
        One row per (value, variant): knob, value, variant, mean image / pixel AUROC, mean pose AUC@5°,
        seconds per query, and the per-class rows. [V × variants]
    """
    if evaluation is None:
        evaluation = EvalConfig(baselines=False, compare_methods=(), calibration="none")
    variants = VARIANTS if variants is None else variants
    root = Path(root)
    rows = []
    for value in values:
        data = root / f"{knob}-{value:g}"
        if not data.is_dir():
            log.info("making the %s = %g dataset in %s", knob, value, data)
            make_dataset(data, with_knob(base, knob, value), classes=list(classes))
        class_dirs = [data / name for name in classes]
        for label, fields in variants.items():
            summary, _ = evaluate(class_dirs, replace(evaluation, **fields), runs_root, False)
            poses = [c.get("pose_auc", {}).get("5", float("nan")) for c in summary["classes"]]
            rows.append(
                {
                    "knob": knob,
                    "value": float(value),
                    "variant": label,
                    "image_auroc": summary["mean_image_auroc"],
                    "pixel_auroc": summary["mean_pixel_auroc"],
                    "pose_auc5": sum(poses) / len(poses),
                    "seconds_per_query": summary["mean_seconds_per_query"],
                    "classes": summary["classes"],
                }
            )
    return rows


def study_figure(rows: list[dict], metric: str = "image_auroc"):
    """Matplotlib figure: ``metric`` against the knob's value, one line per variant."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        ax.plot([r["value"] for r in mine], [r[metric] for r in mine], "o-", label=label)
    ax.set_xlabel(rows[0]["knob"].replace("_", " "))
    ax.set_ylabel(metric.replace("_", " ").replace("auroc", "AUROC").replace("auc5", "AUC@5°"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def study_table(rows: list[dict]) -> str:
    """The rows of :func:`study` as a plain-text table: value, variant, image / pixel AUROC, pose AUC@5°."""
    width = max(len(r["variant"]) for r in rows)
    lines = [f"{rows[0]['knob']:>12}  {'variant':>{width}}  image AUROC  pixel AUROC  pose AUC@5"]
    for r in rows:
        lines.append(
            f"{r['value']:>12g}  {r['variant']:>{width}}  {r['image_auroc']:11.1f}  {r['pixel_auroc']:11.1f}"
            f"  {r['pose_auc5']:10.1f}"
        )
    return "\n".join(lines)
