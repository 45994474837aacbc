"""vitlrp.cub and vitlrp.preprocess: the CUB layout, the dataset, and the annotation geometry."""
import numpy as np
import pytest
import torch
from conftest import CUB_CLASS_DIRS, CUB_IMAGES, CUB_PART_NAMES, INVISIBLE_PARTS, fixture_box, fixture_parts
from PIL import Image
from torchvision import transforms as T

from vitlrp.cli import message as cli_message
from vitlrp.cub import CUBDataset, display_name, load_cub
from vitlrp.errors import UserError
from vitlrp.preprocess import Preprocessing, open_rgb

PRE = Preprocessing(crop_size=32, resize_size=36)


def one_line_error(fn, *needles):
    with pytest.raises(UserError) as info:
        fn()
    message = cli_message(info.value)  # the line a script prints: the message and the command-line way out
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# --- load_cub --------------------------------------------------------------------------------------------
def test_load_cub_counts_ids_labels_splits(cub_fixture):
    ann = load_cub(cub_fixture(first_id=5))
    n = len(CUB_IMAGES)
    assert len(ann.paths) == n and ann.num_classes == 3
    assert ann.image_ids.tolist() == list(range(5, 5 + n))  # 1-based ids from the file, kept as they are
    assert ann.labels.tolist() == [s["cls"] - 1 for s in CUB_IMAGES]  # 0-based
    assert ann.is_train.tolist() == [s["train"] for s in CUB_IMAGES]
    assert ann.split_indices("train").tolist() == [0, 2, 4]
    assert ann.split_indices("test").tolist() == [1, 3, 5]
    assert ann.split_indices("all").tolist() == list(range(n))
    assert ann.class_dirs == list(CUB_CLASS_DIRS)
    assert ann.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert all(ann.image_path(r).is_file() for r in range(n))
    one_line_error(lambda: ann.split_indices("val"), "'val'", "train")


def test_display_name():
    assert display_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert display_name("200.Common_Yellowthroat") == "Common Yellowthroat"
    assert display_name("No_Number") == "No Number"


def test_boxes_and_parts(cub_fixture):
    ann = load_cub(cub_fixture())
    assert ann.boxes.shape == (len(CUB_IMAGES), 4)
    assert ann.part_names == list(CUB_PART_NAMES)
    assert ann.parts.shape == (len(CUB_IMAGES), 15, 3)
    for r, spec in enumerate(CUB_IMAGES):
        np.testing.assert_allclose(ann.boxes[r], fixture_box(*spec["size"]), atol=0.051)
        np.testing.assert_allclose(ann.parts[r], fixture_parts(*spec["size"]), atol=0.051)
    visible = ann.parts[:, :, 2]
    assert set(np.unique(visible)) == {0.0, 1.0}
    assert (visible[:, list(INVISIBLE_PARTS)] == 0).all() and visible.sum() == len(CUB_IMAGES) * 12


def test_without_boxes_and_parts(cub_fixture):
    ann = load_cub(cub_fixture(boxes=False, parts=False))
    assert ann.boxes is None and ann.parts is None and ann.part_names is None
    one_line_error(lambda: CUBDataset(ann, "test", PRE, annotations=True), "bounding_boxes.txt")


# --- dataset ---------------------------------------------------------------------------------------------
def test_dataset_grayscale_and_cmyk_become_rgb(cub_fixture):
    root = cub_fixture(draw=lambda iid, size: Image.new("RGB", size, (200, 30, 40)))
    ann = load_cub(root)
    assert Image.open(ann.image_path(2)).mode == "L" and Image.open(ann.image_path(3)).mode == "CMYK"
    ds = CUBDataset(ann, "all", PRE)
    assert len(ds) == len(CUB_IMAGES) and [ds[i]["label"] for i in range(len(ds))] == ann.labels.tolist()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert item["label"] == ann.labels[i] and item["index"] == i
    gray = PRE.denormalize(ds[2]["image"])
    assert torch.allclose(gray[0], gray[1], atol=1e-5) and torch.allclose(gray[1], gray[2], atol=1e-5)
    cmyk = PRE.denormalize(ds[3]["image"]).mean(dim=(1, 2)) * 255
    assert torch.allclose(cmyk, torch.tensor([200.0, 30.0, 40.0]), atol=6), cmyk  # colours survive CMYK


