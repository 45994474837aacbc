"""The per-sample files and JSON records of a heatmap run, named as the original description fixes them."""
from . import render
from .fileio import torch_save

KINDS = (("heatmap", "png"), ("overlay", "png"), ("comparison", "png"), ("relevance_raw", "pt"))
# every name a heatmap run (or inspect_lrp_predictions.py on its folder) writes: a finished run removes the older
# runs' files matching these that it did not rewrite, and nothing else
OUTPUT_NAMES = ("lrp_*.png", "lrp_*.pt", "lrp_*.json", "lrp_*.txt", "index.html", "config.json", "predictions.json",
                "predictions.csv")


EMPTY_NOTE = "⚠ empty map (every pixel the same: no evidence)"  # at the end of a sample's console line


def empty_line(empty, done):
    """The closing warning about the ``empty`` records (maps without any evidence) among ``done`` pictures; '' if
    there are none."""
    if not empty:
        return ""
    ids = [r["name"] if "name" in r else r.get("sample_idx") for r in empty]  # an own image by its file name
    return (f"warning: {len(empty)} of {done} map(s) are empty (every pixel the same: no evidence, e.g. a model "
            f"whose logits do not depend on the image); their pictures are blank: {ids}")


def sample_files(idx):
    """``{'heatmap': 'lrp_heatmap_001234.png', ..., 'relevance_raw': 'lrp_relevance_raw_001234.pt'}``."""
    return {kind: f"lrp_{kind}_{idx:06d}.{ext}" for kind, ext in KINDS}


def write_sample(out, idx, image, relevance, title, target):
    """Heatmap, overlay, the 3-panel comparison and the raw ``[H, W]`` float32 tensor of one sample.

    ``image`` is the model input as RGB in [0, 1] (``[H, W, 3]``); returns the file names written.
    """
    files = sample_files(idx)
    heat, over = render.heatmap(relevance), render.overlay(image, relevance)
    render.save_png(heat, out / files["heatmap"])
    render.save_png(over, out / files["overlay"])
    render.save_png(render.panels([render.to_uint8(image), heat, over],
                                  ["image", f"relevance of class {target}", "overlay"], title, legend_below=True),
                    out / files["comparison"])
    # clone: a row of a batch is a view, and torch.save would write the whole batch's storage
    torch_save(out / files["relevance_raw"], relevance.detach().float().cpu().clone())
    return files


def write_grid(out, idx, image, maps, title):
    """The image beside one map per labelled setting (``maps``: caption → relevance); returns (name, picture)."""
    name = f"lrp_gamma_grid_{idx:06d}.png"
    picture = render.panels([render.to_uint8(image)] + [render.heatmap(m) for m in maps.values()],
                            ["image"] + list(maps), title, legend_below=True)
    render.save_png(picture, out / name)
    return name, picture


def sample_record(sample, names, target, logits, relevance, files, run_info):
    """One explained sample's entry of ``lrp_results.json``: the original schema's keys first, then ours.

    ``sample``: its ``sample_idx``, ``img_path`` and ``label``; ``logits``: this sample's row; ``run_info``: the keys
    every entry of the run shares (gammas, dtype...).
    """
    label, probs, pred = sample["label"], logits.softmax(0), int(logits.argmax())
    return {"sample_idx": sample["sample_idx"], "img_path": sample["img_path"], "label": label, "target_class": target,
            "gamma_params": run_info["gamma_params"], "files": files,
            "label_name": names[label], "target_name": names[target],
            "predicted_class": pred, "predicted_name": names[pred],
            "confidence": float(probs[pred]), "target_confidence": float(probs[target]), "correct": pred == label,
            "explained_logit": float(logits[target]), "relevance_sum": float(relevance.double().sum()),
            **{k: v for k, v in run_info.items() if k != "gamma_params"}, "error": None}


def failed_record(sample, names, error, target=None):
    """The entry of a sample that has no map (unreadable image, or a non-finite map of ``target``)."""
    return {"sample_idx": sample["sample_idx"], "img_path": sample["img_path"], "label": sample["label"],
            "target_class": target, "label_name": names[sample["label"]], "error": error, "files": {}}


def coverage_line(explainer):
    """One line saying where γ acts (for the console, the JSON and the page), from what the rule really acted on."""
    layers = explainer.gamma_layers()
    conv = [n for n, t in layers.items() if t == "Conv2d"]
    outside = explainer.family.gamma_modules(explainer.lrp_model, False)  # the family's γ layers without attention
    attn = [n for n in layers if n not in outside]
    other = [n for n, t in layers.items() if t != "Conv2d" and n not in attn]
    gamma = explainer.gamma
    if gamma.is_schedule:
        values = explainer.lin_gammas()
        lin = f"{gamma.lin} per block: {'/'.join(f'{v:.3g}' for v in values)}, head {values[-1]:.3g}"
    else:
        lin = f"{gamma.lin:g}"
    text = (f"Gamma rule acts on {len(layers)} layers: {', '.join(conv) or 'no Conv2d'} (Conv2d, "
            f"gamma={gamma.conv:g}); {len(other)} Linear (MLP + head" + (f", gamma={lin})" if other else ")"))
    if gamma.attention:
        return text + f"; {len(attn)} attention projections (value + output; query/key carry no relevance in CP-LRP)"
    if explainer.family.name != "torchvision":  # timm and Hugging Face call them as modules: left out as on torchvision
        return text + ("; attention projections get LRP-0 (left out by default, as on torchvision's ViT; the "
                       "gamma_attention option puts gamma on them)")
    return text + ("; attention projections get LRP-0 (torchvision calls F.linear on them; the gamma_attention "
                   "option routes them through gamma)")


def explain_batch(b, explainer, grid, target_mode):
    """Maps of a :class:`~vitlrp.batch.Batch`'s readable images: ``{'logits', 'relevance', 'target', 'grid':
    {caption: maps}}`` (empty when none is readable).

    ``grid``: caption → an entered :class:`~vitlrp.methods.Method` for the comparison grid, explained for the same
    target classes (with ``target_mode`` ``'pred'``: the explainer's prediction).
    """
    if not b.ok:
        return {}
    r = explainer.attribute(b.images, b.targets(target_mode))
    maps = {caption: m.attribute(b.images, r.target, b.ids).relevance for caption, m in grid.items()}
    return {"logits": r.logits, "relevance": r.relevance, "target": r.target, "grid": maps}
