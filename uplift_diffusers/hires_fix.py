"""Hires-fix with UPLiFT: generate, upscale the latents, then re-run the end of the denoising.

:func:`hires_fix` runs a text-to-image pipeline's own call to latents at the base size, upscales
them with UPLiFT (guided by the decoded base image), and denoises the last ``strength`` of the
noise schedule again at the new size with the same prompt, through the family's own path:

- Stable Diffusion 1.5 family: ``StableDiffusionImg2ImgPipeline`` (sharing the pipeline's
  components) with the upscaled latents as its ``image`` and ``strength``;
- FLUX.2 [dev] and [klein]: the pipeline itself, given the upscaled latents noised to
  ``sigma0 = strength`` (``x = sigma0 * noise + (1 - sigma0) * x0``) as ``latents=`` and the
  remaining ``sigmas=``, on a flow-matching scheduler without the resolution-dependent shift
  (with it, "strength 0.3" would start near sigma 0.8-0.9 at 1024-2048 px: a full
  regeneration). ``strength`` is then the fraction of the noise schedule re-run, for every family.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from .hooks import UPLiFTDecodeHook, guard_latent_space
from .loaders.vae import vae_scale_factor
from .models.modeling_uplift import UPLiFTLatentUpscaler
from .models.tiled_upscaling import check_tile_arguments
from .pipelines.upscale_decode import upscale_latents_guided

__all__ = ["hires_fix", "HIRES_FIX_FAMILIES"]

#: The families with a refine path, as :func:`hires_fix` names them in its errors.
HIRES_FIX_FAMILIES = ("Stable Diffusion 1.5 (StableDiffusionPipeline and subclasses)", "FLUX.2 [dev] (Flux2Pipeline)", "FLUX.2 [klein] (Flux2KleinPipeline)")


def _flux2_normalisation(pipe, like: torch.Tensor):
    vae = pipe.vae
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def _raw_latents(pipe, family: str, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pipeline's ``output_type="latent"`` result as the VAE's raw latents ``B x C x H/8 x W/8``."""
    if family == "sd":
        return latents / pipe.vae.config.scaling_factor
    if latents.ndim == 3:  # FLUX.2 [dev]: packed, normalised 2x2 patches
        factor = 2 * vae_scale_factor(pipe.vae)
        batch, _, channels = latents.shape
        latents = latents.permute(0, 2, 1).reshape(batch, channels, height // factor, width // factor)
        mean, std = _flux2_normalisation(pipe, latents)
        latents = pipe._unpatchify_latents(latents * std + mean)
    return latents  # FLUX.2 [klein] returns the raw latents


def _refine(pipe, family: str, raw: torch.Tensor, strength: float, steps: int, generator, call_kwargs: dict):
    """The second pass over the last ``strength`` of the schedule, ``steps`` steps."""
    if family == "sd":
        from diffusers import StableDiffusionImg2ImgPipeline

        refiner = StableDiffusionImg2ImgPipeline.from_pipe(pipe, dtype=pipe.dtype)
        call_kwargs = {k: v for k, v in call_kwargs.items() if k not in ("height", "width")}  # the latents' size
        return refiner(
            image=raw * pipe.vae.config.scaling_factor, strength=strength, num_inference_steps=math.ceil(steps / strength),
            generator=generator, **call_kwargs,
        )
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0)
    refiner = type(pipe).from_pipe(pipe, scheduler=scheduler, dtype=pipe.dtype)
    mean, std = _flux2_normalisation(pipe, raw)
    clean = (pipe._patchify_latents(raw) - mean) / std
    noise = randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    sigmas = [strength * (steps - i) / steps for i in range(steps)]  # sigma0 = strength, evenly down to 0
    factor = vae_scale_factor(pipe.vae)
    return refiner(
        latents=strength * noise + (1 - strength) * clean, sigmas=sigmas, num_inference_steps=steps, generator=generator,
        **{**call_kwargs, "height": raw.shape[-2] * factor, "width": raw.shape[-1] * factor},
    )


