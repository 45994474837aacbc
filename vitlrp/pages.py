"""The HTML of the galleries: a page with its table of contents, pictures, links, and the pages of one heatmap run
and of the swapped-mark pairs (static, relative links only: they open from disk, offline).

Every value from a file goes through :func:`esc` (text) or :func:`num` (numbers) before it reaches the HTML: a
results file is data, never markup.
"""
import html
import json
import math
from pathlib import Path

from .fileio import write_text

# every picture and table is held to the page width: a wide figure shrinks, a wide table scrolls in its own box
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px;overflow-wrap:break-word}
h1{font-size:1.5em;margin:.2em 0 .4em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}
nav.toc{font-size:.95em;margin:.3em 0 .8em} nav.toc a{margin-right:.9em;white-space:nowrap}
.card{margin:1em 0;padding:.6em;border:1px solid #e3e3e3;border-radius:6px}
.card img{display:block;margin:.3em 0}
.ok{color:#1a7f37} .bad{color:#c62828} .note{color:#555;font-size:.92em} .files{font-size:.92em}
.rec{font-size:1.08em;margin:.4em 0} .why{margin:.2em 0 .5em 1.2em;padding:0}
.legend{display:inline-block;width:9em;height:.8em;vertical-align:middle;border:1px solid #bbb;
 background:linear-gradient(to right,#0000ff,#ffffff,#ff0000)}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.92em} td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}
th:first-child,td:first-child{text-align:left} td{white-space:nowrap} th{vertical-align:bottom}
small.ci{color:#666}
pre{background:#f6f8fa;padding:.8em;overflow:auto;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere}
"""
LEGEND = ("<p class=note>Colours: <span class=legend></span> blue = negative relevance (evidence against the "
          "explained class), white = 0, red = positive (evidence for it); each map is scaled by its own largest "
          "|relevance|.</p>")

def esc(text):
    return html.escape(str(text))


def num(value, spec=".3f"):
    """A number from a file, formatted; 'n/a' for anything else (a missing, non-finite or non-number value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return format(value, spec)


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


def page(title, body, toc=()):
    """A whole page; ``toc``: ``(anchor, heading)`` pairs for the table of contents under the title."""
    nav = ("<nav class=toc>Contents: " + " ".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h in toc) + "</nav>\n"
           if toc else "")
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{_STYLE}</style>{_CHECK}</head><body>\n<h1 id=top>{esc(title)}</h1>\n{nav}{body}\n"
            "</body></html>\n")


def img(src, alt, prefix=""):
    return f'<img src="{esc(prefix + str(src))}" alt="{esc(alt)}">'


def link(href, text, prefix=""):
    return f'<a href="{esc(prefix + str(href))}">{esc(text)}</a>'


def _topk_line(topk):
    """``top-5: name 33.8%, ...`` of predictions.json's ``topk`` (as many as inspect_lrp_predictions.py wrote)."""
    if not isinstance(topk, list) or not topk:
        return ""
    items = ", ".join(f"{esc(t.get('name', '?'))} {num(t.get('prob'), '.1%')}" for t in topk if isinstance(t, dict))
    return f"<p class=note>top-{len(topk)}: {items}</p>"


def heatmap_cards(results, prefix="", verdict=None, predictions=None):
    """One card per explained sample: title line, the verdict of its map's setting (``verdict``: HTML, or None),
    the comparison panel, the γ grid when present, its top-k predictions (``predictions``: sample → entry)."""
    cards = []
    for r in results:
        if not isinstance(r, dict):
            continue
        if r.get("error"):
            title = f"#{esc(r.get('sample_idx'))}" if "sample_idx" in r else esc(r.get("name"))
            cards.append(f"<div class=card><b>{title}</b> <span class=bad>skipped: {esc(r['error'])}</span></div>")
            continue
        if "label" in r:  # a dataset's sample: its true class, and whether the prediction is right
            right = r.get("predicted_class") == r.get("label")
            head = (f"<b>#{esc(r.get('sample_idx'))}</b> true: {esc(r.get('label_name'))} &middot; predicted: "
                    f"<span class={'ok' if right else 'bad'}>{esc(r.get('predicted_name'))}</span> ")
        else:  # an image of the user's own: no true class to show
            head = f"<b>{esc(r.get('name'))}</b> predicted: {esc(r.get('predicted_name'))} "
        head += (f"({num(r.get('confidence'), '.1%')}) &middot; explained class {esc(r.get('target_class'))} "
                 f"({esc(r.get('target_name'))}) &middot; Σ relevance {num(r.get('relevance_sum'), '.3g')} for logit "
                 f"{num(r.get('explained_logit'), '.3g')}")
        files = r.get("files") if isinstance(r.get("files"), dict) else {}
        parts = [head] + ([f"<p class=note>{verdict}</p>"] if verdict else [])
        if r.get("empty_map") is True:
            parts.append("<p class=bad>empty map: every pixel the same, no evidence (the picture is blank)</p>")
        if files.get("comparison"):
            parts.append(img(files["comparison"], f"image, heatmap and overlay of sample {r.get('sample_idx')}",
                             prefix))
        if files.get("gamma_grid"):
            parts.append(img(files["gamma_grid"], f"gamma presets for sample {r.get('sample_idx')}", prefix))
        p = (predictions or {}).get(r.get("sample_idx")) if "sample_idx" in r else r
        if isinstance(p, dict):
            parts.append(_topk_line(p.get("topk")))
        cards.append("<div class=card>" + "\n".join(x for x in parts if x) + "</div>")
    return "\n".join(cards)


def config_block(config):
    return f"<pre>{esc(json.dumps(config, indent=2))}</pre>"


def write_heatmap_gallery(out_dir, results, config, coverage, grid_overview=False):
    """``index.html`` of one heatmap run, next to its PNGs."""
    ok = sum(1 for r in results if not r.get("error"))
    correct = sum(1 for r in results if not r.get("error") and r["predicted_class"] == r["label"])
    body = [f"<p>{ok} of {len(results)} samples explained; {correct} predicted correctly.</p>",
            f"<p class=note>{esc(coverage)}</p>", LEGEND, "<h2 id=samples>Samples</h2>", heatmap_cards(results)]
    if grid_overview:
        body.append(f"<p class=files>Every sample's γ grid in one picture: "
                    f"{link('lrp_gamma_grid_overview.png', 'lrp_gamma_grid_overview.png')}</p>")
    body += ["<h2 id=configuration>Configuration</h2>", config_block(config)]
    write_text(Path(out_dir) / "index.html", page("LRP heatmaps", "\n".join(body)))


def write_explained_gallery(out_dir, records, config, note):
    """``index.html`` of images explained without labels (scripts/explain_images.py): a card per image with its
    top-k predictions and its map; ``note``: what the maps explain, with which method."""
    ok = sum(1 for r in records if not r.get("error"))
    body = [f"<p>{ok} of {len(records)} images explained. {esc(note)}</p>", LEGEND,
            f"<p class=files>Every record: {link('explanations.json', 'explanations.json')}</p>",
            "<h2 id=images>Images</h2>", heatmap_cards(records), "<h2 id=configuration>Configuration</h2>",
            config_block(config)]
    write_text(Path(out_dir) / "index.html", page("Explained images", "\n".join(body),
                                                  [("images", "Images"), ("configuration", "Configuration")]))


def write_shortcut_gallery(out_dir, pairs, intro, config):
    """``index.html`` of swapped-mark pairs: one card per pair (own mark above, swapped mark below)."""
    body = [f"<p>{esc(intro)}</p>", LEGEND]
    toc = []
    for followed, anchor, heading in ((True, "followed", "The model followed the swapped mark"),
                                      (False, "kept", "The model kept the bird's class")):
        mine = [p for p in pairs if p["followed"] == followed]
        toc.append((anchor, heading))
        body.append(f"<h2 id={anchor}>{heading} ({len(mine)})</h2>")
        if not mine:
            body.append("<p class=note>none among the swapped test images</p>")
        for p in mine:
            body.append(f"<div class=card><b>{esc(p['title'])}</b>\n{img(p['file'], p['title'])}</div>")
    files = [link(name, name) for name in ("pairs.json", "config.json") if (Path(out_dir) / name).is_file()]
    body += ["<h2 id=configuration>Configuration</h2>"] + ([f"<p class=files>Files: {' · '.join(files)}</p>"]
                                                           if files else []) + [config_block(config)]
    path = Path(out_dir) / "index.html"
    write_text(path, page("Does the explanation show the shortcut?", "\n".join(body),
                          toc + [("configuration", "Configuration")]))
    return path
