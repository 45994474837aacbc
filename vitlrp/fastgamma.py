"""zennit's generalized Gamma rule in LXT's Input×Gradient convention, with fewer matmuls and no hooks.

zennit re-runs each hooked layer five times in the backward and differentiates all five. With ``z = xWᵀ + b``
from the forward, ``x⁺ = max(x, 0)``, ``x⁻ = min(x, 0)`` (likewise ``W⁺, W⁻, b⁺, b⁻``) and the relevance at the
output ``R = g ⊙ z`` (LXT's convention, ``g`` the incoming gradient), the same numbers are:

- ``P = x⁺W⁺ᵀ + x⁻W⁻ᵀ`` (one matmul of ``[x⁺, x⁻]`` with ``[W⁺, W⁻]``), ``Q = (z − b) − P``
- ``d⁺ = z + γP + γb⁺`` where ``z > 0``, ``d⁻ = z + γQ + γb⁻`` where ``z < 0`` (stabilised as zennit does)
- ``s± = [z ≷ 0] R / d±``, ``S = s⁺ + s⁻``; ``U = s⁺W⁺ + s⁻W⁻`` (one matmul), ``V = SW − U``
- input relevance ``x ⊙ SW + γ (x⁺ ⊙ U + x⁻ ⊙ V)``; the returned gradient is that divided by ``x`` (stabilised).

That is 1 + 2 + 3 matmul units per layer instead of 11. Element-wise steps run in (at least) float32, matmuls in
the model's dtype.
The forward is the layer's own (``F.linear`` / ``F.conv2d``), so logits are unchanged.
"""
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ZENNIT_EPS = 1e-6  # zennit's default stabilizer of the rule's denominators
LXT_EPS = 1e-10    # LXT's stabilizer when dividing the input relevance by the input


def _stabilize(t, eps):
    """``t + eps * sign(t)`` with sign(0) = +1, as zennit's ``stabilize``."""
    return t + eps * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def gamma_input_gradient(x, weight, bias, z, grad_out, gamma):
    """The Gamma rule's gradient at the input of ``z = x @ weight.T + bias`` (2-D ``x [N, in]``, ``z [N, out]``)."""
    f32 = torch.promote_types(x.dtype, torch.float32)  # element-wise steps never below float32
    mm_dtype = x.dtype
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    p = torch.cat([xp, xn], 1) @ torch.cat([wp, wn], 1).T
    zf = z.to(f32)
    b = bias.to(f32) if bias is not None else torch.zeros((), dtype=f32, device=x.device)
    q = (zf - b) - p.to(f32)
    rel = grad_out.to(f32) * zf
    s_pos = torch.where(zf > 0, rel / _stabilize(zf + gamma * (p.to(f32) + b.clamp(min=0)), ZENNIT_EPS), 0.0)
    s_neg = torch.where(zf < 0, rel / _stabilize(zf + gamma * (q + b.clamp(max=0)), ZENNIT_EPS), 0.0)
    s = s_pos + s_neg
    sw = (s.to(mm_dtype) @ weight).to(f32)
    u = (torch.cat([s_pos, s_neg], 1).to(mm_dtype) @ torch.cat([wp, wn], 0)).to(f32)
    v = sw - u
    xf = x.to(f32)
    rel_in = xf * sw + gamma * (xp.to(f32) * u + xn.to(f32) * v)
    return (rel_in / _stabilize(xf, LXT_EPS)).to(x.dtype)


class GammaHolder:
    """A γ read when the backward runs, not when the forward ran: one forward, then a backward per γ setting
    (``retain_graph=True``), changing ``value`` in between."""

    def __init__(self, value=0.0):
        self.value = float(value)


def _gamma_of(gamma):
    return gamma.value if isinstance(gamma, GammaHolder) else gamma


def patch_conv_input_gradient(x, weight, bias, z, grad_out, gamma):
    """The Gamma rule's gradient at the input of a patch-embedding conv (kernel = stride): a Linear on patches."""
    k = weight.shape[-2:]
    patches = F.unfold(x, k, stride=k).transpose(1, 2)                 # [B, L, C*kh*kw]
    b, out = z.shape[0], z.shape[1]
    z2 = z.flatten(2).transpose(1, 2).reshape(-1, out)                  # [B*L, out]
    g2 = grad_out.flatten(2).transpose(1, 2).reshape(-1, out)
    grad = gamma_input_gradient(patches.reshape(-1, patches.shape[-1]), weight.flatten(1), bias, z2, g2, gamma)
    grad = grad.view(b, -1, patches.shape[-1]).transpose(1, 2)
    return F.fold(grad, x.shape[-2:], k, stride=k)


