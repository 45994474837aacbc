# `make test` and `make demo` build .venv from requirements.txt (this package and its pinned dependencies, from
# pyproject.toml) and requirements-test.txt (the test-only tools) when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test test-slow demo venv bench bench-vit-b16 sweep data-randomization shortcut report clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@echo "Building $(VENV) (the first time: a few minutes, about 6.6 GB on Linux, 4.4 GB of it torch and its CUDA"
	@echo "libraries): this package with its pinned dependencies (requirements.txt; pins in pyproject.toml: torch,"
	@echo "torchvision, lxt, zennit, transformers, captum, grad-cam, scipy, scikit-image, ...) and the test tools"
	@echo "(requirements-test.txt: pytest, ruff, quantus). pip's progress follows."
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install --progress-bar on -r requirements.txt -r requirements-test.txt
	@echo "$(VENV) is ready: $$(du -sh $(VENV) 2>/dev/null | cut -f1) on disk."
	touch $(STAMP)

# make test: ruff and every test but the slow ones (torchrun pairs, the wheel, ViT-B/16 family copies), in two pytest
# workers of one thread each (under 5 min on 2 idle cores); make test-slow: the slow ones; .ci/run runs both
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# The whole pipeline on the synthetic mini-CUB, through the same scripts a user runs on CUB (only flags differ).
MINI := dataset/synthetic/CUB_200_2011
DEMO := results/demo
DEMO_CKPT := $(DEMO)/checkpoints/vit_cub_best.pt
# evaluate_lrp.py's default METHODS plus the peer explainers that cost about one backward pass; add
# integrated_gradients,smoothgrad for the full list (30-40x Input×Gradient each: kept out so the demo stays short)
DEMO_METHODS := baseline,conservative,balanced,aggressive,very_aggressive,input_x_gradient,gradient,random,gradcam,rollout,gae
DEMO_TITLE := "Demo on the synthetic mini-CUB (not real birds)"
# the demo model's recipe (the data randomization test trains a second model by it, on permuted labels)
DEMO_TRAIN := --dataset-root $(MINI) --model vit_tiny --pretrained none --epochs 15 --batch-size 32 --lr 1e-3 \
    --warmup-epochs 1 --num-workers 2 --overwrite true
# figures the docs quote (docs/sanity.md, docs/sweep.md; tests/test_docs.py holds them to these lines)
DEMO_SANITY_IMAGES := 40
DEMO_NOISE_SAMPLES := 2
SWEEP_IMAGES := 48
SWEEP_STEPS := 5

# the sanity checks run on DEMO_SANITY_IMAGES images with DEMO_NOISE_SAMPLES noisy copies each (about 20 s on 2 idle
# cores)
demo: $(STAMP)
	$(PY) scripts/make_synthetic_cub.py --dataset-root $(MINI)
	$(PY) scripts/train_vit_cub.py $(DEMO_TRAIN) --checkpoint-dir $(DEMO)/checkpoints --output-dir $(DEMO)/train
	$(PY) scripts/test_vit_forward.py --checkpoint-path $(DEMO_CKPT) --dataset-root $(MINI) --num-samples 12 \
	    --compare-presets baseline,conservative,balanced,aggressive,very_aggressive \
	    --compare-methods gradcam,rollout,gae,integrated_gradients,smoothgrad --num-workers 2 \
	    --output-dir $(DEMO)/lrp_samples
	$(PY) scripts/inspect_lrp_predictions.py --output-dir $(DEMO)/lrp_samples
	$(PY) scripts/evaluate_lrp.py --checkpoint-path $(DEMO_CKPT) --dataset-root $(MINI) --num-images 0 \
	    --methods $(DEMO_METHODS) --num-workers 2 --output-dir $(DEMO)/lrp_eval
	$(PY) scripts/sanity_checks.py --checkpoint-path $(DEMO_CKPT) --dataset-root $(MINI) \
	    --num-images $(DEMO_SANITY_IMAGES) --methods $(DEMO_METHODS) --noise-samples $(DEMO_NOISE_SAMPLES) \
	    --figure-images 2 --num-workers 2 --output-dir $(DEMO)/sanity
	$(PY) scripts/build_gallery.py --results-dir $(DEMO) --title $(DEMO_TITLE)
	@echo
	@echo "Demo done. Look at $(DEMO)/index.html (all results), $(DEMO)/lrp_samples/index.html (heatmaps),"
	@echo "$(DEMO)/lrp_eval/summary.csv (which gamma explains best), $(DEMO)/sanity/sanity.csv (do the maps depend on"
	@echo "the class and the model?) and $(DEMO)/train/curves.png."

