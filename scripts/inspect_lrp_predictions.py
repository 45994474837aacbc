"""Show what the model predicted for the samples of a heatmap run (confidence, top-5, correct or not)."""
# --- configuration (each constant is also a flag) ---
OUTPUT_DIR = "results/lrp_samples"  # the folder holding lrp_results.json
CHECKPOINT_PATH = ""  # empty = the checkpoint recorded in lrp_results.json
DEVICE = "auto"  # auto, cuda, cpu
TOP_K = 5  # how many classes to list per sample
# ----------------------------------------------------
import json
from pathlib import Path

from vitlrp import cli
from vitlrp.errors import UserError
from vitlrp.fileio import write_csv, write_json
from vitlrp.heatmaps import OUTPUT_NAMES
from vitlrp.models import model_from_checkpoint, read_checkpoint
from vitlrp.predict import predict_files
from vitlrp.runfolder import FolderLock, check_complete
from vitlrp.runtime import resolve_device

WRITES = ("predictions.json", "predictions.csv")  # into the heatmap run's folder, which lists them as its own


def read_samples(results_path):
    """The entries of ``lrp_results.json``; one line if the file is not a heatmap run's list of samples."""
    try:
        samples = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{results_path} is not valid JSON ({err})") from None
    if not isinstance(samples, list) or not samples:
        raise UserError(f"{results_path} holds no list of samples (it holds {json.dumps(samples)[:60]}): run "
                        "scripts/test_vit_forward.py again to write it")
    needed = {"sample_idx": int, "img_path": str, "label": int}
    for i, s in enumerate(samples):
        if not isinstance(s, dict):
            raise UserError(f"{results_path}: entry {i} is {json.dumps(s)[:40]}, not a sample; run "
                            "scripts/test_vit_forward.py again to write it")
        bad = [k for k, kind in needed.items() if not isinstance(s.get(k), kind) or isinstance(s.get(k), bool)]
        if bad:
            raise UserError(f"{results_path}: entry {i} lacks a valid {', '.join(bad)}; run "
                            "scripts/test_vit_forward.py again to write it")
    return samples


def check_same_classes(names, samples, ckpt_path, results_path):
    """Refuse a checkpoint whose class names differ from those the heatmap run recorded for its samples."""
    for s in samples:
        recorded = s.get("label_name")
        mine = names[s["label"]] if 0 <= s["label"] < len(names) else None
        if mine is None or recorded not in (None, mine):
            shown = repr(mine) if mine is not None else f"no class of its {len(names)}"
            raise UserError(f"the checkpoint {ckpt_path} was trained on other classes than the heatmap run in "
                            f"{results_path} (label {s['label']} is {recorded!r} there, {shown} in the "
                            "checkpoint); pass the checkpoint that run used, or leave CHECKPOINT_PATH empty")


