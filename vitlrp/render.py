"""Pictures of relevance: heatmap, overlay, the 3-panel comparison, and γ comparison grids (PIL, no figures).

Heatmaps use a diverging colormap centred on zero (red positive, blue negative), scaled per map by its
largest absolute value, so the sign and the relative strength are what the picture shows; every picture of maps
carries a legend saying so (:func:`legend`). Rows hold at most :data:`PER_ROW` panels, so a picture stays narrower
than a 1400 px page and its captions render at their size; the size of the smallest text is recorded in the PNG
(:data:`TEXT_PX`) for the page tests.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from .fileio import write_bytes

MIN_PANEL = 224  # smaller inputs (the tiny ViT) are enlarged so the pictures stay readable
PER_ROW = 5  # panels per row: 5 x 230 px fit a 1400 px page unscaled
TITLE_PX, CAPTION_PX = 15, 13  # font sizes in pixels of the picture
TEXT_PX = "vitlrp:text_px"  # PNG text chunk: the smallest font size (px) in the picture


def _cmap(name="bwr"):
    import matplotlib

    return (matplotlib.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def _as_numpy(a):
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def normalize(relevance):
    """Relevance scaled to [-1, 1] by its largest absolute value (all-zero stays zero)."""
    r = _as_numpy(relevance)
    peak = float(np.abs(r).max()) if r.size else 0.0
    return r / peak if peak > 0 else np.zeros_like(r)


def heatmap(relevance, cmap="bwr"):
    """``[H, W]`` relevance → ``[H, W, 3]`` uint8 colours (white = 0)."""
    idx = np.clip(np.round((normalize(relevance) + 1) * 127.5), 0, 255).astype(np.uint8)
    return _cmap(cmap)[idx]


def check_image(image):
    """An RGB float image ``[H, W, 3]`` in [0, 1]; raise ValueError otherwise (e.g. still normalized)."""
    img = _as_numpy(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {img.shape}")
    if img.min() < 0 or img.max() > 1:
        raise ValueError(f"image values must lie in [0, 1] (got {img.min():.3g}..{img.max():.3g}); "
                         "denormalize the model input first")
    return img


def overlay(image, relevance, cmap="bwr", strength=0.85):
    """The heatmap laid over a dimmed grayscale copy of ``image``, opaque where relevance is strong."""
    img = check_image(image)
    r = normalize(relevance)
    if r.shape != img.shape[:2]:
        raise ValueError(f"relevance {r.shape} and image {img.shape[:2]} differ in size")
    gray = (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None] * 0.8 + 0.1
    alpha = (strength * np.sqrt(np.abs(r)))[..., None]
    out = gray * 255 * (1 - alpha) + heatmap(r, cmap).astype(np.float32) * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def to_uint8(image):
    return (check_image(image) * 255 + 0.5).astype(np.uint8)


def _enlarge(arr, resample=Image.NEAREST):
    img = Image.fromarray(arr)
    scale = max(1, -(-MIN_PANEL // max(img.size)))
    return img.resize((img.width * scale, img.height * scale), resample) if scale > 1 else img


def _font(size=14):
    """DejaVu Sans from matplotlib (has Greek letters for γ); PIL's default font otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (OSError, ImportError, ValueError):
        return ImageFont.load_default()


def _text_px(image):
    """The smallest font size recorded for ``image`` (None: no text, or unknown)."""
    value = image.info.get(TEXT_PX)
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _with_text(image, sizes):
    sizes = [s for s in sizes if s is not None]
    if sizes:
        image.info[TEXT_PX] = f"{min(sizes):g}"
    return image


def _row(tiles, captions, pad):
    """One row of tiles with a caption under each."""
    small = _font(CAPTION_PX)
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + pad * (len(tiles) + 1),
                               max(t.height for t in tiles) + CAPTION_PX + 11), "white")
    draw = ImageDraw.Draw(canvas)
    x = pad
    for tile, cap in zip(tiles, captions):
        canvas.paste(tile, (x, 0))
        draw.text((x + 2, tile.height + 4), cap, fill=(40, 40, 40), font=small)
        x += tile.width + pad
    return _with_text(canvas, [CAPTION_PX])


def _title(text, pad):
    font = _font(TITLE_PX)
    canvas = Image.new("RGB", (int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)) + 2 * pad,
                               TITLE_PX + 9), "white")
    ImageDraw.Draw(canvas).text((pad, 2), text, fill=(0, 0, 0), font=font)
    return _with_text(canvas, [TITLE_PX])


