"""Which γ to use, from the runs' files: the sweep's recommendation, else the evaluation's faithfulness among the γ
settings that pass the sanity checks; and each γ preset's evidence in one table.

:func:`read_verdict` is the one place that reads a sanity verdict (sanity_checks.py's summary.json ``verdicts``).
"""
import math
from dataclasses import dataclass, field

from .gamma import PRESETS

HEADLINE = "lerf_minus_morf"  # the headline faithfulness score (LeRF − MoRF, higher is better)
CHECKS = ("class", "randomization")


@dataclass
class Verdict:
    """One sanity check of one method: ``word`` is pass, fail, undecided or n/a; ``borderline``: its 95% interval
    holds the threshold; ``value`` ± ``ci``: the mean |ρ| it rests on."""

    word: str = "n/a"
    borderline: bool = False
    value: float = None
    ci: float = None

    @property
    def firm_pass(self):
        return self.word == "pass" and not self.borderline

    def text(self):
        return {"pass": "pass", "fail": "FAIL"}.get(self.word, self.word) + ("?" if self.borderline else "")


def read_verdict(check):
    """The :class:`Verdict` of one entry of summary.json's ``verdicts[method]``: its ``verdict`` word (pass, fail,
    undecided, n/a: the sanity checks' verdicts from 95% intervals), the patch level's ``abs_spearman`` and ``ci95``;
    files of older runs give ``{"passed": bool | None, "borderline"}`` instead."""
    if not isinstance(check, dict):
        return Verdict()
    word = check.get("verdict")
    if word not in ("pass", "fail", "undecided", "n/a"):
        passed = check.get("passed")
        word = "n/a" if passed is None else "pass" if passed else "fail"
    return Verdict(word, bool(check.get("borderline")), _finite(check.get("abs_spearman")), _finite(check.get("ci95")))


def verdicts(sanity_doc):
    """``{method: {"class": Verdict, "randomization": Verdict}}`` of a sanity summary (empty without one)."""
    table = (sanity_doc or {}).get("verdicts") or {}
    if not isinstance(table, dict):
        return {}
    return {str(m): {c: read_verdict(v.get(c) if isinstance(v, dict) else None) for c in CHECKS}
            for m, v in table.items()}


