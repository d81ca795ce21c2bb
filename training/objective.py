"""The multi-depth, multi-step UPLiFT objective (all in latent space).

For a ground-truth image ``x`` and a depth ``d``, the input image is ``x`` downsampled
``2^d`` times (antialiased bilinear), the input latents are its VAE latents (plus Gaussian
noise of std ``lat_aug``), and step ``k`` of a ``d``-step run is compared (MSE) with the
latents of ``x`` downsampled ``2^(d-k)`` times. The loss is the sum over depths and steps.

With ``noisy_targets`` the noise is kept, as in the authors' loop (``mwalmer-umd/UPLiFT``
``uplift/train_uplift.py`` adds it in place, ``feat_in += noise_aug``, to the latents that
also serve as targets): once depth ``j`` has used the noised latents of level ``j`` as its
input, later depths compare their step at level ``j`` with those noised latents instead of the
clean ones. The noise is independent of those steps' inputs, so the expected gradient is the
same; the loss gains ``lat_aug**2`` per noisy target and the gradient some variance.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F


def image_pyramid(images: torch.Tensor, max_depth: int, multiple: int = 8) -> List[torch.Tensor]:
    """``[x, x/2, x/4, ...]`` (``max_depth + 1`` levels), antialiased bilinear downsampling.

    Every level must stay a multiple of ``multiple`` pixels (the VAE's scale factor).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be B x 3 x H x W, got {tuple(images.shape)}.")
    height, width = images.shape[-2:]
    need = multiple * 2**max_depth
    if height % need or width % need:
        raise ValueError(
            f"`images` of {height} x {width} cannot be halved {max_depth} times into multiples of {multiple}: "
            f"use a resolution divisible by {need}."
        )
    levels = [images]
    for level in range(1, max_depth + 1):
        size = (height >> level, width >> level)
        levels.append(F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1))
    return levels


def pixel_loss(
    vae, latents: torch.Tensor, reference: torch.Tensor, target: torch.Tensor, back_projection_steps: int = 0
) -> torch.Tensor:
    """MSE in [0, 1] pixels between the decoded, colour-corrected ``latents`` and ``target``.

    The decode goes through the frozen ``vae`` with gradients flowing to ``latents``; the
    colour correction is the pipelines' per-channel mean shift towards ``reference`` (the
    low-resolution input), without the final clamp so that it stays differentiable. With
    ``back_projection_steps`` the image is then back-projected onto ``reference`` as the
    super-resolution pipeline does (unclamped), so that the loss scores what the pipeline returns.
    """
    from uplift_diffusers.loaders.vae import decode_latents
    from uplift_diffusers.utils.back_projection import project_to
    from uplift_diffusers.utils.color_correction import mean_shift

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
    """Sum over ``depths`` and steps of the per-step MSE (plus an optional pixel term).

    Args:
        model: an ``UPLiFTLatentUpscaler`` (or anything with its forward signature).
        latents: ``latents[j]`` = VAE latents (unscaled posterior mode) of the image at level j.
        images: ``images[j]`` = the image downsampled ``2^j`` times, in [0, 1].
        depths: depths to train (each <= len(latents) - 1).
        lat_aug: std of the Gaussian noise added to the input latents.
        vae, pixel_weight: with ``pixel_weight > 0``, each depth's final latents are also
            decoded by ``vae`` and ``pixel_weight`` x :func:`pixel_loss` against ``images[0]``
            is added (latent MSE alone does not track pixel PSNR well for every VAE).
        pixel_back_projection: rounds of back-projection onto the input image before the pixel
            term (:func:`pixel_loss`'s ``back_projection_steps``; 0: none).
        noisy_targets: keep each depth's noised input latents as the target of that level
            for the depths after it (the authors' in-place noise, see the module docstring).

    Returns a dict with ``loss`` and ``loss_depth{d}`` (and ``pixel_depth{d}``) entries,
    the parts detached.
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