def test_dataset_split_lengths(cub_fixture):
    ann = load_cub(cub_fixture())
    train, test = CUBDataset(ann, "train", PRE), CUBDataset(ann, "test", PRE)
    assert len(train) == 3 and len(test) == 3
    assert test.image_path(0) == ann.image_path(1)
    assert CUBDataset(ann, "train", PRE, train_augment=True)[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError):
        CUBDataset(ann, "test", PRE, train_augment=True, annotations=True)


def test_dataset_annotations_in_model_input_pixels(cub_fixture):
    ann = load_cub(cub_fixture())
    ds = CUBDataset(ann, "all", PRE, annotations=True)
    for i, spec in enumerate(CUB_IMAGES):
        item = ds[i]
        w, h = spec["size"]
        assert item["box"].shape == (4,) and item["parts"].shape == (15, 3)
        np.testing.assert_allclose(item["box"].numpy(), PRE.map_box(fixture_box(w, h), w, h), atol=1e-4)
        np.testing.assert_allclose(item["parts"][:, :2].numpy(), PRE.map_points(ann.parts[i, :, :2], w, h),
                                   atol=1e-3)
        box = item["box"].numpy()
        assert 0 <= box[0] < box[2] <= 32 and 0 <= box[1] < box[3] <= 32
        vis = item["parts"][:, 2].numpy()
        assert (vis[list(INVISIBLE_PARTS)] == 0).all()
        xy = item["parts"][:, :2].numpy()
        inside = (xy >= -0.5).all(1) & (xy < 31.5).all(1)
        assert ((vis == 1) == (inside & (fixture_parts(w, h)[:, 2] > 0))).all()


def test_part_outside_crop_counts_as_not_visible(cub_fixture):
    root = cub_fixture()
    locs = root / "parts" / "part_locs.txt"
    lines = locs.read_text().splitlines()
    lines[0] = "1 1 0.0 24.0 1"  # image 1 is 64x48 landscape: x=0 is cut away by the center crop
    locs.write_text("\n".join(lines) + "\n")
    ann = load_cub(root)
    assert ann.parts[0, 0, 2] == 1
    item = CUBDataset(ann, "all", PRE, annotations=True)[0]
    assert item["parts"][0, 0] < -0.5 and item["parts"][0, 2] == 0


def test_corrupt_image(cub_fixture):
    ann = load_cub(cub_fixture(corrupt={2}))
    bad = ann.image_path(1)
    ds = CUBDataset(ann, "test", PRE, annotations=True)
    with pytest.raises(OSError) as info:
        ds[0]
    assert str(bad) in str(info.value)
    with pytest.raises(OSError, match="cannot read image"):
        open_rgb(bad)

    tolerant = CUBDataset(ann, "test", PRE, annotations=True, report_errors=True)
    item = tolerant[0]
    assert item["error"] and str(bad) in item["error"]
    assert item["image"].shape == (3, 32, 32) and not item["image"].any()
    assert not item["parts"][:, 2].any()
    assert tolerant[1]["error"] == "" and tolerant[1]["image"].abs().sum() > 0


# --- image modes: every mode becomes the 8-bit RGB its values mean -------------------------------------------
GRADIENT_16 = (np.arange(16 * 16, dtype=np.uint32) * 65535 // 255).astype(np.uint16).reshape(16, 16)  # 0..65535


def _saved(path, img, **kwargs):
    """Write ``img`` with PIL and check the file reads back in the mode the test is about."""
    img.save(path, **kwargs)
    with Image.open(path) as back:
        assert back.mode == img.mode or (img.mode == "I;16B" and back.mode.startswith("I;16")), back.mode
    return path


def _rgb(path):
    arr = np.asarray(open_rgb(path))
    assert arr.dtype == np.uint8 and arr.shape[2] == 3
    return arr.astype(int)


def _gray(value_8bit):
    return np.repeat(np.asarray(value_8bit, dtype=int)[..., None], 3, axis=-1)


def test_16bit_png_reads_as_its_8bit_gradient_not_white(tmp_path):
    """A 16-bit PNG (I;16) was read all white: PIL's conversion clips every value above 255."""
    path = _saved(tmp_path / "g16.png", Image.fromarray(GRADIENT_16))
    assert np.array_equal(_rgb(path), _gray(np.arange(256).reshape(16, 16)))
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 65536, (9, 11)).astype(np.uint16)  # values between the multiples of 257 round
    path = _saved(tmp_path / "odd16.png", Image.fromarray(odd))
    assert np.array_equal(_rgb(path), _gray(np.rint(odd / 257)))