def _finite(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def gammas(name):
    """``(conv γ text, Linear γ text)`` of a γ-LRP method name (a preset or ``gamma:<conv>:<lin>``), else None."""
    base = str(name).removesuffix("+attn")
    if base in PRESETS:
        return tuple(f"{g:g}" for g in PRESETS[base])
    if base.startswith("gamma:") and base.count(":") >= 2:
        _, conv, lin = base.split(":", 2)
        return conv, lin
    return None


def same_setting(a, b):
    """Whether two method names are one γ setting (``balanced`` and ``gamma:1:0.5``)."""
    ga, gb = gammas(a), gammas(b)
    return ga is not None and ga == gb and a.endswith("+attn") == b.endswith("+attn")


def _mean_ci(entry):
    entry = entry if isinstance(entry, dict) else {}
    return _finite(entry.get("mean")), _finite(entry.get("ci95"))


@dataclass
class Row:
    """One γ setting's evidence: its sanity verdicts, its faithfulness in the evaluation and in the sweep."""

    name: str
    conv: str
    lin: str
    checks: dict = field(default_factory=dict)  # "class"/"randomization" → Verdict (none: not checked)
    faithfulness: tuple = (None, None)  # evaluation's mean ± 95% half-width
    sweep_class: str = ""  # the sweep's class check of this setting ("pass", "fail"; '' not in the sweep)
    sweep_faithfulness: float = None


def _lookup(table, name):
    """``table[name]``, or the entry of the same γ setting under another name."""
    if name in table:
        return table[name]
    return next((v for k, v in table.items() if same_setting(k, name)), None)


def evidence_rows(eval_doc, sanity_doc, sweep_doc, extra=()):
    """A :class:`Row` per γ preset any run shows (presets first, in their order, then other γ cells and
    ``extra``)."""
    methods = (eval_doc or {}).get("methods") or {}
    checked = verdicts(sanity_doc)
    swept = (sweep_doc or {}).get("presets") or {}
    names = [p for p in PRESETS if p in methods or p in checked or p in swept]
    names += [n for n in list(methods) + list(checked) + list(extra)
              if gammas(n) and n not in names and not any(same_setting(n, m) for m in names)]
    rows = []
    for name in names:
        conv, lin = gammas(name)
        row = Row(name, conv, lin, _lookup(checked, name) or {}, _mean_ci((_lookup(methods, name) or {}).get(HEADLINE)))
        swept_row = swept.get(name) if isinstance(swept.get(name), dict) else None
        if swept_row and swept_row.get("in_grid"):
            row.sweep_class, row.sweep_faithfulness = str(swept_row.get("class_check", "")), _finite(
                swept_row.get(HEADLINE))
        rows.append(row)
    return rows


@dataclass
class Recommendation:
    """The γ to use (``name`` None: none, and ``why`` says why), where it comes from, and the reasoning."""

    name: str = None
    source: str = ""
    why: list = field(default_factory=list)


def _from_sweep(sweep_doc, checked):
    """The sweep's recommendation, or (None, why it gives none)."""
    rec = sweep_doc.get("recommended")
    if not isinstance(rec, dict) or not rec.get("method"):
        why = next((sweep_doc[k] for k in ("why", "reason") if isinstance(sweep_doc.get(k), str)), "")
        return None, "the γ sweep made no recommendation" + (f" ({why})" if why else "")
    sanity = rec.get("sanity") if isinstance(rec.get("sanity"), dict) else {}
    if not sanity.get("passes_class_check"):
        return None, f"the γ sweep's pick {rec['method']} fails its class check"
    score = _mean_ci((rec.get("scores") or {}).get(HEADLINE) if isinstance(rec.get("scores"), dict) else None)[0]
    if score is None:
        return None, f"the γ sweep's pick {rec['method']} has no faithfulness score (empty maps?)"
    pixel = _finite(sanity.get("class_pixel_abs_rho"))
    why = [f"From the γ sweep ({sweep_doc.get('n_images', '?')} images, {len(sweep_doc.get('pareto') or [])} "
           f"Pareto-optimal cells): {rec.get('rule', '')}.",
           f"LeRF − MoRF {score:.3f}; class check passed (|ρ| {_text(sanity.get('class_abs_rho'))}"
           + (f", pixel level {_text(pixel)}" if pixel is not None else "") + ")."]
    firmness = sweep_doc.get("firmness") if isinstance(sweep_doc.get("firmness"), dict) else {}
    if firmness.get("firm") is False and isinstance(firmness.get("line"), str):
        why.append(firmness["line"])  # the one line saying that the answer changes with the threshold
    randomization = (_lookup(checked, rec["method"]) or {}).get("randomization")
    why.append(f"Randomization check of this setting: {randomization.text()}." if randomization else
               "The sweep checks the class dependence only; the randomization check has not been run on this "
               "setting (add it to the sanity checks' methods).")
    return Recommendation(str(rec["method"]), "the γ sweep", why), ""


def _text(value, digits=2):
    value = _finite(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


def _from_evaluation(rows, eval_doc, sanity_doc):
    """The most faithful γ setting of the evaluation among those that pass both sanity checks firmly."""
    if not eval_doc:
        return Recommendation(why=["Not enough evidence: no evaluation (lrp_eval/) to measure faithfulness; run "
                                   "the evaluation (make demo)."])
    if not sanity_doc:
        return Recommendation(why=["Not enough evidence: the sanity checks (sanity/) have not been run, so no γ "
                                   "setting is known to depend on the class and the model; run them (make demo)."])
    scored = [r for r in rows if r.faithfulness[0] is not None]
    passing = [r for r in scored if all(r.checks.get(c) and r.checks[c].firm_pass for c in CHECKS)]
    if not passing:
        tried = ", ".join(r.name for r in scored) or "none"
        return Recommendation(why=[f"No recommendation: no γ setting of the evaluation ({tried}) passes both sanity "
                                   "checks clearly; see the table and the sanity checks below."])
    passing.sort(key=lambda r: -r.faithfulness[0])
    best = passing[0]
    n = sanity_doc.get("n_images", "?")
    why = [f"From the evaluation ({eval_doc.get('n_images', '?')} images) and the sanity checks ({n} images): the "
           f"highest LeRF − MoRF ({best.faithfulness[0]:.3f}) among the γ settings that pass both sanity checks "
           f"({', '.join(r.name for r in passing)})."]
    if len(passing) > 1 and _overlap(best.faithfulness, passing[1].faithfulness):
        why.append(f"Not clearly ahead of {passing[1].name} (LeRF − MoRF {passing[1].faithfulness[0]:.3f}): their "
                   "95% intervals overlap.")
    why.append("Run the γ sweep (make sweep) for a finer grid.")
    return Recommendation(best.name, "the evaluation and the sanity checks", why)


def _overlap(a, b):
    (ma, ca), (mb, cb) = a, b
    return ca is None or cb is None or abs(ma - mb) <= ca + cb


def recommend(eval_doc, sanity_doc, sweep_doc):
    """``(Recommendation, evidence rows)`` from the runs' documents (None where a run is missing)."""
    checked = verdicts(sanity_doc)
    note = ""
    if sweep_doc:
        found, note = _from_sweep(sweep_doc, checked)
        if found:
            rows = evidence_rows(eval_doc, sanity_doc, sweep_doc, [found.name])
            for row in rows:  # the sweep's own figures of its pick, which the presets' table lacks
                if same_setting(row.name, found.name) and not row.sweep_class:
                    rec = sweep_doc["recommended"]
                    row.sweep_class = "pass"
                    row.sweep_faithfulness = _mean_ci((rec.get("scores") or {}).get(HEADLINE))[0]
            return found, rows
    rows = evidence_rows(eval_doc, sanity_doc, sweep_doc)
    found = _from_evaluation(rows, eval_doc, sanity_doc)
    if note:
        found.why.insert(0, note[0].upper() + note[1:] + ".")
    return found, rows