class _GammaRule(torch.autograd.Function):
    """Forward: the layer itself (``nn.Linear``, or a Conv2d whose kernel equals its stride, i.e. ViT's patch
    embedding, which is a Linear on patches); backward: the Gamma rule's input gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, gamma):
        conv = weight.ndim == 4
        z = F.conv2d(x, weight, bias, stride=weight.shape[-2:]) if conv else F.linear(x, weight, bias)
        ctx.save_for_backward(x, weight, bias, z)
        ctx.gamma = gamma
        return z

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, z = ctx.saved_tensors
        gamma = _gamma_of(ctx.gamma)
        if weight.ndim == 2:
            grad = gamma_input_gradient(x.reshape(-1, x.shape[-1]), weight, bias, z.reshape(-1, z.shape[-1]),
                                        grad_out.reshape(-1, z.shape[-1]), gamma)
            return grad.view(x.shape), None, None, None
        return patch_conv_input_gradient(x, weight, bias, z, grad_out, gamma), None, None, None


def _is_patch_conv(m):
    return (m.kernel_size == m.stride and m.padding in (0, (0, 0)) and m.dilation == (1, 1) and m.groups == 1
            and m.padding_mode == "zeros")


@contextmanager
def gamma_rules(module_gammas):
    """Route ``{module: γ}`` (``nn.Linear`` and patch-embedding ``nn.Conv2d``) through the fused Gamma rule.

    γ is a number or a :class:`GammaHolder` (read at backward time)."""
    patched = []
    try:
        for module, gamma in module_gammas.items():
            if not (isinstance(module, nn.Linear) or isinstance(module, nn.Conv2d) and _is_patch_conv(module)):
                raise ValueError(f"the fused Gamma rule supports nn.Linear and patch-embedding nn.Conv2d, "
                                 f"not {module}")

            def forward(x, _m=module, _g=gamma if isinstance(gamma, GammaHolder) else float(gamma)):
                return _GammaRule.apply(x, _m.weight, _m.bias, _g)

            module.forward = forward
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


def explain_settings(explainer, x, targets, settings):
    """``(logits, relevance [T, K, B, H, W])`` of an entered fused :class:`~vitlrp.explain.Explainer` for each of
    ``targets`` (T class choices: each a ``[B]`` tensor, one class, or None for the prediction) and ``settings``
    (K ``(conv γ, Linear γ text)`` pairs), from one forward of the input leaf ``x``.

    The graph is kept and the Linear γ are changed between backwards (:class:`GammaHolder`); the backward down to
    the patch embedding's output is shared by all settings with the same Linear γ, and each Conv2d γ only re-runs
    the patch embedding's rule (:func:`patch_conv_input_gradient`).
    """
    from .explain import input_times_grad, target_index

    out_dtype = explainer.out_dtype()
    groups = {}  # Linear γ → [(index in settings, conv γ)]
    for k, (conv, lin) in enumerate(settings):
        groups.setdefault(lin, []).append((k, conv))
    maps = [[None] * len(settings) for _ in targets]
    with explainer.patched(), torch.enable_grad():
        rules = explainer.rule_map(*settings[0])
        holders = {name: GammaHolder() for name in rules}
        logits, z, conv = _forward_keeping_patch_output(explainer, x, rules, holders)
        steps = [(t, lin, cells) for t in range(len(targets)) for lin, cells in groups.items()]
        for n, (t, lin, cells) in enumerate(steps):
            score = logits.gather(1, target_index(logits, targets[t])).sum()
            last = n == len(steps) - 1
            if conv is None:  # no single patch embedding on the input: one backward per setting
                for i, (k, conv_gamma) in enumerate(cells):
                    _set_gammas(explainer, holders, conv_gamma, lin)
                    (grad,) = torch.autograd.grad(score, x, retain_graph=not (last and i == len(cells) - 1))
                    maps[t][k] = input_times_grad(x, grad, out_dtype)
                continue
            _set_gammas(explainer, holders, cells[0][1], lin)
            (grad_z,) = torch.autograd.grad(score, z, retain_graph=not last)
            bias = None if conv.bias is None else conv.bias.detach()
            for k, conv_gamma in cells:
                grad = patch_conv_input_gradient(x.detach(), conv.weight.detach(), bias, z.detach(), grad_z,
                                                 conv_gamma)
                maps[t][k] = input_times_grad(x, grad, out_dtype)
    return logits.detach().to(out_dtype), torch.stack([torch.stack(m) for m in maps])


def _set_gammas(explainer, holders, conv_gamma, lin):
    for name, (_, gamma) in explainer.rule_map(conv_gamma, lin).items():
        holders[name].value = gamma


def _forward_keeping_patch_output(explainer, x, rules, holders):
    """The forward with the rules attached; ``(logits, patch-embedding output, its conv)`` — the last two None
    unless exactly one Conv2d is applied to the input itself (the backward can then stop at its output)."""
    convs = [m for m, _ in rules.values() if isinstance(m, nn.Conv2d)]
    seen = {}

    def keep_output(module, args, out):
        if args[0] is x and len(convs) == 1:
            seen["z"] = out

    hooks = [m.register_forward_hook(keep_output) for m in convs]
    try:
        with explainer.rules_attached(holders):
            logits = explainer.lrp_model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen.get("z"), convs[0] if "z" in seen else None
