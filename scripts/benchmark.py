"""Speed of explaining and training, in one process: images/s, ratios, peak GPU memory and map fidelity, as JSON.

It also prints how fast the fused γ-LRP runs as a percentage of Input×Gradient, beside the ceiling this model allows
(the ratio of the two methods' matrix-product FLOPs, :func:`vitlrp.cost.flop_ceiling`).

On a GPU it measures ViT-B/16 at full size; on the CPU it runs the same rows small (so CI exercises it).
"""
# --- configuration (each constant is also a flag) ---
DEVICE = "auto"  # auto, cuda, cpu
MODEL = ""  # empty = vit_b_16 on CUDA, vit_tiny on the CPU
IMAGE_SIZE = 0  # 0 = the model's default (224 for vit_b_16)
RUN = []  # rows to run, e.g. lrp_fused_fp32,explain_jpeg (empty = all; the list is in ROWS below)
LRP_BATCH = 0  # 0 = 64 on CUDA, 8 on the CPU
TRAIN_BATCH = 0  # 0 = 128 on CUDA, 16 on the CPU
ONE_BY_ONE_IMAGES = 0  # images for the one-image-at-a-time row; 0 = 16 on CUDA, 2 on the CPU
JPEG_IMAGES = 0  # JPEGs for the end-to-end rows; 0 = 2048 on CUDA, 32 on the CPU
NUM_WORKERS = 16  # decoding processes for the JPEG rows
REPEATS = 0  # timed repeats per row, the median is reported; 0 = 5 on CUDA, 1 on the CPU
COMPILE_ON_CPU = False  # torch.compile rows are skipped on the CPU unless set (slow to compile)
# the γ settings at which each LRP row's maps are compared with fp32 zennit's (its speed is timed at balanced):
# every preset, γ = 0 on the patch embedding alone and on the last block alone, and a γ barely above 0
FIDELITY = ["baseline", "conservative", "balanced", "aggressive", "very_aggressive", "gamma:0:0.5",
            "gamma:1:linear:0.5:0", "gamma:1:0.001"]
OUTPUT_DIR = "results/benchmark"  # benchmark.json
# ------------------------------------------------------
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vitlrp import cli
from vitlrp.cost import flop_ceiling
from vitlrp.cub import CUBDataset, load_cub
from vitlrp.errors import UserError
from vitlrp.explainer import Explainer
from vitlrp.families.torchvision import lxt_patched
from vitlrp.fileio import ensure_writable_dir, write_json
from vitlrp.gamma import GammaSpec
from vitlrp.inputs import loader
from vitlrp.methods import MethodSettings, create_method, names
from vitlrp.methods.gradients import input_x_gradient
from vitlrp.models import build_vit
from vitlrp.preprocess import Preprocessing
from vitlrp.runfolder import RunFolder
from vitlrp.runtime import resolve_device
from vitlrp.synthetic import make_synthetic_cub
from vitlrp.training import (
    EpochSampler,
    Optimization,
    WarmupCosine,
    make_loader,
    make_optimizer,
    train_one_epoch,
)

PEERS = [n for n in names() if n not in ("gamma", "input_x_gradient", "random")]  # the other registered methods
ROWS = ["one_by_one", "lrp_zennit_fp32", "lrp_zennit_bf16", "lrp_fused_fp32", "lrp_fused_bf16", "input_x_gradient",
        *PEERS, "explain_jpeg", "train_fp32", "train_bf16", "train_bf16_compile", "train_jpeg", "gamma_sweep",
        "class_check"]
