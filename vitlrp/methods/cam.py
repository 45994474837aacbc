"""Grad-CAM for a ViT (pytorch-grad-cam's ``GradCAM``) on the family's ``gradcam_layer``, the last block's first
LayerNorm (torchvision's ``ln_1``, timm's ``norm1``, Hugging Face's ``layernorm_before``): the tokens entering the
last attention, the tokens before the patch grid (class, register, distillation tokens) dropped and the patch
tokens laid out on their grid. The package computes the channel weights (token-averaged gradients) and the weighted
sum; the ReLU'd map keeps its scale (no per-image min-max scaling) and is upsampled bilinearly
(:func:`vitlrp.protocol.upsample_patches`).
"""
import torch

from ..families import family_of
from ..protocol import Method, target_index, upsample_patches
from .registry import register


class _Logits(torch.nn.Module):
    """The model with its family's logits as the output (the package calls the model and reads a tensor)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.family = model, family_of(model)

    def forward(self, x):
        return self.family.logits(self.model(x))


@register("gradcam", "cam", "Grad-CAM on the last block's first LayerNorm (patch tokens), ReLU'd")
class GradCAM(Method):
    """Grad-CAM on the last block's first LayerNorm: ``(logits, relevance [B, H, W])``, relevance ≥ 0."""

    packages = (("pytorch_grad_cam", "grad-cam"),)
    signed = False

    def compute(self, x, target, ids):
        from pytorch_grad_cam import GradCAM as PackageGradCAM

        model, family = self.model, family_of(self.model)
        grid = family.image_size(model) // family.patch_size(model)
        first = family.prefix_tokens(model)

        def tokens_to_grid(t):  # [B, prefix + grid², D] → [B, D, grid, grid], the prefix tokens dropped
            return t[:, first:, :].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)

        layer = family.gradcam_layer(model)
        cam = PackageGradCAM(_Logits(model), [layer], reshape_transform=tokens_to_grid)  # hooks until release()
        try:
            # a fresh leaf that requires grad: the backward passes the layer (whose tensor hook stores the gradient)
            # without touching the parameters' .grad
            leaf = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = cam.activations_and_grads(leaf)
                torch.autograd.grad(logits.gather(1, target_index(logits, target)).sum(), leaf)
            acts = cam.activations_and_grads.activations[0].float().numpy()
            grads = cam.activations_and_grads.gradients[0].float().numpy()
            weighted = cam.get_cam_image(leaf, layer, None, acts, grads)  # [B, grid, grid]: Σ_c mean(∂y/∂A_c)·A_c
        finally:
            cam.activations_and_grads.release()
        patch = torch.from_numpy(weighted).to(x.device).clamp(min=0)
        return logits, upsample_patches(patch.flatten(1), model)