def panels(images, captions, title=None, pad=6, per_row=PER_ROW, legend_below=False):
    """Panels with a caption under each, at most ``per_row`` side by side, an optional title line above and the
    colour legend (:func:`legend`) below when ``legend_below``."""
    tiles = [_enlarge(a) for a in images]
    rows = [_row(tiles[k:k + per_row], captions[k:k + per_row], pad) for k in range(0, len(tiles), per_row)]
    parts = ([_title(title, pad)] if title else []) + rows + ([legend()] if legend_below else [])
    return stack(parts, pad=2, margin=pad)


def legend(pad=6):
    """A strip saying what the colours of a map mean: the blue–white–red bar from −max to +max, with words."""
    font = _font(CAPTION_PX)
    bar = Image.fromarray(np.repeat(_cmap()[None], CAPTION_PX, 0)).resize((160, CAPTION_PX))
    words = ["negative", "0", "positive relevance (red: for the explained class, blue: against it)",
             "each map is scaled by its own largest |relevance|"]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(measure.textlength(words[0], font=font)) + pad
    width = left + bar.width + pad + int(max(measure.textlength(w, font=font) for w in words[2:])) + 2 * pad
    canvas = Image.new("RGB", (width, 2 * CAPTION_PX + 12), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), words[0], fill=(40, 40, 40), font=font)
    canvas.paste(bar, (pad + left, 4))
    draw.rectangle([pad + left, 4, pad + left + bar.width - 1, 4 + CAPTION_PX - 1], outline=(150, 150, 150))
    draw.text((pad + left + bar.width + pad, 2), words[2], fill=(40, 40, 40), font=font)
    draw.text((pad, CAPTION_PX + 8), words[3], fill=(90, 90, 90), font=font)
    return _with_text(canvas, [CAPTION_PX])


def stack(rows, pad=4, margin=0):
    """Stack PIL images vertically (an overview of several panels), ``margin`` px of white above and below."""
    w = max(r.width for r in rows)
    canvas = Image.new("RGB", (w, sum(r.height for r in rows) + pad * (len(rows) - 1) + 2 * margin), "white")
    y = margin
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + pad
    return _with_text(canvas, [_text_px(r) for r in rows])


def interleave(rows, per_row=PER_ROW, pad=6, gap=14):
    """Rows of panels that belong together (the same maps of two images) kept together when they wrap: ``rows``
    are ``(tiles, captions)`` of equal length; each block of ``per_row`` columns shows every row, then the next
    block. The colour legend closes the picture."""
    tiles = [[_enlarge(a) for a in r[0]] for r in rows]
    parts = []
    for k in range(0, len(tiles[0]), per_row):
        block = stack([_row(t[k:k + per_row], c[k:k + per_row], pad) for t, (_, c) in zip(tiles, rows)], pad=2)
        parts.append(block)
    return stack(parts + [legend()], pad=gap)


def save_png(image, path):
    """Write a PIL image or uint8 array as PNG, atomically (with the smallest text size it records)."""
    if not isinstance(image, Image.Image):
        image = _enlarge(np.asarray(image))
    info = PngInfo()
    if _text_px(image) is not None:
        info.add_text(TEXT_PX, image.info[TEXT_PX])
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, pnginfo=info)
    write_bytes(Path(path), buf.getvalue())


def load_png(path):
    """A PNG this module wrote, back as an RGB picture (for :func:`stack`), with its recorded text size."""
    with Image.open(path) as img:
        out = img.convert("RGB")
        return _with_text(out, [_text_px(img)])


def outline(image, box, color=(255, 0, 255), width=1):
    """A uint8 ``[H, W, 3]`` copy of ``image`` with the ``(x0, y0, x1, y1)`` edge box drawn on it."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    x0, y0, x1, y1 = (float(v) for v in box)
    ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
    return np.asarray(img)


def map_rows(rows, header=None):
    """A table of pictures: ``header`` (a :func:`panels` picture, e.g. the input image) on top, then one row per
    ``(title, tiles, captions)`` of ``rows`` (uint8 ``[H, W, 3]`` tiles), then the colour legend."""
    pictures = [header] if header is not None else []
    return stack(pictures + [panels(tiles, captions, title) for title, tiles, captions in rows] + [legend()])


def cascade_grid(image, title, rows):
    """Adebayo-style cascade: the input, then per method its original map and each randomization step's map.

    ``rows``: ``(method, maps, captions)`` with the ``[H, W]`` maps (each scaled by its own largest |value|)."""
    return map_rows([(name, [heatmap(m) for m in maps], captions) for name, maps, captions in rows],
                    panels([to_uint8(image)], ["input"], title))


def class_pair_grid(images, rows):
    """Per method one row of overlays: for each image its explained class's map beside another class's map.

    ``images``: the RGB inputs; ``rows``: ``(method, maps, captions)`` with two maps per image, in image order."""
    out = []
    for name, maps, captions in rows:
        tiles = [overlay(images[k // 2], m) for k, m in enumerate(maps)]
        out.append((name, tiles, captions))
    return map_rows(out)