def main(cfg):
    if cfg.TOP_K <= 0:
        raise UserError(f"TOP_K must be at least 1, got {cfg.TOP_K}")
    out = Path(cfg.OUTPUT_DIR)
    how = "run scripts/test_vit_forward.py again to finish it (see the marker)"
    check_complete(out, "OUTPUT_DIR", how)
    results_path = out / "lrp_results.json"
    if not results_path.is_file():  # checked before the lock, which would make the folder
        raise UserError(f"{results_path} not found: run `python scripts/test_vit_forward.py` first "
                        "(or pass --output-dir with the folder of a finished run)")
    device = resolve_device(cfg.DEVICE)
    folder = FolderLock(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    folder.refuse_other_script("test_vit_forward.py", OUTPUT_NAMES)  # it adds to a heatmap run's folder, no other
    with folder as lock:  # no heatmap run may rewrite the folder meanwhile
        check_complete(out, "OUTPUT_DIR", how)
        lock.refuse_other_script("test_vit_forward.py", OUTPUT_NAMES)
        lock.refuse_foreign(WRITES)
        lock.record(WRITES)  # before writing: a run stopped halfway must not leave files the folder calls foreign
        samples = read_samples(results_path)
        recorded = [s["checkpoint"] for s in samples if isinstance(s.get("checkpoint"), str) and s["checkpoint"]]
        ckpt_path = cfg.CHECKPOINT_PATH or (recorded or ["checkpoints/vit_cub_best.pt"])[0]
        ckpt = read_checkpoint(ckpt_path)
        names = ckpt["class_names"]
        check_same_classes(names, samples, ckpt_path, results_path)
        model, prep = model_from_checkpoint(ckpt)
        return report(cfg, out, ckpt_path, model.to(device), prep, names, samples)


def accuracy_line(ok):
    """How many predictions are right and the mean confidence, of right and wrong ones where there are any."""
    def mean(rows):
        return sum(r["confidence"] for r in rows) / len(rows)

    right = [r for r in ok if r["correct"]]
    wrong = [r for r in ok if not r["correct"]]
    if not ok:
        return "0/0 correct (no readable sample)"
    parts = [f"{what} {mean(rows):.1%}" for what, rows in (("correct", right), ("wrong", wrong)) if rows]
    return (f"{len(right)}/{len(ok)} correct ({len(right) / len(ok):.1%}); mean confidence {mean(ok):.1%}"
            + (f" ({', '.join(parts)})" if len(parts) == 2 else ""))


def report(cfg, out, ckpt_path, model, prep, names, samples):
    preds = predict_files(model, prep, [s["img_path"] for s in samples], cfg.TOP_K)

    rows = []
    print(f"Checkpoint: {ckpt_path}   samples: {len(samples)}")
    print(f"{'sample_idx':>10}  {'true species':<30} {'predicted species':<30} {'conf':>6}  ok")
    for s, p in zip(samples, preds):
        row = {"sample_idx": s["sample_idx"], "img_path": s["img_path"], "label": s["label"],
               "label_name": names[s["label"]], "error": p["error"]}
        if p["error"]:
            print(f"{s['sample_idx']:>10}  {names[s['label']]:<30} unreadable: {p['error']}")
            rows.append(row)
            continue
        top = [{"class": c, "name": names[c], "prob": pr} for c, pr in zip(p["topk"], p["probs"])]
        row.update(predicted_class=top[0]["class"], predicted_name=top[0]["name"], confidence=top[0]["prob"],
                   correct=top[0]["class"] == s["label"], topk=top,
                   same_as_explained=s.get("predicted_class") in (None, top[0]["class"]))
        mark = "✓" if row["correct"] else "✗"
        print(f"{s['sample_idx']:>10}  {names[s['label']]:<30.30} {top[0]['name']:<30.30} "
              f"{top[0]['prob']:>6.1%}  {mark}")
        print(" " * 12 + "top-%d: " % len(top) + ", ".join(f"{t['name']} {t['prob']:.1%}" for t in top))
        rows.append(row)

    ok = [r for r in rows if not r["error"]]
    print("-" * 84)
    print(accuracy_line(ok) + (f"; {len(rows) - len(ok)} unreadable" if len(ok) < len(rows) else ""))
    changed = [r["sample_idx"] for r in ok if not r["same_as_explained"]]
    if changed:
        print(f"warning: predictions differ from the heatmap run for samples {changed} (another checkpoint?)")
    write_json(out / "predictions.json", rows)
    topk_text = lambda r: "; ".join(f"{t['name']} {t['prob']:.4f}" for t in r.get("topk", []))  # noqa: E731
    write_csv(out / "predictions.csv", [{**r, "topk": topk_text(r)} for r in rows],
              ["sample_idx", "label", "label_name", "predicted_class", "predicted_name", "confidence", "correct",
               "topk", "img_path", "error"])
    print(f"Wrote {out / 'predictions.json'} and {out / 'predictions.csv'}")
    return 1 if len(ok) < len(rows) else 0


if __name__ == "__main__":
    cli.run(main, globals())
