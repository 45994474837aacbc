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


def bwr_bar_rows(picture):
    """Rows of ``picture`` holding the legend's bar: saturated blue at one end, saturated red further right."""
    a = np.asarray(picture.convert("RGB")).astype(int)
    blue = (a[..., 2] > 230) & (a[..., 0] < 30) & (a[..., 1] < 30)
    red = (a[..., 0] > 230) & (a[..., 1] < 30) & (a[..., 2] < 30)
    return [y for y in range(a.shape[0]) if blue[y].any() and red[y].any()
            and np.flatnonzero(blue[y]).min() < np.flatnonzero(red[y]).max()]


def test_pictures_of_maps_wrap_to_fit_a_page_and_carry_the_colour_legend(tmp_path):
    rng = np.random.default_rng(0)
    tiles = [np.full((112, 112, 3), 255, np.uint8)] * 11  # white tiles: the only strong colours are the legend's
    grid = render.panels(tiles, [f"method {k}" for k in range(11)], "title", legend_below=True)
    assert grid.width <= 1160  # 5 per row: shown unscaled on a 1400 px page, its 13 px captions stay 13 px
    assert grid.height > 3 * 224  # three rows of tiles
    rows = bwr_bar_rows(grid)
    assert rows and min(rows) > 3 * 224  # the legend below the maps
    render.save_png(grid, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as im:
        assert im.info[render.TEXT_PX] == str(render.CAPTION_PX)  # the smallest text, for the page tests
    stacked = render.stack([render.load_png(tmp_path / "grid.png"), grid])
    assert stacked.info[render.TEXT_PX] == str(render.CAPTION_PX)
    heat = [render.heatmap(rng.normal(size=(112, 112))) for _ in range(3)]
    for picture in (render.cascade_grid(rng.random((112, 112, 3)), "t", [("m", [rng.normal(size=(112, 112))] * 2,
                                                                            ["a", "b"])]),
                    render.class_pair_grid([rng.random((112, 112, 3))], [("m", [np.ones((112, 112))] * 2, ["a", "b"])]),
                    render.interleave([(heat, ["a"] * 3), (heat, ["b"] * 3)])):
        assert bwr_bar_rows(picture), "a picture of maps without the colour legend"


def test_paired_rows_stay_together_when_they_wrap():
    own = [np.full((112, 112, 3), 0, np.uint8)] * 7
    swapped = [np.full((112, 112, 3), 128, np.uint8)] * 7
    picture = np.asarray(render.interleave([(own, ["own"] * 7), (swapped, ["swapped"] * 7)], per_row=5))
    column = picture[:, 10, 0]  # left edge of the first tile of every block: black (own), grey (swapped), ...
    shades = [int(v) for k, v in enumerate(column) if v in (0, 128) and (k == 0 or column[k - 1] != v)]
    assert shades == [0, 128, 0, 128]  # block 1: own above swapped; block 2: own above swapped
