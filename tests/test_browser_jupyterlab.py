"""Notebook 04's step scrubber in a live JupyterLab, as a student meets it: headless Chromium, Playwright.

nbmake runs the notebooks' cells but never draws a widget. Here a ``jupyter lab`` server (127.0.0.1, a free
port, a one-off token, its config, data, runtime and settings folders in a temporary folder) serves a copy of
notebook 04; Chromium opens it, runs every cell in fast mode, drags the ``StepScrubber`` slider to its last
step, and the shown render must change. Skipped where Chromium, Playwright or JupyterLab is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import browser_or_skip
from splatlab.viz.viewer import free_port

pytestmark = pytest.mark.browser

CHROMIUM = browser_or_skip("jupyterlab", "ipywidgets")
from playwright import sync_api as playwright  # noqa: E402 (only where it is installed)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_pose_optimization.ipynb"
RUN_ALL_TIMEOUT_S = 900  # fast mode takes ~20 s, plus ~2 min where the default dataset is made on first use
SERVER_TIMEOUT_S = 120
# The scrubber's parts, by the CSS classes StepScrubber gives them (splatlab/viz/widgets.py) and by
# ipywidgets 8's slider (noUiSlider). The first scrubber in the notebook is the one tested (querySelector and
# Playwright's .first agree on document order).
SCRUBBER = ".splatlab-step-scrubber"
RENDER = f"{SCRUBBER} img.splatlab-step-render"
HANDLE = f"{SCRUBBER} .widget-slider .noUi-handle"
TRACK = f"{SCRUBBER} .widget-slider .noUi-target"
CAPTION = f"{SCRUBBER} > .widget-html:last-child"

# JupyterLab user settings (in the temporary settings folder): no news or update toasts over the page, and
# every cell kept in the DOM (no windowing) so the widget is there to find.
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _served_copy(folder: Path) -> str:
    """Notebook 04 copied into ``folder`` without its ``skip-execution`` cells (as nbmake skips them), so the
    server's autosave never writes into the repository. Returns the copy's name."""
    nb = json.loads(NOTEBOOK.read_text())
    nb["cells"] = [c for c in nb["cells"] if "skip-execution" not in c.get("metadata", {}).get("tags", [])]
    (folder / NOTEBOOK.name).write_text(json.dumps(nb))
    return NOTEBOOK.name


def _get(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.status


def _stop(proc: subprocess.Popen, base: str | None, token: str) -> None:
    """Shut the server down through its API (which stops its kernels), else signal its process group."""
    if proc.poll() is None and base is not None:
        try:
            req = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10).close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server serving a copy of notebook 04 with ``SPLATLAB_FAST=1`` in its environment.

    Yields (base URL, token, notebook name). The server's own output goes to ``tmp_path/server.log``.
    """
    root, home = tmp_path / "root", tmp_path / "jupyter"
    root.mkdir()
    name = _served_copy(root)
    settings = home / "lab" / "user-settings"
    for rel, values in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(values))
    env = {
        **os.environ,
        "SPLATLAB_FAST": "1",
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "lab" / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    token = secrets.token_hex(24)
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={free_port()}",
        "--ServerApp.port_retries=20",  # should another process take the port first; the info file says which
        f"--IdentityProvider.token={token}",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run the cells by JupyterLab's own command
        *(["--allow-root"] if os.geteuid() == 0 else []),  # CI containers run as root
    ]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed in the finally block)
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group, for the last resort in _stop
    info, base = home / "runtime" / f"jpserver-{proc.pid}.json", None
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log_text = (tmp_path / "server.log").read_text()
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_text}", pytrace=False)
            if base is None and info.is_file():
                with contextlib.suppress(ValueError):  # being written
                    base = f"http://127.0.0.1:{json.loads(info.read_text())['port']}"
            if base is not None:
                with contextlib.suppress(OSError):
                    if _get(f"{base}/api/status", token) == 200:
                        break
            if time.monotonic() > deadline:
                log_text = (tmp_path / "server.log").read_text()
                pytest.fail(f"jupyter lab not up after {SERVER_TIMEOUT_S} s:\n{log_text}", pytrace=False)
            time.sleep(0.5)
        yield base, token, name
    finally:
        _stop(proc, base, token)
        log.close()


def _image(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _shown_render(page) -> tuple[str, np.ndarray]:
    """The render image's src and its pixels as drawn, once that src has been decoded."""
    src = page.evaluate("async s => { const i = document.querySelector(s); await i.decode(); return i.src; }",
                        RENDER)
    return src, _image(page.locator(RENDER).first.screenshot())


def _errors(nb: dict) -> list[str]:
    out = []
    for i, cell in enumerate(nb["cells"]):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append(f"cell {i}: {o['ename']}: {o['evalue']}")
    return out


def test_step_scrubber_slider_changes_the_render(jupyter_lab):
    base, token, name = jupyter_lab
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(SERVER_TIMEOUT_S * 1000)
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            # the notebook is open and its kernel started and idle
            page.wait_for_function(
                "path => { const w = window.jupyterapp?.shell.currentWidget; "
                "return w?.context?.path === path && w.sessionContext.isReady "
                "&& w.sessionContext.session?.kernel?.status === 'idle'; }",
                arg=name)
            # Run > Run All Cells; the command's promise settles when every cell has run (true: no error)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')"
                          ".then(ok => { window.__runAll = ok; }, e => { window.__runAll = String(e); })")
            page.wait_for_function("window.__runAll !== undefined", timeout=RUN_ALL_TIMEOUT_S * 1000,
                                   polling=1000)
            ran = page.evaluate("window.__runAll")
            nb = page.evaluate("window.jupyterapp.shell.currentWidget.content.model.toJSON()")
            code = [c for c in nb["cells"] if c["cell_type"] == "code"]
            assert ran is True and _errors(nb) == [], (ran, _errors(nb), page_errors)
            assert all(c["execution_count"] for c in code), "not every cell ran"

            # the scrubber as drawn: slider at step 0, its render loaded
            page.locator(SCRUBBER).first.scroll_into_view_if_needed()
            handle = page.locator(HANDLE).first
            assert handle.get_attribute("aria-valuenow").startswith("0")
            last = round(float(handle.get_attribute("aria-valuemax")))
            assert last > 0
            caption = page.locator(CAPTION).first
            assert caption.inner_text().startswith(f"step 0 / {last}")
            src0, before = _shown_render(page)

            # drag the handle past the track's right end, as a student would
            h, track = handle.bounding_box(), page.locator(TRACK).first.bounding_box()
            page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
            page.mouse.down()
            page.mouse.move(track["x"] + track["width"] + 40, h["y"] + h["height"] / 2, steps=12)
            page.mouse.up()

            # the kernel got the new value and sent back the caption and the render of the last step
            try:
                page.wait_for_function("([s, text]) => document.querySelector(s)?.innerText.startsWith(text)",
                                       arg=[CAPTION, f"step {last} / {last}"])
            except playwright.TimeoutError:
                pytest.fail(f"the slider moved to {handle.get_attribute('aria-valuenow')} in the page but "
                            f"the kernel did not answer; caption: {caption.inner_text()!r}")
            page.wait_for_function("([s, src]) => document.querySelector(s)?.src !== src", arg=[RENDER, src0])
            src1, after = _shown_render(page)
        finally:
            browser.close()
    assert src1 != src0
    assert before.shape == after.shape
    changed = np.abs(after - before).sum(-1) > 30
    # the fast model's pose moves a few degrees over its few steps: about 4 % of the pixels change
    assert changed.mean() > 0.01, f"only {changed.mean():.2%} of the render's pixels changed"
