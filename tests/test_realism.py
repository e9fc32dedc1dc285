"""Realism studies: knobs map onto the generator's fields."""

import pytest

from splatlab.data.make import look_config
from splatlab.realism import KNOBS, VARIANTS, study_figure, with_knob


def test_knobs_set_the_realism_fields():
    base = look_config("clean")
    assert with_knob(base, "roughness", 0.3).realism.roughness == 0.3
    assert with_knob(base, "noise", 0.05).realism.noise == 0.05
    same = with_knob(base, "light_change", 0.0).realism
    assert same.test_lighting() == same.light  # no change: the test light is the training light
    far = with_knob(base, "light_change", 1.0).realism
    assert far.test_light_rotation_deg == 60.0 and far.test_light_kelvin == 4000.0
    assert all(with_knob(base, k, 0.1).renderer == "mitsuba" for k in KNOBS)
    with pytest.raises(ValueError, match="knob"):
        with_knob(base, "gloss", 1.0)


def test_study_figure_draws_one_line_per_setting():
    import matplotlib

    matplotlib.use("Agg")
    rows = [
        {"knob": "noise", "value": v, "variant": a, "image_auroc": 90.0 - 10 * v}
        for v in (0.0, 0.1)
        for a in VARIANTS
    ]
    fig = study_figure(rows)
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_xlabel() == "noise"
