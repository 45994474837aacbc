"""The one batch type every explaining step works on: the readable images of a loader batch, their sample
indices and labels, the plain model's logits, and the one place that chooses which class a map explains."""
from dataclasses import dataclass, field

import torch

from .errors import UserError
from .sanity.draws import other_classes

TARGET_MODES = ("pred", "label")  # explain the model's prediction, or the true class


def check_target_mode(mode):
    if mode not in TARGET_MODES:
        raise UserError(f"target must be pred or label, got {mode!r}", setting="target")
    return mode


@dataclass
class Batch:
    """A loader batch (``raw``: ``image``, ``label``, ``index``, ``error``, and ``box``, ``parts`` with annotations)
    and its readable rows: ``ok`` (positions in ``raw``), their ``images`` and ``labels`` on the device, their
    sample indices ``ids`` and, when a forward was given, the plain model's float32 ``logits``."""

    raw: dict
    ok: list
    images: torch.Tensor = None
    labels: torch.Tensor = None
    ids: list = field(default_factory=list)
    logits: torch.Tensor = None

    @classmethod
    def of(cls, raw, device, forward=None):
        """The readable rows of ``raw`` (the one list of them); ``forward(images)`` → logits, if given, runs once."""
        ok = [i for i, err in enumerate(raw["error"]) if not err]
        if not ok:
            return cls(raw, ok)
        images = raw["image"][ok].to(device)
        b = cls(raw, ok, images, raw["label"][ok].to(device), [int(raw["index"][i]) for i in ok])
        if forward is not None:
            b.logits = forward(images)
        return b

    def targets(self, mode):
        """The classes the maps explain: ``'pred'`` the plain model's prediction (None without a forward: each
        method's own), ``'label'`` the true class."""
        if check_target_mode(mode) == "label":
            return self.labels
        return self.logits.argmax(1) if self.logits is not None else None

    def other_classes(self, target, seed):
        """``(runner_up, random_other)`` per readable image (:func:`vitlrp.sanity.draws.other_classes`)."""
        return other_classes(self.logits, target, self.ids, seed)

    def failed(self):
        """``(sample_idx, label, error)`` of every row that could not be read."""
        return [(int(self.raw["index"][i]), int(self.raw["label"][i]), err)
                for i, err in enumerate(self.raw["error"]) if err]

    def annotation(self, key):
        """The readable rows' ``box`` or ``parts`` on the images' device."""
        return self.raw[key][self.ok].to(self.images.device)

    def __len__(self):
        return len(self.raw["error"])
