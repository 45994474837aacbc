"""Figures the docs quote about the make targets come from one source, the Makefile: each quoted figure is read back
from the Makefile's variables and recipes, so a change there that the docs miss fails here."""
import re

from conftest import REPO_ROOT


def makefile_variables():
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z_]+)\s*:=\s*(.+?)\s*$", text, re.M))


def recipe_flag(target, script, flag):
    """The value ``flag`` takes in ``target``'s call of ``script`` (variables expanded)."""
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    body = re.search(rf"^{target}:.*?\n((?:\t.*\n)+)", text, re.M).group(1)
    call = next(line for line in body.splitlines() if script in line)
    value = re.search(rf"{flag}\s+(\S+)", call).group(1)
    variables = makefile_variables()
    return re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], value)


def doc(name):
    return " ".join((REPO_ROOT / name).read_text(encoding="utf-8").split())


def test_the_sanity_figures_of_the_demo():
    images = recipe_flag("demo", "sanity_checks.py", "--num-images")
    copies = recipe_flag("demo", "sanity_checks.py", "--noise-samples")
    assert f"`make demo` runs it on {images} images of the mini-CUB with {copies} noisy copies each" in doc(
        "docs/sanity.md")


def test_the_sweep_figures():
    images = recipe_flag("sweep", "sweep_gamma.py", "--num-images")
    steps = recipe_flag("sweep", "sweep_gamma.py", "--perturb-steps")
    assert f"the demo's checkpoint, {images} images, {steps} perturbation steps" in doc("docs/sweep.md")


def test_the_shortcut_figures():
    epochs = recipe_flag("shortcut", "train_vit_cub.py", "--epochs")
    steps = recipe_flag("shortcut", "evaluate_lrp.py", "--perturb-steps")
    text = doc("docs/shortcut.md")
    assert f"for {epochs} epochs" in text and f"--perturb-steps {steps}" in text


def test_the_sweep_rebuilds_the_demo_gallery():
    assert recipe_flag("sweep", "build_gallery.py", "--results-dir") == recipe_flag("demo", "build_gallery.py",
                                                                                    "--results-dir")
