"""zennit's generalized Gamma rule in LXT's Input×Gradient convention, in 4 matrix products per layer, no hooks.

zennit re-runs each hooked layer five times in the backward and differentiates all five. With ``z = xWᵀ + b``
from the forward, ``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)`` (likewise ``W⁺, W⁻, b⁺, b⁻``), ``g`` the incoming gradient
and the relevance at the output ``R = g ⊙ z`` (LXT's convention), zennit computes

- ``P = x⁺W⁺ᵀ + x⁻W⁻ᵀ``, ``Q = (z − b) − P``; ``d⁺ = z + γ(P + b⁺)`` where ``z > 0``, ``d⁻ = z + γ(Q + b⁻)`` where
  ``z < 0``, each stabilised as ``d + ε·sign(d)``; ``s± = [z ≷ 0] R / d±``;
- ``U = s⁺W⁺ + s⁻W⁻``, ``V = (s⁺ + s⁻)W − U``; input relevance ``x ⊙ (s⁺ + s⁻)W + γ (x⁺ ⊙ U + x⁻ ⊙ V)``,
  returned as a gradient: divided by ``x`` (stabilised with LXT's ε).

Since ``x⁺ − x⁻ = |x|`` and ``W⁺ − W⁻ = |W|``, one product ``A = |x||W|ᵀ`` gives both halves of ``xWᵀ = z − b``:
``P = ((z − b) + A)/2``, ``Q = ((z − b) − A)/2``. With ``σ = sign(z)`` and ``c₁ = 1 + γ/2``, ``c₂ = γ/2`` both
denominators are ``σ·m`` with ``m = c₁|z| + c₂(A + |b|) ≥ 0``, so (ε added to ``m``, exactly as zennit's
stabiliser acts on ``σ·m``) ``S = s⁺ + s⁻ = g|z| / (m + ε)`` and ``D = s⁺ − s⁻ = g z / (m + ε)`` — no masks. Also
``U = (SW + D|W|)/2``, hence ``x⁺U + x⁻V = (x ⊙ SW + |x| ⊙ D|W|)/2`` and

    input gradient = (c₁ |x| ⊙ SW + c₂ x ⊙ D|W|) / (|x| + ε_LXT).

Products per layer: the forward ``z``, ``A`` (also in the forward, saved for the backward, so the several backwards
of :meth:`vitlrp.explainer.Explainer.attribute_gammas` share it), ``SW`` and ``D|W|``: 4 units instead of zennit's
11 (and 2 at γ = 0). ``|W|`` is cached per parameter by :class:`AbsWeights` for as long as an Explainer is open.
Element-wise steps run in (at least) float32, products in the model's dtype. The forward is the layer's own
(``F.linear`` / ``F.conv2d``), so logits are unchanged.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

IMPLS = ("fused", "zennit")  # the Gamma rule's implementations: the same maps (fused: fewer matmuls, no hooks)
DEFAULT_IMPL = "fused"
ZENNIT_EPS = 1e-6  # zennit's default stabilizer of the rule's denominators
LXT_EPS = 1e-10    # LXT's stabilizer when dividing the input relevance by the input


class GammaHolder:
    """A γ read when the backward runs, not when the forward ran: one forward, then a backward per γ setting
    (``retain_graph=True``), changing ``value`` in between."""

    def __init__(self, value=0.0):
        self.value = float(value)


def _gamma_of(gamma):
    return gamma.value if isinstance(gamma, GammaHolder) else gamma


class AbsWeights:
    """``|W|`` (and ``|b|``) per parameter, computed once and reused while it is unchanged.

    An entry is keyed by the tensor's memory, shape and strides (the attention swap makes new views of the same
    weights on every call) and recomputed when the tensor's ``_version`` moves, as any in-place update does
    (``load_state_dict``, an optimizer step, ``copy_`` under ``no_grad``). Writes through ``.data`` bypass that
    counter: do not modify the model that way while the cache is in use. An entry holds its tensor, so the memory
    cannot be reused by another tensor while the cache lives; drop the cache when done (the Explainer does).
    """

    def __init__(self):
        self._entries = {}

    def __call__(self, t):
        if t is None:
            return None
        key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, t.device)
        hit = self._entries.get(key)
        if hit is not None and hit[1] == t._version:
            return hit[2]
        absolute = t.detach().abs()
        self._entries[key] = (t.detach(), t._version, absolute)
        return absolute

    def __len__(self):
        return len(self._entries)


def _absolute(t, abs_weights):
    if t is None:
        return None
    return abs_weights(t) if abs_weights is not None else t.detach().abs()


def absolute_output(x, weight, bias, abs_weights=None):
    """``A + |b| = |x||W|ᵀ + |b|`` for a Linear or a patch-embedding conv (``weight.ndim == 4``, kernel = stride)."""
    return _absolute_product(x, _absolute(weight, abs_weights), _absolute(bias, abs_weights))


def _absolute_product(x, w_abs, b_abs):
    # a contiguous |x|: a Linear after attention gets a token-major view, which F.linear would multiply as a
    # batched product with the weight expanded per image (slower than one matrix product)
    x_abs = torch.abs(x, out=torch.empty_like(x, memory_format=torch.contiguous_format))
    if w_abs.ndim == 4:
        return F.conv2d(x_abs, w_abs, b_abs, stride=w_abs.shape[-2:])
    return F.linear(x_abs, w_abs, b_abs)


def _output_factors(z, absolute, grad_out, gamma, mm_dtype):
    """``(c₁S, c₁D)`` in ``mm_dtype`` (``D`` is ``None`` at γ = 0, where it is not needed)."""
    f32 = torch.promote_types(z.dtype, torch.float32)  # element-wise steps never below float32
    c1, c2 = 1 + gamma / 2, gamma / 2
    zf = z.to(f32)
    z_abs = zf.abs()
    if c2:
        m = torch.add(z_abs, absolute, alpha=c2 / c1).add_(ZENNIT_EPS / c1)  # (m + ε) / c₁
    else:
        m = z_abs + ZENNIT_EPS
    t = torch.div(grad_out, m, out=m)  # c₁ g / (m + ε), in place of m
    s = torch.mul(t, z_abs, out=z_abs) if mm_dtype == f32 else (t * z_abs).to(mm_dtype)
    if not c2:
        return s, None
    return s, (t.mul_(zf) if mm_dtype == f32 else (t * zf).to(mm_dtype))


def _input_gradient(x, sw, dw, gamma):
    """``(c₁|x| ⊙ SW + c₂ x ⊙ D|W|) / (|x| + ε)`` from ``sw = c₁SW``, ``dw = c₁D|W|`` (``None`` at γ = 0)."""
    f32 = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(f32)
    x_abs = xf.abs()
    grad = sw.mul_(x_abs) if sw.dtype == f32 else torch.mul(sw, x_abs)  # sw is a fresh product: reuse it
    if dw is not None:
        grad.addcmul_(dw, xf, value=(gamma / 2) / (1 + gamma / 2))
    return grad.div_(x_abs.add_(LXT_EPS)).to(x.dtype)


def _linear_rule(x, weight, w_abs, z, absolute, grad_out, gamma):
    s, d = _output_factors(z, absolute, grad_out, gamma, x.dtype)
    return _input_gradient(x, s @ weight, d @ w_abs if d is not None else None, gamma)


def _patch_conv_rule(x, weight, w_abs, z, absolute, grad_out, gamma):
    k = weight.shape[-2:]
    rest = (x.shape[-2] - z.shape[-2] * k[0], x.shape[-1] - z.shape[-1] * k[1])  # pixels beyond the last patch

    def product(t, w):  # t [B, out, h, w] → Σ_o t·w on each patch's pixels, [B, C, H, W]
        b, o, h, w_ = t.shape  # one matrix product (conv_transpose2d is several times slower on the CPU)
        y = t.permute(0, 2, 3, 1).reshape(-1, o) @ w.reshape(o, -1)
        y = y.view(b, h, w_, w.shape[1], *k).permute(0, 3, 1, 4, 2, 5).reshape(b, w.shape[1], h * k[0], w_ * k[1])
        return F.pad(y, (0, rest[1], 0, rest[0])) if any(rest) else y

    s, d = _output_factors(z, absolute, grad_out, gamma, x.dtype)
    return _input_gradient(x, product(s, weight), product(d, w_abs) if d is not None else None, gamma)


def _rule_inputs(x, weight, bias, gamma, absolute, abs_weights):
    """``|W|`` and ``|x||W|ᵀ + |b|`` where γ needs them."""
    if not gamma:
        return None, None
    w_abs = _absolute(weight, abs_weights)
    if absolute is None:
        absolute = _absolute_product(x, w_abs, _absolute(bias, abs_weights))
    return w_abs, absolute


def gamma_input_gradient(x, weight, bias, z, grad_out, gamma, absolute=None, abs_weights=None):
    """The Gamma rule's gradient at the input of ``z = x @ weight.T + bias`` (``x [..., in]``, ``z [..., out]``).

    ``absolute``: :func:`absolute_output` of this forward if already known; ``abs_weights``: an :class:`AbsWeights`.
    """
    w_abs, absolute = _rule_inputs(x, weight, bias, gamma, absolute, abs_weights)
    return _linear_rule(x, weight, w_abs, z, absolute, grad_out, gamma)


def patch_conv_input_gradient(x, weight, bias, z, grad_out, gamma, absolute=None, abs_weights=None):
    """The Gamma rule's gradient at the input of a patch-embedding conv (kernel = stride): a Linear on patches.
    Arguments as :func:`gamma_input_gradient`."""
    w_abs, absolute = _rule_inputs(x, weight, bias, gamma, absolute, abs_weights)
    return _patch_conv_rule(x, weight, w_abs, z, absolute, grad_out, gamma)


class _GammaRule(torch.autograd.Function):
    """Forward: the layer itself (``nn.Linear``, or a Conv2d whose kernel equals its stride, i.e. ViT's patch
    embedding, which is a Linear on patches) and ``|x||W|ᵀ + |b|``; backward: the Gamma rule's input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma, abs_weights):
        conv = weight.ndim == 4
        z = F.conv2d(x, weight, bias, stride=weight.shape[-2:]) if conv else F.linear(x, weight, bias)
        w_abs = absolute = None
        if ctx.needs_input_grad[0] and (isinstance(gamma, GammaHolder) or gamma):  # a fixed γ = 0 needs neither
            w_abs, absolute = _rule_inputs(x, weight, bias, True, None, abs_weights)
        ctx.save_for_backward(x, weight, w_abs, z, absolute)
        ctx.gamma = gamma
        return z

    @staticmethod
    def backward(ctx, grad_out):
        rule = _patch_conv_rule if ctx.saved_tensors[1].ndim == 4 else _linear_rule
        return rule(*ctx.saved_tensors, grad_out, _gamma_of(ctx.gamma)), None, None, None, None


