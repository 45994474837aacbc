"""Grad-CAM for a ViT (pytorch-grad-cam's ``GradCAM``) on the last block's ``ln_1`` output: the tokens entering the
last attention, class token dropped and the patch tokens laid out on their grid. The package computes the channel
weights (token-averaged gradients) and the weighted sum; the ReLU'd map keeps its scale (no per-image min-max
scaling) and is upsampled bilinearly (:func:`vitlrp.protocol.upsample_patches`).
"""
import torch

from ..protocol import Method, target_index, upsample_patches
from .registry import register


@register("gradcam", "cam", "Grad-CAM on the last block's first LayerNorm (patch tokens), ReLU'd")
class GradCAM(Method):
    """Grad-CAM on ``encoder.layers[-1].ln_1``: ``(logits, relevance [B, H, W])``, relevance ≥ 0."""

    packages = (("pytorch_grad_cam", "grad-cam"),)
    signed = False

    def compute(self, x, target, ids):
        from pytorch_grad_cam import GradCAM as PackageGradCAM

        model = self.model
        grid = model.image_size // model.patch_size

        def tokens_to_grid(t):  # [B, 1 + grid², D] → [B, D, grid, grid], the class token dropped
            return t[:, 1:, :].reshape(t.shape[0], grid, grid, t.shape[2]).permute(0, 3, 1, 2)

        layer = model.encoder.layers[-1].ln_1
        cam = PackageGradCAM(model, [layer], reshape_transform=tokens_to_grid)  # hooks on ln_1 until release()
        try:
            # a fresh leaf that requires grad: the backward passes ln_1 (whose tensor hook stores the gradient)
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