SWEEP_CONV = [0.0, 0.1, 0.25, 0.5, 1.0, 10.0, 100.0]  # the gamma_sweep row: sweep_gamma.py's default 7 x 7 grid
SWEEP_LIN = [0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
SWEEP_PERTURB_STEPS = 10  # as evaluate_lrp.py / sweep_gamma.py
CUB_TEST_IMAGES = 5794
CLASS_CHECK_OTHERS = 10  # the class_check row: the runner-up and this many seeded classes (sanity_checks.py's default)
CLASS_CHECK_METHODS = ["balanced", "input_x_gradient", "gradient"]  # a γ-LRP preset and the gradient baselines
CLASS_CHECK_BOUND = 0.8  # issue 29: the check of M classes costs at most this times M maps of one class
LRP_GAMMAS = GammaSpec(1.0, 0.5)  # conv γ, Linear γ of every LRP row (both > 0: the ceiling counts every γ layer)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, n_images, device, repeats):
    """Median images/s over ``repeats`` calls of ``fn`` (after one warm-up call) and the peak GPU memory."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": n_images / statistics.median(times), "median_s": statistics.median(times),
            "repeats": repeats, "peak_mem_mib": peak}


def random_model(arch, size, device):
    """A model with random weights *and* biases (fidelity depends on them) and a non-zero head."""
    torch.manual_seed(0)
    model = build_vit(arch, 200, size)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "bias" in name:
                p.normal_(0, 0.02)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model.eval().to(device)


def cosine_min(maps, ref):
    return float(torch.nn.functional.cosine_similarity(maps.flatten(1).double(), ref.flatten(1).double()).min())


def sweep_row(model, x, target, device, cfg):
    """49 γ cells from one shared forward vs one fused LRP method on the same batch: the cost ratio of the maps,
    and of maps + evaluate_lrp's metrics (one scoring call for every cell: their perturbation curves together)."""
    from vitlrp.batch import Batch
    from vitlrp.scoring import ModelForward, Scorer, ScoreSettings

    cells = [GammaSpec(c, lin) for lin in SWEEP_LIN for c in SWEEP_CONV]
    n, size = len(x), x.shape[-1]
    batch = {"image": x, "label": target, "index": torch.arange(n), "error": [""] * n,
             "box": torch.tensor([[size / 4, size / 4, 3 * size / 4, 3 * size / 4]] * n),
             "parts": torch.zeros(n, 15, 3)}

    forward = ModelForward(model, torch.float32, device)
    b = Batch.of(batch, device, forward)
    s = Scorer(b, b.targets("label"), forward, ScoreSettings(model.patch_size, SWEEP_PERTURB_STEPS))
    with Explainer(model, LRP_GAMMAS, MethodSettings(impl="fused")) as ex:
        one = measure(lambda: ex.attribute(x, target), n, device, cfg.REPEATS)
        many = measure(lambda: ex.attribute_gammas(x, [target], cells), n, device, cfg.REPEATS)
        results = ex.attribute_gammas(x, [target], cells)
    logits, maps = results[0][0].logits, [r[0].relevance for r in results]
    # the maps stand in for the other class's maps of class_sensitivity too: the cost of scoring is the same
    metrics_one = measure(lambda: s.score({"one": (logits, maps[0], maps[0])}), n, device, cfg.REPEATS)
    metrics_all = measure(lambda: s.score({f"{k}": (logits, m, m) for k, m in enumerate(maps)}), n, device,
                          cfg.REPEATS)
    return {**many, "cells": len(cells), "one_method_s": one["median_s"], "sweep_maps_s": many["median_s"],
            "one_method_metrics_s": metrics_one["median_s"], "sweep_metrics_s": metrics_all["median_s"],
            "ratio_maps": many["median_s"] / one["median_s"],
            "ratio_maps_and_metrics": (many["median_s"] + metrics_all["median_s"])
            / (one["median_s"] + metrics_one["median_s"])}


def class_check_row(model, x, target, device, cfg):
    """The class check as sanity_checks.py runs it: per method, the maps of the explained class and of the compared
    classes (the runner-up and CLASS_CHECK_OTHERS seeded ones) from one shared forward
    (:meth:`~vitlrp.protocol.Method.attribute_many`), against one map of one class (the median ratio over
    interleaved rounds of the two calls); the bound is CLASS_CHECK_BOUND × the number of classes mapped."""
    from vitlrp.methods import parse_methods
    from vitlrp.sanity.draws import compared_classes

    with torch.no_grad():
        logits = model(x)
    others = compared_classes(logits, target, list(range(len(x))), 0, CLASS_CHECK_OTHERS, all_up_to=0)
    targets = [target] + [others[:, j] for j in range(others.shape[1])]
    per_method, total = {}, 0.0
    for choice in parse_methods(CLASS_CHECK_METHODS, "CLASS_CHECK_METHODS"):
        with choice.create(model, MethodSettings(impl="fused")) as method:
            rounds = interleaved_seconds((lambda: method.attribute(x, target),
                                          lambda: method.attribute_many(x, targets)), device, max(3, cfg.REPEATS))
        one, many = (statistics.median(r[k] for r in rounds) for k in (0, 1))
        per_method[choice.name] = {"one_map_s": one, "class_check_s": many, "rounds": len(rounds),
                                   "ratio": statistics.median(b / a for a, b in rounds)}
        total += many
    worst = max(v["ratio"] for v in per_method.values())
    return {"images_per_s": len(x) * len(per_method) / total, "median_s": total, "repeats": cfg.REPEATS,
            "peak_mem_mib": None, "classes": len(targets), "bound": CLASS_CHECK_BOUND * len(targets),
            "worst_ratio": worst, "within_bound": worst <= CLASS_CHECK_BOUND * len(targets), "methods": per_method}


def one_by_one(model, x, target):
    """One image at a time, fp32, zennit's composite registered and removed around each backward (the first
    version's loop)."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    with lxt_patched():
        for i in range(len(x)):
            composite = LayerMapComposite([(torch.nn.Conv2d, Gamma(1.0)), (torch.nn.Linear, Gamma(0.5))])
            composite.register(model)
            xi = x[i:i + 1].clone().requires_grad_(True)
            model(xi)[0, target[i]].backward()
            (xi * xi.grad).sum(1)
            composite.remove()
    model.zero_grad(set_to_none=True)


def jpeg_dataset(n):
    """``n`` JPEGs of CUB's typical size (the synthetic generator at 375-500 px), in a temporary CUB folder."""
    root = Path(tempfile.mkdtemp(prefix="vitlrp-bench-")) / "CUB_200_2011"
    per_class = max(2, -(-2 * n // 10))
    make_synthetic_cub(root, num_classes=10, images_per_class=per_class, seed=0, size_range=(375, 500),
                       progress=False)
    return load_cub(root)


_JPEGS = {}


def _ann(n):
    if n not in _JPEGS:
        _JPEGS[n] = jpeg_dataset(n)
    return _JPEGS[n]


def explain_from_jpeg(model, size, device, n, batch, cfg):
    """JPEG files → real loader → fused γ-LRP (bf16 on CUDA) → maps on the host."""
    ann = _ann(n)
    ds = CUBDataset(ann, "test", Preprocessing.for_size(size), report_errors=True)
    indices = list(range(min(n, len(ds))))
    dl = loader(ds, indices, batch, min(cfg.NUM_WORKERS, os.cpu_count() or 1), device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with Explainer(model, LRP_GAMMAS, MethodSettings(dtype, "fused")) as ex:
        def run():
            for b in dl:
                ex.attribute(b["image"].to(device, non_blocking=True)).relevance.cpu()
        r = measure(run, len(indices), device, max(1, cfg.REPEATS // 2))
    r["dtype"] = str(dtype).replace("torch.", "")
    return r


def train_row(name, arch, size, device, batch, n, cfg):
    """Training steps (forward, backward, AdamW) from device tensors or from JPEGs through the real loader."""
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_vit(arch, 200, size).to(device)
    optimizer = make_optimizer(model, 1e-4, 0.05)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(0, 10**6))
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    dtype = None if name == "train_fp32" else torch.bfloat16
    if name == "train_jpeg":
        ann = _ann(n)
        ds = CUBDataset(ann, "train", Preprocessing.for_size(size), train_augment=True)
        sampler = EpochSampler(len(ds), 0)
        batches = make_loader(ds, batch, min(cfg.NUM_WORKERS, os.cpu_count() or 1), device, sampler, seeded=True)
        count = len(ds)
        if not cuda:
            dtype = None
    else:
        steps = 5 if cuda else 2
        batches = [{"image": torch.randn(batch, 3, size, size, device=device),
                    "label": torch.randint(0, 200, (batch,), device=device)}] * steps
        count = batch * steps
    run_model = torch.compile(model) if name.endswith("compile") else model
    opt = Optimization(optimizer, scheduler, scaler, criterion, 1.0, dtype)
    r = measure(lambda: train_one_epoch(run_model, batches, opt, device, progress=False), count, device,
                max(1, cfg.REPEATS // 2))
    r["amp"] = str(dtype).replace("torch.", "") if dtype else "none"
    return r


def check_settings(cfg):
    """Resolve the automatic values of ``cfg`` (in place) and refuse bad ones; returns the device."""
    device = resolve_device(cfg.DEVICE)
    cuda = device.type == "cuda"
    unknown = [r for r in cfg.RUN if r not in ROWS]
    if unknown:
        raise UserError(f"unknown RUN row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    if cfg.REPEATS < 0:
        raise UserError(f"REPEATS must be >= 0, got {cfg.REPEATS}")
    cfg.MODEL = cfg.MODEL or ("vit_b_16" if cuda else "vit_tiny")
    cfg.IMAGE_SIZE = cfg.IMAGE_SIZE or build_vit(cfg.MODEL, 2).image_size
    cfg.LRP_BATCH = cfg.LRP_BATCH or (64 if cuda else 8)
    cfg.TRAIN_BATCH = cfg.TRAIN_BATCH or (128 if cuda else 16)
    cfg.ONE_BY_ONE_IMAGES = cfg.ONE_BY_ONE_IMAGES or (16 if cuda else 2)
    cfg.JPEG_IMAGES = cfg.JPEG_IMAGES or (2048 if cuda else 32)
    cfg.REPEATS = cfg.REPEATS or (5 if cuda else 1)
    cfg.RUN = cfg.RUN or ROWS
    for name in cfg.FIDELITY:
        GammaSpec.parse(name)  # a bad setting stops the run here, not after minutes of measuring
    return device


def lrp_row(model, x, target, impl, dtype, device, cfg, cache):
    """Batched γ-LRP with one implementation and dtype, timed at ``LRP_GAMMAS``; the cosine of its maps to fp32
    zennit's at each γ setting of ``FIDELITY``, and the lowest."""
    def maps(name, impl, dtype):  # each setting's fp32 zennit maps once for every row
        if (name, impl, dtype) not in cache:
            with Explainer(model, name, MethodSettings(dtype, impl)) as ex:
                cache[name, impl, dtype] = ex.attribute(x, target).relevance
        return cache[name, impl, dtype]

    with Explainer(model, LRP_GAMMAS, MethodSettings(dtype, impl)) as ex:
        r = measure(lambda: ex.attribute(x, target), len(x), device, cfg.REPEATS)
    cosines = {name: cosine_min(maps(name, impl, dtype), maps(name, "zennit", torch.float32))
               for name in cfg.FIDELITY}
    r["cosine_vs_fp32_zennit"] = cosines
    r["min_cosine_vs_fp32_zennit"] = min(cosines.values()) if cosines else None
    r["lowest_cosine_at"] = min(cosines, key=cosines.get) if cosines else None
    return r


def run_row(name, model, x, target, device, cfg, cache):
    """One row's measurement (a dict with ``images_per_s``)."""
    cuda = device.type == "cuda"
    if name == "one_by_one":
        n = cfg.ONE_BY_ONE_IMAGES
        return measure(lambda: one_by_one(model, x[:n], target[:n]), n, device, max(1, cfg.REPEATS // 2))
    if name.startswith("lrp_"):
        _, impl, dt = name.split("_")
        return lrp_row(model, x, target, impl, torch.bfloat16 if dt == "bf16" else torch.float32, device, cfg, cache)
    if name == "input_x_gradient":
        return measure(lambda: input_x_gradient(model, x, target), len(x), device, cfg.REPEATS)
    if name in PEERS:  # the registered methods, as evaluate_lrp.py runs them
        with create_method(name, model) as method:
            return measure(lambda: method.attribute(x, target), len(x), device, cfg.REPEATS)
    if name == "explain_jpeg":
        r = explain_from_jpeg(model, cfg.IMAGE_SIZE, device, cfg.JPEG_IMAGES, cfg.LRP_BATCH, cfg)
        r["cub_test_split_seconds"] = CUB_TEST_IMAGES / r["images_per_s"]
        return r
    if name.startswith("train"):
        if name.endswith("compile") and not cuda and not cfg.COMPILE_ON_CPU:
            return {"skipped": "torch.compile rows run on CUDA only (or with --compile-on-cpu true)"}
        return train_row(name, cfg.MODEL, cfg.IMAGE_SIZE, device, cfg.TRAIN_BATCH, cfg.JPEG_IMAGES, cfg)
    if name == "class_check":
        return class_check_row(model, x, target, device, cfg)
    return sweep_row(model, x, target, device, cfg)  # gamma_sweep


def run_rows(model, x, target, device, cfg):
    """Every row of ``cfg.RUN`` in order, printed as it finishes; the ratios to the reference rows added."""
    results, cache = {}, {}
    for name in cfg.RUN:
        print(f"  {name:<20}", end="", flush=True)
        r = results[name] = run_row(name, model, x, target, device, cfg, cache)
        if "skipped" in r:
            print(f" skipped: {r['skipped']}")
            continue
        peak = f"  peak {r['peak_mem_mib']:.0f} MiB" if r.get("peak_mem_mib") else ""
        print(f" {r['images_per_s']:>9.1f} img/s{peak}")
    timed = {k: r for k, r in results.items() if "skipped" not in r}
    base, floor = timed.get("one_by_one"), timed.get("input_x_gradient")
    for r in timed.values():
        r["x_one_by_one"] = r["images_per_s"] / base["images_per_s"] if base else None
        r["x_input_x_gradient"] = r["images_per_s"] / floor["images_per_s"] if floor else None
    return results


def interleaved_seconds(calls, device, pairs):
    """The seconds of each of ``calls`` per round of back-to-back calls (after one warm-up call each): on a shared
    machine their ratios are steadier than those of rows measured minutes apart."""
    for call in calls:
        call()
    rounds = []
    for _ in range(pairs):
        seconds = []
        for call in calls:
            sync(device)
            t0 = time.perf_counter()
            call()
            sync(device)
            seconds.append(time.perf_counter() - t0)
        rounds.append(seconds)
    return rounds


def interleaved_ratios(model, x, target, device, pairs):
    """Input×Gradient's time over fused fp32 γ-LRP's, per pair of back-to-back calls."""
    with Explainer(model, LRP_GAMMAS, MethodSettings(impl="fused")) as ex:
        calls = (lambda: input_x_gradient(model, x, target), lambda: ex.attribute(x, target))
        return [a / b for a, b in interleaved_seconds(calls, device, pairs)]


def fused_vs_floor(results, ceiling, model, x, target, device, cfg):
    """Fused γ-LRP's throughput as a percentage of Input×Gradient's (from the rows, and from interleaved pairs of
    calls when both rows ran), beside the ceiling this model allows."""
    out = {"ceiling_percent": 100 * ceiling["ratio"]}
    for dt in ("fp32", "bf16"):
        ratio = results.get(f"lrp_fused_{dt}", {}).get("x_input_x_gradient")
        if ratio is not None:
            out[f"{dt}_percent"] = 100 * ratio
    if "fp32_percent" in out:
        ratios = interleaved_ratios(model, x, target, device, max(3, cfg.REPEATS))
        out["fp32_percent_interleaved"] = 100 * statistics.median(ratios)
        out["interleaved_pairs"] = len(ratios)
    return out


def print_summary(results, ceiling, versus):
    """The table of every timed row, the sweep's ratios, and how close the fused rule comes to its ceiling."""
    def cell(value, width, spec):
        return format(value, f">{width}{spec}") if value is not None else f"{'-':>{width}}"

    print(f"\n{'row':<20} {'img/s':>10} {'x 1-by-1':>8} {'x IxG':>7} {'peak MiB':>9} {'cos vs fp32':>12}  at")
    for name, r in results.items():
        if "skipped" not in r:
            print(f"{name:<20} {r['images_per_s']:>10.1f} {cell(r['x_one_by_one'], 8, '.1f')} "
                  f"{cell(r['x_input_x_gradient'], 7, '.2f')} {cell(r.get('peak_mem_mib'), 9, '.0f')} "
                  f"{cell(r.get('min_cosine_vs_fp32_zennit'), 12, '.4f')}  {r.get('lowest_cosine_at') or ''}")
    if any("lowest_cosine_at" in r for r in results.values()):
        print("cos vs fp32: the lowest cosine to fp32 zennit's maps over the FIDELITY settings, at the one named "
              "(all in benchmark.json)")
    g = results.get("gamma_sweep")
    if g and "skipped" not in g:
        print(f"\ngamma_sweep: {g['cells']} cells cost {g['ratio_maps']:.1f}x one fused method (maps only: "
              f"{g['sweep_maps_s']:.2f} s vs {g['one_method_s']:.2f} s); with the metrics "
              f"{g['ratio_maps_and_metrics']:.1f}x ({g['sweep_metrics_s']:.2f} s of metrics for all cells)")
    c = results.get("class_check")
    if c and "skipped" not in c:
        each = ", ".join(f"{n} {v['ratio']:.1f}x" for n, v in c["methods"].items())
        met = "met" if c["within_bound"] else "MISSED"
        print(f"class_check: {c['classes']} classes from one shared forward cost {each} one map (bound "
              f"{CLASS_CHECK_BOUND:g} x {c['classes']} = {c['bound']:.1f}x: {met})")
    measured = ", ".join(f"{versus[k]:.0f}% {k[:4]}" for k in ("fp32_percent", "bf16_percent") if k in versus)
    if "fp32_percent_interleaved" in versus:
        measured += (f" (rows); {versus['fp32_percent_interleaved']:.0f}% fp32 (median of "
                     f"{versus['interleaved_pairs']} interleaved pairs of calls)")
    print(f"\nfused γ-LRP vs Input×Gradient, throughput: {measured or '? (run lrp_fused_fp32 and input_x_gradient)'}"
          f"\nceiling for this model: {versus['ceiling_percent']:.0f}% (matrix products per image: Input×Gradient "
          f"{ceiling['input_x_gradient_flops'] / 1e9:.3g} GFLOP, exact γ-LRP "
          f"{ceiling['fused_gamma_lrp_flops'] / 1e9:.3g} GFLOP with γ on {ceiling['gamma_layers']} layers)")


def main(cfg):
    device = check_settings(cfg)
    ensure_writable_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    # benchmark.json is replaced as it always was (overwrite); another script's folder is refused, before minutes of
    # measuring, not after
    folder = RunFolder(cfg.OUTPUT_DIR, "OUTPUT_DIR", ("benchmark.json",), overwrite=True)
    folder.refuse_other_script(folder.script, folder.owned)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are true fp32; bf16 rows say so
    gpu = torch.cuda.get_device_name(device) if cuda else None
    print(f"Benchmark on {gpu or 'CPU'} ({device}), torch {torch.__version__}, {cfg.MODEL} at {cfg.IMAGE_SIZE}px, "
          f"LRP batch {cfg.LRP_BATCH}, train batch {cfg.TRAIN_BATCH}")

    model = random_model(cfg.MODEL, cfg.IMAGE_SIZE, device)
    torch.manual_seed(1)
    x = torch.randn(cfg.LRP_BATCH, 3, cfg.IMAGE_SIZE, cfg.IMAGE_SIZE, device=device)
    with torch.no_grad():
        target = model(x).argmax(1)
    with Explainer(model, LRP_GAMMAS, MethodSettings(impl="fused")) as ex:  # every γ of LRP_GAMMAS is > 0
        ceiling = flop_ceiling(model, ex.gamma_layers(), cfg.IMAGE_SIZE)

    results = run_rows(model, x, target, device, cfg)
    versus = fused_vs_floor(results, ceiling, model, x, target, device, cfg)
    print_summary(results, ceiling, versus)

    report = {"date": datetime.date.today().isoformat(), "device": gpu or "cpu", "torch": torch.__version__,
              "model": cfg.MODEL, "image_size": cfg.IMAGE_SIZE, "lrp_batch": cfg.LRP_BATCH,
              "train_batch": cfg.TRAIN_BATCH, "config": cli.config_dict(cfg), "ceiling": ceiling,
              "fused_vs_input_x_gradient": versus, "rows": results}
    with folder as run:
        write_json(run.path / "benchmark.json", report)
        run.finish(["benchmark.json"])
    print(f"\nWrote {run.path / 'benchmark.json'}")
    return 0


if __name__ == "__main__":
    cli.run(main, globals())
