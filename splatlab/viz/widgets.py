"""ipywidgets helpers for the notebooks: a step scrubber for pose refinement and a threshold slider.

Both are plain objects holding their widgets; a notebook shows one by leaving it as the last expression of a
cell. Moving a slider calls :meth:`update`, which redraws the images as PNG bytes, so everything works (and
is testable) without a browser::

    StepScrubber(query, renders, losses, render_steps=steps, rot_errors=rot)     # notebook 04
    ThresholdSlider(query, amap, threshold=calib.threshold, mask=sample.mask)    # notebook 05
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch

from splatlab.viz.display import heat_overlay, png_bytes


def _as_images(x, name: str) -> np.ndarray:
    arr = np.asarray(torch.as_tensor(x).detach().float().cpu(), dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"{name} must be [H, W, 3] or [M, H, W, 3], got {tuple(arr.shape)}")
    return arr


def _renders_at(renders, render_steps, height: int, width: int) -> tuple[np.ndarray, list[int] | None]:
    """A ``{step: image}`` dict or an image stack as one stack at (height, width) (bilinear resize), and the
    steps (from the dict's keys, else ``render_steps``)."""
    if isinstance(renders, dict):
        if render_steps is not None:
            raise ValueError("render_steps comes from the keys when renders is a {step: image} dict")
        render_steps = sorted(int(k) for k in renders)
        renders = [renders[k] for k in sorted(renders)]
    if len(renders) == 0:
        raise ValueError("renders is empty: keep renders when refining to scrub them")
    out = []
    for i, r in enumerate(renders):
        img = _as_images(r, f"renders[{i}]")
        if img.shape[1:3] != (height, width):
            t = torch.from_numpy(img).permute(0, 3, 1, 2)
            t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)
            img = t.permute(0, 2, 3, 1).clamp(0, 1).numpy()
        out.append(img)
    return np.concatenate(out), None if render_steps is None else [int(k) for k in render_steps]


def _as_vector(x, n: int, name: str) -> np.ndarray | None:
    if x is None:
        return None
    arr = np.asarray(torch.as_tensor(x).detach().double().cpu()).reshape(-1)
    if len(arr) != n:
        raise ValueError(f"{name} must have one value per step ({n}), got {len(arr)}")
    return arr


