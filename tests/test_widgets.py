import io

import numpy as np
import pytest
import torch

from splatlab.viz.widgets import StepScrubber, ThresholdSlider


def decode(png):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(bytes(png))))


@pytest.fixture
def history():
    """A fake refinement: 12 steps, renders kept every 4 steps, falling loss and rotation error."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(16, 20, 3, generator=g)
    renders = torch.stack([(target + 0.3 * (1 - k / 3) * torch.rand(16, 20, 3, generator=g)).clamp(0, 1)
                           for k in range(3)])
    return {
        "target": target, "renders": renders, "render_steps": [0, 4, 8],
        "losses": torch.linspace(0.5, 0.05, 12), "rot_errors": torch.linspace(9.0, 0.5, 12),
        "trans_errors": torch.linspace(0.4, 0.01, 12),
    }


def test_step_scrubber_slider_updates_render_difference_curve_and_caption(history):
    h = history
    s = StepScrubber(h["target"], h["renders"], h["losses"], render_steps=h["render_steps"],
                     rot_errors=h["rot_errors"], trans_errors=h["trans_errors"])
    assert s.slider.max == 11 and s.step == 0
    render0, diff0 = bytes(s.render_image.value), bytes(s.diff_image.value)
    curve0 = bytes(s.curve_image.value)
    expected0 = np.round(h["renders"][0].numpy() * 255).astype(np.uint8)
    np.testing.assert_allclose(decode(render0).astype(int), expected0.astype(int), atol=1)
    assert "step 0 / 11" in s.caption.value

    s.slider.value = 6  # what moving the slider does; the observer redraws synchronously
    assert s.render_index(6) == 1
    render6 = decode(s.render_image.value)
    expected6 = np.round(h["renders"][1].numpy() * 255).astype(int)
    np.testing.assert_allclose(render6.astype(int), expected6, atol=1)
    assert bytes(s.diff_image.value) != diff0 and bytes(s.curve_image.value) != curve0
    assert "step 6 / 11" in s.caption.value and "render from step 4" in s.caption.value
    assert f"{h['rot_errors'][6]:.2f}°" in s.caption.value

    curve6 = bytes(s.curve_image.value)
    s.slider.value = 7  # same render, marker moves
    assert s.render_index(7) == 1 and bytes(s.curve_image.value) != curve6
    assert decode(s.curve_image.value).shape[:2] == decode(curve0).shape[:2]


def test_step_scrubber_from_history_and_every_step_renders(history):
    s = StepScrubber.from_history(history, history["target"])
    s.slider.value = 11
    assert "render from step 8" in s.caption.value
    full = StepScrubber(history["target"], history["renders"], history["losses"][:3])
    assert full.slider.max == 2 and full.render_index(2) == 2


def test_step_scrubber_from_pose_result_like_history(history):
    """PoseResult keeps renders as {step: render} at each pyramid step's size, and per-step viewmats."""
    from splatlab.cameras import look_at, pose_error

    target = history["target"]
    renders = {0: history["renders"][0][::2, ::2], 5: history["renders"][1], 9: history["renders"][2]}
    gt = look_at(torch.tensor([3.0, 0.5, 1.0]))
    viewmats = gt.repeat(12, 1, 1)
    viewmats[:, 0, 3] += torch.linspace(0.5, 0.0, 12)  # camera shifted along its x axis, shrinking
    result = {"losses": history["losses"], "renders": renders, "viewmats": viewmats}
    s = StepScrubber.from_history(result, target, gt_viewmat=gt)
    assert s.renders.shape == (3, 16, 20, 3) and list(s.render_steps) == [0, 5, 9]
    rot, trans = pose_error(viewmats, gt)
    np.testing.assert_allclose(s.trans_errors, trans.numpy(), atol=1e-6)
    np.testing.assert_allclose(s.rot_errors, rot.numpy(), atol=1e-4)
    s.slider.value = 10
    assert "render from step 9" in s.caption.value and "translation error 0.045" in s.caption.value
    with pytest.raises(ValueError, match="viewmats"):
        StepScrubber.from_history({"losses": history["losses"], "renders": renders}, target, gt_viewmat=gt)


def test_step_scrubber_rejects_mismatched_inputs(history):
    h = history
    with pytest.raises(ValueError, match="render_steps"):
        StepScrubber(h["target"], h["renders"], h["losses"])
    with pytest.raises(ValueError, match="render_steps"):
        StepScrubber(h["target"], h["renders"], h["losses"], render_steps=[0, 8, 4])
    with pytest.raises(ValueError, match="rot_errors"):
        StepScrubber(h["target"], h["renders"], h["losses"], render_steps=[0, 4, 8], rot_errors=[1.0, 2.0])
    with pytest.raises(ValueError, match="keys"):
        StepScrubber(h["target"], {0: h["renders"][0]}, h["losses"], render_steps=[0])
    with pytest.raises(ValueError, match="renders"):
        StepScrubber.from_history({"losses": h["losses"]}, h["target"])


def test_threshold_slider_decision_pixels_and_counts():
    image = torch.full((16, 16, 3), 0.5)
    amap = torch.zeros(8, 8)
    amap[2:4, 2:4] = 1.0  # a 4x4 hot block once resized to 16x16
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8, 4:8] = True
    t = ThresholdSlider(image, amap, threshold=0.5, mask=mask, scores=[0.2, 0.7, 0.9], labels=[0, 0, 1])
    assert t.score == 1.0 and t.decision() and "ANOMALOUS" in t.caption.value
    assert "TPR 100.0%, FPR 0.0%" in t.caption.value
    assert "TP 1, FP 1, TN 1, FN 0" in t.caption.value
    flagged = decode(t.decision_image.value)
    assert flagged[6, 6, 0] > 200 and flagged[12, 12, 0] < 100  # red inside the hot block, dimmed outside
    assert tuple(flagged[4, 4]) == (26, 230, 51)  # the mask outline in green

    heat = bytes(t.heat_image.value)
    t.slider.value = 0.8
    assert "TP 1, FP 0, TN 2, FN 0" in t.caption.value and bytes(t.heat_image.value) == heat
    t.slider.value = t.slider.max
    assert t.threshold > 1.0 and not t.decision() and "good" in t.caption.value
    assert "TPR 0.0%" in t.caption.value


def test_threshold_slider_defaults_and_errors():
    amap = torch.linspace(0, 2, 16).reshape(4, 4)
    t = ThresholdSlider(torch.zeros(4, 4, 3), amap)
    assert t.slider.min == 0.0 and t.slider.max > 2.0  # above the top score, so every image can pass
    assert t.threshold == pytest.approx(0.5 * t.slider.max)
    assert "calibrated" not in t.caption.value
    with pytest.raises(ValueError, match="labels"):
        ThresholdSlider(torch.zeros(4, 4, 3), amap, scores=[1.0])
    with pytest.raises(ValueError, match="anomaly_map"):
        ThresholdSlider(torch.zeros(4, 4, 3), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="image"):
        ThresholdSlider(torch.zeros(4, 4), amap)
