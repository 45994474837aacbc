"""Plain predictions for image files (what the model says, unpatched, in float32)."""
import torch

from .families import forward_logits
from .preprocess import open_rgb


def top_classes(logits, names, k=5):
    """The ``k`` most probable classes of one row of logits: ``[{'class', 'name', 'prob'}]``, most probable first."""
    probs = logits.detach().float().softmax(-1)
    top = probs.topk(min(k, probs.numel()))
    return [{"class": int(c), "name": names[int(c)], "prob": float(p)} for p, c in zip(top.values, top.indices)]


@torch.no_grad()
def predict_files(model, preprocessing, paths, k=5, batch_size=32):
    """For each path: ``{'topk': [class...], 'probs': [p...], 'error': ''}`` (``error`` set when unreadable)."""
    model.eval()
    device = next(model.parameters()).device
    transform = preprocessing.eval_transform()
    out = [None] * len(paths)
    for start in range(0, len(paths), batch_size):
        images, rows = [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(transform(open_rgb(paths[i])))
                rows.append(i)
            except OSError as err:
                out[i] = {"topk": [], "probs": [], "error": str(err)}
        if images:
            probs = forward_logits(model, torch.stack(images).to(device)).float().softmax(1)
            top = probs.topk(min(k, probs.shape[1]), dim=1)
            for j, i in enumerate(rows):
                out[i] = {"topk": top.indices[j].tolist(), "probs": top.values[j].tolist(), "error": ""}
    return out
