"""AttnLRP for torchvision ViTs: LXT's patches plus zennit's Gamma rule, batched, attached only while explaining.

LXT (``lxt.efficient.monkey_patch``) rewrites the *classes* ``nn.GELU``, ``nn.LayerNorm`` and
``nn.MultiheadAttention`` for the whole process, and ``monkey_patch_zennit`` rewrites zennit's ``BasicHook``;
neither offers an undo. :func:`lxt_patched` saves the original methods and restores them on exit, so training
code and a plain Input×Gradient baseline run unpatched in the same process.

Where γ acts: zennit's ``LayerMapComposite`` hooks modules, and a hook only fires when the module is *called*.
torchvision's ``MultiheadAttention`` applies ``in_proj_weight`` and ``out_proj.weight`` through ``F.linear``,
so LIN_GAMMA reaches ``conv_proj`` (CONV_GAMMA), the two MLP linears of each block and ``heads.head`` only;
the attention projections get LRP-0 unless ``gamma_attention=True`` routes them through ``nn.Linear`` modules.
Because AttnLRP's CP-LRP variant stops relevance at the query and key, γ there reaches the value and output
projections. :meth:`Explainer.gamma_layers` reports the layers γ really acted on.

The Linear γ may vary with depth (:func:`parse_schedule`): one value per encoder block, given as a list
(``0.5/0.3/0.1/0``) or a family from the first block to the last (``linear:0.5:0``, ``geometric:1:0.01``).
Every Linear inside block *i* (MLP, and attention with ``gamma_attention``) gets value *i*; Linears outside the
blocks (the head) get the last block's value. The patch embedding keeps the Conv2d γ.
"""
import copy
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

