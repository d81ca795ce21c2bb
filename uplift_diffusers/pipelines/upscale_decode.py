"""The one upscale-and-decode stage, for any output size: :func:`upscale_and_decode`.

The decode hook of :func:`~uplift_diffusers.apply_uplift` (and so
:class:`~uplift_diffusers.StableDiffusionUPLiFTPipeline`) and the super-resolution pipeline end
here. Given unscaled latents (``h x w``), the image they describe (the guide, ``8h x 8w`` in
[0, 1]), the VAE's own decode and an exact output size, it runs::

    latents -> UPLiFT, num_steps 2x steps (tiled or not)       latents  2^s h x 2^s w
            -> [resample the latents]                           (latent methods)
            -> decode -> crop to the guide's content            image    2^s x content
            -> [resample the image]                             (image methods)
            -> colour correction against the guide's content    image    exactly output_size
            -> [back-projection onto the guide's content]       (back_projection_steps > 0)

A power of two (2, 4, 8) runs ``log2(factor)`` steps and resamples nothing. Other factors resample
once, by one of :data:`UPSCALE_METHODS`:

- ``"downsample_image"``: ``ceil(log2 f)`` steps, then an antialiased bicubic downsampling of the image;
- ``"resample_latents"``: ``ceil(log2 f)`` steps, then an antialiased bicubic resampling of the latents;
- ``"upsample_image"``: ``floor(log2 f)`` steps, then a bicubic upsampling of the image;
- ``"bilinear_latents"``: the authors' choice, ``ceil(log2 f)`` steps then a bilinear resize of the latents;
- ``"auto"`` (the default): ``"downsample_image"``, but never more steps than the model was trained
  for (its config's ``trained_upscale_factors``): beyond that, ``"upsample_image"`` from the
  largest trained factor.

The default is measured (``python -m evaluation.benchmarks.any_size_study``, TAEF2 model, 100
BSDS500 images, evaluation/results/any_size_study.md): resampling the decoded image beat resampling
the latents by 4.7-7 dB PSNR at 1.5x and 3x; at 6x, stepping past the trained depth (8x, then
down, with a model trained for 2x and 4x) lost 1.8 dB to stopping at 4x and upsampling.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from tqdm.auto import tqdm

from ..models.tiled_upscaling import check_tile_arguments, count_tiles, tiled_upscale
from ..utils.color_correction import mean_shift, project_to
from ..utils.memory import estimate_upscale_bytes

__all__ = ["UPSCALE_METHODS", "DEFAULT_UPSCALE_METHOD", "upscale_steps", "plan_upscale", "vae_tiling",
           "silent_progress_bar", "upscale_latents", "upscale_latents_guided", "upscale_and_decode"]

#: How a factor that is not a power of two is reached (see the module docstring).
UPSCALE_METHODS = ("auto", "downsample_image", "resample_latents", "upsample_image", "bilinear_latents")
#: The measured best of :data:`UPSCALE_METHODS` (evaluation/results/any_size_study.md).
DEFAULT_UPSCALE_METHOD = "auto"
_LATENT_METHODS = {"resample_latents": ("bicubic", True), "bilinear_latents": ("bilinear", False)}
#: log2 of a ratio of integer sizes is exact for powers of two; this absorbs rounding elsewhere.
_LOG_TOLERANCE = 1e-9

Size = Tuple[int, int]
#: ``(tile_size, overlap)`` in latents of the input, or None: no tiling.
Tiling = Optional[Tuple[int, int]]


def upscale_steps(
    output_size: Size, guide_size: Size, method: str = DEFAULT_UPSCALE_METHOD, trained_factors: Optional[Sequence[int]] = None
) -> int:
    """The number of UPLiFT 2x steps ``method`` runs to reach ``output_size`` from ``guide_size``:
    ``ceil(log2 f)`` (``floor`` for ``"upsample_image"``) of the larger of the two sides' factors.
    A power of two always runs ``log2 f`` steps. ``"auto"`` runs at most ``log2(max(trained_factors))``
    steps otherwise (``trained_factors``: the model's ``trained_upscale_factors``; None: unknown)."""
    factor = max(output_size[0] / guide_size[0], output_size[1] / guide_size[1])
    log_factor = math.log2(factor)
    floor, ceil = math.floor(log_factor + _LOG_TOLERANCE), math.ceil(log_factor - _LOG_TOLERANCE)
    if method == "upsample_image":  # the one method that upsamples after floor(log2 f) steps
        return max(0, floor)
    if method == "auto" and trained_factors and floor != ceil:
        return max(0, min(ceil, int(math.log2(max(trained_factors)))))
    return max(0, ceil)


def plan_upscale(upscaler, vae, batch: int, guide_size: Size, output_size: Size, method: str, max_memory: float,
                 tiling=None) -> Tuple[Tiling, int]:
    """The tiles of an upscale (``tiling`` and ``max_memory``, in bytes, as in :func:`~uplift_diffusers.apply_uplift`)
    and its number of progress updates: one for the guide (the base decode or the encode), then those
    :func:`upscale_and_decode` makes: one per 2x step (per tile when tiling) and one for the decode."""
    num_steps = upscale_steps(output_size, guide_size, method, upscaler.config.get("trained_upscale_factors"))
    if tiling is None:
        scale = 2**num_steps
        decoded = (max(output_size[0], scale * guide_size[0]), max(output_size[1], scale * guide_size[1]))
        tiling = estimate_upscale_bytes(upscaler, vae, batch, guide_size, decoded) > max_memory
    tiling = check_tile_arguments(None, None) if tiling is True else tiling or None
    factor = upscaler.config.vae_scale_factor  # the VAE's (guard_latent_space)
    latent_size = (math.ceil(guide_size[0] / factor), math.ceil(guide_size[1] / factor))
    return tiling, 1 + latent_updates(latent_size, num_steps, tiling) + 1


@contextlib.contextmanager
def vae_tiling(vae, tiled: bool):
    """The VAE's own tiling switched on within the block when ``tiled`` and it is off; restored after."""
    switch = tiled and not getattr(vae, "use_tiling", True) and hasattr(vae, "enable_tiling")
    if switch:
        vae.enable_tiling()
    try:
        yield
    finally:
        if switch:
            vae.disable_tiling()


#: A progress bar that shows nothing, for callers without a pipeline's ``progress_bar``.
silent_progress_bar = functools.partial(tqdm, disable=True)


def latent_updates(latent_size: Size, num_steps: int, tiling: Tiling = None) -> int:
    """``progress.update()`` calls of :func:`upscale_latents`: one per step, per tile when tiling."""
    return num_steps * (1 if tiling is None or num_steps == 0 else count_tiles(*latent_size, *tiling))


def upscale_latents(upscaler, latents: torch.Tensor, guide: torch.Tensor, num_steps: int, generator, tiling: Tiling,
                    progress) -> torch.Tensor:
    """``num_steps`` UPLiFT 2x steps on the latents' device (unscaled latents in and out, in the
    upscaler's dtype), tiled when ``tiling`` is set; ``progress.update()`` after every step of every tile."""
    if num_steps == 0:
        return latents
    guide = guide.to(device=latents.device, dtype=torch.float32)
    options = dict(generator=generator, callback=lambda index, step_latents: progress.update())
    if tiling is not None:
        return tiled_upscale(upscaler, latents, guide, num_steps, tile_size=tiling[0], overlap=tiling[1], **options)
    return upscaler(latents, guide, num_steps=num_steps, **options).sample


def upscale_latents_guided(upscaler, vae, latents: torch.Tensor, num_steps: int, generator=None, tiling: Tiling = None,
                           progress_bar: Callable = silent_progress_bar) -> torch.Tensor:
    """UPLiFT on raw latents alone (no final decode: latent outputs, hires-fix): the VAE decodes
    them once for the guide, then :func:`upscale_latents`. ``progress_bar`` (a pipeline's) counts
    the guide's decode and every step; at 0 steps the latents are returned, counted as one update."""
    with progress_bar(total=1 + latent_updates(latents.shape[-2:], num_steps, tiling)) as progress:
        if num_steps == 0:
            progress.update()
            return latents
        guide = VaeImageProcessor.denormalize(vae.decode(latents.to(vae.dtype), return_dict=False)[0].float())
        progress.update()
        return upscale_latents(upscaler, latents, guide, num_steps, generator, tiling, progress)


def _resample_latents(latents: torch.Tensor, scale: Tuple[float, float], size: Size, mode: str, antialias: bool) -> torch.Tensor:
    """``latents`` resampled by ``scale`` (per axis, pixel centres aligned as in the image), the
    first ``size`` latents kept; replicated at the bottom / right so that the result covers ``size``."""
    pad_h = max(0, math.ceil(size[0] / scale[0]) + 1 - latents.shape[-2])
    pad_w = max(0, math.ceil(size[1] / scale[1]) + 1 - latents.shape[-1])
    source = F.pad(latents.float(), (0, pad_w, 0, pad_h), mode="replicate")
    resized = F.interpolate(
        source, scale_factor=scale, mode=mode, antialias=antialias, align_corners=False, recompute_scale_factor=False
    )
    return resized[:, :, : size[0], : size[1]]


def upscale_and_decode(upscaler, decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, guide: torch.Tensor,
                       output_size: Size, progress, guide_size: Optional[Size] = None, generator=None,
                       color_correction: bool = True, back_projection_steps: int = 0, tiling: Tiling = None,
                       method: str = DEFAULT_UPSCALE_METHOD) -> torch.Tensor:
    """Upscale ``latents`` with UPLiFT and decode them to exactly ``output_size``: ``B x 3 x
    output_size`` float32 images in [0, 1] on the latents' device.

    Args:
        decode: the VAE's own decoding, unscaled latents -> images in [-1, 1] (for a hooked VAE,
            its original ``decode``: never the hook itself).
        latents: ``B x C x h x w`` unscaled latents on the device to run on.
        guide: ``B x 3 x 8h x 8w`` in [0, 1], the image the latents describe.
        progress: a progress bar, updated as :func:`plan_upscale` counts, its postfix naming the stage.
        guide_size: the part of the guide that is content (the rest is padding, e.g. to a
            multiple of 8); default the whole guide. The colour correction and the back-projection
            (:func:`~uplift_diffusers.utils.color_correction.back_project`) refer to that content.
    """
    device = latents.device
    guide_size = tuple(guide.shape[-2:]) if guide_size is None else guide_size
    num_steps = upscale_steps(output_size, guide_size, method, upscaler.config.get("trained_upscale_factors"))
    scale = 2**num_steps
    progress.set_postfix_str("upscale")
    upscaled = upscale_latents(upscaler, latents, guide, num_steps, generator, tiling, progress)

    reached = (scale * guide_size[0], scale * guide_size[1])
    latent_resample = _LATENT_METHODS.get(method) if reached != output_size else None
    if latent_resample is not None:
        factor = guide.shape[-2] // latents.shape[-2]
        ratio = (output_size[0] / guide_size[0] / scale, output_size[1] / guide_size[1] / scale)
        covered = (math.ceil(output_size[0] / factor), math.ceil(output_size[1] / factor))
        upscaled = _resample_latents(upscaled, ratio, covered, *latent_resample)
        reached = output_size
    progress.set_postfix_str("decode")
    decoded = decode(upscaled.to(latents.dtype))
    decoded = VaeImageProcessor.denormalize(decoded.float().to(device))
    progress.update()
    result = decoded[:, :, : reached[0], : reached[1]]
    if reached != output_size:  # an image method: PIL's bicubic filter (antialiased when reducing)
        result = F.interpolate(result, size=output_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    # contiguous: the channel means then sum in the same order as for an unpadded image
    reference = guide[:, :, : guide_size[0], : guide_size[1]].to(device=device, dtype=torch.float32).contiguous()
    if color_correction:  # the unchecked forms: both images are this stage's own, in [0, 1]
        result = mean_shift(result, reference).clamp(0, 1)
    if back_projection_steps:
        progress.set_postfix_str("back-projection")
        result = project_to(result, reference, back_projection_steps).clamp(0, 1)
    return result
