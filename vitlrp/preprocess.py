"""Model-input preprocessing (resize shorter side, center crop, normalize) and the same geometry for annotations.

The evaluation needs CUB's boxes and part points in the coordinates of the model input, so the
mapping here follows torchvision's ``Resize(int)`` + ``CenterCrop`` exactly.
Conventions: boxes are edges (``x, y, w, h`` covers ``[x, x+w)``); points are pixel indices (centre of a pixel).
"""
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
          "nearest": InterpolationMode.NEAREST}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: resize the shorter side to ``resize_size``, center-crop ``crop_size``."""

    crop_size: int
    resize_size: int
    interpolation: str = "bilinear"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if self.interpolation not in _MODES:
            raise ValueError(f"interpolation must be one of {sorted(_MODES)}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        # each of these would fail only later, inside a transform, or pad or divide by zero without a word
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"need 0 < crop_size <= resize_size (a smaller resize pads the crop with black), got "
                             f"crop_size {self.crop_size}, resize_size {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need one value per RGB channel, got {len(self.mean)} and {len(self.std)}")
        if not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            raise ValueError(f"mean must be finite and std finite and positive, got {self.mean} and {self.std}")

    @classmethod
    def for_size(cls, crop_size, interpolation="bilinear", resize_ratio=256 / 224):
        """Standard eval geometry for ``crop_size`` (ImageNet's 256/224 resize ratio by default)."""
        return cls(int(crop_size), int(round(crop_size * resize_ratio)), interpolation)

    @classmethod
    def from_dict(cls, d):
        return cls(int(d["crop_size"]), int(d["resize_size"]), d.get("interpolation", "bilinear"),
                   tuple(d.get("mean", IMAGENET_MEAN)), tuple(d.get("std", IMAGENET_STD)))

    def to_dict(self):
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    # --- geometry -------------------------------------------------------------------------------
    def resized_size(self, width, height):
        """(width, height) after torchvision's ``Resize(resize_size)`` of a ``width`` x ``height`` image."""
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def crop_offset(self, width, height):
        """(left, top) of the center crop inside the resized image."""
        rw, rh = self.resized_size(width, height)
        return int(round((rw - self.crop_size) / 2.0)), int(round((rh - self.crop_size) / 2.0))

    def map_points(self, xy, width, height):
        """Map pixel-index points ``[N, 2]`` of the original image to model-input pixel indices (float)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_offset(width, height)
        scale = np.array([rw / width, rh / height])
        return (xy + 0.5) * scale - 0.5 - np.array([left, top])

    def map_box(self, box, width, height):
        """Map an ``(x, y, w, h)`` box to ``(x0, y0, x1, y1)`` edges in the model input, clipped to the crop."""
        x, y, w, h = (float(v) for v in box)
        rw, rh = self.resized_size(width, height)
        left, top = self.crop_offset(width, height)
        sx, sy = rw / width, rh / height
        edges = np.array([x * sx - left, y * sy - top, (x + w) * sx - left, (y + h) * sy - top])
        return np.clip(edges, 0, self.crop_size)

    # --- transforms -----------------------------------------------------------------------------
    def eval_transform(self):
        return T.Compose([
            T.Resize(self.resize_size, interpolation=_MODES[self.interpolation], antialias=True),
            T.CenterCrop(self.crop_size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def train_transform(self, scale=(0.25, 1.0)):
        """Random resized crop + horizontal flip, the usual fine-grained fine-tuning augmentation."""
        return T.Compose([
            T.RandomResizedCrop(self.crop_size, scale=scale, interpolation=_MODES[self.interpolation],
                                antialias=True),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def denormalize(self, images):
        """Undo the normalization: ``[..., 3, H, W]`` model inputs → RGB in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(3, 1, 1)
        return (images * std + mean).clamp(0, 1)


BACKGROUND = (255, 255, 255)  # what a transparent area of an image becomes: white, as an image viewer shows it


def open_rgb(path):
    """Open an image file as 8-bit RGB whatever its mode (see :func:`to_rgb`).

    Raises OSError naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise OSError(f"cannot read image {path}: {err}") from None


def to_rgb(img):
    """``img`` as 8-bit RGB, its values scaled by the range of its mode (PIL's own conversion clips them).

    - 16-bit (``I;16``, ``I;16B``, ...): value / 257, so 65535 is 255.
    - 32-bit integer ``I``: values in 0..65535 are 16-bit (as an older PIL reads a 16-bit PNG); others are scaled
      min-max to 0..255.
    - float ``F``: values in [0, 1] are that range (x 255); others are scaled min-max. NaN or infinity is refused.
    - any transparency (an alpha channel: ``RGBA``, ``LA``, ``PA``; a palette or colour key marked transparent) is
      composited over :data:`BACKGROUND`, so a transparent area is white, not whatever colour it hides.
    - everything else (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ...) by PIL's conversion.
    """
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit_gray(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa") or "transparency" in img.info:
        background = Image.new("RGBA", img.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _to_8bit_gray(img):
    """A 16-bit, 32-bit integer or float single-channel image as ``L`` (rules in :func:`to_rgb`)."""
    raw = np.asarray(img)
    values = raw.astype(np.float64)
    if img.mode == "F" and not np.isfinite(values).all():
        raise ValueError("the float image holds NaN or infinite values")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F" and 0 <= lo and hi <= 1:
        scaled = values * 255
    elif img.mode != "F" and 0 <= lo and hi <= 65535:
        scaled = values / 257
    else:  # no fixed range: the image's own min..max (a constant image becomes black)
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, (int, float)) and not isinstance(key, bool):  # a 16-bit PNG's colour key, in raw values
        gray.putalpha(Image.fromarray(np.where(raw == key, 0, 255).astype(np.uint8)))
    return gray
