"""The PatchCore-style memory bank: coreset, maps, a pasted defect, a class run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splatlab.baselines import MemoryBank, MemoryBankConfig, greedy_coreset, run_memory_bank
from splatlab.data import TestSample as Sample
from splatlab.detect import class_metrics

CFG = MemoryBankConfig(size=64, blur_sigma=2.0)


def _views(n: int = 6, hw: int = 40, seed: int = 0) -> torch.Tensor:
    """Soft coloured disks on white, shifted a little from view to view. [n, hw, hw, 3]"""
    yy, xx = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    out = torch.ones(n, hw, hw, 3)
    for b in range(n):
        cy, cx = 20 + 2 * np.sin(b), 20 + 2 * np.cos(b)
        w = torch.sigmoid((10 - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()) * 0.8)[..., None]
        out[b] = out[b] * (1 - w) + torch.tensor([0.2, 0.4, 0.8]) * w
    return out


def test_greedy_coreset_covers_the_points():
    g = torch.Generator().manual_seed(0)
    clusters = torch.cat([torch.randn(50, 8, generator=g) * 0.01 + 10 * i for i in range(4)])
    idx = greedy_coreset(clusters, 4, projection_dim=4, seed=0)
    assert len(set(idx.tolist())) == 4
    assert sorted({int(i) // 50 for i in idx}) == [0, 1, 2, 3]  # one point from each cluster
    torch.testing.assert_close(idx, greedy_coreset(clusters, 4, projection_dim=4, seed=0))
    with pytest.raises(ValueError, match="n must be"):
        greedy_coreset(clusters, 0)


def test_memory_bank_maps_find_a_new_patch():
    views = _views()
    bank = MemoryBank.fit(views, CFG)
    assert bank.bank.shape == (6 * 8 * 8, 40 + 80)  # 64 px input: stage 2 is 8 x 8
    small = MemoryBank.fit(views, MemoryBankConfig(size=64, coreset_ratio=0.25))
    assert len(small.bank) == 96
    good = bank.maps(views[:2])
    # its own patches are in the bank (up to the rounding of cdist's matrix-product formula)
    assert good.shape == (2, 64, 64) and float(good.max()) < 0.1
    bad = views[:1].clone()
    bad[0, 5:13, 25:33] = torch.tensor([0.9, 0.1, 0.1])
    m = bank.maps(bad[0])
    # On an 8 x 8 patch grid with wide receptive fields the response is coarse: compare quadrants.
    assert float(m[:32, 32:].mean()) > 3 * float(m[32:, :32].mean())
    assert float(m.max()) > 10 * float(bank.maps(views[2]).max())


def test_run_memory_bank_gives_a_class_run():
    views = _views(8)
    bank = MemoryBank.fit(views[:6], CFG)
    test = [Sample(views[6], 0, "good", torch.zeros(40, 40, dtype=torch.bool), None)]
    for kind, y in (("Stains", 8), ("Burrs", 24)):
        img, mask = views[7].clone(), torch.zeros(40, 40, dtype=torch.bool)
        img[y : y + 6, 8:14] = torch.tensor([0.1, 0.9, 0.1])
        mask[y : y + 6, 8:14] = True
        test.append(Sample(img, 1, kind, mask, None))
    run = run_memory_bank(bank, test, "disks")
    assert run.method == "memory_bank" and run.maps.shape == (3, 40, 40)
    m = class_metrics(run)
    assert m["image_auroc"] == 100.0 and m["pixel_auroc"] > 90
    with pytest.raises(ValueError, match="images"):
        MemoryBank.fit(torch.rand(4, 4, 3))
