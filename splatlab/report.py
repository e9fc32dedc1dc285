"""A benchmark report folder: markdown tables, ROC curves and example maps, written atomically.

Layout of ``write_report(out_dir, summary, runs)``::

    out_dir/
      README.md             per-class table (+ mean) of the pipeline, baselines, per-defect, stage times
      results.json          the summary as given (the benchmark's JSON)
      roc_curves.png        image-level ROC per class, one curve per method
      examples_<class>.png  query | reference | anomaly map | ground truth for a few test images, the maps
                            of a class on one colour scale (its calibration's, threshold marked)

The folder is assembled in a temporary sibling and renamed into place, so a reader never sees a half
written report; an existing report at ``out_dir`` is replaced.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

METHOD_TITLES = {
    "full": "SplatPose (full)",
    "coarse": "coarse pose only",
    "nearest": "nearest training view",
    "memory_bank": "memory bank (PatchCore-style)",
    # the same methods under the benchmark JSON's keys
    "coarse_only": "coarse pose only",
    "nearest_view": "nearest training view",
}


def _fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def markdown_report(summary: Mapping) -> str:
    """The README of a report, from the benchmark summary (see ``benchmarks/detect.py``)."""
    lines = ["# Anomaly detection benchmark", ""]
    meta = summary.get("meta", {})
    if meta:
        lines += ["Settings: " + ", ".join(f"{k} = `{v}`" for k, v in meta.items()), ""]
    classes = summary.get("classes", [])
    lines += [
        "## Full pipeline per class",
        "",
        "| class | image AUROC | pixel AUROC | AUPRO@0.3 | pose AUC@10° | s / query | decision TPR / FPR |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in classes:
        pose = c.get("pose_auc", {}).get("10")
        dec = c.get("decision")
        dec_s = f"{_fmt(100 * dec['tpr'], 0)} / {_fmt(100 * dec['fpr'], 0)}" if dec else "–"
        lines.append(
            f"| {c['name']} | {_fmt(c['image_auroc'])} | {_fmt(c['pixel_auroc'])} | {_fmt(c['aupro'])} | "
            f"{_fmt(pose)} | {_fmt(c.get('seconds_per_query'), 2)} | {dec_s} |"
        )
    lines.append(
        f"| **mean** | **{_fmt(summary.get('mean_image_auroc'))}** | "
        f"**{_fmt(summary.get('mean_pixel_auroc'))}** | **{_fmt(summary.get('mean_aupro'))}** | | | |"
    )
    lines += [
        "",
        "AUROC, AUPRO and pose AUC in percent. Decision: share of defective (TPR) and good (FPR) test",
        "images above the threshold calibrated on held-out good training views only.",
        "",
    ]
    baselines = summary.get("baselines", {})
    if baselines:
        lines += [
            "## Baselines on the same images (mean over classes)",
            "",
            "| method | image AUROC | pixel AUROC | AUPRO@0.3 | s / query |",
            "|---|---:|---:|---:|---:|",
            f"| {METHOD_TITLES['full']} | {_fmt(summary.get('mean_image_auroc'))} | "
            f"{_fmt(summary.get('mean_pixel_auroc'))} | {_fmt(summary.get('mean_aupro'))} | "
            f"{_fmt(_mean([c.get('seconds_per_query') for c in classes]), 2)} |",
        ]
        for name, b in baselines.items():
            lines.append(
                f"| {METHOD_TITLES.get(name, name)} | {_fmt(b.get('mean_image_auroc'))} | "
                f"{_fmt(b.get('mean_pixel_auroc'))} | {_fmt(b.get('mean_aupro'))} | "
                f"{_fmt(b.get('seconds_per_query'), 2)} |"
            )
        lines += [
            "",
            "| class | " + " | ".join(METHOD_TITLES.get(n, n) for n in ["full", *baselines]) + " |",
            "|---|" + "---:|" * (1 + len(baselines)),
        ]
        for c in classes:
            row = [_fmt(c["image_auroc"])]
            for b in baselines.values():
                per = {x["name"]: x for x in b.get("classes", [])}
                row.append(_fmt(per.get(c["name"], {}).get("image_auroc")))
            lines.append(f"| {c['name']} | " + " | ".join(row) + " |")
        lines += ["", "(image AUROC per class)", ""]
    maps = summary.get("maps", {})
    if len(maps) > 1:
        lines += [
            "## Anomaly maps on the same poses and references (mean over classes)",
            "",
            "| map | image AUROC | pixel AUROC | AUPRO@0.3 |",
            "|---|---:|---:|---:|",
        ]
        for method, m in maps.items():
            lines.append(
                f"| `{method}` | {_fmt(m.get('mean_image_auroc'))} | {_fmt(m.get('mean_pixel_auroc'))} | "
                f"{_fmt(m.get('mean_aupro'))} |"
            )
        lines += ["", "(the first row is the pipeline's own map; see `splatlab.anomaly` for each method)", ""]
    defects = sorted({d for c in classes for d in c.get("per_defect", {})})
    if defects:
        lines += [
            "## Per defect type (full pipeline; image / pixel AUROC / AUPRO)",
            "",
            "| class | " + " | ".join(defects) + " |",
            "|---|" + "---:|" * len(defects),
        ]
        for c in classes:
            cells = []
            for d in defects:
                r = c.get("per_defect", {}).get(d)
                cells.append(
                    "–"
                    if r is None
                    else " / ".join(_fmt(r.get(k)) for k in ("image_auroc", "pixel_auroc", "aupro"))
                )
            lines.append(f"| {c['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    stages = sorted(
        {s for c in classes for s in c.get("stage_seconds", {})},
        key=lambda s: (
            ["coarse", "hypotheses", "refine", "render", "score"].index(s)
            if s in ("coarse", "hypotheses", "refine", "render", "score")
            else 9
        ),
    )
    if stages:
        lines += [
            "## Seconds per query and stage (full pipeline)",
            "",
            "| class | " + " | ".join(stages) + " |",
            "|---|" + "---:|" * len(stages),
        ]
        for c in classes:
            lines.append(
                f"| {c['name']} | "
                + " | ".join(_fmt(c.get("stage_seconds", {}).get(s), 3) for s in stages)
                + " |"
            )
        lines.append("")
    figures = summary.get("figures", [])
    if figures:
        lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else float("nan")


def write_report(
    out_dir: str | os.PathLike,
    summary: Mapping,
    runs: Mapping[str, Mapping[str, object]] | None = None,
    dpi: int = 110,
) -> Path:
    """Write a report folder atomically (build in a temporary sibling, then rename).

    Args:
        out_dir: The report folder; replaced if it exists. Its parent is created.
        summary: The benchmark summary: "classes" (per-class metric dicts), "mean_*", "baselines", "meta".
        runs: Per class, per method, a :class:`splatlab.detect.ClassRun`, for ROC curves and example maps.
        dpi: Resolution of the PNGs.

    Returns:
        ``out_dir``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # a no-op where a backend is already active (notebooks)
    import matplotlib.pyplot as plt

    from splatlab.atomic import replace_dir
    from splatlab.viz.anomaly_figures import plot_roc_curves, plot_run_examples

    out = Path(out_dir).expanduser().resolve()
    with replace_dir(out) as tmp:
        figures = []
        runs = runs or {}
        if runs:
            n = len(runs)
            cols = min(n, 3)
            fig, axes = plt.subplots(
                (n + cols - 1) // cols,
                cols,
                figsize=(3.8 * cols, 3.5 * ((n + cols - 1) // cols)),
                squeeze=False,
            )
            for ax, (cname, methods) in zip(axes.ravel(), runs.items(), strict=False):
                curves = {METHOD_TITLES.get(m, m): (r.scores, r.labels) for m, r in methods.items()}
                plot_roc_curves(curves, ax=ax, title=cname)
            for ax in axes.ravel()[n:]:
                ax.set_axis_off()
            fig.tight_layout()
            fig.savefig(tmp / "roc_curves.png", dpi=dpi)
            plt.close(fig)
            figures.append("roc_curves.png")
            for cname, methods in runs.items():
                run = methods.get("full") or next(iter(methods.values()))
                fig = plot_run_examples(run)  # the class's maps on its calibrated scale
                if fig is not None:
                    fig.savefig(tmp / f"examples_{cname}.png", dpi=dpi)
                    plt.close(fig)
                    figures.append(f"examples_{cname}.png")
        full = dict(summary, figures=figures)
        (tmp / "README.md").write_text(markdown_report(full))
        (tmp / "results.json").write_text(json.dumps(summary, indent=1, default=_json_default))
    log.info("wrote report %s", out)
    return out


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ----------------------------------------------------------------------------------------------------------
# The merged report of a sweep (splatlab.sweep)
# ----------------------------------------------------------------------------------------------------------

SWEEP_METRICS = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO@0.3",
    "pose_auc5": "pose AUC@5°",
}


def sweep_markdown(merged: Mapping) -> str:
    """The README of a sweep folder: per metric a table of settings × classes with the mean over classes."""
    classes = merged["classes"]
    jobs = merged["jobs"]
    lines = [f"# Sweep: {merged['name']}", "", f"From `{merged['file']}`: {jobs['total']} jobs, {jobs['ok']} "
             f"finished, {jobs['failed']} failed, {jobs['missing']} not run."]
    if merged.get("interrupted"):
        lines[-1] += " **Interrupted**: rerun the same command to run the rest."
    lines.append("")
    for key, title in SWEEP_METRICS.items():
        if not any(row.get(key) is not None for per in merged["metrics"].values() for row in per.values()):
            continue
        lines += [f"## {title}", "", "| setting | " + " | ".join(classes) + " | **mean** |",
                  "|---|" + "---:|" * (len(classes) + 1)]
        for s in merged["settings"]:
            per = merged["metrics"][s["name"]]
            cells = [_fmt(per.get(c, {}).get(key)) for c in classes]
            mean = _fmt(merged["means"][s["name"]][key])
            lines.append(f"| {s['name']} | " + " | ".join(cells) + f" | **{mean}** |")
        lines.append("")
    lines += ["Percent; the mean is over the classes that finished (–: failed or not run).", ""]
    if merged["failed"]:
        lines += ["## Failed jobs", "", "| setting | class | error |", "|---|---|---|"]
        lines += [f"| {f['setting']} | {f['class']} | {f['error'].replace('|', '/')} |"
                  for f in merged["failed"]]
        lines.append("")
    seconds = [t["job_seconds"] for per in merged["timings"].values() for t in per.values()
               if t.get("job_seconds")]
    if seconds:
        lines += [f"Seconds per job: mean {_fmt(_mean(seconds))}, total {_fmt(sum(seconds), 0)} "
                  "(the machine's load included).", ""]
    if merged.get("figures"):
        lines += [f"![{f}]({f})" for f in merged["figures"]] + [""]
    return "\n".join(lines)


def plot_sweep(merged: Mapping, metric: str = "image_auroc", ax=None):
    """A metric per setting, one line per class and the mean in black.

    With one varying numeric knob (e.g. ``view_fraction``) its value is the x axis; otherwise the settings
    are placed side by side in the file's order. Returns the figure.
    """
    import matplotlib.pyplot as plt

    settings = merged["settings"]
    varying = merged["varying"]
    knob = [s["values"].get(varying[0]) for s in settings] if len(varying) == 1 else []
    numeric = bool(knob) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in knob)
    if numeric:
        x = [float(s["values"][varying[0]]) for s in settings]
        xlabel = varying[0]
    else:
        x = list(range(len(settings)))
        xlabel = "setting"
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.6))
    else:
        fig = ax.figure
    for c in merged["classes"]:
        y = [merged["metrics"][s["name"]].get(c, {}).get(metric) for s in settings]
        y = [float("nan") if v is None else v for v in y]
        ax.plot(x, y, "o-", lw=1, ms=3, alpha=0.8, label=c)
    ax.plot(x, [_nan(merged["means"][s["name"]][metric]) for s in settings], "s-", color="k", lw=2.2,
            label="mean")
    if not numeric:
        ax.set_xticks(x, [s["name"] for s in settings], rotation=20, ha="right", fontsize=7)
    ax.set(xlabel=xlabel, ylabel=SWEEP_METRICS.get(metric, metric), title=merged["name"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _nan(x):
    return float("nan") if x is None else x


def write_sweep_report(out_dir: str | os.PathLike, merged: Mapping, dpi: int = 110) -> Path:
    """Write a sweep's ``README.md``, ``results.json`` and ``image_auroc.png`` in its folder, atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from splatlab.atomic import open_atomic, write_json, write_text

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if merged["jobs"]["ok"]:
        fig = plot_sweep(merged)
        with open_atomic(out / "image_auroc.png") as f:
            fig.savefig(f, format="png", dpi=dpi)
        plt.close(fig)
        figures.append("image_auroc.png")
    merged = dict(merged, figures=figures)
    write_json(out / "results.json", merged, indent=1, default=_json_default)
    write_text(out / "README.md", sweep_markdown(merged))
    log.info("wrote sweep report %s", out / "README.md")
    return out


__all__ = ["METHOD_TITLES", "markdown_report", "plot_sweep", "sweep_markdown", "write_report",
           "write_sweep_report"]
