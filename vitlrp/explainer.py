"""The γ-LRP method: AttnLRP (LXT) plus zennit's Gamma rule, batched, attached only while explaining.

Where γ acts: a rule acts on a module only when the module is *called*. Everything architecture-specific comes
from the model's family (:func:`vitlrp.families.family_of`: torchvision's ViT, timm's ``VisionTransformer``,
Hugging Face's ViT/DeiT): by default γ reaches the patch embedding (the Conv2d γ), the two MLP linears of each
block and the head only, as on torchvision's ViT, whose attention applies the projections through ``F.linear``;
with ``GammaSpec.attention`` the attention projections too (torchvision's family routes them through
``nn.Linear`` modules; timm and Hugging Face call theirs as modules already). Because AttnLRP's CP-LRP variant
stops relevance at the query and key, γ there reaches the value and output projections.
:meth:`Explainer.gamma_layers` reports the layers γ really acted on. The γ values and per-block schedules are
:class:`vitlrp.gamma.GammaSpec`'s; the rule itself is :mod:`vitlrp.gammarule`'s (``impl='fused'``) or zennit's.
"""
import copy
from contextlib import ExitStack, contextmanager

import torch

from .families import family_of
from .families.attnlrp import ZENNIT
from .gamma import GammaSpec
from .gammarule import AbsWeights, GammaHolder, absolute_output, gamma_rules, patch_conv_input_gradient, zennit_gamma
from .protocol import Attribution, Method, input_times_grad, target_index


