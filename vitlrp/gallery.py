"""Static HTML galleries (relative links only, open from disk offline)."""
import html
import json
from pathlib import Path

from .fileio import write_text
from .holdout import best_row, picked_on
from .runfolder import MANIFEST, MARKER, incomplete_note

# every picture and table is held to the page width: a wide figure shrinks, a wide table scrolls in its own box
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px;overflow-wrap:break-word}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}
.card{margin:1em 0;padding:.6em;border:1px solid #e3e3e3;border-radius:6px}
.card img{display:block;margin:.3em 0}
.ok{color:#1a7f37} .bad{color:#c62828} .note{color:#555;font-size:.92em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.92em} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left} pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}
"""
# the files that tell one run's output folder (and what ran there) from a results folder holding several
_RUN_FILES = (("lrp_results.json", "a heatmap run"), ("pairs.json", "swapped-mark pairs"), ("cells.csv", "a γ sweep"),
              ("summary.json", "an evaluation run"), ("summary.csv", "a training run"))
# the subfolders a results folder's page shows, each with the file that says its run's results are there
SECTIONS = {"train": "summary.csv", "lrp_samples": "lrp_results.json", "lrp_eval": "summary.json",
            "pairs": "index.html"}


def _e(text):
    return html.escape(str(text))


# After loading, the page counts its images and flags missing ones (a moved or deleted PNG shows up at once); it also
# records how wide its content is against the window (wider means the page scrolls sideways).
_CHECK = """
<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  const root = document.documentElement;
  root.dataset.images = `loaded:${imgs.length - broken.length} broken:${broken.length}`;
  root.dataset.width = `content:${root.scrollWidth} window:${root.clientWidth}`;
  if (broken.length) {
    const p = document.createElement('p');
    p.className = 'bad';
    p.textContent = `${broken.length} picture(s) could not be loaded: `
      + broken.map(i => i.getAttribute('src')).join(', ');
    document.body.prepend(p);
  }
});
</script>"""


def page(title, body):
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style>{_CHECK}</head><body>\n<h1>{_e(title)}</h1>\n{body}\n</body></html>\n")


def img(src, alt, prefix=""):
    return f'<img src="{_e(prefix + src)}" alt="{_e(alt)}">'


def heatmap_cards(results, prefix=""):
    """One card per explained sample: title line, comparison panel, γ grid when present."""
    cards = []
    for r in results:
        if r.get("error"):
            cards.append(f'<div class=card><b>#{r["sample_idx"]}</b> <span class=bad>skipped: {_e(r["error"])}'
                         "</span></div>")
            continue
        verdict = "ok" if r["predicted_class"] == r["label"] else "bad"
        head = (f'<b>#{r["sample_idx"]}</b> true: {_e(r["label_name"])} &middot; predicted: '
                f'<span class={verdict}>{_e(r["predicted_name"])}</span> ({r["confidence"]:.1%}) &middot; '
                f'explained class {r["target_class"]} ({_e(r["target_name"])}) &middot; '
                f'Σ relevance {r["relevance_sum"]:.3g} for logit {r["explained_logit"]:.3g}')
        files = r["files"]
        parts = [head, img(files["comparison"], f"image, heatmap and overlay of sample {r['sample_idx']}", prefix)]
        if "gamma_grid" in files:
            parts.append(img(files["gamma_grid"], f"gamma presets for sample {r['sample_idx']}", prefix))
        cards.append("<div class=card>" + "\n".join(parts) + "</div>")
    return "\n".join(cards)


def config_block(config):
    return f"<pre>{_e(json.dumps(config, indent=2))}</pre>"


def write_heatmap_gallery(out_dir, results, config, coverage, grid_overview=False):
    """``index.html`` of one heatmap run, next to its PNGs."""
    ok = sum(1 for r in results if not r.get("error"))
    correct = sum(1 for r in results if not r.get("error") and r["predicted_class"] == r["label"])
    body = [f"<p>{ok} of {len(results)} samples explained; {correct} predicted correctly.</p>",
            f"<p class=note>{_e(coverage)}</p>", "<h2>Samples</h2>", heatmap_cards(results)]
    if grid_overview:
        body += ["<h2>γ presets, all samples</h2>", img("lrp_gamma_grid_overview.png", "gamma preset overview")]
    body += ["<h2>Configuration</h2>", config_block(config)]
    write_text(Path(out_dir) / "index.html", page("LRP heatmaps", "\n".join(body)))


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _training_section(train_dir, prefix):
    import csv

    with open(train_dir / "summary.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = best_row(rows)
    config = _read_json(train_dir / "config.json") or {}
    parts = ["<h2>Training</h2>"]
    if config.get("MODEL"):
        parts.append(f"<p>Model: {_e(config['MODEL'])} (initial weights: {_e(config.get('PRETRAINED', '?'))}).</p>")
    if best and picked_on(rows) == "val":
        parts.append(f"<p>{len(rows)} epochs; best on val: epoch {best['epoch']} (val top-1 "
                     f"{float(best['val_top1']):.1%}), test top-1 {float(best['top1']):.1%} (top-5 "
                     f"{float(best['top5']):.1%}).</p>")
    elif best:
        parts.append(f"<p>{len(rows)} epochs; best on test (no validation split was held out): epoch {best['epoch']}, "
                     f"test top-1 {float(best['top1']):.1%} (top-5 {float(best['top5']):.1%}).</p>")
    if (train_dir / "curves.png").exists():
        parts.append(img("curves.png", "training curves", prefix))
    if config:
        parts += ["<details><summary>training configuration</summary>", config_block(config), "</details>"]
    return parts


def _heatmap_section(lrp_dir, prefix):
    results = _read_json(lrp_dir / "lrp_results.json") or []
    config = _read_json(lrp_dir / "config.json") or {}
    predictions = {p["sample_idx"]: p for p in (_read_json(lrp_dir / "predictions.json") or [])}
    parts = ["<h2>Heatmaps</h2>", f"<p class=note>{_e(config.get('gamma_coverage', ''))}</p>"]
    for r in results:
        p = predictions.get(r["sample_idx"])
        if p and p.get("topk"):
            r = {**r, "topk_text": ", ".join(f"{t['name']} {t['prob']:.1%}" for t in p["topk"])}
        parts.append(heatmap_cards([r], prefix))
        if r.get("topk_text"):
            parts.append(f"<p class=note>top-5: {_e(r['topk_text'])}</p>")
    if (lrp_dir / "lrp_gamma_grid_overview.png").exists():
        parts += ["<h3>γ presets, all samples</h3>",
                  img("lrp_gamma_grid_overview.png", "gamma preset overview", prefix)]
    if config:
        parts += ["<details><summary>heatmap configuration</summary>", config_block(config), "</details>"]
    return parts


def summary_table(summary):
    """HTML table of an evaluation summary (mean ± 95% CI per metric and method)."""
    from .metrics import METRICS

    head = "<tr><th>method</th>" + "".join(f"<th>{_e(m)} {'↑' if spec.higher else '↓'}</th>"
                                           for m, spec in METRICS.items())
    rows = [head + "</tr>"]
    for method, s in summary["methods"].items():
        cells = "".join(f"<td>{s[m]['mean']:.3f} ± {s[m]['ci95']:.3f}</td>" for m in METRICS)
        rows.append(f"<tr><td>{_e(method)}</td>{cells}</tr>")
    return "<div class=scroll><table>" + "\n".join(rows) + "</table></div>"


def _evaluation_section(eval_dir, prefix):
    from .metrics import METRICS

    summary = _read_json(eval_dir / "summary.json")
    parts = ["<h2>Evaluation</h2>",
             f"<p>{summary['n_images']} images of the {_e(summary['split'])} split; mean ± 95% confidence interval; "
             f"↑ higher is better, ↓ lower is better. {_e(summary['perturbation_baseline'])}.</p>",
             summary_table(summary),
             "<p>" + "; ".join(f"best {_e(k)}: <b>{_e(v['method'])}</b> ({v['mean']:.3f})"
                               for k, v in summary["best"].items()) + "</p>"]
    for name, alt in [("curves_morf_lerf.png", "MoRF and LeRF curves"), ("ranking.png", "ranked table"),
                      ("shortcut.png", "does the mark share tell when the model followed the mark?")] + \
            [(f"bar_{m}.png", f"{m} per method") for m in METRICS]:
        if (eval_dir / name).exists():
            parts.append(img(name, alt, prefix))
    parts += ["<details><summary>evaluation configuration</summary>", config_block(summary["config"]), "</details>"]
    return parts


def incomplete_runs(results_dir):
    """``{'train': marker text, ...}`` for the training and explaining folders whose last run did not finish."""
    notes = {sub: incomplete_note(Path(results_dir) / sub) for sub in ("train", "lrp_samples", "lrp_eval")}
    return {sub: note for sub, note in notes.items() if note is not None}


def run_folder_kind(folder):
    """What ``folder`` holds when it is one run's output folder (e.g. ``'a heatmap run'``), else None."""
    folder = Path(folder)
    kind = next((kind for name, kind in _RUN_FILES if (folder / name).is_file()), None)
    if kind is None and ((folder / MANIFEST).exists() or (folder / MARKER).exists()):
        kind = "one run's outputs"
    return kind


