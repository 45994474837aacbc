"""The settings the explaining scripts share, checked before any work. A script's settings are its constants, read
here by the cli's convention (the setting ``batch_size`` is the constant ``BATCH_SIZE``); each problem is one
UserError line naming the setting, which the script words as its constant (:func:`vitlrp.cli.message`)."""
from .batch import check_target_mode
from .errors import UserError
from .families import family_of
from .gamma import GammaSpec, schedule_values
from .methods import MethodSettings, parse_method
from .runtime import DTYPES


def setting(cfg, name, default=None):
    """The value of the setting ``name`` in a script's constants ``cfg`` (``default`` when it has none)."""
    return getattr(cfg, name.upper(), default)


def method_settings(cfg):
    """The :class:`~vitlrp.methods.MethodSettings` of a script's settings (defaults for those it does not have);
    checks them."""
    dtype = setting(cfg, "dtype", "fp32")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", setting="dtype")
    default = MethodSettings()
    return MethodSettings(DTYPES[dtype], **{name: setting(cfg, name, getattr(default, name)) for name in
                                            ("impl", "seed", "ig_steps", "smoothgrad_samples", "rows_per_pass")})


def check_run_options(cfg):
    """``target`` (where the script has one), ``dtype``, ``impl``, ``batch_size``, ``num_workers`` and the sampling
    methods' costs."""
    if setting(cfg, "target") is not None:
        check_target_mode(setting(cfg, "target"))
    method_settings(cfg)
    for name, low, why in (("batch_size", 1, "be positive"), ("num_workers", 0, "be >= 0 (0 = decode in this "
                                                                              "process)")):
        value = setting(cfg, name)
        if value < low:
            raise UserError(f"{name} must {why}, got {value}", setting=name)


def check_scoring_options(cfg):
    """The scoring options of the evaluation and the sweep: ``perturb_steps``, ``part_tolerance_px``."""
    if setting(cfg, "perturb_steps") < 2:
        raise UserError(f"perturb_steps must be at least 2, got {setting(cfg, 'perturb_steps')}",
                        setting="perturb_steps")
    if setting(cfg, "part_tolerance_px") < 0:
        raise UserError(f"part_tolerance_px must be >= 0, got {setting(cfg, 'part_tolerance_px')}",
                        setting="part_tolerance_px")


def check_perturb_steps_fit(steps, model):
    """More MoRF/LeRF steps than the model has patches would repeat curve points and only cost time."""
    family = family_of(model)
    patches = (family.image_size(model) // family.patch_size(model)) ** 2
    if patches < 2:
        raise UserError(f"the model sees each image as {patches} patch: the perturbation metrics remove patches in "
                        "the order of their relevance and need at least 2 (use a model with a smaller patch size or "
                        "a larger image size)")
    if steps > patches:
        raise UserError(f"perturb_steps must be at most the number of patches ({patches}), got {steps}",
                        setting="perturb_steps")


def check_schedules_fit(named_schedules, model):
    """Every Linear-γ schedule ``(name, spec)`` that lists values must give one per encoder block of ``model``:
    checked once the model is known and before any output, not when the first batch is explained."""
    blocks = max(len(family_of(model).blocks(model)), 1)
    for name, spec in named_schedules:
        schedule_values(spec, blocks, name)


def add_gamma_file(cfg, chosen, word=str.upper):
    """``chosen`` methods plus the γ of ``gamma_file`` (checked by :meth:`~vitlrp.gamma.GammaSpec.from_file` against
    ``checkpoint_path``, unless ``gamma_file_force``), and the line saying what it added (settings named by
    ``word``: the script's constants); unchanged, and no line, without a file."""
    path = setting(cfg, "gamma_file", "")
    if not path:
        return chosen, ""
    extra = parse_method(GammaSpec.from_file(path, checkpoint=setting(cfg, "checkpoint_path"),
                                             force=setting(cfg, "gamma_file_force", False)).name)
    same = [m.name for m in chosen if m.identity() == extra.identity()]
    line = f"{word('gamma_file')} {path}: its γ is {extra.name}" + (
        f", already in {word('methods')} as {same[0]}" if same else f", added to {word('methods')}")
    return chosen + ([] if same else [extra]), line