def test_16bit_big_endian_tiff(tmp_path):
    img = Image.frombytes("I;16B", (16, 16), GRADIENT_16.astype(">u2").tobytes())
    path = _saved(tmp_path / "g16b.tif", img)
    assert np.array_equal(_rgb(path), _gray(np.arange(256).reshape(16, 16)))


def test_32bit_integer_image(tmp_path):
    """``I``: values in 0..65535 are 16-bit (an older PIL reads 16-bit PNGs as I); any other range is min-max."""
    path = _saved(tmp_path / "i16range.tif", Image.fromarray(GRADIENT_16.astype(np.int32)))
    assert np.array_equal(_rgb(path), _gray(np.arange(256).reshape(16, 16)))
    wide = np.array([[-1000, 0, 99000, 199000]], dtype=np.int32)  # min -1000, max 199000
    path = _saved(tmp_path / "iwide.tif", Image.fromarray(wide))
    assert np.array_equal(_rgb(path), _gray([[0, 1, 128, 255]]))


def test_float_image(tmp_path):
    """``F``: values in [0, 1] are that range; any other range is min-max; NaN is refused, naming the file."""
    unit = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    path = _saved(tmp_path / "unit.tif", Image.fromarray(unit))
    assert np.array_equal(_rgb(path), _gray([[0, 64, 128, 255]]))
    path = _saved(tmp_path / "wide.tif", Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)))
    assert np.array_equal(_rgb(path), _gray([[0, 128, 255]]))
    path = _saved(tmp_path / "nan.tif", Image.fromarray(np.array([[0.5, np.nan]], dtype=np.float32)))
    with pytest.raises(OSError, match="cannot read image .*nan.tif: the float image holds NaN"):
        open_rgb(path)


def _palette_image():
    """A 4x1 palette image: red, blue, then palette colour 2 (dark) twice."""
    img = Image.new("P", (4, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30] + [0] * (3 * 253))
    img.putdata([0, 1, 2, 2])
    return img


def test_transparent_areas_become_white(tmp_path):
    """Transparency is composited over white (PIL's conversion shows the colour a transparent area hides)."""
    white = [255, 255, 255]
    path = _saved(tmp_path / "p.png", _palette_image(), transparency=2)  # one transparent palette index
    assert _rgb(path)[0].tolist() == [[255, 0, 0], [0, 0, 255], white, white]
    path = _saved(tmp_path / "pa.png", _palette_image(), transparency=bytes([255, 128, 0]))  # alpha per colour
    assert _rgb(path)[0].tolist() == [[255, 0, 0], [127, 127, 255], white, white]  # blue half over white
    la = Image.fromarray(np.array([[[100, 255], [100, 0], [100, 128]]], dtype=np.uint8), "LA")
    assert _rgb(_saved(tmp_path / "la.png", la))[0].tolist() == [[100] * 3, white, [177] * 3]
    rgba = Image.fromarray(np.array([[[200, 30, 40, 255], [200, 30, 40, 0]]], dtype=np.uint8), "RGBA")
    assert _rgb(_saved(tmp_path / "rgba.png", rgba))[0].tolist() == [[200, 30, 40], white]
    rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint8))
    assert _rgb(_saved(tmp_path / "key.png", rgb, transparency=(1, 2, 3)))[0].tolist() == [white, [4, 5, 6]]
    gray16 = Image.fromarray(np.array([[0, 1000, 65535]], dtype=np.uint16))
    assert _rgb(_saved(tmp_path / "key16.png", gray16, transparency=1000))[0].tolist() == [[0] * 3, white, white]


