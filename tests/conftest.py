import pytest
import torch

from splatlab.cameras import intrinsics, look_at, spherical_eye


@pytest.fixture
def two_cameras():
    """Two cameras 3–3.5 units from the origin, looking at it: (viewmats [2,4,4], Ks [2,3,3], W, H)."""
    eye = spherical_eye(torch.tensor([0.0, 90.0]), torch.tensor([20.0, -10.0]), torch.tensor([3.0, 3.5]))
    return look_at(eye), intrinsics(60.0, 40, 32, n=2), 40, 32


def random_gaussians(n: int, seed: int = 0, dtype=torch.float32, spread: float = 0.4):
    """Random activated Gaussian parameters (means, quats, scales, opacities, colours)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.randn(n, 3, generator=g) * spread).to(dtype)
    quats = torch.randn(n, 4, generator=g).to(dtype)
    scales = (torch.rand(n, 3, generator=g) * 0.08 + 0.02).to(dtype)
    opacities = (torch.rand(n, generator=g) * 0.85 + 0.1).to(dtype)
    colors = torch.rand(n, 3, generator=g).to(dtype)
    return means, quats, scales, opacities, colors


@pytest.fixture(scope="session")
def small_class(tmp_path_factory):
    """A tiny generated LEGO-MAD class (01Cat, 48 px, 2 good and 1 per defect test images). Do not modify."""
    from splatlab.cli import main

    root = tmp_path_factory.mktemp("lego") / "data"
    args = ["--classes", "01Cat", "--size", "48", "--test-good", "2", "--test-per-defect", "1"]
    assert main(["data", "make", "--out", str(root), *args]) == 0
    return root / "01Cat"


@pytest.fixture(scope="session")
def small_run(small_class, tmp_path_factory):
    """A run folder of ``small_class`` (fast preset, 40 steps, 48 px), with retrieval cache and a calibration
    made under SPLATLAB_FAST=1. Copy it before changing anything in it."""
    from splatlab.cli import main
    from splatlab.detect import load_detector

    run = tmp_path_factory.mktemp("runs") / "01Cat-fast"
    args = ["--out", str(run), "--preset", "fast", "--iterations", "40", "--size", "48"]
    assert main(["train", str(small_class), *args]) == 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPLATLAB_FAST", "1")
        load_detector(run).calibrate()
    return run


def browser_or_skip(*modules: str) -> str:
    """The system Chromium's path, for the browser tests; call at module level.

    Skips the module where Chromium, Playwright or one of ``modules`` is missing, and fails it instead when
    ``SPLATLAB_REQUIRE_BROWSER=1`` (CI sets it: there a skipped browser test would pass unnoticed).
    """
    import importlib.util
    import os
    import shutil

    missing = [m for m in ("playwright", *modules) if importlib.util.find_spec(m) is None]
    names = ("chromium", "chromium-browser", "google-chrome")
    chromium = next((p for p in map(shutil.which, names) if p), None)
    if chromium is None:
        missing.append("Chromium (apt-get install chromium)")
    if missing:
        reason = f"browser test needs {', '.join(missing)}"
        if os.environ.get("SPLATLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (SPLATLAB_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return chromium
