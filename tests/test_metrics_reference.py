"""Our metrics against Quantus 0.6 (a test-only dependency), eMPRT and sMPRT against Quantus's EfficientMPRT and
SmoothMPRT on one randomized model, and MoRF/LeRF against a naive per-image loop.

Documented relations where the definitions differ:
- box share = Quantus ``RelevanceMassAccuracy`` on the *positive part* of the map (we ignore negative relevance;
  Quantus sums the signed map, which can leave [0, 1]).
- Gini = Quantus ``Sparseness`` with ``abs=True`` on the map + 1e-7 (Quantus adds 1e-7 to every value before
  the Gini; we always use |relevance| without it; it matters for real maps whose values are ~1e-4).
- pointing game: we take the first maximum (``argmax``); Quantus counts a hit if *any* tied maximum is inside
  the box. Equal without ties, ours <= Quantus's with ties.
- relevance rank accuracy: equal (no ties in continuous maps).
All with ``normalise=False`` (normalising does not change these scores' order-based or ratio definitions, but we
compare the raw maps).
"""
import numpy as np
import pytest
import torch

from vitlrp import metrics as M


def quantus_or_skip():
    return pytest.importorskip("quantus", reason="quantus==0.6.0 (test-only, see requirements.txt) not installed")


def quantus_scores(maps, masks):
    """Quantus's four scores of ``[B, H, W]`` maps with ``[B, H, W]`` bool masks (no model needed)."""
    quantus = quantus_or_skip()
    a = maps[:, None].double().numpy()
    s = masks[:, None].double().numpy()
    x = np.zeros((len(a), 3, *a.shape[-2:]))
    y = np.zeros(len(a), dtype=int)
    kw = dict(disable_warnings=True, normalise=False, abs=False, display_progressbar=False)

    def run(cls, a_batch, **extra):
        return np.asarray(cls(**{**kw, **extra})(model=None, x_batch=x, y_batch=y, a_batch=a_batch, s_batch=s),
                          dtype=float)

    return {"box_share": run(quantus.RelevanceMassAccuracy, np.clip(a, 0, None)),
            "pointing_game": run(quantus.PointingGame, a),
            "rank_accuracy": run(quantus.RelevanceRankAccuracy, a),
            "gini": run(quantus.Sparseness, a, abs=True)}


def ours(maps, masks):
    return {"box_share": M.box_share(maps, masks), "pointing_game": M.pointing_game(maps, masks),
            "rank_accuracy": M.rank_accuracy(maps, masks), "gini": M.gini(maps.double().abs() + 1e-7)}


