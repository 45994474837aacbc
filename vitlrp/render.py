"""Pictures of relevance: heatmap, overlay, the 3-panel comparison, and γ comparison grids (PIL, no figures).

Heatmaps use a diverging colormap centred on zero (red positive, blue negative), scaled per map by its
largest absolute value, so the sign and the relative strength are what the picture shows.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fileio import write_bytes

MIN_PANEL = 224  # smaller inputs (the tiny ViT) are enlarged so the pictures stay readable


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


def panels(images, captions, title=None, pad=6):
    """Side-by-side panels with a caption under each and an optional title line."""
    tiles = [_enlarge(a) for a in images]
    font, small = _font(15), _font(13)
    w = sum(t.width for t in tiles) + pad * (len(tiles) + 1)
    if title:
        w = max(w, int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=font)) + 2 * pad)
    h_title = 24 if title else 0
    h = max(t.height for t in tiles) + h_title + 24 + 2 * pad
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad), title, fill=(0, 0, 0), font=font)
    x = pad
    for tile, cap in zip(tiles, captions):
        canvas.paste(tile, (x, pad + h_title))
        draw.text((x + 2, pad + h_title + tile.height + 4), cap, fill=(40, 40, 40), font=small)
        x += tile.width + pad
    return canvas


def stack(rows, pad=4):
    """Stack PIL images vertically (an overview of several panels)."""
    w = max(r.width for r in rows)
    canvas = Image.new("RGB", (w, sum(r.height for r in rows) + pad * (len(rows) - 1)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height + pad
    return canvas


def save_png(image, path):
    """Write a PIL image or uint8 array as PNG, atomically."""
    if not isinstance(image, Image.Image):
        image = _enlarge(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    write_bytes(Path(path), buf.getvalue())


def load_png(path):
    """A PNG this module wrote, back as an RGB picture (for :func:`stack`)."""
    with Image.open(path) as img:
        return img.convert("RGB")


def outline(image, box, color=(255, 0, 255), width=1):
    """A uint8 ``[H, W, 3]`` copy of ``image`` with the ``(x0, y0, x1, y1)`` edge box drawn on it."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    x0, y0, x1, y1 = (float(v) for v in box)
    ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=color, width=width)
    return np.asarray(img)


def map_rows(rows, header=None):
    """A table of pictures: ``header`` (a :func:`panels` picture, e.g. the input image) on top, then one row per
    ``(title, tiles, captions)`` of ``rows`` (uint8 ``[H, W, 3]`` tiles)."""
    pictures = [header] if header is not None else []
    return stack(pictures + [panels(tiles, captions, title) for title, tiles, captions in rows])


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