def test_ordinary_modes_unchanged(tmp_path):
    """8-bit modes without transparency read as PIL converts them."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    for mode in ("RGB", "L", "1", "P"):
        img = rgb.convert(mode)
        path = _saved(tmp_path / f"{mode}.png", img)
        assert np.array_equal(_rgb(path), np.asarray(img.convert("RGB"))), mode


def _replace_first_image(root, img, name):
    """Make image 1 of the CUB folder ``root`` the PNG ``img`` (same size as the fixture's image 1)."""
    path = root / "images" / CUB_CLASS_DIRS[0] / name
    img.save(path)
    _edit(root / "images.txt", 1, f"1 {path.relative_to(root / 'images').as_posix()}")


def test_16bit_png_in_a_cub_folder_is_read_like_its_8bit_twin(cub_fixture):
    """The whole path (annotations, CUBDataset, preprocessing, boxes): the same model input within 1/255."""
    w, h = CUB_IMAGES[0]["size"]
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (h, w)).astype(np.uint16)
    twin = np.rint(deep / 257).astype(np.uint8)
    items, modes = [], []
    for img, name in ((Image.fromarray(deep), "deep.png"), (Image.fromarray(twin), "twin.png")):
        root = cub_fixture()
        _replace_first_image(root, img, name)
        dataset = CUBDataset(load_cub(root), "all", PRE, annotations=True)
        with Image.open(dataset.image_path(0)) as file:
            modes.append(file.mode)
        items.append(dataset[0])
    assert modes == ["I;16", "L"]
    deep_item, twin_item = items
    image, expected = PRE.denormalize(deep_item["image"]), PRE.denormalize(twin_item["image"])
    assert (image - expected).abs().max() <= 1 / 255 and expected.std() > 0.1  # not white
    assert torch.equal(deep_item["box"], twin_item["box"]) and torch.equal(deep_item["parts"], twin_item["parts"])


# --- annotation errors -----------------------------------------------------------------------------------
def _edit(path, lineno, new):
    lines = path.read_text().splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_root_missing(tmp_path):
    missing = tmp_path / "nowhere" / "CUB_200_2011"
    one_line_error(lambda: load_cub(missing), str(missing), "does not exist", "scripts/download_cub.py")
    tmp_path.joinpath("empty").mkdir()
    one_line_error(lambda: load_cub(tmp_path / "empty"), "has no images.txt", "scripts/download_cub.py")


def test_root_is_a_file_or_one_level_too_high(tmp_path, cub_fixture):
    a_file = tmp_path / "CUB_200_2011.tgz"
    a_file.write_bytes(b"x")
    one_line_error(lambda: load_cub(a_file), f"{a_file} is a file, not a folder")
    root = cub_fixture()
    one_line_error(lambda: load_cub(root.parent), "has no images.txt", f"but {root} has: pass that folder")


@pytest.mark.parametrize("name", ["classes.txt", "images.txt", "image_class_labels.txt", "parts/part_locs.txt"])
def test_annotation_files_with_a_byte_order_mark(cub_fixture, name):
    """An editor that saves 'UTF-8 with BOM' must not turn the first id into '\\ufeff1' is not a number."""
    root = cub_fixture()
    expected = load_cub(root)
    path = root / name
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    ann = load_cub(root)
    assert ann.class_dirs == expected.class_dirs and ann.paths == expected.paths
    assert (ann.labels == expected.labels).all() and np.array_equal(ann.parts, expected.parts)


def test_annotation_file_not_utf8(cub_fixture):
    root = cub_fixture()
    path = root / "classes.txt"
    path.write_bytes(path.read_bytes() + "4 004.Gro\u00dfer_Vogel\n".encode("latin-1"))
    one_line_error(lambda: load_cub(root), f"{path}:4: not UTF-8 text (byte 0xdf)", "save the file as UTF-8")


@pytest.mark.parametrize("name", ["image_class_labels.txt", "train_test_split.txt", "classes.txt"])
def test_annotation_file_missing(cub_fixture, name):
    root = cub_fixture()
    (root / name).unlink()
    one_line_error(lambda: load_cub(root), "missing annotation file", str(root / name))


def test_image_without_label(cub_fixture):
    root = cub_fixture()
    _edit(root / "image_class_labels.txt", 4, None)  # drop image 4's label
    one_line_error(lambda: load_cub(root), "images.txt:4", "image id 4", "image_class_labels.txt")