def random_case(seed=0, n=24, size=32):
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, size, size, generator=gen)
    corners = torch.randint(0, size // 2, (n, 2), generator=gen)
    sizes = torch.randint(4, size // 2, (n, 2), generator=gen)
    boxes = torch.cat([corners, corners + sizes], 1)
    masks = M.box_mask(boxes, size)
    hit = torch.arange(n) % 2 == 0  # half the maps get their maximum inside the box
    for i in torch.nonzero(hit).flatten():
        cx, cy = (corners[i] + sizes[i] // 2).tolist()  # boxes are (x0, y0, x1, y1)
        maps[i, cy, cx] = 10.0
    return maps, masks


def assert_matches_quantus(maps, masks):
    q, o = quantus_scores(maps, masks), ours(maps, masks)
    for name in q:
        assert np.allclose(o[name].double().numpy(), q[name], atol=1e-5), name
    return o


def test_metrics_match_quantus_on_random_maps():
    maps, masks = random_case()
    o = assert_matches_quantus(maps, masks)
    assert 0 < o["pointing_game"].mean() < 1  # both hits and misses were compared


def test_pointing_game_with_ties_is_at_most_quantus():
    quantus_or_skip()
    maps = torch.zeros(2, 8, 8)
    maps[:, 0, 0] = maps[:, 5, 5] = 1.0  # two maxima; the box holds only the second
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 4:7, 4:7] = True
    assert M.pointing_game(maps, masks).tolist() == [0.5, 0.5]  # a random choice between the maxima hits half the time
    assert quantus_scores(maps, masks)["pointing_game"].tolist() == [1.0, 1.0]  # any tied maximum inside


@pytest.fixture(scope="module")
def real_maps(trained_tiny):
    """AttnLRP (balanced) and Input×Gradient maps of the trained vit_tiny on 12 mini-CUB test images."""
    from vitlrp.inputs import load_model_and_split
    from vitlrp.methods import create_method

    _, model, dataset = load_model_and_split(trained_tiny["checkpoint"], trained_tiny["dataset_root"], "test",
                                             torch.device("cpu"), annotations=True)
    model.eval()
    items = [dataset[i] for i in range(12)]
    images = torch.stack([it["image"] for it in items])
    boxes = torch.stack([torch.as_tensor(it["box"]) for it in items])
    masks = M.box_mask(boxes, images.shape[-1])
    out = {"model": model, "images": images, "masks": masks}
    for name in ("balanced", "input_x_gradient"):
        with torch.no_grad():
            target = model(images).argmax(1)
        with create_method(name, model) as method:
            rel = method.attribute(images, target).relevance
        out[name] = rel.detach().float()
        out["target"] = target
    return out


@pytest.mark.parametrize("method", ["balanced", "input_x_gradient"])
def test_metrics_match_quantus_on_real_maps(real_maps, method):
    assert_matches_quantus(real_maps[method], real_maps["masks"])


def naive_curves(prob, image, relevance, patch, steps, most_first):
    """One image, written out: patch sums by loops, a stable sort, patches zeroed one fraction at a time."""
    size = image.shape[-1]
    grid = size // patch
    sums = [float(relevance[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch].double().sum())
            for r in range(grid) for c in range(grid)]
    order = sorted(range(len(sums)), key=lambda i: -sums[i] if most_first else sums[i])
    curve = []
    for s in range(steps + 1):
        x = image.clone()
        for i in order[:round(s / steps * len(sums))]:
            r, c = divmod(i, grid)
            x[:, r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = 0.0
        curve.append(float(prob(x[None])[0]))
    return curve


def test_morf_lerf_match_a_naive_per_image_loop(real_maps):
    model, images, target = real_maps["model"], real_maps["images"], real_maps["target"]

    @torch.no_grad()
    def prob(x, rows):
        return model(x).softmax(1).gather(1, target[rows].view(-1, 1)).squeeze(1)

    rel = real_maps["balanced"]
    curves = M.perturbation_curves(prob, images, M.patch_scores(rel, 16), 16, 5, rows_per_pass=7)
    for i in range(len(images)):
        one = lambda x, i=i: prob(x, torch.tensor([i]))  # noqa: E731
        assert curves["morf"][i].tolist() == pytest.approx(naive_curves(one, images[i], rel[i], 16, 5, True), abs=1e-5)
        assert curves["lerf"][i].tolist() == pytest.approx(naive_curves(one, images[i], rel[i], 16, 5, False),
                                                           abs=1e-5)
    auc = M.auc(curves["morf"])
    naive_auc = [sum((a + b) / 2 for a, b in zip(c[:-1], c[1:])) / 5 for c in curves["morf"].tolist()]
    assert auc.tolist() == pytest.approx(naive_auc, abs=1e-6)


# --- eMPRT and sMPRT (Hedström et al. 2023) against Quantus's EfficientMPRT and SmoothMPRT -------------------------


class Randomize(torch.nn.Module):
    """The one module Quantus can randomize (it calls ``reset_parameters``): here that loads the values our
    randomization drew into the model that holds it, so Quantus's randomized model is ours."""

    def __init__(self, owner, values):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # not a submodule; a deep copy of the owner points at the copy
        object.__setattr__(self, "values", values)

    def reset_parameters(self):
        with torch.no_grad():
            for name, p in self.owner.named_parameters():
                p.copy_(self.values[name])


class SmallNet(torch.nn.Module):
    """A two-layer network on 3×8×8 images whose weights are plain parameters (no module of its own has
    ``reset_parameters``, so Quantus's randomization reaches only :class:`Randomize`)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(16, 192, generator=gen) * 0.2)
        self.w2 = torch.nn.Parameter(torch.randn(4, 16, generator=gen) * 0.5)

    def forward(self, x):
        return torch.relu(x.flatten(1) @ self.w1.T) @ self.w2.T


@pytest.fixture(scope="module")
def mprt_case():
    """The small net, its copy randomized by vitlrp.sanity.randomization, the net Quantus randomizes into the same
    values, 6 images, their classes and Input×Gradient's maps as Quantus's ``explain_func``."""
    import copy

    from vitlrp.methods import create_method
    from vitlrp.sanity.randomization import randomize_parameters

    net = SmallNet().eval()
    randomized = copy.deepcopy(net)
    randomize_parameters(list(randomized.named_parameters()), seed=3)
    values = {n: p.detach().clone() for n, p in randomized.named_parameters()}
    quantus_net = SmallNet().eval()
    quantus_net.randomize = Randomize(quantus_net, values)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.3
    y = net(x).argmax(1)

    def explain(model, inputs, targets, **kwargs):
        with create_method("input_x_gradient", model) as m:
            return m.attribute(torch.as_tensor(inputs), torch.as_tensor(targets)).relevance[:, None].numpy()

    def ours(model, images):
        with create_method("input_x_gradient", model) as m:
            return m.attribute(images, y).relevance

    return dict(net=net, randomized=randomized, quantus_net=quantus_net, x=x, y=y, explain=explain, ours=ours)


def test_emprt_matches_quantus_efficient_mprt(mprt_case):
    quantus = quantus_or_skip()
    from vitlrp.sanity import mprt

    c = mprt_case
    metric = quantus.EfficientMPRT(complexity_func_kwargs={"n_bins": mprt.ENTROPY_BINS}, disable_warnings=True,
                                   display_progressbar=False)
    theirs = metric(model=c["quantus_net"], x_batch=c["x"].numpy(), y_batch=c["y"].numpy(), a_batch=None,
                    explain_func=c["explain"], device="cpu", batch_size=6)
    ours = mprt.entropy_rise(c["ours"](c["net"], c["x"]), c["ours"](c["randomized"], c["x"]))
    print(f"eMPRT: ours {np.round(ours, 4)}, Quantus {np.round(theirs, 4)}, max |diff| "
          f"{np.abs(ours - np.asarray(theirs)).max():.1e}")
    assert np.allclose(ours, theirs, atol=1e-6) and np.ptp(ours) > 0.01


def test_smprt_matches_quantus_smooth_mprt(mprt_case):
    """The same noise for both (Quantus draws it from numpy's global generator: ours replays that draw), the maps
    smoothed over 5 copies (the last noise-free), their absolute pixels compared by Spearman's ρ."""
    quantus = quantus_or_skip()
    from vitlrp.sanity import mprt
    from vitlrp.sanity.similarity import ABS_PIXELS, similarity

    c = mprt_case
    samples, magnitude = 5, 0.2

    def numpy_noise(k, shape):
        return torch.from_numpy(np.random.randn(*shape))

    np.random.seed(7)
    reference = mprt.smoothed(lambda v: c["ours"](c["net"], v), c["x"], samples, magnitude, numpy_noise)
    randomized = mprt.smoothed(lambda v: c["ours"](c["randomized"], v), c["x"], samples, magnitude, numpy_noise)
    ours = similarity(reference, randomized, 4, extra=(ABS_PIXELS,))[ABS_PIXELS]
    np.random.seed(7)
    metric = quantus.SmoothMPRT(nr_samples=samples, noise_magnitude=magnitude, return_last_correlation=True,
                                disable_warnings=True, display_progressbar=False)
    # SmoothMPRT explains its noisy copies through quantus.explain: Captum's InputXGradient, channels summed
    theirs = metric(model=c["quantus_net"], x_batch=c["x"].numpy(), y_batch=c["y"].numpy(),
                    a_batch=reference[:, None].float().numpy(), explain_func=quantus.explain,
                    explain_func_kwargs={"method": "InputXGradient"}, device="cpu", batch_size=6)
    print(f"sMPRT: ours {np.round(ours, 4)}, Quantus {np.round(theirs, 4)}, max |diff| "
          f"{np.abs(ours - np.asarray(theirs)).max():.1e}")
    assert np.allclose(ours, theirs, atol=1e-4) and np.ptp(ours) > 0.01