class _Shown:
    """Shared display plumbing: the object shows its ``widget`` in a notebook."""

    widget = None

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class StepScrubber(_Shown):
    """A slider over the steps of a pose refinement: render, difference with the query, loss curve.

    Args:
        target: The query image being matched, float in [0, 1]. [H, W, 3]
        renders: Renders kept during the refinement (at some or all steps), or a ``{step: render}`` dict;
            other sizes (pyramid steps) are resized to the target's. [M, h, w, 3]
        losses: Loss at every step. [T]
        render_steps: The step of each render, increasing; ``range(T)`` when M == T. [M]
        rot_errors: Rotation error in degrees at every step, plotted beside the loss when given. [T]
        trans_errors: Translation error at every step, shown in the caption when given. [T]
        diff_vmax: Difference shown brightest; the largest difference over all renders when None.
        size: Displayed width of each image in pixels.
    """

    def __init__(self, target, renders, losses, *, render_steps: Sequence[int] | None = None, rot_errors=None,
                 trans_errors=None, diff_vmax: float | None = None, size: int = 224):
        import ipywidgets as w

        self.target = _as_images(target, "target")[0]
        self.renders, render_steps = _renders_at(renders, render_steps, *self.target.shape[:2])
        self.losses = np.asarray(torch.as_tensor(losses).detach().double().cpu()).reshape(-1)
        T, M = len(self.losses), len(self.renders)
        if T == 0:
            raise ValueError("losses is empty: nothing to scrub")
        if render_steps is None:
            if M != T:
                raise ValueError(f"give render_steps: {M} renders for {T} steps")
            render_steps = range(T)
        self.render_steps = np.asarray(list(render_steps), dtype=np.int64)
        if len(self.render_steps) != M or np.any(np.diff(self.render_steps) <= 0) \
                or self.render_steps[0] < 0 or self.render_steps[-1] >= T:
            raise ValueError(f"render_steps must be {M} increasing steps in [0, {T - 1}]")
        self.rot_errors = _as_vector(rot_errors, T, "rot_errors")
        self.trans_errors = _as_vector(trans_errors, T, "trans_errors")
        self.diffs = np.abs(self.renders - self.target[None]).mean(-1)  # [M, H, W]
        self.diff_vmax = float(diff_vmax) if diff_vmax is not None else max(float(self.diffs.max()), 1e-6)
        self._figure, self._markers = self._loss_figure()
        self._shown_render = -1

        image = dict(format="png", width=size)
        self.render_image, self.diff_image = w.Image(**image), w.Image(**image)
        self.target_image = w.Image(value=png_bytes(self.target), **image)
        self.curve_image = w.Image(format="png")
        self.caption = w.HTML()
        self.slider = w.IntSlider(value=0, min=0, max=T - 1, description="step", continuous_update=True)
        self.play = w.Play(value=0, min=0, max=T - 1, interval=100)
        w.jslink((self.play, "value"), (self.slider, "value"))
        panels = (("render", self.render_image), ("query", self.target_image),
                  ("|render - query|", self.diff_image))
        titled = [w.VBox([w.HTML(f"<b>{t}</b>"), im]) for t, im in panels]
        controls = w.HBox([self.play, self.slider])
        self.widget = w.VBox([controls, w.HBox(titled), self.curve_image, self.caption])
        # CSS classes that name the parts in the page (tests/test_browser_jupyterlab.py finds them by these)
        self.widget.add_class("splatlab-step-scrubber")
        self.render_image.add_class("splatlab-step-render")
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.update(0)

    @classmethod
    def from_history(cls, history, target, gt_viewmat=None, **kwargs) -> StepScrubber:
        """Build from a refinement result (e.g. :class:`splatlab.pose.PoseResult`) holding ``losses`` and
        ``renders`` (a ``{step: render}`` dict, or a stack with ``render_steps``), as attributes or keys.

        Args:
            history: The refinement result.
            target: The query image. [H, W, 3]
            gt_viewmat: The true pose; with the history's per-step ``viewmats`` it gives the errors. [4, 4]
            **kwargs: Passed on to the constructor.
        """
        def get(key):
            return history.get(key) if isinstance(history, dict) else getattr(history, key, None)

        for key in ("losses", "renders"):
            if get(key) is None or (isinstance(get(key), dict) and not get(key)):
                raise ValueError(f"history has no {key!r}: keep renders when refining to scrub them")
        extra = {k: get(k) for k in ("render_steps", "rot_errors", "trans_errors") if get(k) is not None}
        if gt_viewmat is not None:
            if get("viewmats") is None:
                raise ValueError("gt_viewmat needs the history's per-step 'viewmats'")
            from splatlab.cameras import pose_error

            vms = torch.as_tensor(get("viewmats")).detach().cpu().double()
            rot, trans = pose_error(vms, torch.as_tensor(gt_viewmat).detach().cpu().double().reshape(4, 4))
            extra.update(rot_errors=rot, trans_errors=trans)
        return cls(target, get("renders"), get("losses"), **{**extra, **kwargs})

    @property
    def step(self) -> int:
        return int(self.slider.value)

    def render_index(self, step: int) -> int:
        """Index of the render shown at ``step``: the last one kept at or before it."""
        return max(int(np.searchsorted(self.render_steps, step, side="right")) - 1, 0)

    def update(self, step: int) -> None:
        """Show ``step``: swap the render and difference if needed, move the marker, write the caption."""
        import matplotlib

        step = int(step)
        k = self.render_index(step)
        if k != self._shown_render:
            self.render_image.value = png_bytes(self.renders[k])
            heat = matplotlib.colormaps["magma"](np.clip(self.diffs[k] / self.diff_vmax, 0, 1))[..., :3]
            self.diff_image.value = png_bytes(heat)
            self._shown_render = k
        for line, values in self._markers:
            line.set_data([step], [values[step]])
        self._marker_line.set_xdata([step, step])
        buf = io.BytesIO()
        self._figure.savefig(buf, format="png")
        self.curve_image.value = buf.getvalue()
        text = f"step {step} / {len(self.losses) - 1} &nbsp; loss {self.losses[step]:.4f}"
        if self.rot_errors is not None:
            text += f" &nbsp; rotation error {self.rot_errors[step]:.2f}°"
        if self.trans_errors is not None:
            text += f" &nbsp; translation error {self.trans_errors[step]:.3f}"
        text += f" &nbsp; (render from step {self.render_steps[k]})"
        self.caption.value = text

    def _loss_figure(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.0, 2.4), dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        steps = np.arange(len(self.losses))
        ax.plot(steps, self.losses, color="C0")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="C0")
        markers = [(ax.plot([0], [self.losses[0]], "o", color="C0")[0], self.losses)]
        if self.rot_errors is not None:
            ax2 = ax.twinx()
            ax2.plot(steps, self.rot_errors, color="C3")
            ax2.set_ylabel("rotation error (°)", color="C3")
            markers.append((ax2.plot([0], [self.rot_errors[0]], "o", color="C3")[0], self.rot_errors))
        self._marker_line = ax.axvline(0, color="0.4", lw=1)
        return fig, markers


