"""timm and Hugging Face models as the scripts use them: names (``timm:<name>``, ``hf:<Hub id or folder>``),
building, checkpoints that rebuild offline, pretrained weights from local files and folders (and one clear line when
a download is impossible), and the mini-CUB end to end (train, explain, evaluate, sanity checks, sweep) with a small
timm model and a small Hugging Face model, random init, on the CPU.
"""
import csv
import json

import pytest
import torch
from conftest import error_lines

import vitlrp
from vitlrp import models
from vitlrp.errors import UserError
from vitlrp.families import family_of, forward_logits

timm = pytest.importorskip("timm")
from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMM = "timm:test_vit"  # timm's own test ViT: 6 blocks of width 64, patch 16
TIMM_SIZE = 64
HF_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                 patch_size=8, num_labels=7, layer_norm_eps=1e-6)


def hf_folder(path, config=ViTConfig, cls=ViTForImageClassification, seed=0, **kwargs):
    """A small random Hugging Face classifier written by ``save_pretrained`` (config.json + model.safetensors)."""
    torch.manual_seed(seed)
    cls(config(**{**HF_CONFIG, **kwargs})).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A timm state-dict file (torch.save) and a safetensors copy of it, and a Hugging Face save_pretrained folder."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    state = timm.create_model("test_vit").state_dict()
    torch.save(state, root / "test_vit.pth")
    save_file(state, root / "test_vit.safetensors")
    return {"timm_state": state, "timm_pth": root / "test_vit.pth", "timm_safetensors": root / "test_vit.safetensors",
            "hf": hf_folder(root / "hf_vit")}


@pytest.fixture
def offline(monkeypatch):
    """The Hugging Face Hub unreachable at once (no retries): what a machine without network sees, fast."""
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)


# --- names, building, checkpoints ---------------------------------------------------------------------------
def test_names_are_checked_in_one_line(files):
    assert models.check_arch(TIMM) == TIMM and models.check_arch(f"hf:{files['hf']}") == f"hf:{files['hf']}"
    cases = {
        "timm:no_such_model": "unknown timm model 'no_such_model'",
        "timm:resnet18": "not a VisionTransformer",
        "timm:vit_base_patch16_siglip_224": "global_pool='map'",  # attention pooling: the recipe does not cover it
        "hf:/no/such/folder": "folder /no/such/folder not found",
        "vit_x": "timm:<timm model name> or hf:<Hugging Face Hub id or folder>",
    }
    for name, message in cases.items():
        with pytest.raises(UserError, match=message) as info:
            models.check_arch(name)
        assert "\n" not in str(info.value)
    empty = files["hf"].parent / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no config.json"):
        models.check_arch(f"hf:{empty}")
    deit = hf_folder(files["hf"].parent / "swin_like", DeiTConfig, DeiTForImageClassification)
    assert family_of(vitlrp.build_model(f"hf:{deit}", 3)).name == "hf"
    with pytest.raises(UserError, match="image_size 60 must be a multiple of timm:test_vit's patch size 16"):
        models.check_image_size(TIMM, 60)
    assert models.default_image_size(TIMM, "default") == 160 and models.default_image_size(f"hf:{deit}", "x") == 32


@pytest.mark.parametrize("family", ["timm", "hf"])
def test_a_checkpoint_records_the_family_and_rebuilds_offline(family, files, tmp_path, offline):
    from vitlrp.preprocess import Preprocessing

    name = TIMM if family == "timm" else f"hf:{files['hf']}"
    torch.manual_seed(2)
    model = vitlrp.build_model(name, 4, TIMM_SIZE if family == "timm" else 0)
    size = family_of(model).image_size(model)
    models.save_checkpoint(tmp_path / "c.pt", model, name, list("abcd"), Preprocessing.for_size(size))
    (files["hf"].parent / "gone").mkdir(exist_ok=True)
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    assert (ckpt["arch"], ckpt["family"], ckpt["image_size"], ckpt["num_classes"]) == (name, family, size, 4)
    assert ckpt["build"]["name"] == name.split(":", 1)[1]
    loaded = vitlrp.load_checkpoint(tmp_path / "c.pt")
    x = torch.randn(2, 3, size, size)
    assert torch.equal(forward_logits(loaded.model, x), forward_logits(model.eval(), x))
    # a checkpoint whose record is wrong is one line, not a traceback
    for bad, message in (({**ckpt, "build": None}, "lacks what rebuilds"),
                         ({**ckpt, "family": "torchvision"}, "says family 'torchvision'"),
                         ({**ckpt, "image_size": size * 2}, "but its model takes")):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(UserError, match=message):
            models.read_checkpoint(tmp_path / "bad.pt")


