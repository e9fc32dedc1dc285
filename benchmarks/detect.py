"""Benchmark of the whole detection pipeline and its baselines: a thin caller of ``splatlab evaluate``.

    python benchmarks/detect.py --json                          # every class, every test image
    python benchmarks/detect.py --classes 01Cat --max-queries 12 # a quick look

The same options as ``splatlab evaluate`` (``--help``), with two differences kept for older command lines:
the report goes to ``reports/detect`` unless ``--out`` says otherwise, and ``--data DIR`` is the command's
positional ``DATA``. Per class: train splats where absent (``ensure_trained``, cpu preset, 128²; runs are
cached under ``runs/``), calibrate a threshold on held-out good training views, then run every selected
test image through the full pipeline (``--method cosine`` by default; SplatPose's recipe is scored on the
same poses and references too, ``--compare``) and three baselines: coarse pose only, the nearest training
view, a PatchCore-style memory bank (:mod:`splatlab.evaluate`).

Metrics (:mod:`splatlab.metrics`, percent): image AUROC, pixel AUROC, AUPRO to FPR 0.3, per defect type, and
the pose AUC against ``test_poses.json`` (evaluation only). A report folder (markdown, ROC curves, example
maps, results.json) is written to ``--out``. With ``--json`` the last stdout line is one JSON object.
Timings depend on the machine's load (shared CPUs); the JSON records the load average.

The development split used to choose methods and settings is ``splatlab data make --out ../devdata
--seed 1 --test-good 30 --test-per-defect 10``: new test poses and defects, the same training views as the
default data (the rig does not depend on the seed), so the trained runs are reused.
"""

from __future__ import annotations

import sys


def evaluate_args(argv: list[str]) -> list[str]:
    """This script's command line as ``splatlab evaluate``'s: ``--data DIR`` -> ``DIR``, ``--out`` set."""
    argv = list(argv)
    if "--data" in argv:
        i = argv.index("--data")
        if i + 1 >= len(argv):
            raise SystemExit("--data: expected a dataset folder")
        argv = [argv[i + 1]] + argv[:i] + argv[i + 2 :]  # first: an option's list could take it
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "reports/detect"]
    return ["evaluate", *argv]


def main(argv=None) -> int:
    from splatlab.cli import main as cli_main

    return cli_main(evaluate_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