def hires_fix(
    pipe,
    upscaler: UPLiFTLatentUpscaler,
    *,
    upscale_factor: int = 2,
    strength: float = 0.35,
    refine_steps: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    output_type: str = "pil",
    check_latent_space: bool = True,
    **call_kwargs,
):
    """Generate with ``pipe``, upscale with UPLiFT, and refine at the new size (see the module doc).

    Args:
        pipe: a text-to-image pipeline of a family in :data:`HIRES_FIX_FAMILIES`, unmodified.
        upscaler, check_latent_space: as in :func:`~uplift_diffusers.apply_uplift`.
        upscale_factor: 2, 4 or 8 (the refined latents exist at powers of two).
        strength: the fraction of the noise schedule re-run at the new size, in [0, 1)
            (``sigma0 = strength``); 0: no second pass, exactly :func:`~uplift_diffusers.apply_uplift`'s output.
        refine_steps: denoising steps of the second pass; None: ``ceil(strength x
            num_inference_steps)`` of the call (50 when not given).
        generator: seeds the pipeline's calls, UPLiFT's noise and the second pass's noise.
        **call_kwargs: the pipeline's own arguments (``prompt``, ``height``, ``width``,
            ``num_inference_steps``, ``guidance_scale``, ...), for both passes.

    Returns:
        The pipeline's output of the second pass (``.images`` at ``upscale_factor`` x the base size).
    """
    from diffusers import Flux2KleinPipeline, Flux2Pipeline, StableDiffusionPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, Flux2Pipeline, Flux2KleinPipeline)):
        raise ValueError(
            f"hires_fix has no refine path for {type(pipe).__name__}; supported: {', '.join(HIRES_FIX_FAMILIES)}. "
            "Use apply_uplift for UPLiFT without a second pass."
        )
    family = "sd" if isinstance(pipe, StableDiffusionPipeline) else "flux2"
    guard_latent_space(pipe.vae, upscaler, check_latent_space)
    if not isinstance(upscale_factor, (int, float)) or upscale_factor < 2 or not math.log2(upscale_factor).is_integer():
        raise ValueError(f"`upscale_factor` must be a power of two >= 2 (2, 4, 8): the latents are refined, got {upscale_factor!r}.")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < 1:
        raise ValueError(f"`strength` must be a number in [0, 1) (the fraction of the noise schedule re-run; 0: none), got {strength!r}.")
    if refine_steps is not None and (type(refine_steps) is not int or refine_steps < 1):
        raise ValueError(f"`refine_steps` must be an int >= 1 or None, got {refine_steps!r}.")
    if strength == 0:
        with UPLiFTDecodeHook(pipe, upscaler, upscale_factor=upscale_factor):
            return pipe(generator=generator, output_type=output_type, **call_kwargs)
    steps = refine_steps or max(1, math.ceil(strength * call_kwargs.get("num_inference_steps", 50)))
    first = dict(call_kwargs, output_type="latent", generator=generator)
    if hasattr(pipe, "upscaler"):  # StableDiffusionUPLiFTPipeline: its own upscaling off for the first pass
        first["upscale_factor"] = 1
    latents = pipe(**first).images
    default_side = getattr(pipe, "default_sample_size", 0) * vae_scale_factor(pipe.vae)
    height, width = call_kwargs.get("height") or default_side, call_kwargs.get("width") or default_side
    raw = _raw_latents(pipe, family, latents, height, width)
    tiling = check_tile_arguments(None, None) if getattr(pipe.vae, "use_tiling", False) else None
    upscaled = upscale_latents_guided(upscaler, pipe.vae, raw, int(math.log2(upscale_factor)), generator, tiling).to(raw.dtype)
    refine_kwargs = {k: v for k, v in call_kwargs.items() if k != "num_inference_steps"}
    return _refine(pipe, family, upscaled, float(strength), steps, generator, dict(refine_kwargs, output_type=output_type))
