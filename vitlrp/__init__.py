"""vitlrp: fine-tune torchvision's ViT-B/16 on CUB-200-2011 and explain it with AttnLRP + zennit's Gamma rule.

One concept per module:

- ``cli``         constants block → ``--flags``, one-line errors
- ``fileio``      atomic writes
- ``runfolder``   an output folder's lock, incomplete marker and clean-up of older runs' files
- ``preprocess``  any image file as 8-bit RGB; resize + center crop + normalize, the same mapping for boxes and parts
- ``cub``         the CUB-200-2011 folder layout and dataset
- ``synthetic``   the synthetic mini-CUB (CUB layout, known evidence box)
- ``download``    fetch, md5-check and safely extract the CUB archive
- ``models``      ViT building, pretrained weights, checkpoints
- ``training``    the fine-tuning loop pieces
- ``explain``     AttnLRP (LXT) + Gamma rule (zennit), batched
- ``fastgamma``   an exact, faster implementation of zennit's generalized Gamma rule for Linear layers
- ``peers``       standard ViT explainers: Grad-CAM, attention rollout, GAE, Integrated Gradients, SmoothGrad
- ``render``      heatmaps, overlays, comparison panels, grids
- ``plots``       matplotlib figures: training curves, evaluation plots
- ``metrics``     faithfulness, localization and noise metrics for relevance maps
- ``sweep``       the γ search: grid cells, surfaces, Pareto front, recommended γ, ``best_gamma.json``
- ``stats``       paired comparisons of methods scored on the same images (bootstrap, Wilcoxon, Holm)
- ``gallery``     the HTML gallery
- ``shortcut``    the Clever-Hans test: class marks, measured reliance, mark share → ROC AUC
- ``runtime``     devices, seeding, distributed helpers
- ``pipeline``    steps the explaining scripts share: checkpoint + split with checks, sampling, methods by name
- ``heatmaps``    the per-sample files and JSON records of a heatmap run
- ``evaluation``  scoring a batch of maps, summaries, merging the ranks' rows
- ``predict``     plain predictions for image files
- ``runfolder``   an output folder's lock, incomplete marker and clean-up of older runs' files
"""
__version__ = "0.1.0"
