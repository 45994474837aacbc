"""DTYPE=bf16 for every registered method: on the library (a tiny ViT) and through the scripts that take DTYPE."""
import csv

import pytest
import torch
from conftest import run_script_inprocess
from test_explain import images, tiny_vit

from vitlrp.methods import MethodSettings, create_method, names

# a γ method for the registry's γ family, and every other method by its name
METHODS = [("balanced" if n == "gamma" else n) for n in names()]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_explains_a_bf16_model_like_the_fp32_one(name):
    """The method on a pure-bf16 copy, given float32 batches as the scripts give them, runs, returns float32 logits
    and maps and explains the classes asked, with a map close to the fp32 one (the same seeded draws: SmoothGrad's
    noise, the random maps)."""
    x, target = images(2), torch.tensor([1, 2])
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        settings = MethodSettings(dtype, ig_steps=4, smoothgrad_samples=4)
        with create_method(name, tiny_vit(dtype=dtype), settings) as method:
            out[dtype] = method.attribute(x, target)
    bf16, fp32 = out[torch.bfloat16], out[torch.float32]
    assert bf16.relevance.dtype == bf16.logits.dtype == torch.float32 and torch.isfinite(bf16.relevance).all()
    assert bf16.target.tolist() == [1, 2]
    cosine = torch.nn.functional.cosine_similarity(bf16.relevance.flatten(1).double(),
                                                   fp32.relevance.flatten(1).double())
    print(f"{name}: bf16 vs fp32 cosine per image {[round(c, 4) for c in cosine.tolist()]}")
    assert cosine.min() > 0.99  # measured >= 0.9996 for every method: bf16 rounding, the same draws


def script_flags(tiny, out, methods, num_images=2, **extra):
    args = ["--checkpoint-path", tiny["checkpoint"], "--dataset-root", tiny["dataset_root"], "--num-images",
            num_images, "--methods", methods, "--dtype", "bf16", "--ig-steps", 2, "--smoothgrad-samples", 2,
            "--num-workers", 0, "--device", "cpu", "--output-dir", out]
    for key, value in extra.items():
        args += ["--" + key.replace("_", "-"), value]
    return args


def evaluated_rows(tiny, out, methods, **extra):
    code, _, err = run_script_inprocess("evaluate_lrp", *script_flags(tiny, out, ",".join(methods), perturb_steps=2,
                                                                      **extra))
    assert code == 0, err[-2000:]
    with open(out / "per_image.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted({r["method"] for r in rows}) == sorted(methods) and all(r["error"] == "" for r in rows)
    return rows


def test_evaluation_and_sanity_checks_run_smoothgrad_in_bf16(untrained_tiny, tmp_path):
    """SmoothGrad stopped both scripts with --dtype bf16 (Captum's float32 noise met the bf16 model), and so did
    the rerun the incomplete marker advised; both now finish."""
    assert len(evaluated_rows(untrained_tiny, tmp_path / "eval", ["smoothgrad"], num_images=1, reference="")) == 1
    code, _, err = run_script_inprocess("sanity_checks", *script_flags(untrained_tiny, tmp_path / "sanity",
                                                                      "smoothgrad", num_images=1, noise_samples=0,
                                                                      figure_images=0))
    assert code == 0, err[-2000:]
    assert (tmp_path / "sanity" / "sanity.csv").exists()

