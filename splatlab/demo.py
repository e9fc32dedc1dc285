"""``splatlab demo``: the whole method on the embedded default data, end to end.

Makes the default LEGO-MAD dataset if absent, trains splats of the good object, calibrates a threshold
on held-out good views, detects anomalies in the class's test images, evaluates them against the
ground truth and the baselines, prints the table and writes a report folder.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def demo_cli(
    class_name: str | None = None,
    all: bool = False,
    out: Path = Path("reports/demo"),
    max_queries: int | None = None,
    baselines: bool = True,
    size: int = 128,
) -> int:
    """Run the SplatPose pipeline on the default LEGO-MAD data and print the MAD-style table.

    Args:
        class_name: The class to evaluate, e.g. 01Cat; the first class by default.
        all: Evaluate every class instead of one.
        out: The report folder (markdown table, ROC curves, example maps); replaced atomically.
        max_queries: Test images per class, spread over the defect types; all by default.
        baselines: Also run the coarse-only, nearest-view and memory-bank baselines.
        size: Image size of the generated data and of training.
    """
    from splatlab.data import default_dataset, list_classes
    from splatlab.evaluate import EvalConfig, evaluate
    from splatlab.report import markdown_report, write_report

    fast = os.environ.get("SPLATLAB_FAST") == "1"
    t0 = time.perf_counter()
    log.info("step 1/3: default dataset (generated on first use, about 2 minutes)")
    root = default_dataset(size=size)
    classes = list_classes(root)
    if not all:
        names = [c.name for c in classes]
        wanted = class_name or names[0]
        if wanted not in names:
            raise ValueError(f"--class-name {wanted!r}: unknown class; choose from {names}")
        classes = [c for c in classes if c.name == wanted]
    preset = "fast" if fast else "cpu"
    # the pose preset is splatlab's default (splatlab.pose.default_preset; "fast" under SPLATLAB_FAST=1)
    config = EvalConfig(size=size, train_preset=preset, max_queries=max_queries, baselines=baselines)
    log.info(
        "step 2/3: train (cached under runs/), calibrate and detect on %s", ", ".join(c.name for c in classes)
    )
    summary, runs = evaluate(classes, config)
    summary["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    log.info("step 3/3: report")
    report = write_report(out, summary, runs)
    print(markdown_report(summary))
    print(f"\nReport with ROC curves and example maps: {report}")
    print(f"Total time: {summary['meta']['seconds']:.0f} s")
    return 0
