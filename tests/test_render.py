"""vitlrp.render: the pictures' colours mean what the captions say (red positive, blue negative, white zero)."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitlrp import render


def test_heatmap_colours_follow_the_sign_and_scale_per_map():
    r = np.zeros((4, 4), dtype=np.float32)
    r[0, 0], r[0, 1], r[0, 2] = 2.0, -2.0, 0.5
    rgb = render.heatmap(r)
    assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8
    red, blue, zero = rgb[0, 0].astype(int), rgb[0, 1].astype(int), rgb[3, 3].astype(int)
    assert red[0] > 200 and red[1] < 20 and red[2] < 20
    assert blue[2] > 200 and blue[0] < 20 and blue[1] < 20
    assert (zero >= 250).all()  # white
    weak = rgb[0, 2].astype(int)
    assert weak[0] > 240 and 100 < weak[1] < 240  # a quarter of the peak: pale red
    np.testing.assert_array_equal(render.heatmap(r * 1000), rgb)  # scaled by the map's own peak
    np.testing.assert_array_equal(render.heatmap(torch.from_numpy(r)), rgb)  # tensors too


def test_normalize_keeps_an_all_zero_map_zero():
    assert (render.normalize(np.zeros((3, 3))) == 0).all()
    assert (render.heatmap(np.zeros((3, 3))) >= 250).all()
    np.testing.assert_allclose(render.normalize(np.array([[-4.0, 2.0]])), [[-1.0, 0.5]])


def test_overlay_checks_its_inputs():
    img = np.full((8, 8, 3), 0.5, dtype=np.float32)
    rel = np.zeros((8, 8), dtype=np.float32)
    rel[2, 2] = 1.0
    out = render.overlay(img, rel)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[2, 2, 0] > out[2, 2, 2] + 100  # strong positive relevance shows red
    assert abs(int(out[5, 5, 0]) - int(out[5, 5, 2])) < 3  # no relevance: the gray image
    with pytest.raises(ValueError, match="denormalize"):
        render.overlay(img - 1.0, rel)  # a still-normalized model input
    with pytest.raises(ValueError, match="differ in size"):
        render.overlay(img, rel[:4])
    with pytest.raises(ValueError, match="RGB"):
        render.overlay(img[..., 0], rel)


def test_small_panels_are_enlarged_and_saved(tmp_path):
    rgb = render.heatmap(np.random.default_rng(0).normal(size=(112, 112)))
    render.save_png(rgb, tmp_path / "heat.png")
    with Image.open(tmp_path / "heat.png") as im:
        assert im.size == (224, 224)  # nearest-neighbour x2, so every relevance pixel stays visible
        np.testing.assert_array_equal(np.asarray(im)[::2, ::2], rgb)
    panel = render.panels([rgb, rgb], ["a", "b"], title="t")
    assert panel.width >= 2 * 224 and panel.height > 224
    assert render.stack([panel, panel]).height > 2 * panel.height