# The γ sweep on the demo's checkpoint (run `make demo` first): a short CPU run, SWEEP_IMAGES images, SWEEP_STEPS
# perturbation steps; then the demo's gallery again, which now takes its recommendation from the sweep.
sweep: $(STAMP)
	$(PY) scripts/sweep_gamma.py --checkpoint-path $(DEMO_CKPT) --dataset-root $(MINI) --num-images $(SWEEP_IMAGES) \
	    --perturb-steps $(SWEEP_STEPS) --batch-size 48 --num-workers 2 --output-dir $(DEMO)/sweep
	$(PY) scripts/build_gallery.py --results-dir $(DEMO) --title $(DEMO_TITLE)

# Adebayo's data randomization test on the demo's checkpoint (run `make demo` first): the demo's recipe trained again
# on permuted training labels (a few CPU minutes; its last epoch is compared), then every method's maps on the two
# models, on the DEMO_SANITY_IMAGES images of the sanity checks.
DR := $(DEMO)/data_randomization
data-randomization: $(STAMP)
	@test -f $(DEMO_CKPT) || { echo "error: $(DEMO_CKPT) not found: run make demo first"; exit 1; }
	$(PY) scripts/train_vit_cub.py $(DEMO_TRAIN) --permute-labels true --checkpoint-dir $(DR)/checkpoints \
	    --output-dir $(DR)/train
	$(PY) scripts/data_randomization.py --checkpoint-path $(DEMO_CKPT) \
	    --random-checkpoint-path $(DR)/checkpoints/vit_cub_last.pt --dataset-root $(MINI) \
	    --num-images $(DEMO_SANITY_IMAGES) --methods $(DEMO_METHODS) --num-workers 2 --output-dir $(DR)/compare

# Does the explanation show the shortcut? A mini-CUB whose training images carry a class mark beside the bird,
# a vit_tiny trained on it, every method scored on swapped-mark test pairs, and a gallery of the pairs.
SC := results/shortcut
SC_DATA := dataset/synthetic/CUB_200_2011_shortcut
SC_CKPT := $(SC)/checkpoints/vit_cub_last.pt
SC_METHODS := baseline,conservative,balanced,aggressive,very_aggressive,input_x_gradient,random,gradcam,rollout,gae

shortcut: $(STAMP)
	$(PY) scripts/make_synthetic_cub.py --dataset-root $(SC_DATA) --shortcut-share 1.0
	$(PY) scripts/train_vit_cub.py --dataset-root $(SC_DATA) --model vit_tiny --pretrained none --epochs 15 \
	    --batch-size 32 --lr 1e-3 --warmup-epochs 1 --num-workers 2 \
	    --overwrite true --checkpoint-dir $(SC)/checkpoints --output-dir $(SC)/train
	$(PY) scripts/evaluate_lrp.py --checkpoint-path $(SC_CKPT) --dataset-root $(SC_DATA) --num-images 0 \
	    --methods $(SC_METHODS) --perturb-steps 2 --num-workers 2 --output-dir $(SC)/lrp_eval
	$(PY) scripts/shortcut_pairs.py --checkpoint-path $(SC_CKPT) --dataset-root $(SC_DATA) \
	    --methods $(SC_METHODS) --output-dir $(SC)/pairs
	$(PY) scripts/build_gallery.py --results-dir $(SC) --title "Does the explanation show the shortcut? (synthetic)"
	@echo
	@echo "Shortcut benchmark done. Look at $(SC)/lrp_eval/shortcut_summary.csv (AUC per method),"
	@echo "$(SC)/lrp_eval/shortcut.png and $(SC)/pairs/index.html (swapped-mark pairs side by side)."

bench: $(STAMP)
	$(PY) scripts/benchmark.py

# ViT-B/16 at 224 px on the CPU: the fused γ-LRP against zennit and Input×Gradient only (about 2 minutes on 2 cores)
bench-vit-b16: $(STAMP)
	$(PY) scripts/benchmark.py --model vit_b_16 --run lrp_zennit_fp32,lrp_fused_fp32,input_x_gradient --lrp-batch 8 \
	    --repeats 3 --output-dir results/benchmark_vit_b16

# docs/results.md from the runs above (their files, their commands): what the README's results link to. A missing
# run stops it, naming the make target that makes it; `make report PARTIAL=true` writes the page without it.
report: $(STAMP)
	$(PY) scripts/report.py --benchmark-files results/benchmark/benchmark.json,results/benchmark_vit_b16/benchmark.json \
	    --partial $(or $(PARTIAL),false)

clean-demo:
	rm -rf results/demo results/shortcut dataset/synthetic
