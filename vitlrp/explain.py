"""AttnLRP for torchvision ViTs: LXT's patches plus zennit's Gamma rule, batched, attached only while explaining.

Where γ acts: zennit's ``LayerMapComposite`` hooks modules, and a hook only fires when the module is *called*.
torchvision's ``MultiheadAttention`` applies ``in_proj_weight`` and ``out_proj.weight`` through ``F.linear``,
so LIN_GAMMA reaches ``conv_proj`` (CONV_GAMMA), the two MLP linears of each block and ``heads.head`` only;
the attention projections get LRP-0 unless ``gamma_attention=True`` routes them through ``nn.Linear`` modules
(:func:`vitlrp.lxtpatch.attention_as_linear`). Because AttnLRP's CP-LRP variant stops relevance at the query and
key, γ there reaches the value and output projections. :meth:`Explainer.gamma_layers` reports the layers γ really
acted on. The γ values and per-block schedules are :mod:`vitlrp.gamma`'s.
"""
import copy
from contextlib import contextmanager

import torch

from .gamma import check_gamma, encoder_blocks, lin_gamma_value, module_gammas, schedule_text, schedule_values
from .lxtpatch import attention_as_linear, lxt_patched

IMPLS = ("fused", "zennit")  # the Gamma rule's implementations: the same maps (fused: fewer matmuls, no hooks)
DEFAULT_IMPL = "fused"


