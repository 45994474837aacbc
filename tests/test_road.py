"""ROAD's noisy linear imputation (batched, exact) against pytorch-grad-cam's per-image imputer, and its curves."""
import pytest
import torch

from vitlrp import metrics as M


def patch_keep(gen, b, grid, patch, frac):
    keep = (torch.rand(b, 1, grid, grid, generator=gen) > frac).float()
    return keep.repeat_interleave(patch, 2).repeat_interleave(patch, 3)


def test_linear_impute_equals_grad_cams_imputer():
    road = pytest.importorskip("pytorch_grad_cam.metrics.road", reason="grad-cam (requirements.txt) not installed")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=gen)
    for keep in (patch_keep(gen, 4, 4, 8, 0.6),  # patch removal, as the evaluation does
                 (torch.rand(4, 1, 32, 32, generator=gen) > 0.7).float()):  # scattered pixels, most removed
        keep[0] = 1.0  # nothing to impute
        ours = M.linear_impute(images, keep, noise=0.0)
        for i in range(4):
            ref = road.NoisyLinearImputer(noise=0.0)(images[i], keep[i, 0])
            assert torch.allclose(ours[i], ref, atol=1e-5), i
        assert torch.equal(ours[keep.expand_as(images) > 0], images[keep.expand_as(images) > 0])


def test_linear_impute_is_the_neighbour_mean_and_adds_seeded_noise():
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 16, generator=gen)
    keep = torch.ones(2, 1, 16, 16)
    keep[:, :, 4:12, 4:12] = 0
    keep[1] = 0  # everything removed: nothing to impute from → the mean colour (0)
    out = M.linear_impute(images, keep, noise=0.0)
    # inside the hole each pixel is the weighted mean of its 8 neighbours (edges 1/6, corners 1/12)
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    for y in range(4, 12):
        for x in range(4, 12):
            mean = (out[0, :, y - 1:y + 2, x - 1:x + 2] * w).sum((1, 2))
            assert torch.allclose(out[0, :, y, x], mean, atol=1e-5)
    assert (out[1] == 0).all()
    a = M.linear_impute(images, keep, generator=torch.Generator().manual_seed(5))
    b = M.linear_impute(images, keep, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    noise = (a - out)[0, :, 4:12, 4:12]
    assert 0.007 < noise.std().item() < 0.013  # ROAD's noise, std 0.01, only on imputed pixels
    assert torch.equal(a[0, :, :4], images[0, :, :4])


def test_road_curves_use_the_same_order_and_endpoints():
    """The ROAD curves remove the same patches as MoRF/LeRF; only the fill differs (the endpoints are shared)."""
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(3, 3, 16, 16, generator=gen) + 0.5
    scores = M.patch_scores(torch.randn(3, 16, 16, generator=gen), 4)
    seen = []

    def prob(x, rows):
        seen.extend(zip(x, rows.tolist()))
        return x.mean((1, 2, 3))

    plain = M.perturbation_curves(prob, images, scores, 4, 4)
    removed_plain = {(row, (x == 0).all(0).numpy().tobytes()) for x, row in seen[6:]}  # images > 0: 0 = removed
    seen.clear()
    road = M.perturbation_curves(prob, images, scores, 4, 4, fill=M.road_fill(noise=0.0))
    assert torch.equal(plain["morf"][:, [0, -1]], road["morf"][:, [0, -1]])
    imputed = seen[6:]
    assert len(imputed) == len(removed_plain) == 3 * 2 * 3  # 3 images, MoRF and LeRF, 3 inner steps
    for x, row in imputed:  # ROAD keeps the kept pixels and imputes exactly the patches MoRF/LeRF removed
        removed = (x != images[row]).all(0)
        assert (row, removed.numpy().tobytes()) in removed_plain and (x[:, removed] != 0).all()
    same = M.perturbation_curves(prob, images, scores, 4, 4, fill=lambda x, keep, seeds: x * keep)
    assert torch.equal(same["morf"], plain["morf"]) and torch.equal(same["lerf"], plain["lerf"])
