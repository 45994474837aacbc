"""Weights files, read safely: ``torch.load(weights_only=True)`` (or safetensors, a tensors-only format) with one
clear line for every way a file can be wrong, and the checks a state dict passes before it loads into a model."""
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import UserError


def is_safetensors(head):
    """Whether the first bytes of a file are a safetensors header (8 bytes of length, then JSON)."""
    return len(head) > 8 and head[8:9] == b"{" and b'"dtype"' in head


def _is_safetensors_file(path):
    with open(path, "rb") as fh:
        return is_safetensors(fh.read(4096))


def _load_safetensors(path, what):
    from safetensors import SafetensorError
    from safetensors.torch import load_file as read_safetensors

    try:
        return read_safetensors(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{what} {path} cannot be read ({first_line(err)}); it may be truncated") from None


_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"\x89HDF", "an HDF5 (Keras) file"),
          (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"))


def not_torch(path):
    """Why ``path`` is plainly not a file ``torch.save`` wrote (e.g. 'is empty (0 bytes)'), or None if it may be one."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch's zip format; the legacy pickle format
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"is {kind}"
    if is_safetensors(head):
        return "is a safetensors file (load it with safetensors and re-save it with torch.save)"
    if b"\x00" not in head:
        try:
            head[:-4].decode("utf-8") if len(head) == 4096 else head.decode("utf-8")
            return "is a text file"
        except UnicodeDecodeError:
            pass
    return f"is not a PyTorch file (it begins with the bytes {head[:8].hex(' ')})"


def first_line(err):
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_file(path, what, safetensors=False):
    """``torch.load(weights_only=True)`` (or, with ``safetensors``, a safetensors file's tensors); every way a file
    can be wrong is one UserError saying what the file is."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file: pass the file itself")
    try:
        if safetensors and _is_safetensors_file(path):
            return _load_safetensors(path, what)
        problem = not_torch(path)
    except OSError as err:
        raise UserError(f"{what} {path} cannot be read ({err.strerror or err})") from None
    if problem:
        raise UserError(f"{what} {path} {problem}; expected a file written by torch.save") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{what} {path} holds pickled Python objects and was refused (only tensors and plain "
                        "types are loaded); re-save it as a state dict") from None
    except (RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError) as err:
        raise UserError(f"{what} {path} cannot be read ({first_line(err)}); it may be truncated") from None


def shape_of(value):
    return tuple(getattr(value, "shape", ()))


def fit_problem(state, own, strict=True):
    """Why ``state`` does not load into a model whose state dict is ``own`` (one phrase), or None."""
    wrong = [k for k, v in state.items() if k in own and shape_of(v) != shape_of(own[k])]
    if wrong:
        k = wrong[0]
        return (f"{k} has shape {shape_of(state[k])}, the model expects {shape_of(own[k])} "
                f"({len(wrong)} tensors differ)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    return None


def non_finite_tensors(state):
    """Names of the floating-point tensors in ``state`` holding NaN or infinite values."""
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def state_dict_file(path):
    """The state dict (name → tensor) in a weights file: a ``torch.save`` of a state dict, one of this package's
    checkpoints (its ``model``) or a safetensors file; finite values only."""
    state = load_file(path, "weights file", safetensors=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our checkpoints
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"weights file {path} holds no state dict (a dict of tensors)")
    bad = non_finite_tensors(state)
    if bad:
        raise UserError(f"weights file {path} holds NaN or infinite weights ({len(bad)} tensors, e.g. {bad[0]})")
    return state


def resample_positions(pos, prefix, grid):
    """A ``[1, prefix + g², D]`` position embedding (``prefix`` tokens first, then a g×g grid) resampled to a
    ``grid`` × ``grid`` patch grid (bicubic, as torchvision, timm and Hugging Face do); unchanged when it fits."""
    g = round((pos.shape[1] - prefix) ** 0.5)
    if g * g != pos.shape[1] - prefix:
        raise ValueError(f"{pos.shape[1] - prefix} position rows after {prefix} token(s) are no square grid")
    if g == grid:
        return pos
    rows = pos[:, prefix:].reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    rows = F.interpolate(rows, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:, :prefix], rows.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos.dtype)], 1)