PRESETS = {
    "baseline": (0.0, 0.0),
    "conservative": (0.5, 0.1),
    "balanced": (1.0, 0.5),
    "aggressive": (10.0, 1.0),
    "very_aggressive": (100.0, 1.0),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_MISSING = object()
_patch_depth = 0


def check_gamma(name, value):
    """γ must be a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UserError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


SCHEDULE_HELP = ("a number, one value per encoder block joined by '/' (e.g. 0.5/0.3/0.1/0), linear:<first>:<last> "
                 "or geometric:<first>:<last> (first and last block; the head gets the last block's value)")


def parse_schedule(spec, name="lin_gamma"):
    """A Linear-γ schedule → ``(kind, values)``: ``('const', (g,))``, ``('list', (g0, g1, ...))``,
    ``('linear', (first, last))`` or ``('geometric', (first, last))``; ``spec`` is a number, a list or text."""
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise UserError(f"{name} is an empty list: {SCHEDULE_HELP}")
        return "list", tuple(check_gamma(f"{name} value", v) for v in spec)
    if not isinstance(spec, str):
        return "const", (check_gamma(name, spec),)
    text = spec.strip()
    kind, _, rest = text.partition(":")
    try:
        if kind in ("linear", "geometric"):
            values = tuple(float(v) for v in rest.split(":"))
            if len(values) != 2:
                raise ValueError
            values = tuple(check_gamma(f"{name} {kind} value", v) for v in values)
            if kind == "geometric" and min(values) <= 0:
                raise UserError(f"{name} {text!r}: a geometric schedule needs values > 0 (use linear:... for 0)")
            return kind, values
        values = tuple(float(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"{name} {text!r} is not a γ schedule: {SCHEDULE_HELP}") from None
    values = tuple(check_gamma(f"{name} value", v) for v in values)
    return ("const", values) if len(values) == 1 else ("list", values)


def schedule_values(spec, num_blocks, name="lin_gamma"):
    """The Linear γ of each of ``num_blocks`` encoder blocks (a list of floats) for a schedule spec."""
    kind, v = parse_schedule(spec, name)
    if kind == "const":
        return [v[0]] * num_blocks
    if kind == "list":
        if len(v) != num_blocks:
            raise UserError(f"{name} lists {len(v)} values but the model has {num_blocks} encoder blocks: give one "
                            "value per block, or use linear:<first>:<last>")
        return list(v)
    steps = [i / (num_blocks - 1) if num_blocks > 1 else 0.0 for i in range(num_blocks)]
    if kind == "linear":
        return [v[0] + (v[1] - v[0]) * t for t in steps]
    return [v[0] * (v[1] / v[0]) ** t for t in steps]


def schedule_text(spec, name="lin_gamma"):
    """The canonical text of a schedule (a number as ``%g``), as used in method names and JSON."""
    kind, v = parse_schedule(spec, name)
    if kind == "const":
        return f"{v[0]:g}"
    if kind == "list":
        return "/".join(f"{g:g}" for g in v)
    return f"{kind}:{v[0]:g}:{v[1]:g}"


def lin_gamma_value(spec, name="lin_gamma"):
    """A Linear γ as stored in configs and JSON: a float for a constant, the canonical text for a schedule."""
    kind, v = parse_schedule(spec, name)
    return v[0] if kind == "const" else schedule_text(spec, name)


def encoder_blocks(model):
    """Names of the encoder blocks (modules with a ``self_attention``), in depth order."""
    return [name for name, m in model.named_modules() if hasattr(m, "self_attention") and name]


def module_gammas(model, conv_gamma, lin_spec):
    """module name → (module, γ) for every Conv2d (``conv_gamma``) and Linear (its block's scheduled γ)."""
    blocks = encoder_blocks(model)
    lin = schedule_values(lin_spec, max(len(blocks), 1))
    rules = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            rules[name] = (module, conv_gamma)
        elif isinstance(module, nn.Linear):
            depth = next((i for i, b in enumerate(blocks) if name.startswith(b + ".")), len(lin) - 1)
            rules[name] = (module, lin[depth])
    return rules


def resolve_gammas(preset, conv_gamma, lin_gamma, names=("preset", "conv_gamma", "lin_gamma")):
    """``(conv_gamma, lin_gamma)`` from a preset name (which wins) or the two values; errors use ``names``."""
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown {names[0]} {preset!r}: choose one of {', '.join(PRESETS)} or leave it empty")
        return PRESETS[preset]
    return check_gamma(names[1], conv_gamma), check_gamma(names[2], lin_gamma)


def _patched_targets():
    from zennit.core import BasicHook

    return [(cls, name) for cls in (nn.GELU, nn.LayerNorm, nn.MultiheadAttention)
            for name in ("forward", "original_forward")] + [(BasicHook, "forward"), (BasicHook, "backward")]


def lxt_active():
    """Whether LXT's patches are in place now (inside :func:`lxt_patched`)."""
    return _patch_depth > 0


@contextmanager
def lxt_patched():
    """LXT's AttnLRP patches for torchvision's ViT (and for zennit's hooks), active only inside the block."""
    global _patch_depth
    if _patch_depth:
        _patch_depth += 1
        try:
            yield
        finally:
            _patch_depth -= 1
        return
    import torchvision.models.vision_transformer as tv_vit
    from lxt.efficient import monkey_patch, monkey_patch_zennit  # slow import (transformers): only when explaining

    saved = [(cls, name, cls.__dict__.get(name, _MISSING)) for cls, name in _patched_targets()]
    _patch_depth = 1
    try:
        monkey_patch(tv_vit)
        monkey_patch_zennit()
        yield
    finally:
        for cls, name, value in saved:
            if value is _MISSING:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, value)
        _patch_depth = 0


class LinearAttention(nn.Module):
    """torchvision's self-attention with its q/k/v and output projections as ``nn.Linear`` modules.

    The forward equals ``nn.MultiheadAttention`` (batch-first self-attention without masks); the weights are
    views of the original parameters. Query and key are detached as in LXT's CP-LRP patch.
    """

    def __init__(self, mha):
        super().__init__()
        e = mha.embed_dim
        self.num_heads = mha.num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(e, e, bias=mha.in_proj_bias is not None) for _ in range(3))
        for i, proj in enumerate((self.q_proj, self.k_proj, self.v_proj)):
            proj.weight = nn.Parameter(mha.in_proj_weight.detach()[i * e:(i + 1) * e], requires_grad=False)
            if mha.in_proj_bias is not None:
                proj.bias = nn.Parameter(mha.in_proj_bias.detach()[i * e:(i + 1) * e], requires_grad=False)
        self.out_proj = mha.out_proj

    def forward(self, query, key, value, need_weights=False, **kwargs):
        b, n, e = query.shape
        h = self.num_heads
        q = self.q_proj(query.detach()).view(b, n, h, e // h).transpose(1, 2)
        k = self.k_proj(key.detach()).view(b, n, h, e // h).transpose(1, 2)
        v = self.v_proj(value).view(b, n, h, e // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e)
        return self.out_proj(out), None


@contextmanager
def attention_as_linear(model):
    """Swap every encoder block's ``self_attention`` for :class:`LinearAttention`; restore on exit."""
    blocks = [blk for blk in model.modules() if isinstance(getattr(blk, "self_attention", None),
                                                            nn.MultiheadAttention)]
    originals = [blk.self_attention for blk in blocks]
    try:
        for blk, mha in zip(blocks, originals):
            blk.self_attention = LinearAttention(mha)
        yield
    finally:
        for blk, mha in zip(blocks, originals):
            blk.self_attention = mha


class Explainer:
    """AttnLRP (LXT) with zennit's Gamma rule on a torchvision ``VisionTransformer``.

    Use as a context manager; inside, ``explainer(images, target)`` returns ``(logits, relevance)`` with
    ``relevance`` the ``[B, H, W]`` pixel relevance (channels summed; float32, or float64 for a float64 ``dtype``)
    of ``target`` (one class per row, or one class for all rows; ``None`` = the predicted class). LXT's patches and
    the zennit composite are attached for the forward and the backward of each batch and removed after it, so
    plain forwards in between run the original model.

    Parameters
    ----------
    model: torchvision VisionTransformer (eval mode).
    conv_gamma, lin_gamma: γ of the Gamma rule for ``nn.Conv2d`` and ``nn.Linear`` modules; ``lin_gamma`` may be a
        per-block schedule (:func:`parse_schedule`: a list, ``'0.5/0.3/0.1/0'``, ``'linear:0.5:0'``, ...).
    gamma_attention: route the attention projections through ``nn.Linear`` so that ``lin_gamma`` reaches them.
    dtype: ``torch.float32``, or ``torch.bfloat16`` for a pure-bf16 copy of the model (autocast breaks zennit).
    impl: ``'zennit'`` (the reference hooks) or ``'fused'`` (:mod:`vitlrp.fastgamma`, same maps, fewer matmuls).
    """

    def __init__(self, model, conv_gamma=1.0, lin_gamma=0.5, gamma_attention=False, dtype=torch.float32,
                 impl="zennit"):
        if impl not in ("zennit", "fused"):
            raise ValueError(f"impl must be 'zennit' or 'fused', got {impl!r}")
        self.model = model
        self.conv_gamma = check_gamma("conv_gamma", conv_gamma)
        self.lin_gamma = lin_gamma_value(lin_gamma)
        self.gamma_attention = gamma_attention
        self.dtype = dtype
        self.impl = impl
        self._open = False
        self._acted = {}

    # --- context ----------------------------------------------------------------------------------
    def __enter__(self):
        param = next(self.model.parameters())
        self.device = param.device
        self.lrp_model = self.model
        if param.dtype != self.dtype:
            self.lrp_model = copy.deepcopy(self.model).to(self.dtype)
        self.lrp_model.eval()
        from .fastgamma import AbsWeights

        self._abs_weights = AbsWeights()  # fused rule: |W| once per context, not per call (dropped at exit)
        self._open = True
        return self

    def __exit__(self, *exc):
        self._open = False
        self.lrp_model = None
        self._abs_weights = None
        return False

    @contextmanager
    def _patched(self):
        """LXT's patches (and the attention swap) for the duration of one batch; the process is plain outside."""
        with lxt_patched():
            if self.gamma_attention:
                with attention_as_linear(self.lrp_model):
                    yield
            else:
                yield

    def _rule_map(self, conv_gamma=None, lin_gamma=None):
        """module name → (module, γ) for every module the Gamma rule is registered on."""
        return module_gammas(self.lrp_model, self.conv_gamma if conv_gamma is None else conv_gamma,
                             self.lin_gamma if lin_gamma is None else lin_gamma)

    @contextmanager
    def _rules_attached(self, holders=None):
        """Attach the rules (and a probe noting which modules they act on) for one forward + backward.

        ``holders`` (fused only): module name → :class:`~vitlrp.fastgamma.GammaHolder`, read at backward time.
        """
        handles = []

        def probe(name):
            def hook(module, args):
                if args and torch.is_tensor(args[0]) and args[0].requires_grad:
                    self._acted[name] = type(module).__name__
            return hook

        rules = self._rule_map()
        for name, (module, _) in rules.items():
            handles.append(module.register_forward_pre_hook(probe(name)))
        try:
            if self.impl == "zennit":
                from zennit.core import Composite
                from zennit.rules import Gamma

                by_gamma = {g: Gamma(g) for _, g in rules.values()}
                composite = Composite(module_map=lambda ctx, name, module: by_gamma[rules[name][1]]
                                      if name in rules else None)
                with composite.context(self.lrp_model):
                    yield
            else:
                from .fastgamma import gamma_rules

                with gamma_rules({m: holders[n] if holders else g for n, (m, g) in rules.items()},
                                 self._abs_weights):  # the context's |W| cache
                    yield
        finally:
            for h in handles:
                h.remove()

    # --- explaining -------------------------------------------------------------------------------
    def __call__(self, images, target=None):
        if not self._open:
            raise RuntimeError("use the Explainer inside a `with` block")
        # detach: a fresh leaf, so the caller's tensor is not switched to requires_grad as a side effect
        x = images.detach().to(self.device, self.dtype).requires_grad_(True)
        out_dtype = torch.promote_types(self.dtype, torch.float32)  # bf16 → float32; float64 stays float64
        with self._patched(), torch.enable_grad(), self._rules_attached():
            logits = self.lrp_model(x)
            target = _target_index(logits, target)
            (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), x)
        relevance = (x.detach().to(out_dtype) * grad.to(out_dtype)).sum(1)
        return logits.detach().to(out_dtype), relevance

    def explain_many(self, images, target, settings):
        """Maps for several γ settings of the same batch: ``(logits, relevance [K, B, H, W])``.

        ``settings`` is a list of ``(conv_gamma, lin_gamma)`` (``lin_gamma`` a number or schedule). The rule acts
        only in the backward, so with ``impl='fused'`` one forward serves every setting: the graph is kept and the
        Linear γ are changed between backwards; the backward down to the patch embedding's output is shared by
        all settings with the same Linear γ, and each Conv2d γ only re-runs the patch embedding's rule. ``zennit``
        explains each setting separately. The maps equal separate calls.
        """
        if not self._open:
            raise RuntimeError("use the Explainer inside a `with` block")
        settings = [(check_gamma("conv_gamma", c), schedule_text(lin)) for c, lin in settings]
        if self.impl == "zennit":
            saved = self.conv_gamma, self.lin_gamma
            try:
                maps = []
                for self.conv_gamma, self.lin_gamma in settings:
                    logits, rel = self(images, target)
                    maps.append(rel)
            finally:
                self.conv_gamma, self.lin_gamma = saved
            return logits, torch.stack(maps)
        return self._explain_many_fused(images, target, settings)

    def _explain_many_fused(self, images, target, settings):
        from .fastgamma import GammaHolder, absolute_output, patch_conv_input_gradient

        x = images.detach().to(self.device, self.dtype).requires_grad_(True)
        out_dtype = torch.promote_types(self.dtype, torch.float32)
        groups = {}  # Linear γ → [(index in settings, conv γ)]
        for k, (conv, lin) in enumerate(settings):
            groups.setdefault(lin, []).append((k, conv))
        maps = [None] * len(settings)
        with self._patched(), torch.enable_grad():
            rules = self._rule_map(*settings[0])
            holders = {name: GammaHolder() for name in rules}
            convs = [m for m, _ in rules.values() if isinstance(m, nn.Conv2d)]
            seen = {}

            def keep_output(module, args, out):  # the patch embedding applied to the input: stop the backward here
                if args[0] is x and len(convs) == 1:
                    seen["z"] = out

            hooks = [m.register_forward_hook(keep_output) for m in convs]
            try:
                with self._rules_attached(holders):
                    logits = self.lrp_model(x)
            finally:
                for h in hooks:
                    h.remove()
            target = _target_index(logits, target)
            score = logits.gather(1, target).sum()
            conv_module = convs[0] if "z" in seen else None
            if conv_module is not None:  # the conv rule's |x||W|ᵀ + |b|, once for every conv γ below
                conv_w, conv_b = conv_module.weight.detach(), conv_module.bias
                conv_abs = absolute_output(x.detach(), conv_w, conv_b, self._abs_weights)
            for g, (lin, cells) in enumerate(groups.items()):
                last_group = g == len(groups) - 1
                if conv_module is None:  # no single patch embedding on the input: one backward per setting
                    for i, (k, conv) in enumerate(cells):
                        for name, (_, gamma) in self._rule_map(conv, lin).items():
                            holders[name].value = gamma
                        (grad,) = torch.autograd.grad(score, x, retain_graph=not (last_group and i == len(cells) - 1))
                        maps[k] = (x.detach().to(out_dtype) * grad.to(out_dtype)).sum(1)
                    continue
                for name, (_, gamma) in self._rule_map(cells[0][1], lin).items():
                    holders[name].value = gamma
                (grad_z,) = torch.autograd.grad(score, seen["z"], retain_graph=not last_group)
                for k, conv in cells:
                    grad = patch_conv_input_gradient(x.detach(), conv_w, None, seen["z"].detach(), grad_z, conv,
                                                     conv_abs, self._abs_weights)
                    maps[k] = (x.detach().to(out_dtype) * grad.to(out_dtype)).sum(1)
        return logits.detach().to(out_dtype), torch.stack(maps)

    def gamma_layers(self):
        """Names of the modules the Gamma rule acted on so far (a dry run on a blank image if none yet)."""
        if not self._acted:
            size = self.lrp_model.image_size
            self(torch.zeros(1, 3, size, size, device=self.device))
        return dict(self._acted)

    def describe(self):
        """One line saying where γ acts, for the console and the JSON."""
        layers = self.gamma_layers()
        conv = [n for n, t in layers.items() if t == "Conv2d"]
        attn = [n for n in layers if n.endswith((".q_proj", ".k_proj", ".v_proj", ".out_proj"))]
        other = [n for n, t in layers.items() if t != "Conv2d" and n not in attn]
        text = (f"Gamma rule acts on {len(layers)} layers: {', '.join(conv) or 'no Conv2d'} (Conv2d, "
                f"gamma={self.conv_gamma:g}); {len(other)} Linear (MLP + head"
                + (f", gamma={self._lin_text()})" if other else ")"))
        if self.gamma_attention:
            text += f"; {len(attn)} attention projections (value + output; query/key carry no relevance in CP-LRP)"
        else:
            text += ("; attention projections get LRP-0 (torchvision calls F.linear on them; "
                     "the gamma_attention option routes them through gamma)")
        return text


    def _lin_text(self):
        if isinstance(self.lin_gamma, float):
            return f"{self.lin_gamma:g}"
        values = schedule_values(self.lin_gamma, max(len(encoder_blocks(self.lrp_model)), 1))
        return f"{self.lin_gamma} per block: {'/'.join(f'{v:.3g}' for v in values)}, head {values[-1]:.3g}"


def input_x_gradient(model, images, target=None):
    """Plain Input×Gradient on the *unpatched* model: ``(logits, relevance [B, H, W])``."""
    device = next(model.parameters()).device
    x = images.detach().to(device).requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        target = _target_index(logits, target)
        (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), x)
    return logits.detach().float(), (x.detach() * grad).sum(1).float()


def _target_index(logits, target):
    """``[B, 1]`` class indices for ``gather``: ``None`` = the argmax, a single class is used for every row."""
    if target is None:
        return logits.argmax(1, keepdim=True)
    target = torch.as_tensor(target, device=logits.device).reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if target.numel() != logits.shape[0]:
        raise ValueError(f"target has {target.numel()} entries for a batch of {logits.shape[0]}")
    return target.reshape(-1, 1)