class Explainer(Method):
    """AttnLRP (LXT) with zennit's Gamma rule on a model of a registered family (torchvision, timm, Hugging Face).

    Use as a context manager; inside, ``explainer.attribute(images, target)`` returns an
    :class:`~vitlrp.protocol.Attribution` whose ``relevance`` is the ``[B, H, W]`` pixel relevance (channels
    summed; float32, or float64 for a float64 ``dtype``) of ``target`` (one class per row, one class for all rows,
    or ``None`` for the predicted class). LXT's patches and the rules are attached for the forward and the backward
    of each batch and removed after it, so plain forwards in between run the original model.

    ``gamma``: a :class:`~vitlrp.gamma.GammaSpec` or what :meth:`GammaSpec.parse` takes (``'balanced'``,
    ``'gamma:1:linear:0.5:0+attn'``, ``(1.0, 0.5)``). ``settings``: a
    :class:`~vitlrp.protocol.MethodSettings`: ``dtype`` (``torch.bfloat16``: a pure-bf16 copy of the model;
    autocast breaks zennit) and ``impl`` (``'fused'``, fewer matrix products, or ``'zennit'``'s reference hooks:
    the same maps).
    """

    patched = True

    def __init__(self, model, gamma="balanced", settings=None):
        super().__init__(model, settings)
        self.gamma = GammaSpec.parse(gamma)
        self.name = self.gamma.name
        self.dtype, self.impl = self.settings.dtype, self.settings.impl
        self._open, self._lrp_model = False, None
        self._acted = {}
        self._abs_weights = None

    def __enter__(self):
        self.family = family_of(self.model)
        self.device = next(self.model.parameters()).device
        self._open = True
        self._abs_weights = AbsWeights()  # fused rule: |W| once per context, not per call (dropped at exit)
        return self

    def __exit__(self, *exc):
        self._open, self._lrp_model = False, None
        self._abs_weights = None
        return False

    @property
    def lrp_model(self):
        """The model the rules run on, in eval mode: the model itself, or a pure-``dtype`` copy made on first use
        (methods that share one Explainer's forward never copy); None outside the ``with`` block."""
        if self._open and self._lrp_model is None:
            param = next(self.model.parameters())
            self._lrp_model = self.model if param.dtype == self.dtype else copy.deepcopy(self.model).to(self.dtype)
            self._lrp_model.eval()
        return self._lrp_model

    @contextmanager
    def lrp_context(self, attention):
        """The family's LRP patches (and the attention swap) for one batch; the process is plain outside."""
        with ExitStack() as stack:
            stack.enter_context(self.family.lrp_patched(self.lrp_model))
            if attention:
                stack.enter_context(self.family.attention_as_linear(self.lrp_model))
            yield

    def rule_map(self, gamma):
        """module name → (module, γ) for every module the Gamma rule goes on (call inside :meth:`lrp_context`): the
        patch embedding gets the Conv2d γ, every other module its block's Linear γ (the last block's outside them)."""
        model, family = self.lrp_model, self.family
        blocks = family.blocks(model)
        lin = gamma.lin_values(max(len(blocks), 1))
        block_of = {id(m): i for i, block in enumerate(blocks) for m in block.modules()}
        embedding = family.patch_embedding(model)
        return {name: (module, gamma.conv if module is embedding else lin[block_of.get(id(module), len(lin) - 1)])
                for name, module in family.gamma_modules(model, gamma.attention).items()}

    @contextmanager
    def rules_attached(self, gamma, holders=None):
        """Attach the rules of ``gamma`` (and a probe noting which modules they act on) for one forward + backward.

        ``holders`` (fused only): module name → :class:`~vitlrp.gammarule.GammaHolder`, read at backward time.
        """
        rules = self.rule_map(gamma)

        def probe(name):
            def hook(module, args):
                if args and torch.is_tensor(args[0]) and args[0].requires_grad:
                    self._acted[name] = type(module).__name__
            return hook

        handles = [module.register_forward_pre_hook(probe(name)) for name, (module, _) in rules.items()]
        try:
            if self.impl == "zennit":
                from zennit.core import Composite

                by_gamma = {g: zennit_gamma(g, self.dtype) for _, g in rules.values()}
                composite = Composite(module_map=lambda ctx, name, module: by_gamma[rules[name][1]]
                                      if name in rules else None)
                with ZENNIT.applied(), composite.context(self.lrp_model):  # zennit's hooks in LXT's convention
                    yield
            else:
                with gamma_rules({m: holders[n] if holders else g for n, (m, g) in rules.items()},
                                 self._abs_weights):  # the context's |W| cache
                    yield
        finally:
            for h in handles:
                h.remove()

    def _input(self, images):
        if self.lrp_model is None:
            raise RuntimeError("use the Explainer inside a `with` block")
        # detach: a fresh leaf, so the caller's tensor is not switched to requires_grad as a side effect
        return images.detach().to(self.device, self.dtype).requires_grad_(True)

    def out_dtype(self):
        return torch.promote_types(self.dtype, torch.float32)  # bf16 → float32; float64 stays float64

    def _attribute_one(self, images, target, gamma):
        x = self._input(images)
        with self.lrp_context(gamma.attention), torch.enable_grad(), self.rules_attached(gamma):
            logits = self.family.logits(self.lrp_model(x))
            target = target_index(logits, target)
            (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), x)
        return Attribution(logits.detach().to(self.out_dtype()), input_times_grad(x, grad, self.out_dtype()),
                           target.reshape(-1))

    def attribute(self, x, target=None, ids=None):
        return self._attribute_one(x, target, self.gamma)

    def attribute_many(self, x, targets, ids=None):
        """One forward for every choice of classes in ``targets`` (fused; zennit explains each separately)."""
        return self.attribute_gammas(x, targets, [self.gamma])[0]

    @classmethod
    def attribute_together(cls, methods, x, targets, ids=None):
        """Every γ-LRP method of a batch from one forward per attention setting (:meth:`attribute_gammas`): the rule
        acts only in the backward, so the forward, and the backward down to the patch embedding of every setting with
        the same Linear γ, are shared by all the methods and classes. Methods on another model, dtype or
        implementation run apart."""
        groups = {}
        for k, m in enumerate(methods):
            groups.setdefault((id(m.model), m.dtype, m.impl), []).append(k)
        out = [None] * len(methods)
        for members in groups.values():
            lead = methods[members[0]]
            for k, results in zip(members, lead.attribute_gammas(x, targets, [methods[k].gamma for k in members])):
                out[k] = results
        return out

    def attribute_gammas(self, x, targets, gammas):
        """The maps of several γ settings of one batch for every choice of classes in ``targets`` (each a ``[B]``
        tensor, one class, or None for the prediction): a list per setting of one
        :class:`~vitlrp.protocol.Attribution` per choice. With ``impl='fused'`` one forward serves every setting
        with the same ``attention`` and every class; ``zennit`` explains each separately. The maps equal separate
        calls of :meth:`attribute`."""
        gammas = [GammaSpec.parse(g) for g in gammas]
        out = [None] * len(gammas)
        by_attention = {}
        for k, g in enumerate(gammas):
            by_attention.setdefault(g.attention, []).append(k)
        for members in by_attention.values():
            chosen = [gammas[k] for k in members]
            if self.impl == "fused":
                results = self._fused_gammas(self._input(x), targets, chosen)
            else:
                results = [[self._attribute_one(x, t, g) for t in targets] for g in chosen]
            for k, r in zip(members, results):
                out[k] = r
        return out

    def _fused_gammas(self, x, targets, gammas):
        """The fused rule's :meth:`attribute_gammas` for settings that share their ``attention``, from one forward of
        the input leaf ``x``: the graph is kept and the Linear γ are changed between backwards
        (:class:`~vitlrp.gammarule.GammaHolder`); the backward down to the patch embedding's output is shared by all
        settings with the same Linear γ, and each Conv2d γ only re-runs the patch embedding's rule
        (:func:`~vitlrp.gammarule.patch_conv_input_gradient`)."""
        out_dtype = self.out_dtype()
        groups = {}  # Linear γ → [(index in gammas, conv γ)]
        for k, g in enumerate(gammas):
            groups.setdefault(g.lin, []).append((k, g.conv))
        maps = [[None] * len(gammas) for _ in targets]
        with self.lrp_context(gammas[0].attention), torch.enable_grad():
            holders = {name: GammaHolder() for name in self.rule_map(gammas[0])}
            logits, z, conv = self._forward_keeping_patch_output(x, gammas[0], holders)
            if conv is not None:  # the conv rule's |x||W|ᵀ + |b|, once for every conv γ and class below
                conv_abs = absolute_output(x.detach(), conv.weight.detach(), conv.bias, self._abs_weights)
            steps = [(t, lin, cells) for t in range(len(targets)) for lin, cells in groups.items()]
            for n, (t, lin, cells) in enumerate(steps):
                score = logits.gather(1, target_index(logits, targets[t])).sum()
                last = n == len(steps) - 1
                if conv is None:  # no single patch embedding on the input: one backward per setting
                    for i, (k, conv_gamma) in enumerate(cells):
                        self._set_gammas(holders, GammaSpec(conv_gamma, lin, gammas[0].attention))
                        (grad,) = torch.autograd.grad(score, x, retain_graph=not (last and i == len(cells) - 1))
                        maps[t][k] = input_times_grad(x, grad, out_dtype)
                    continue
                self._set_gammas(holders, GammaSpec(cells[0][1], lin, gammas[0].attention))
                (grad_z,) = torch.autograd.grad(score, z, retain_graph=not last)
                for k, conv_gamma in cells:
                    grad = patch_conv_input_gradient(x.detach(), conv.weight.detach(), None, z.detach(), grad_z,
                                                     conv_gamma, conv_abs, self._abs_weights)
                    maps[t][k] = input_times_grad(x, grad, out_dtype)
        logits = logits.detach().to(out_dtype)
        chosen = [target_index(logits, t).reshape(-1) for t in targets]
        return [[Attribution(logits, maps[t][k], chosen[t]) for t in range(len(targets))] for k in range(len(gammas))]

    def _set_gammas(self, holders, gamma):
        for name, (_, value) in self.rule_map(gamma).items():
            holders[name].value = value

    def _forward_keeping_patch_output(self, x, gamma, holders):
        """The forward with the rules attached; ``(logits, patch-embedding output, its conv)`` — the last two None
        unless the patch embedding is applied to the input itself (the backward can then stop at its output)."""
        conv, seen = self.family.patch_embedding(self.lrp_model), {}

        def keep_output(module, args, out):
            if args[0] is x:
                seen["z"] = out

        hook = conv.register_forward_hook(keep_output)
        try:
            with self.rules_attached(gamma, holders):
                logits = self.family.logits(self.lrp_model(x))
        finally:
            hook.remove()
        return logits, seen.get("z"), conv if "z" in seen else None

    def gamma_layers(self):
        """Names → types of the modules the Gamma rule acted on so far (a dry run on a blank image if none yet)."""
        if not self._acted:
            size = self.family.image_size(self.lrp_model)
            self.attribute(torch.zeros(1, 3, size, size, device=self.device))
        return dict(self._acted)

    def lin_gammas(self):
        """The Linear γ of each encoder block (the head gets the last one)."""
        return self.gamma.lin_values(max(len(self.family.blocks(self.lrp_model)), 1))
