"""Static HTML galleries (relative links only, open from disk offline)."""
import html
import json
from pathlib import Path

from .fileio import write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
.card{margin:1em 0;padding:.6em;border:1px solid #e3e3e3;border-radius:6px}
.card img{max-width:100%;display:block;margin:.3em 0}
.ok{color:#1a7f37} .bad{color:#c62828} .note{color:#555;font-size:.92em}
table{border-collapse:collapse;font-size:.92em} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left} pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em}
"""


def _e(text):
    return html.escape(str(text))


def page(title, body):
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n{body}\n</body></html>\n")


def img(src, alt, prefix=""):
    return f'<img src="{_e(prefix + src)}" alt="{_e(alt)}" loading="lazy">'


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