class Explainer:
    """AttnLRP (LXT) with zennit's Gamma rule on a torchvision ``VisionTransformer``.

    Use as a context manager; inside, ``explainer(images, target)`` returns ``(logits, relevance)`` with
    ``relevance`` the ``[B, H, W]`` pixel relevance (channels summed; float32, or float64 for a float64 ``dtype``)
    of ``target`` (one class per row, or one class for all rows; ``None`` = the predicted class). LXT's patches and
    the rules are attached for the forward and the backward of each batch and removed after it, so plain forwards
    in between run the original model.

    Parameters
    ----------
    model: torchvision VisionTransformer (eval mode).
    conv_gamma, lin_gamma: γ of the Gamma rule for ``nn.Conv2d`` and ``nn.Linear`` modules; ``lin_gamma`` may be a
        per-block schedule (:func:`vitlrp.gamma.parse_schedule`: a list, ``'0.5/0.3/0.1/0'``, ``'linear:0.5:0'``).
    gamma_attention: route the attention projections through ``nn.Linear`` so that ``lin_gamma`` reaches them.
    dtype: ``torch.float32``, or ``torch.bfloat16`` for a pure-bf16 copy of the model (autocast breaks zennit).
    impl: ``'fused'`` (:mod:`vitlrp.fastgamma`, fewer matmuls) or ``'zennit'`` (the reference hooks); same maps.
    """

    def __init__(self, model, conv_gamma=1.0, lin_gamma=0.5, gamma_attention=False, dtype=torch.float32,
                 impl=DEFAULT_IMPL):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.model = model
        self.conv_gamma = check_gamma("conv_gamma", conv_gamma)
        self.lin_gamma = lin_gamma_value(lin_gamma)
        self.gamma_attention = gamma_attention
        self.dtype = dtype
        self.impl = impl
        self.lrp_model = None
        self._acted = {}

    def __enter__(self):
        param = next(self.model.parameters())
        self.device = param.device
        self.lrp_model = self.model if param.dtype == self.dtype else copy.deepcopy(self.model).to(self.dtype)
        self.lrp_model.eval()
        from .fastgamma import AbsWeights

        self._abs_weights = AbsWeights()  # fused rule: |W| once per context, not per call (dropped at exit)
        return self

    def __exit__(self, *exc):
        self.lrp_model = None
        self._abs_weights = None
        return False

    @contextmanager
    def patched(self):
        """LXT's patches (and the attention swap) for the duration of one batch; the process is plain outside."""
        with lxt_patched():
            if self.gamma_attention:
                with attention_as_linear(self.lrp_model):
                    yield
            else:
                yield

    def rule_map(self, conv_gamma=None, lin_gamma=None):
        """module name → (module, γ) for every module the Gamma rule is registered on."""
        return module_gammas(self.lrp_model, self.conv_gamma if conv_gamma is None else conv_gamma,
                             self.lin_gamma if lin_gamma is None else lin_gamma)

    @contextmanager
    def rules_attached(self, holders=None):
        """Attach the rules (and a probe noting which modules they act on) for one forward + backward.

        ``holders`` (fused only): module name → :class:`~vitlrp.fastgamma.GammaHolder`, read at backward time.
        """
        rules = self.rule_map()

        def probe(name):
            def hook(module, args):
                if args and torch.is_tensor(args[0]) and args[0].requires_grad:
                    self._acted[name] = type(module).__name__
            return hook

        handles = [module.register_forward_pre_hook(probe(name)) for name, (module, _) in rules.items()]
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

    def _input(self, images):
        if self.lrp_model is None:
            raise RuntimeError("use the Explainer inside a `with` block")
        # detach: a fresh leaf, so the caller's tensor is not switched to requires_grad as a side effect
        return images.detach().to(self.device, self.dtype).requires_grad_(True)

    def out_dtype(self):
        return torch.promote_types(self.dtype, torch.float32)  # bf16 → float32; float64 stays float64

    def __call__(self, images, target=None):
        x = self._input(images)
        with self.patched(), torch.enable_grad(), self.rules_attached():
            logits = self.lrp_model(x)
            target = target_index(logits, target)
            (grad,) = torch.autograd.grad(logits.gather(1, target).sum(), x)
        return logits.detach().to(self.out_dtype()), input_times_grad(x, grad, self.out_dtype())

    def explain_many(self, images, target, settings, also=()):
        """Maps for several γ settings of the same batch: ``(logits, relevance [K, B, H, W])``, followed by the
        relevance for each further choice of classes in ``also`` (e.g. a random other class per image).

        ``settings`` is a list of ``(conv_gamma, lin_gamma)`` (``lin_gamma`` a number or schedule). The rule acts
        only in the backward, so with ``impl='fused'`` one forward serves every setting and class (see
        :func:`vitlrp.fastgamma.explain_settings`); ``zennit`` explains each separately. The maps equal separate
        calls.
        """
        settings = [(check_gamma("conv_gamma", c), schedule_text(lin)) for c, lin in settings]
        targets = [target, *also]
        if self.impl == "fused":
            from .fastgamma import explain_settings

            logits, maps = explain_settings(self, self._input(images), targets, settings)
        else:
            saved = self.conv_gamma, self.lin_gamma
            try:
                maps = [[] for _ in targets]
                for self.conv_gamma, self.lin_gamma in settings:
                    for t, chosen in enumerate(targets):
                        logits, rel = self(images, chosen)
                        maps[t].append(rel)
            finally:
                self.conv_gamma, self.lin_gamma = saved
            maps = torch.stack([torch.stack(m) for m in maps])
        return (logits, *maps)

    def gamma_layers(self):
        """Names → types of the modules the Gamma rule acted on so far (a dry run on a blank image if none yet)."""
        if not self._acted:
            size = self.lrp_model.image_size
            self(torch.zeros(1, 3, size, size, device=self.device))
        return dict(self._acted)

    def lin_gammas(self):
        """The Linear γ of each encoder block (the head gets the last one)."""
        return schedule_values(self.lin_gamma, max(len(encoder_blocks(self.lrp_model)), 1))


def input_times_grad(x, grad, dtype=torch.float32):
    """``[B, H, W]`` relevance: input × gradient summed over colour channels, in ``dtype``."""
    return (x.detach().to(dtype) * grad.to(dtype)).sum(1)


def target_index(logits, target):
    """``[B, 1]`` class indices for ``gather``: ``None`` = the argmax, a single class is used for every row."""
    if target is None:
        return logits.argmax(1, keepdim=True)
    target = torch.as_tensor(target, device=logits.device).reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if target.numel() != logits.shape[0]:
        raise ValueError(f"target has {target.numel()} entries for a batch of {logits.shape[0]}")
    return target.reshape(-1, 1)

