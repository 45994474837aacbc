"""The settings the explaining scripts share, checked before any work: each problem is one UserError line naming
the setting."""
from .errors import UserError
from .explain import IMPLS
from .gamma import encoder_blocks, schedule_values
from .methods import Options
from .runtime import DTYPES


def check_run_options(cfg):
    """``TARGET``, ``DTYPE``, ``IMPL``, ``BATCH_SIZE``, ``NUM_WORKERS`` (and the sampling methods' costs)."""
    if cfg.TARGET not in ("pred", "label"):
        raise UserError(f"TARGET must be pred or label, got {cfg.TARGET!r}")
    if cfg.DTYPE not in DTYPES:
        raise UserError(f"DTYPE must be one of {', '.join(DTYPES)}, got {cfg.DTYPE!r}")
    if cfg.IMPL not in IMPLS:
        raise UserError(f"IMPL must be one of {', '.join(IMPLS)}, got {cfg.IMPL!r}")
    if cfg.BATCH_SIZE <= 0:
        raise UserError(f"BATCH_SIZE must be positive, got {cfg.BATCH_SIZE}")
    if cfg.NUM_WORKERS < 0:
        raise UserError(f"NUM_WORKERS must be >= 0 (0 = decode in this process), got {cfg.NUM_WORKERS}")
    for name in ("IG_STEPS", "SMOOTHGRAD_SAMPLES", "ROWS_PER_PASS"):
        if getattr(cfg, name, 1) <= 0:
            raise UserError(f"{name} must be positive, got {getattr(cfg, name)}")


def method_options(cfg):
    """The :class:`vitlrp.methods.Options` of a script's settings (defaults for those it does not have)."""
    default = Options()
    return Options(DTYPES[cfg.DTYPE], cfg.IMPL, cfg.SEED, getattr(cfg, "IG_STEPS", default.ig_steps),
                   getattr(cfg, "SMOOTHGRAD_SAMPLES", default.smoothgrad_samples),
                   getattr(cfg, "ROWS_PER_PASS", default.rows_per_pass))


def check_scoring_options(cfg):
    """The scoring options of the evaluation and the sweep: ``PERTURB_STEPS``, ``PART_TOLERANCE_PX``."""
    if cfg.PERTURB_STEPS < 2:
        raise UserError(f"PERTURB_STEPS must be at least 2, got {cfg.PERTURB_STEPS}")
    if cfg.PART_TOLERANCE_PX < 0:
        raise UserError(f"PART_TOLERANCE_PX must be >= 0, got {cfg.PART_TOLERANCE_PX}")


def check_perturb_steps_fit(steps, model):
    """More MoRF/LeRF steps than the model has patches would repeat curve points and only cost time."""
    patches = (model.image_size // model.patch_size) ** 2
    if steps > patches:
        raise UserError(f"PERTURB_STEPS must be at most the number of patches ({patches}), got {steps}")


def check_schedules_fit(named_schedules, model):
    """Every Linear-γ schedule ``(name, spec)`` that lists values must give one per encoder block of ``model``:
    checked once the model is known and before any output, not when the first batch is explained."""
    blocks = max(len(encoder_blocks(model)), 1)
    for name, spec in named_schedules:
        schedule_values(spec, blocks, name)
