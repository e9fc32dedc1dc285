"""``splatlab sweep``: file errors name the key; local pool and Ray agree; reruns skip; Ctrl-C resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splatlab.cli import main
from splatlab.sweep import expand, load_sweep, parse_sweep, sweep, view_subset

# A job in seconds, not minutes: 48 px, 40 training steps, the fast pose preset, 3 test images.
BASE = {"train_preset": "fast", "iterations": 40, "size": 48, "max_queries": 3, "baselines": False,
        "compare_methods": [], "pose_preset": "fast", "calibration": "none"}


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """A tiny generated dataset of two classes (48 px, 2 good and 1 per defect test images)."""
    root = tmp_path_factory.mktemp("sweep") / "data"
    args = ["--classes", "01Cat", "02Puppy", "--size", "48", "--test-good", "2", "--test-per-defect", "1"]
    assert main(["data", "make", "--out", str(root), *args]) == 0
    return root


def _write(path: Path, data: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data))
    return path


def _file(tmp_path, data_root, runs, grid, name="sweep.yaml", **base):
    return _write(tmp_path / name, {"name": "ci", "data": str(data_root), "runs": str(runs),
                                    "base": BASE | base, "grid": grid})


def test_bad_sweep_files_give_one_line_naming_the_key(tmp_path, two_classes, capsys):
    cases = {
        "grid.view_fraction[1]": {"grid": {"view_fraction": [1.0, 1.5]}},
        "base.methd": {"base": {"methd": "cosine"}},
        "grid.method[0]": {"grid": {"method": ["nope"]}},
        "base.iterations": {"base": {"iterations": "many"}},
        "grid.pose_preset": {"grid": {"pose_preset": "fast"}},  # a list is needed
        "base.look": {"base": {"look": "real"}},  # data names a folder: no generated look
        "classes": {"classes": ["01Cat", "99Nope"]},
        "colour": {"colour": "red"},
    }
    for key, content in cases.items():
        path = _write(tmp_path / "bad.yaml", {"data": str(two_classes)} | content)
        rc = main(["sweep", str(path), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1, (key, err)
        assert err.startswith(f"splatlab sweep: {path}: {key}"), (key, err)
    (tmp_path / "bad.toml").write_text("grid = [")
    assert main(["sweep", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "out")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_toml_and_yaml_give_the_same_jobs_and_keys_follow_the_config(tmp_path, two_classes):
    yaml_file = _file(tmp_path, two_classes, tmp_path / "runs", {"method": ["cosine", "splatpose"]})
    toml_text = (
        f'name = "ci"\ndata = "{two_classes}"\nruns = "{tmp_path / "runs"}"\n'
        "[base]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in BASE.items())
        + '[grid]\nmethod = ["cosine", "splatpose"]\n'
    )
    (tmp_path / "s.toml").write_text(toml_text)
    a, b = expand(load_sweep(yaml_file), tmp_path), expand(load_sweep(tmp_path / "s.toml"), tmp_path)
    assert [j.key for j in a] == [j.key for j in b] and len(a) == 4
    order = [(j.setting, j.class_name) for j in a][:2]
    assert order == [("method=cosine", "01Cat"), ("method=cosine", "02Puppy")]
    other = expand(parse_sweep({"data": str(two_classes), "base": BASE | {"iterations": 41}}), tmp_path)
    assert not {j.key for j in other} & {j.key for j in a}  # another training length: other jobs


def test_view_subset_keeps_evenly_spread_frames_and_links_the_rest(tmp_path, two_classes):
    from splatlab.data import load_mad_class

    full = load_mad_class(two_classes / "01Cat")
    sub = view_subset(two_classes / "01Cat", 0.1, tmp_path / "views")
    part = load_mad_class(sub)
    assert len(part.train.images) == round(0.1 * len(full.train.images))
    assert len(part.test) == len(full.test)
    first = part.train.images[0]
    assert (first == full.train.images[0]).all() and (part.train.images[-1] == full.train.images[-1]).all()
    assert view_subset(two_classes / "01Cat", 1.0, tmp_path / "views") == two_classes / "01Cat"


def test_local_pool_and_ray_give_identical_results_and_a_rerun_runs_nothing(tmp_path, two_classes):
    ray = pytest.importorskip("ray")
    grid = {"view_fraction": [1.0, 0.5]}
    local = sweep(_file(tmp_path, two_classes, tmp_path / "runs-local", grid), tmp_path / "local",
                  workers=2, progress=False)
    assert local["executed"] == 4 and local["jobs"]["ok"] == 4, local["failed"]
    again = sweep(_file(tmp_path, two_classes, tmp_path / "runs-local", grid), tmp_path / "local",
                  workers=2, progress=False)
    assert again["executed"] == 0 and again["skipped"] == 4
    assert again["metrics"] == local["metrics"]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # other runs root: Ray's jobs train their own splats
        on_ray = sweep(_file(tmp_path, two_classes, tmp_path / "runs-ray", grid), tmp_path / "ray",
                       ray="auto", progress=False)
    finally:
        ray.shutdown()
    assert on_ray["executed"] == 4 and on_ray["jobs"]["ok"] == 4, on_ray["failed"]
    assert on_ray["metrics"] == local["metrics"] and on_ray["means"] == local["means"]
    hosts = {json.loads(p.read_text())["pid"] for p in (tmp_path / "ray" / "jobs").glob("*.json")}
    assert os.getpid() not in hosts  # the jobs ran in Ray's workers
    report = (tmp_path / "local" / "README.md").read_text()
    assert "| view_fraction=0.5 |" in report and "01Cat" in report
    assert (tmp_path / "local" / "image_auroc.png").stat().st_size > 1000
    merged = json.loads((tmp_path / "local" / "results.json").read_text())
    assert merged["metrics"] == local["metrics"]


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path, two_classes):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(two_classes, data)
    (data / "02Puppy" / "test" / "good" / "0.png").write_bytes(b"not a png")  # 02Puppy's job fails
    merged = sweep(_file(tmp_path, data, tmp_path / "runs", {}), tmp_path / "out", workers=1, progress=False)
    assert merged["jobs"]["ok"] == 1 and merged["jobs"]["failed"] == 1
    assert merged["failed"][0]["class"] == "02Puppy" and "0.png" in merged["failed"][0]["error"]
    assert "Failed jobs" in (tmp_path / "out" / "README.md").read_text()


def test_sigint_midway_loses_only_the_job_in_flight_and_a_rerun_resumes(tmp_path, two_classes):
    grid = {"method": ["cosine", "splatpose"]}  # 4 jobs, one at a time
    path = _file(tmp_path, two_classes, tmp_path / "runs", grid)
    jobs = tmp_path / "out" / "jobs"
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "splatlab.cli", "sweep", str(path), "--out", str(tmp_path / "out"),
         "--workers", "1", "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        # a runner started in the background (`cmd &`) ignores SIGINT, and children inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 600
    while not (jobs.is_dir() and any(jobs.glob("*.json"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no job finished in 10 minutes"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    done = len(list(jobs.glob("*.json")))
    assert 1 <= done < 4
    assert "Interrupted" in (tmp_path / "out" / "README.md").read_text()
    merged = sweep(path, tmp_path / "out", workers=2, progress=False)
    assert merged["skipped"] == done and merged["executed"] == 4 - done
    assert merged["jobs"]["ok"] == 4