def test_label_outside_classes(cub_fixture):
    root = cub_fixture()
    _edit(root / "image_class_labels.txt", 3, "3 4")
    one_line_error(lambda: load_cub(root), "image_class_labels.txt:3", "class 4", "1..3")
    _edit(root / "image_class_labels.txt", 3, "3 0")
    one_line_error(lambda: load_cub(root), "image_class_labels.txt:3", "class 0")


def test_label_for_unknown_image(cub_fixture):
    root = cub_fixture()
    with open(root / "train_test_split.txt", "a") as fh:
        fh.write("99 1\n")
    one_line_error(lambda: load_cub(root), "train_test_split.txt:7", "image id 99")


@pytest.mark.parametrize("name,lineno,line,needle", [
    ("bounding_boxes.txt", 2, "2 1.0 2.0", "expected"),
    ("bounding_boxes.txt", 5, "5 1.0 2.0 x 4.0", "'x' is not a number"),
    ("images.txt", 3, "3", "expected"),
    ("image_class_labels.txt", 3, "3 x", "'x' is not a number"),
    ("train_test_split.txt", 2, "2", "expected"),
    ("images.txt", 2, "two 001.Black_footed_Albatross/a.jpg", "'two' is not a number"),
    ("images.txt", 6, "1 001.Black_footed_Albatross/dup.jpg", "repeats line 1"),
    ("train_test_split.txt", 1, "1 2", "must be 0 or 1"),
    ("classes.txt", 2, "5 002.Laysan_Albatross", "class ids must run"),
    ("parts/part_locs.txt", 20, "2 5 1.0 2.0", "expected"),
    ("parts/part_locs.txt", 20, "2 16 1.0 2.0 1", "part 16"),
    ("parts/part_locs.txt", 20, None, "no entry for part 5"),
])
def test_malformed_lines(cub_fixture, name, lineno, line, needle):
    root = cub_fixture()
    _edit(root / name, lineno, line)
    where = str(root / name) if line is None else f"{root / name}:{lineno}"
    one_line_error(lambda: load_cub(root), where, needle)


# Every id-keyed file refuses a repeated id, naming both lines (before, the last line won silently).
# (file, line to append, needle): the fixture's files hold one line per id, in id order, so image 3 is on line 3.
@pytest.mark.parametrize("name,line,needle", [
    ("images.txt", "3 003.Sooty_Albatross/other.jpg", ":7: image id 3 repeats line 3 ('3 002.Laysan_Albatross/"),
    ("images.txt", "7 {path1}", ":7: image 001.Black_footed_Albatross/Black_footed_Albatross_0001_0.jpg repeats "
                                "line 1 (one file under two ids)"),
    ("image_class_labels.txt", "3 1", ":7: image id 3 repeats line 3 ('3 2'); keep one of the two lines"),
    ("train_test_split.txt", "2 1", ":7: image id 2 repeats line 2 ('2 0')"),
    ("bounding_boxes.txt", "1 0.0 0.0 5.0 5.0", ":7: image id 1 repeats line 1 ('1 16.0 9.0 32.0 24.0')"),
    ("parts/part_locs.txt", "2 5 1.0 2.0 1", ":91: image id 2, part 5 repeats line 20 ('2 5 "),
    ("classes.txt", "2 004.Other", ":4: class id 2 repeats line 2 ('2 002.Laysan_Albatross')"),
    ("classes.txt", "4 001.Black_footed_Albatross", ":4: class name '001.Black_footed_Albatross' repeats line 1"),
    ("parts/parts.txt", "3 belly", ":16: part id 3 repeats line 3 ('3 belly')"),
    ("parts/parts.txt", "16 back", ":16: part name 'back' repeats line 1"),
])
def test_a_repeated_id_is_refused_naming_both_lines(cub_fixture, name, line, needle):
    root = cub_fixture()
    path1 = (root / "images.txt").read_text().splitlines()[0].split()[1]
    with open(root / name, "a") as fh:
        fh.write(line.format(path1=path1) + "\n")
    one_line_error(lambda: load_cub(root), f"{root / name}{needle}")