def _is_patch_conv(m):
    return (m.kernel_size == m.stride and m.padding in (0, (0, 0)) and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


@contextmanager
def gamma_rules(module_gammas, abs_weights=None):
    """Route ``{module: γ}`` (``nn.Linear`` and patch-embedding ``nn.Conv2d``) through the fused Gamma rule.

    γ is a number or a :class:`GammaHolder` (read at backward time). ``abs_weights``: an :class:`AbsWeights` kept
    across calls (e.g. for as long as an Explainer is open); without one, ``|W|`` is recomputed per forward."""
    patched = []
    try:
        for module, gamma in module_gammas.items():
            if not (isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and _is_patch_conv(module)):
                raise ValueError(f"the fused Gamma rule supports nn.Linear and patch-embedding nn.Conv2d, "
                                 f"not {module}")

            def forward(x, _m=module, _g=gamma if isinstance(gamma, GammaHolder) else float(gamma)):
                return _GammaRule.apply(x, _m.weight, _m.bias, _g, abs_weights)

            module.forward = forward
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward



def zennit_gamma(gamma, dtype):
    """zennit's ``Gamma(gamma)`` rule (``impl='zennit'``) for a model in ``dtype``; below float32 it re-runs its layer
    in float32.

    Why: zennit divides by sums of separately rounded products (for ``z > 0``: ``x⁺(W + γW⁺)ᵀ + b + x⁻(W + γW⁻)ᵀ``,
    i.e. ``z + γ(P + b⁺)``); in bf16 (8 significant bits) their rounding error exceeds ``|z|`` wherever the γ term does
    not dominate it — at γ = 0 everywhere, at γ = 0.001 still often — so denominators get the wrong sign or come near
    zero and the maps turn to noise (cosine to the fp32 map below 0.3). The fused rule divides by ``c₁|z| + c₂A`` with
    the forward's own ``z``: no such cancellation. In float32 the five re-runs and their quotients are exact to
    ~1e-7; the relevance passed on is cast back to ``dtype``.
    """
    from zennit.core import ParamMod
    from zennit.rules import Gamma

    class Float32Params(ParamMod):
        """zennit's parameter modifier ``inner``, its modified parameters (zeroed ones too) as float32 copies."""

        def __init__(self, inner):
            super().__init__(inner.modifier, inner.param_keys, inner.zero_params, inner.require_params)

        @contextmanager
        def __call__(self, module):
            with super().__call__(module) as modified:
                own = dict(modified.named_parameters(recurse=False))
                try:
                    for key, param in own.items():
                        setattr(modified, key, nn.Parameter(param.detach().float()))
                    yield modified
                finally:
                    for key, param in own.items():
                        setattr(modified, key, param)

    rule = Gamma(gamma)
    if torch.promote_types(dtype, torch.float32) != dtype:
        rule.input_modifiers = [lambda x, f=f: f(x.float()) for f in rule.input_modifiers]
        rule.param_modifiers = [Float32Params(ParamMod.ensure(p)) for p in rule.param_modifiers]
        rule.reducer = lambda inputs, grads, f=rule.reducer: f(inputs, grads).to(dtype)
    return rule
