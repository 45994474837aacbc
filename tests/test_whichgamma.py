"""vitlrp.whichgamma: which γ the gallery recommends, from the sweep if it made a choice, else from the evaluation
among the settings that pass both sanity checks; too little evidence is said, never hidden."""
from vitlrp import whichgamma as W


def check(passed, rho=0.3, borderline=False, **extra):
    return {"passed": passed, "borderline": borderline, "abs_spearman": rho, "ci95": 0.05, **extra}


def sanity(**verdicts):
    """A sanity summary: method → (class passed, randomization passed)."""
    return {"n_images": 40, "verdicts": {m: {"class": check(c), "randomization": check(r)}
                                         for m, (c, r) in verdicts.items()}}


def evaluation(**scores):
    """An evaluation summary: method → LeRF − MoRF mean (± 0.01)."""
    return {"n_images": 200, "methods": {m: {"lerf_minus_morf": {"mean": v, "ci95": 0.01}} for m, v in scores.items()}}


def sweep(method="gamma:100:0", passes=True, score=0.4):
    return {"n_images": 48, "pareto": [method], "recommended": {
        "method": method, "rule": "the rule", "sanity": {"passes_class_check": passes, "class_abs_rho": 0.5},
        "scores": {"lerf_minus_morf": {"mean": score, "ci95": 0.05}}},
        "presets": {"baseline": {"method": "gamma:0:0", "in_grid": True, "class_check": "pass",
                                 "lerf_minus_morf": 0.39}}}


def test_the_verdict_is_read_in_one_place():
    assert W.read_verdict(check(True)).text() == "pass" and W.read_verdict(check(True)).firm_pass
    assert W.read_verdict(check(False, borderline=True)).text() == "FAIL?"
    assert W.read_verdict(check(True, borderline=True)).firm_pass is False  # a pass whose interval holds the line
    assert W.read_verdict(check(None)).text() == "n/a"
    assert W.read_verdict(check(None, verdict="undecided")).text() == "undecided"  # the word, where a file gives it
    assert W.read_verdict("garbage").word == "n/a"


def test_the_sweeps_choice_comes_first_with_the_randomization_check_of_that_setting():
    rec, rows = W.recommend(evaluation(baseline=0.44, balanced=0.39), sanity(baseline=(True, True),
                                                                              balanced=(False, True)), sweep())
    assert (rec.name, rec.source) == ("gamma:100:0", "the γ sweep")
    assert "randomization check has not been run on this setting" in rec.why[-1]
    assert [r.name for r in rows] == ["baseline", "balanced", "gamma:100:0"]
    assert (rows[2].sweep_class, rows[2].sweep_faithfulness) == ("pass", 0.4)  # the sweep's figures of its pick
    assert (rows[0].sweep_class, rows[0].sweep_faithfulness) == ("pass", 0.39)
    rec, _ = W.recommend(None, sanity(**{"gamma:100:0": (True, False)}), sweep())
    assert rec.why[-1] == "Randomization check of this setting: FAIL."


def test_without_a_usable_sweep_the_most_faithful_setting_that_passes_both_checks():
    runs = (evaluation(baseline=0.44, balanced=0.50, conservative=0.43, random=0.9),
            sanity(baseline=(True, True), balanced=(False, True), conservative=(True, True), random=(True, True)))
    rec, rows = W.recommend(*runs, None)
    assert (rec.name, rec.source) == ("baseline", "the evaluation and the sanity checks")  # balanced fails
    assert "(baseline, conservative)" in rec.why[0] and "random" not in [r.name for r in rows]  # γ settings only
    assert rec.why[1].startswith("Not clearly ahead of conservative")  # 0.44 ± 0.01 vs 0.43 ± 0.01
    for bad_sweep in (sweep(passes=False), sweep(score=None), {**sweep(), "recommended": None}):
        rec, _ = W.recommend(*runs, bad_sweep)
        assert rec.name == "baseline" and "sweep" in rec.why[0]


def test_too_little_evidence_is_said():
    rec, _ = W.recommend(evaluation(balanced=0.4), None, None)
    assert rec.name is None and rec.why[0].startswith("Not enough evidence: the sanity checks")
    rec, _ = W.recommend(None, sanity(balanced=(True, True)), None)
    assert rec.name is None and rec.why[0].startswith("Not enough evidence: no evaluation")
    rec, _ = W.recommend(evaluation(balanced=0.4, baseline=0.3), sanity(balanced=(False, True),
                                                                          baseline=(True, False)), None)
    assert rec.name is None and rec.why[0].startswith("No recommendation: no γ setting of the evaluation")


def test_one_setting_under_two_names():
    assert W.same_setting("balanced", "gamma:1:0.5") and not W.same_setting("balanced", "balanced+attn")
    assert W.gammas("gamma:0.5:linear:0.5:0") == ("0.5", "linear:0.5:0") and W.gammas("gradcam") is None