def test_part_ids_must_run_in_order(cub_fixture):
    """parts.txt ids were ignored: a file in another order gave the parts other names than their locations."""
    root = cub_fixture()
    _edit(root / "parts" / "parts.txt", 2, "3 beak")  # swapped with `3 belly`
    _edit(root / "parts" / "parts.txt", 3, "2 belly")
    one_line_error(lambda: load_cub(root), f"{root / 'parts' / 'parts.txt'}:2: part ids must run 1, 2, 3, ... in "
                                           "order, got 3")


def test_blank_lines_and_paths_with_spaces(cub_fixture):
    root = cub_fixture()
    text = (root / "images.txt").read_text()
    (root / "images.txt").write_text("\n" + text.replace("\n", "\n\n"))
    ann = load_cub(root)
    assert len(ann.paths) == len(CUB_IMAGES)
    assert ann.part_names[6] == "left eye"  # `7 left eye`: names keep their spaces


# --- geometry: resize + center crop ---------------------------------------------------------------------
@pytest.mark.parametrize("size", [(333, 500), (500, 333), (100, 100), (17, 301), (301, 17), (64, 48), (36, 50)])
@pytest.mark.parametrize("pre", [Preprocessing(32, 36), Preprocessing.for_size(48, "bicubic")])
def test_resized_size_and_crop_offset_match_torchvision(size, pre):
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    resized = T.Resize(pre.resize_size, antialias=True)(img)
    assert resized.size == pre.resized_size(*size)
    left, top = pre.crop_offset(*size)
    crop = pre.crop_size
    expected = np.asarray(T.CenterCrop(crop)(resized))
    assert np.array_equal(np.asarray(resized.crop((left, top, left + crop, top + crop))), expected)
    assert pre.eval_transform()(img).shape == (3, crop, crop)


def test_for_size_and_dict_roundtrip():
    pre = Preprocessing.for_size(224, "bicubic")
    assert (pre.crop_size, pre.resize_size, pre.interpolation) == (224, 256, "bicubic")
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError):
        Preprocessing(32, 36, "lanczos")


def _brightness(pre, img):
    """Model input → [H, W] brightness in [0, 1]."""
    return pre.denormalize(pre.eval_transform()(img)).mean(0).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(160, 100), (90, 150), (40, 28), (30, 44)])  # landscape/portrait, down/up-scaled
def test_map_points_follow_a_bright_dot(size, interpolation):
    pre = Preprocessing(48, 56, interpolation)
    w, h = size
    rng = np.random.default_rng(w * h)
    checked = 0
    yy, xx = np.mgrid[0:48, 0:48]
    for _ in range(40):
        px, py = int(rng.integers(1, w - 1)), int(rng.integers(1, h - 1))
        mx, my = pre.map_points([[px, py]], w, h)[0]
        if not (6 <= mx <= 41 and 6 <= my <= 41):
            continue  # cropped away or too close to the crop border
        arr = np.zeros((h, w, 3), dtype=np.uint8)
        if w > 60:  # downscaled: a 3x3 square centred on the point survives the antialiasing
            arr[py - 1:py + 2, px - 1:px + 2] = 255
        else:
            arr[py, px] = 255
        bright = _brightness(pre, Image.fromarray(arr))
        ay, ax = np.unravel_index(np.argmax(bright), bright.shape)
        assert abs(ax - mx) <= 1.0 and abs(ay - my) <= 1.0, (size, (px, py), (mx, my), (ax, ay))
        # sub-pixel: the blob's centroid sits on the mapped point (catches a missing half-pixel correction)
        cx, cy = (bright * xx).sum() / bright.sum(), (bright * yy).sum() / bright.sum()
        assert abs(cx - mx) <= 0.15 and abs(cy - my) <= 0.15, (size, (px, py), (mx, my), (cx, cy))
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size,box", [
    ((160, 100), (40, 20, 70, 50)),   # landscape, box inside the crop
    ((160, 100), (5, 30, 60, 40)),    # landscape, box cut by the crop's left edge
    ((90, 150), (20, 40, 45, 70)),    # portrait
    ((90, 150), (10, 2, 50, 40)),     # portrait, box cut by the crop's top edge
    ((30, 44), (6, 10, 15, 20)),      # upscaled
])
def test_map_box_matches_a_white_rectangle(size, box, interpolation):
    pre = Preprocessing(48, 56, interpolation)
    w, h = size
    x, y, bw, bh = box
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[y:y + bh, x:x + bw] = 255
    level = _brightness(pre, Image.fromarray(arr))
    bright = level > 0.5
    cols, rows = np.flatnonzero(bright.any(0)), np.flatnonzero(bright.any(1))
    x0, y0, x1, y1 = pre.map_box(box, w, h)
    # sub-pixel: a row / column through the middle has the box's mapped width / height as mass, centred on it
    centres = np.arange(48) + 0.5  # pixel k covers [k, k + 1)
    row, col = level[int((y0 + y1) / 2)], level[:, int((x0 + x1) / 2)]
    assert abs(row.sum() - (x1 - x0)) <= 0.1 and abs(col.sum() - (y1 - y0)) <= 0.1
    assert abs((row * centres).sum() / row.sum() - (x0 + x1) / 2) <= 0.1
    assert abs((col * centres).sum() / col.sum() - (y0 + y1) / 2) <= 0.1
    assert abs(cols[0] - x0) <= 1.5 and abs(cols[-1] + 1 - x1) <= 1.5, ((x0, x1), (cols[0], cols[-1]))
    assert abs(rows[0] - y0) <= 1.5 and abs(rows[-1] + 1 - y1) <= 1.5, ((y0, y1), (rows[0], rows[-1]))
    assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48


