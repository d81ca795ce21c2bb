"""The latent interpolation baselines (``bilinear`` / ``nearest`` rows) of the paper's tables.

The paper applies colour correction as part of UPLiFT, not to these baselines: the scripts decode
them without it unless ``--color-correct-baselines``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from uplift_diffusers.loaders import decode_latents
from uplift_diffusers.models.modeling_uplift import UPLiFTOutput
from uplift_diffusers.utils.color_correction import color_correct

LATENT_BASELINES = ("bilinear", "nearest")


class LatentInterpolationUpscaler:
    """Called like :class:`~uplift_diffusers.UPLiFTLatentUpscaler`, but one ``bilinear``
    (``align_corners=False``) or ``nearest`` interpolation of the unscaled latents straight to
    ``2 ** num_steps`` times their size; the guide image and the generator are ignored."""

    def __init__(self, mode: str):
        if mode not in LATENT_BASELINES:
            raise ValueError(f"mode must be one of {LATENT_BASELINES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, latents: torch.Tensor, image=None, num_steps: int = 1, generator=None, return_dict: bool = True):
        size = (latents.shape[-2] * 2**num_steps, latents.shape[-1] * 2**num_steps)
        options = {"align_corners": False} if self.mode == "bilinear" else {}
        sample = F.interpolate(latents, size=size, mode=self.mode, **options)
        return UPLiFTOutput(sample=sample) if return_dict else (sample, None)


def decode_and_correct(vae: Any, latents: torch.Tensor, reference: torch.Tensor, *, color_correction: bool) -> torch.Tensor:
    """Decode unscaled latents to float32 images in [0, 1] and, with ``color_correction``, shift
    each channel's mean to ``reference``'s (``B x 3 x h x w`` in [0, 1])."""
    images = (decode_latents(vae, latents).float() / 2 + 0.5).clamp(0, 1)
    if color_correction:
        images = color_correct(images, reference.to(images.device).float())
    return images