class ThresholdSlider(_Shown):
    """A slider over an anomaly-map threshold: flagged pixels, the image decision, and counts when known.

    Args:
        image: The query image, float in [0, 1]. [H, W, 3]
        anomaly_map: Its anomaly map, any size (resized to the image). [h, w]
        threshold: Starting threshold, e.g. the calibrated one (marked on the slider's caption); the middle
            of the map's range when None.
        mask: Ground-truth defect mask; adds its outline and pixel TPR/FPR. [H, W] or [h, w]
        score: The image score; the map's maximum when None (SplatPose's rule).
        scores: Image scores of a whole test set; adds image-level TP/FP/TN/FN counts. [S]
        labels: Their labels, 1 = anomalous. [S]
        size: Displayed width of each image in pixels.
    """

    def __init__(self, image, anomaly_map, *, threshold: float | None = None, mask=None,
                 score: float | None = None, scores=None, labels=None, size: int = 224):
        import ipywidgets as w

        self.image = _as_images(image, "image")[0]
        H, W = self.image.shape[:2]
        amap = torch.as_tensor(anomaly_map).detach().float().cpu()
        if amap.ndim != 2:
            raise ValueError(f"anomaly_map must be [H, W], got {tuple(amap.shape)}")
        self.score = float(amap.max()) if score is None else float(score)
        if tuple(amap.shape) != (H, W):
            amap = torch.nn.functional.interpolate(amap[None, None], size=(H, W), mode="bilinear",
                                                   align_corners=False)[0, 0]
        self.map = amap.numpy()
        self.mask = None
        if mask is not None:
            m = torch.as_tensor(mask).detach().cpu().float()
            if m.ndim != 2:
                raise ValueError(f"mask must be [H, W], got {tuple(m.shape)}")
            if tuple(m.shape) != (H, W):
                m = torch.nn.functional.interpolate(m[None, None], size=(H, W), mode="nearest")[0, 0]
            self.mask = m.numpy() > 0.5
        self.scores = self.labels = None
        if scores is not None or labels is not None:
            if scores is None or labels is None:
                raise ValueError("give both scores and labels, or neither")
            self.scores = np.asarray(torch.as_tensor(scores).double().cpu()).reshape(-1)
            self.labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1).astype(bool)
            if len(self.scores) != len(self.labels):
                raise ValueError(f"scores ({len(self.scores)}) and labels ({len(self.labels)}) differ")
        values = [self.map.min(), self.map.max(), self.score] + ([] if threshold is None else [threshold])
        if self.scores is not None:
            values += [self.scores.min(), self.scores.max()]
        lo, hi = float(min(values)), float(max(values))
        hi = hi + 0.02 * (hi - lo) if hi > lo else lo + 1.0  # room above the top score: "all good"
        self.calibrated = threshold
        start = float(threshold) if threshold is not None else 0.5 * (lo + hi)

        image_kw = dict(format="png", width=size)
        if threshold is not None:  # the class's scale: 0 to twice the calibrated threshold (mid-colour)
            heat = heat_overlay(self.image, self.map, vmin=0.0, vmax=2.0 * float(threshold))
            map_title = "anomaly map (0 to 2 × calibrated threshold)"
        else:
            heat, map_title = heat_overlay(self.image, self.map), "anomaly map (per-image scale)"
        self.heat_image = w.Image(value=png_bytes(heat), **image_kw)
        self.decision_image = w.Image(**image_kw)
        self.caption = w.HTML()
        self.slider = w.FloatSlider(value=start, min=lo, max=hi, step=(hi - lo) / 200,
                                    description="threshold", readout_format=".4g", continuous_update=True)
        titled = [w.VBox([w.HTML(f"<b>{t}</b>"), im]) for t, im in
                  ((map_title, self.heat_image), ("pixels above the threshold", self.decision_image))]
        self.widget = w.VBox([self.slider, w.HBox(titled), self.caption])
        self.slider.observe(lambda change: self.update(change["new"]), names="value")
        self.update(start)

    @property
    def threshold(self) -> float:
        return float(self.slider.value)

    def decision(self, threshold: float | None = None) -> bool:
        """True (anomalous) when the image score reaches the threshold."""
        return self.score >= (self.threshold if threshold is None else float(threshold))

    def update(self, threshold: float) -> None:
        """Redraw the flagged pixels and the caption for ``threshold``."""
        from scipy.ndimage import binary_erosion

        t = float(threshold)
        above = self.map >= t
        shown = self.image * 0.6
        shown[above] = 0.4 * self.image[above] + 0.6 * np.array([1.0, 0.1, 0.1])
        if self.mask is not None:
            outline = self.mask & ~binary_erosion(self.mask)
            shown[outline] = (0.1, 0.9, 0.2)
        self.decision_image.value = png_bytes(np.clip(shown, 0, 1))
        verdict = "ANOMALOUS" if self.decision(t) else "good"
        text = f"threshold {t:.4g}: score {self.score:.4g} → <b>{verdict}</b>"
        text += f"; {above.mean():.1%} of pixels flagged"
        if self.calibrated is not None:
            text += f" (calibrated threshold {float(self.calibrated):.4g})"
        if self.mask is not None:
            pos, neg = self.mask.sum(), (~self.mask).sum()
            tpr = (above & self.mask).sum() / pos if pos else float("nan")
            fpr = (above & ~self.mask).sum() / neg if neg else float("nan")
            text += f"<br>pixels: TPR {tpr:.1%}, FPR {fpr:.1%}"
        if self.scores is not None:
            pred = self.scores >= t
            tp, fp = int((pred & self.labels).sum()), int((pred & ~self.labels).sum())
            fn, tn = int((~pred & self.labels).sum()), int((~pred & ~self.labels).sum())
            text += f"<br>images: TP {tp}, FP {fp}, TN {tn}, FN {fn}"
        self.caption.value = text