def test_map_box_clips_to_crop():
    pre = Preprocessing(48, 56)
    np.testing.assert_allclose(pre.map_box((0, 0, 160, 100), 160, 100), [0, 0, 48, 48])


# --- images.txt may name only files inside images/ -----------------------------------------------------------------
def set_image_line(root, no, rel):
    """images.txt with line ``no`` (1-based) naming ``rel`` instead."""
    lines = (root / "images.txt").read_text().splitlines()
    lines[no - 1] = f"{lines[no - 1].split()[0]} {rel}"
    (root / "images.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("rel,why", [("../../x.jpg", "is outside images/ ('..' climbs out of it)"),
                                     ("001.Black_footed_Albatross/../../x.jpg", "is outside images/ ('..' climbs"),
                                     ("/etc/passwd", "is outside images/ (an absolute path)"),
                                     ("/dev/zero", "is outside images/ (an absolute path)"),
                                     ("C:\\Users\\x.jpg", "is outside images/ (an absolute path)"),
                                     ("link.jpg", "is outside images/ (a link leads to /etc/hostname)"),
                                     ("linked_dir/x.jpg", "is outside images/ (a link leads to "),
                                     ("fifo.jpg", "is no regular file but a device, a pipe or a socket")])
def test_an_entry_that_leaves_images_is_refused_with_file_and_line(cub_fixture, rel, why):
    import os

    root = cub_fixture()
    (root / "images" / "link.jpg").symlink_to("/etc/hostname")
    (root / "images" / "linked_dir").symlink_to(root.parent)
    os.mkfifo(root / "images" / "fifo.jpg")
    set_image_line(root, 3, rel)
    message = one_line_error(lambda: load_cub(root), f"{root / 'images.txt'}:3: {rel!r} {why}")
    assert message.endswith("images.txt may name only regular files inside images/: fix or remove that line")


def test_a_link_that_stays_inside_images_is_fine(cub_fixture):
    root = cub_fixture()
    first = load_cub(root).paths[0]
    (root / "images" / "same.jpg").symlink_to(root / "images" / first)  # e.g. a deduplicated copy
    set_image_line(root, 1, "same.jpg")
    assert load_cub(root).paths[0] == "same.jpg"


def test_download_verify_does_not_call_such_a_folder_consistent(cub_fixture):
    from conftest import error_lines, run_script_inprocess

    root = cub_fixture()
    set_image_line(root, 2, "../../../etc/passwd")
    code, out, err = run_script_inprocess("download_cub", "--dataset-root", root, "--url", "", "--fallback-url", "",
                                          "--verify", "true")
    assert code == 2 and "consistent" not in out and "Verified" not in out
    assert error_lines(err)[0].startswith(f"error: {root / 'images.txt'}:2: '../../../etc/passwd' is outside images/")
