"""``splatlab evaluate``: the report folder and --json agree; --pose; benchmarks/detect.py's command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from splatlab.cli import main

FAST = ["--size", "48", "--train-preset", "fast", "--iterations", "40", "--pose-preset", "fast",
        "--max-queries", "3", "--no-baselines", "--compare", "--calibration", "none"]


def test_evaluate_writes_the_report_and_prints_its_summary(small_class, tmp_path, capsys):
    out = tmp_path / "report"
    args = ["evaluate", str(small_class.parent), "--classes", "01Cat", "--runs", str(tmp_path / "runs")]
    assert main([*args, *FAST, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    assert printed["classes"][0]["name"] == "01Cat" and printed["classes"][0]["n"] == 3
    assert printed["mean_image_auroc"] == saved["mean_image_auroc"]
    assert {"README.md", "roc_curves.png", "results.json"} <= {p.name for p in out.iterdir()}
    assert main([*args, *FAST, "--pose", "--json"]) == 0  # the same splats, poses only
    pose = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pose["classes"][0]["n_queries"] == 3 and 0 <= pose["mean_auc20"] <= 100
    assert pose["classes"][0]["second_passes"] == 0  # the fast preset has none
    assert main(["evaluate", str(small_class.parent), "--classes", "99Nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("splatlab evaluate: --classes: unknown ['99Nope']")


def test_benchmark_detect_is_splatlab_evaluate_with_its_old_spellings():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "detect.py"
    spec = importlib.util.spec_from_file_location("bench_detect", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.evaluate_args(["--classes", "01Cat", "--data", "/d", "--json"]) == [
        "evaluate", "/d", "--classes", "01Cat", "--json", "--out", "reports/detect"]
    assert bench.evaluate_args(["--out", "x"]) == ["evaluate", "--out", "x"]
