"""The multi-depth, multi-step UPLiFT objective (in latent space, with an optional pixel term).

For a ground-truth image ``x`` and a depth ``d``, the input image is ``x`` downsampled ``2^d``
times (antialiased bilinear), the input latents are its VAE latents plus Gaussian noise of std
``lat_aug``, and step ``k`` of a ``d``-step run is compared (MSE) with the latents of ``x``
downsampled ``2^(d-k)`` times; the loss is the sum over depths and steps. ``noisy_targets``
keeps the noise in the targets of later depths, as the authors' loop does (it adds it in place):
the expected gradient is the same, the loss gains ``lat_aug**2`` per noisy target.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F


def image_pyramid(images: torch.Tensor, max_depth: int) -> List[torch.Tensor]:
    """``[x, x/2, x/4, ...]`` (``max_depth + 1`` levels), antialiased bilinear downsampling. The
    configuration makes the resolution divisible by ``8 * 2**max_depth``: every level is encodable."""
    height, width = images.shape[-2:]
    levels = [images]
    for level in range(1, max_depth + 1):
        size = (height >> level, width >> level)
        levels.append(F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    return levels


def pixel_loss(
    vae, latents: torch.Tensor, reference: torch.Tensor, target: torch.Tensor, back_projection_steps: int = 0
) -> torch.Tensor:
    """MSE in [0, 1] pixels between ``target`` and ``latents`` decoded by the frozen ``vae``,
    colour-corrected towards ``reference`` (the low-resolution input) and back-projected onto it
    ``back_projection_steps`` rounds, as the pipelines do but unclamped, to stay differentiable."""
    from uplift_diffusers.loaders.vae import decode_latents
    from uplift_diffusers.utils.color_correction import mean_shift, project_to

    decoded = (decode_latents(vae, latents, clamp=False).float() + 1) / 2
    corrected = mean_shift(decoded, reference)
    if back_projection_steps:
        corrected = project_to(corrected, reference, back_projection_steps)
    return F.mse_loss(corrected, target.float())


def multi_depth_loss(
    model,
    latents: Sequence[torch.Tensor],
    images: Sequence[torch.Tensor],
    depths: Sequence[int],
    lat_aug: float = 0.0,
    generator: Optional[torch.Generator] = None,
    vae=None,
    pixel_weight: float = 0.0,
    noisy_targets: bool = False,
    pixel_back_projection: int = 0,
) -> Dict[str, torch.Tensor]:
    """Sum over ``depths`` and steps of the per-step MSE, ``latents[j]`` / ``images[j]`` being
    the VAE latents (unscaled) / pixels in [0, 1] of the image downsampled ``2^j`` times. With
    ``pixel_weight`` > 0, ``pixel_weight`` x :func:`pixel_loss` of each depth's final latents
    against ``images[0]`` is added (latent MSE alone does not track pixel PSNR for every VAE).

    Returns ``loss`` and the detached parts ``loss_depth{d}`` (and ``pixel_depth{d}``).
    """
    if pixel_weight and vae is None:
        raise ValueError("`pixel_weight` > 0 needs the `vae` to decode with.")
    if not depths:
        raise ValueError("`depths` is empty; give at least one depth, e.g. [1, 2].")
    if max(depths) >= len(latents) or min(depths) < 1:
        raise ValueError(f"`depths` {list(depths)} must lie in 1..{len(latents) - 1} for {len(latents)} latent levels.")
    if len(set(depths)) != len(depths):
        raise ValueError(f"`depths` {list(depths)} repeats a depth; list each depth once.")
    targets = list(latents)
    total = 0.0
    parts = {}
    for depth in depths:
        inputs = latents[depth]
        if lat_aug:
            noise = torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
            inputs = inputs + lat_aug * noise
            if noisy_targets:
                targets[depth] = inputs
        out = model(inputs, images[depth], num_steps=depth, output_intermediate=True)
        depth_loss = 0.0
        for step, prediction in enumerate(out.intermediate, start=1):
            depth_loss = depth_loss + F.mse_loss(prediction.float(), targets[depth - step].float())
        parts[f"loss_depth{depth}"] = depth_loss.detach()
        total = total + depth_loss
        if pixel_weight:
            pixels = pixel_loss(vae, out.intermediate[-1], images[depth], images[0], pixel_back_projection)
            parts[f"pixel_depth{depth}"] = pixels.detach()
            total = total + pixel_weight * pixels
    parts["loss"] = total
    return parts