def test_the_recipe_keeps_weight_decay_off_every_family_s_tokens_and_position_embeddings(files):
    from vitlrp.training import make_optimizer

    expected = {TIMM: {"cls_token", "pos_embed"},
                f"hf:{files['hf']}": {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings"}}
    for name, tokens in expected.items():
        model = models.build_model(name, 3)
        no_decay = {id(p) for p in make_optimizer(model, 1e-3, 0.05).param_groups[1]["params"]}
        assert {n for n, p in model.named_parameters() if id(p) in no_decay and p.ndim > 1} == tokens


# --- pretrained weights --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["timm_pth", "timm_safetensors"])
def test_timm_weights_from_a_file_load_everything_but_the_head(kind, files):
    model = models.build_model(TIMM, 3, 160)
    models.load_pretrained(model, TIMM, str(files[kind]))
    got = model.state_dict()
    for key, value in files["timm_state"].items():
        if key.startswith("head."):
            assert got[key].shape[0] == 3  # the run's own head
        else:
            assert torch.equal(got[key], value), key


def test_timm_weights_are_resampled_to_another_image_size(files):
    """timm's checkpoint filter maps the 10 x 10 position grid onto the model's 4 x 4 (bicubic)."""
    model = models.build_model(TIMM, 3, TIMM_SIZE)
    models.load_pretrained(model, TIMM, str(files["timm_pth"]))
    assert model.pos_embed.shape[1] == 1 + 16
    assert torch.equal(model.blocks[0].attn.qkv.weight, files["timm_state"]["blocks.0.attn.qkv.weight"])


def test_hf_weights_come_from_the_folder_and_fit_another_image_size(files, offline):
    name = f"hf:{files['hf']}"
    own = ViTForImageClassification.from_pretrained(files["hf"]).state_dict()
    model = models.build_model(name, 3, 64)  # 8 x 8 patches instead of the folder's 4 x 4
    for pretrained in ("default", str(files["hf"])):
        models.load_pretrained(model, name, pretrained)
        got, pos = model.state_dict(), "vit.embeddings.position_embeddings"
        assert got["classifier.weight"].shape == (3, 32)
        assert all(torch.equal(got[k], v) for k, v in own.items() if k != pos and not k.startswith("classifier."))
        assert got[pos].shape == (1, 1 + 64, 32) and torch.equal(got[pos][:, :1], own[pos][:, :1])  # class token's


def test_missing_downloads_and_wrong_files_are_one_line(files, offline, tmp_path):
    model = models.build_model(TIMM, 3, TIMM_SIZE)
    with pytest.raises(UserError, match="cannot download timm's weights of test_vit from "
                       r"https://huggingface.co/timm/test_vit.r160_in1k \(.*\); download its model.safetensors") as e:
        models.load_pretrained(model, TIMM, "default")
    assert e.value.fix == "pretrained_download" and "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot load the configuration of google/vit-base-patch16-224 from "
                       r"https://huggingface.co/google/vit-base-patch16-224 \(") as e:
        models.check_arch("hf:google/vit-base-patch16-224")
    assert e.value.fix == "hf_folder"
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="do not fit timm's test_vit"):
        models.load_pretrained(model, TIMM, str(tmp_path / "other.pth"))
    with pytest.raises(UserError, match="no weights name of timm:test_vit and no existing file: choose default"):
        models.check_pretrained(TIMM, "IMAGENET1K_V1")
    assert models.check_pretrained(f"hf:{files['hf']}", str(files["hf"])) == str(files["hf"])


# --- the mini-CUB end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_cub(tmp_path_factory):
    from vitlrp.synthetic import make_synthetic_cub

    root = tmp_path_factory.mktemp("small_cub") / "CUB_200_2011"
    return make_synthetic_cub(root, num_classes=3, images_per_class=8, seed=0, progress=False)


