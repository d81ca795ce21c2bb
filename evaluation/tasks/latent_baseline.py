"""The latent interpolation baselines of the paper's tables, as one reusable piece.

:class:`LatentInterpolationUpscaler` is called like
:class:`~uplift_diffusers.UPLiFTLatentUpscaler` (``upscaler(latents, image, num_steps=k,
generator=g).sample``) but only resizes the *unscaled* latents by ``2 ** num_steps`` with
``torch.nn.functional.interpolate`` (``bilinear`` with ``align_corners=False``, or
``nearest``); the guide image and the generator are accepted and ignored.

:func:`decode_and_correct` finishes any latent upscale: decode with the VAE, map to [0, 1] and,
when asked, shift every channel's mean to the low-resolution reference image
(:func:`~uplift_diffusers.utils.color_correction.color_correct`). Both evaluation scripts use the
pair for the ``bilinear`` / ``nearest`` rows. The paper applies colour correction as part of
UPLiFT, not to the interpolation baselines, so the scripts decode those rows without it unless
``--color-correct-baselines`` is given (then they differ from the UPLiFT row only in how the
latents are upsampled); ``results.json`` records which was used per row.
"""
from __future__ import annotations

from typing import Any, List, Optional, Union

import torch
import torch.nn.functional as F

from uplift_diffusers.utils.color_correction import color_correct
from uplift_diffusers.models.modeling_uplift import UPLiFTOutput
from uplift_diffusers.loaders import decode_latents

__all__ = ["LATENT_BASELINES", "LatentInterpolationUpscaler", "decode_and_correct"]

#: The interpolation modes offered as baselines.
LATENT_BASELINES = ("bilinear", "nearest")


class LatentInterpolationUpscaler:
    """Upsample latents by ``2 ** num_steps`` with plain interpolation (a baseline for UPLiFT).

    Args:
        mode: ``"bilinear"`` (``align_corners=False``) or ``"nearest"``.

    The call signature is the upscaler's; the result is one interpolation straight to the
    final size (not ``num_steps`` successive 2x interpolations).
    """

    def __init__(self, mode: str):
        if mode not in LATENT_BASELINES:
            raise ValueError(f"mode must be one of {LATENT_BASELINES}, got {mode!r}.")
        self.mode = mode

    def __repr__(self) -> str:
        return f"LatentInterpolationUpscaler(mode={self.mode!r})"

    def __call__(
        self,
        latents: torch.Tensor,
        image: Optional[torch.Tensor] = None,
        num_steps: int = 1,
        generator: Any = None,
        noise_scale: Optional[float] = None,
        output_intermediate: bool = False,
        return_dict: bool = True,
    ) -> Union[UPLiFTOutput, tuple]:
        """Interpolate ``latents`` (``B x C x h x w``, floating point) to ``2**num_steps`` times their size.

        ``image``, ``generator`` and ``noise_scale`` are ignored (interpolation needs no guide
        and no noise). Returns an :class:`~uplift_diffusers.UPLiFTOutput` (or a tuple with
        ``return_dict=False``) like the UPLiFT upscaler.
        """
        factor = 2**num_steps
        size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
        if self.mode == "bilinear":
            sample = F.interpolate(latents, size=size, mode="bilinear", align_corners=False)
        else:
            sample = F.interpolate(latents, size=size, mode="nearest")
        intermediate: Optional[List[torch.Tensor]] = [sample] if output_intermediate else None
        if not return_dict:
            return (sample, intermediate)
        return UPLiFTOutput(sample=sample, intermediate=intermediate)


def decode_and_correct(vae: Any, latents: torch.Tensor, reference: torch.Tensor, *, color_correction: bool) -> torch.Tensor:
    """Decode *unscaled* upscaled latents and, when ``color_correction``, colour-correct them against ``reference``.

    Args:
        vae: the autoencoder the latents belong to (``decode_latents`` convention).
        latents: ``B x C x H x W`` unscaled latents.
        reference: ``B x 3 x h x w`` images in [0, 1] (the low-resolution input / base image).
        color_correction: shift each channel's mean to ``reference``'s (what the UPLiFT pipelines
            do; the paper's interpolation baselines are not corrected). Required: say which.

    Returns:
        ``B x 3 x 8H x 8W`` float32 images in [0, 1] on the VAE's device.
    """
    images = (decode_latents(vae, latents).float() / 2 + 0.5).clamp(0, 1)
    if color_correction:
        images = color_correct(images, reference.to(images.device).float())
    return images
