"""Coarse retrieval: the source view comes first, the cache is keyed by the views, bad queries raise."""

import pytest
import torch
from torch.testing import assert_close

from splatlab.cameras import ring_rig
from splatlab.retrieval import Retriever, check_query
from splatlab.splats import random_splats, render_splats


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch/Numba thread: tiny renders gain nothing from more, and a shared machine is oversubscribed."""
    from splatlab.threads import use_threads

    with use_threads(1, 1):
        yield


@pytest.fixture(scope="module")
def views():
    splats = random_splats(300, extent=0.7, init_opacity=0.9, init_scale=1.5, seed=1)
    cams = ring_rig(elevations_deg=(0.0, 40.0), azimuth_step_deg=60.0, focal=70.0, width=64, height=64)
    with torch.no_grad():
        images = render_splats(splats, cams, background=torch.ones(3), backend="cpu")[0]
    return images, cams


@pytest.mark.parametrize("method", ["features", "sift"])
def test_training_image_retrieves_its_own_view(views, method):
    images, cams = views
    ret = Retriever.build(images, cams, method)
    for i in (0, 4, 9):
        idx, sim = ret.top_k(images[i], k=3)
        assert int(idx[0]) == i
        assert idx.shape == sim.shape == (3,) and bool((sim[:-1] >= sim[1:]).all())
    idx, _ = ret.top_k(images[4], k=2, exclude=[4])
    assert 4 not in idx.tolist()


def test_cache_is_reused_and_keyed_by_views(views, tmp_path):
    images, cams = views
    a = Retriever.build(images, cams, "features", cache_dir=tmp_path)
    files = list(tmp_path.glob("retrieval_features_*.pt"))
    assert len(files) == 1 and not list(tmp_path.glob(".*.tmp"))
    b = Retriever.build(images, cams, "features", cache_dir=tmp_path)  # from the cache
    assert_close(a.descriptors, b.descriptors)
    Retriever.build(images.flip(0), cams, "features", cache_dir=tmp_path)  # other views, other key
    assert len(list(tmp_path.glob("retrieval_features_*.pt"))) == 2
    files[0].write_bytes(b"not a torch file")  # a corrupt cache is recomputed
    c = Retriever.build(images, cams, "features", cache_dir=tmp_path)
    assert_close(a.descriptors, c.descriptors)
    s1 = Retriever.build(images, cams, "sift", cache_dir=tmp_path)
    s2 = Retriever.build(images, cams, "sift", cache_dir=tmp_path)
    assert all((x == y).all() for x, y in zip(s1.descriptors, s2.descriptors, strict=True))


def test_bad_inputs(views, tmp_path):
    images, cams = views
    with pytest.raises(ValueError, match="method"):
        Retriever.build(images, cams, "loftr")
    with pytest.raises(ValueError, match="cameras has"):
        Retriever.build(images[:3], cams, "features")
    with pytest.raises(FileNotFoundError, match="cache_dir"):
        Retriever.build(images, cams, "features", cache_dir=tmp_path / "missing")
    ret = Retriever.build(images, cams, "features")
    with pytest.raises(ValueError, match="32x64"):
        ret.top_k(images[0, :32])
    with pytest.raises(ValueError, match="grayscale"):
        check_query(images[0, ..., 0])
    with pytest.raises(ValueError, match="RGBA"):
        check_query(torch.ones(64, 64, 4))
    with pytest.raises(ValueError, match="float"):
        check_query(torch.ones(64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="excluded"):
        ret.top_k(images[0], exclude=list(range(len(cams))))