def _with_results(results_dir):
    return {sub for sub, name in SECTIONS.items() if (Path(results_dir) / sub / name).exists()}


def shown(results_dir):
    """The subfolders of ``results_dir`` its page shows (their results, or that their run did not finish)."""
    listed = _with_results(results_dir) | set(incomplete_runs(results_dir))
    return [sub for sub in SECTIONS if sub in listed]


def default_title(results_dir):
    """A page title naming the model the results folder's training run trained (``train/config.json``)."""
    model = (_read_json(Path(results_dir) / "train" / "config.json") or {}).get("MODEL")
    return f"{model if isinstance(model, str) and model else 'A ViT'} on CUB-200-2011: AttnLRP with the Gamma rule"


def write_results_gallery(results_dir, title=""):
    """``index.html`` over a results folder holding any of ``train/``, ``lrp_samples/``, ``lrp_eval/``, ``pairs/``
    (``title`` empty: :func:`default_title`)."""
    root = Path(results_dir)
    body = [f"<p class=bad>{_e(sub)}/ holds a run that did not finish ({_e(MARKER)}): {_e(note)}</p>"
            for sub, note in incomplete_runs(root).items()]
    found = _with_results(root)
    if "train" in found:
        body += _training_section(root / "train", "train/")
    if "lrp_samples" in found:
        body += _heatmap_section(root / "lrp_samples", "lrp_samples/")
    if "lrp_eval" in found:
        body += _evaluation_section(root / "lrp_eval", "lrp_eval/")
    if "pairs" in found:
        body += ["<h2>Swapped-mark pairs</h2>", '<p><a href="pairs/index.html">each method on the same bird with '
                 "its own and another class's mark</a></p>"]
    if not body:
        body = ["<p>Nothing here yet: no train/, lrp_samples/ or lrp_eval/ results.</p>"]
    path = root / "index.html"
    write_text(path, page(title or default_title(root), "\n".join(body)))
    return path


def write_shortcut_gallery(out_dir, pairs, intro, config):
    """``index.html`` of swapped-mark pairs: one card per pair (own mark above, swapped mark below)."""
    body = [f"<p>{_e(intro)}</p>"]
    for followed, heading in ((True, "The model followed the swapped mark"),
                              (False, "The model kept the bird's class")):
        mine = [p for p in pairs if p["followed"] == followed]
        body.append(f"<h2>{heading} ({len(mine)})</h2>")
        if not mine:
            body.append("<p class=note>none among the swapped test images</p>")
        for p in mine:
            body.append(f"<div class=card><b>{_e(p['title'])}</b>\n{img(p['file'], p['title'])}</div>")
    body += ["<h2>Configuration</h2>", config_block(config)]
    path = Path(out_dir) / "index.html"
    write_text(path, page("Does the explanation show the shortcut?", "\n".join(body)))
    return path