def _train(run_script_inprocess, small_cub, out, family, files):
    model = ["--model", TIMM, "--pretrained", files["timm_pth"], "--image-size", TIMM_SIZE] if family == "timm" \
        else ["--model", f"hf:{files['hf']}"]  # PRETRAINED unset: the folder's own weights (default)
    code, stdout, stderr = run_script_inprocess(
        "train_vit_cub", "--dataset-root", small_cub, *model, "--epochs", 1, "--batch-size", 6, "--warmup-epochs",
        0, "--num-workers", 0, "--device", "cpu", "--val-fraction", 0, "--checkpoint-dir", out / "ckpt",
        "--output-dir", out / "train")
    assert code == 0, stderr[-2000:]
    return out / "ckpt" / "vit_cub_best.pt", stdout


@pytest.fixture
def unrendered_figures(monkeypatch):
    """The scripts' matplotlib figures are built from their tables but not rendered (a 1-pixel PNG stands in):
    rendering is the same for every family (the torchvision tests render them) and takes most of the time here."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from vitlrp import plots

    def save(fig, path, dpi=110):
        Image.new("RGB", (1, 1)).save(path)
        plt.close(fig)

    monkeypatch.setattr(plots, "_save", save)


@pytest.mark.parametrize("family", ["timm", "hf"])
def test_the_mini_cub_end_to_end(family, run_script_inprocess, small_cub, files, tmp_path, offline,
                                 unrendered_figures):
    """Train, explain, evaluate, sanity checks and sweep with a small random model of the family: every script
    rebuilds it from the checkpoint."""
    ckpt, stdout = _train(run_script_inprocess, small_cub, tmp_path, family, files)
    pretrained = files["timm_pth"] if family == "timm" else "default"
    assert f"({pretrained})" in stdout and torch.load(ckpt, weights_only=True)["family"] == family
    common = ["--checkpoint-path", ckpt, "--dataset-root", small_cub, "--num-workers", 0, "--device", "cpu"]

    code, stdout, err = run_script_inprocess("test_vit_forward", *common, "--num-samples", 2, "--output-dir",
                                             tmp_path / "lrp")
    assert code == 0, err[-2000:]
    embedding = "patch_embed.proj" if family == "timm" else "vit.embeddings.patch_embeddings.projection"
    linears = 6 * 2 + 1 if family == "timm" else 2 * 2 + 1
    assert f"Gamma rule acts on {linears + 1} layers: {embedding} (Conv2d, gamma=1); {linears} Linear" in stdout
    assert "left out by default, as on torchvision's ViT" in stdout

    # timm: evaluate_lrp's default methods (the presets, Input×Gradient, random); HF: fewer (the same code path)
    methods = [] if family == "timm" else ["--methods", "balanced,balanced+attn,gae,random"]
    code, _, err = run_script_inprocess("evaluate_lrp", *common, "--num-images", 4, "--perturb-steps", 4,
                                        "--bootstrap-samples", 100, *methods, "--output-dir", tmp_path / "eval")
    assert code == 0, err[-2000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    expected = {"balanced", "very_aggressive", "input_x_gradient", "random"} if family == "timm" else {
        "balanced", "balanced+attn", "gae", "random"}
    assert expected <= set(summary["methods"])

    code, _, err = run_script_inprocess("sanity_checks", *common, "--num-images", 3, "--methods",
                                        "balanced,input_x_gradient,random", "--noise-samples", 1, "--output-dir",
                                        tmp_path / "sanity")
    assert code == 0, err[-2000:]
    with open(tmp_path / "sanity" / "sanity.csv", newline="") as fh:
        steps = {r["step"] for r in csv.DictReader(fh) if r["test"] == "randomization"}
    blocks = 6 if family == "timm" else 2
    assert steps == {"head", "embedding", *(f"block_{i}" for i in range(blocks))}

    code, _, err = run_script_inprocess("sweep_gamma", *common, "--num-images", 3, "--perturb-steps", 4,
                                        "--conv-gammas", "0,1", "--lin-gammas", "0,0.5", "--schedules", "linear:0.5:0",
                                        "--output-dir", tmp_path / "sweep")
    assert code == 0, err[-2000:]
    best = json.loads((tmp_path / "sweep" / "best_gamma.json").read_text())
    assert best["n_images"] == 3 and len((tmp_path / "sweep" / "cells.csv").read_text().splitlines()) == 1 + 6
    assert not error_lines(err)
