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


def resolve_gammas(preset, conv_gamma, lin_gamma):
    """``(conv_gamma, lin_gamma)`` from a preset name (which wins) or the two values."""
    if preset:
        if preset not in PRESETS:
            raise UserError(f"unknown PRESET {preset!r}: choose one of {', '.join(PRESETS)} or leave it empty")
        return PRESETS[preset]
    return check_gamma("CONV_GAMMA", conv_gamma), check_gamma("LIN_GAMMA", lin_gamma)


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
    conv_gamma, lin_gamma: γ of the Gamma rule for ``nn.Conv2d`` and ``nn.Linear`` modules.
    gamma_attention: route the attention projections through ``nn.Linear`` so that ``lin_gamma`` reaches them.
    dtype: ``torch.float32``, or ``torch.bfloat16`` for a pure-bf16 copy of the model (autocast breaks zennit).
    impl: ``'zennit'`` (the reference hooks) or ``'fused'`` (:mod:`vitlrp.fastgamma`, same maps, fewer matmuls).
    """

    def __init__(self, model, conv_gamma=1.0, lin_gamma=0.5, gamma_attention=False, dtype=torch.float32,
                 impl="zennit"):
        if impl not in ("zennit", "fused"):
            raise ValueError(f"impl must be 'zennit' or 'fused', got {impl!r}")
        self.model = model
        self.conv_gamma = check_gamma("CONV_GAMMA", conv_gamma)
        self.lin_gamma = check_gamma("LIN_GAMMA", lin_gamma)
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
        self._open = True
        return self

    def __exit__(self, *exc):
        self._open = False
        self.lrp_model = None
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

    def _rule_map(self):
        """module name → (module, γ) for every module the Gamma rule is registered on."""
        rules = {}
        for name, module in self.lrp_model.named_modules():
            if isinstance(module, nn.Conv2d):
                rules[name] = (module, self.conv_gamma)
            elif isinstance(module, nn.Linear):
                rules[name] = (module, self.lin_gamma)
        return rules

    @contextmanager
    def _rules_attached(self):
        """Attach the rules (and a probe noting which modules they act on) for one forward + backward."""
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
                from zennit.composites import LayerMapComposite
                from zennit.rules import Gamma

                composite = LayerMapComposite([(nn.Conv2d, Gamma(self.conv_gamma)),
                                               (nn.Linear, Gamma(self.lin_gamma))])
                with composite.context(self.lrp_model):
                    yield
            else:
                from .fastgamma import gamma_rules

                with gamma_rules({m: g for m, g in rules.values()}):
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
                + (f", gamma={self.lin_gamma:g})" if other else ")"))
        if self.gamma_attention:
            text += f"; {len(attn)} attention projections (value + output; query/key carry no relevance in CP-LRP)"
        else:
            text += ("; attention projections get LRP-0 (torchvision calls F.linear on them; "
                     "GAMMA_ATTENTION=true routes them through gamma)")
        return text


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
