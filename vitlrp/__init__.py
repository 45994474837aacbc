"""vitlrp: fine-tune torchvision's ViTs on CUB-200-2011 and explain them with AttnLRP + zennit's Gamma rule.

One concept per module:

- ``cli``         constants block → ``--flags``, one-line errors
- ``errors``      the one exception type a script turns into one line
- ``fileio``      atomic writes
- ``runfolder``   an output folder's lock, incomplete marker and list of the files runs wrote
- ``preprocess``  any image file as 8-bit RGB; resize + center crop + normalize, the same mapping for boxes and parts
- ``cub``         the CUB-200-2011 folder layout and dataset
- ``synthetic``   the synthetic mini-CUB (CUB layout, known evidence box)
- ``download``    fetch, md5-check and safely extract the CUB archive
- ``models``      the table of ViTs (torchvision's and vit_tiny), their weights, checkpoints
- ``training``    the fine-tuning loop pieces and the Trainer that steps a run epoch by epoch
- ``holdout``     the validation split that picks the best epoch
- ``runtime``     devices, dtypes, seeding (per image too), distributed helpers
- ``gamma``       γ values: presets, per-block schedules, which module gets which γ
- ``lxtpatch``    LXT's patches, active only while explaining; the attention swap
- ``explain``     the AttnLRP + Gamma rule explainer, batched
- ``fastgamma``   an exact, faster implementation of zennit's generalized Gamma rule (one forward, many γ)
- ``methods``     every attribution method by name, one file per family (lrp, gradients, cam, attention, baselines)
- ``inputs``      what an explaining script works on: checkpoint + split, the seeded sample, batches
- ``checks``      the explaining scripts' shared settings, checked before any work
- ``metrics``     the table of metrics: faithfulness, localization and noise scores of relevance maps
- ``scoring``     every method's maps of a batch scored with every metric (curves computed together)
- ``evaluation``  summaries, the best method per metric, paired comparisons, the console's tables
- ``stats``       paired statistics of methods scored on the same images (bootstrap, Wilcoxon, Holm)
- ``sanity``      the sanity checks: class, cascading randomization and noise; similarity measures; verdicts
- ``sweep``       the γ search: grid cells, surfaces, Pareto front, recommended γ, ``best_gamma.json``
- ``shortcut``    the Clever-Hans test: class marks, measured reliance, mark share → ROC AUC
- ``heatmaps``    the per-sample files and JSON records of a heatmap run
- ``predict``     plain predictions for image files
- ``render``      heatmaps, overlays, comparison panels, grids
- ``plots``       matplotlib figures: training curves, evaluation plots
- ``gallery``     the HTML gallery
- ``report``      the Markdown tables of finished runs (docs/results.md)
"""
__version__ = "0.1.0"
