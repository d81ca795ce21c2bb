"""The one upscale-and-decode stage of every UPLiFT pipeline, for any output size.

:class:`UPLiFTUpscaleMixin` is used by the super-resolution pipeline, the text-to-image pipeline
and the wrapper pipeline. Given unscaled latents (``h x w``), the image they describe (the guide,
``8h x 8w`` in [0, 1]) and an exact output size, it runs::

    latents -> UPLiFT, num_steps 2x steps (self.run_upscaler)   latents  2^s h x 2^s w
            -> [resample the latents]                           (latent methods)
            -> VAE decode -> crop to the guide's content         image    2^s x content
            -> [resample the image]                             (image methods)
            -> colour correction against the guide's content    image    exactly output_size
            -> [back-projection onto the guide's content]       (back_projection_steps > 0)

A factor that is a power of two (2, 4, 8) runs ``log2(factor)`` steps and resamples nothing. Other
factors resample once, by the method :attr:`UPLiFTUpscaleMixin.upscale_method` names (one of
:data:`UPSCALE_METHODS`); the default was chosen by measurement
(``python -m evaluation.benchmarks.any_size_study``, PSNR / SSIM on BSDS500 at 1.5x, 3x and 6x):

- ``"downsample_image"``: ``ceil(log2 f)`` steps, then an antialiased bicubic downsampling of the
  decoded image;
- ``"resample_latents"``: ``ceil(log2 f)`` steps, then an antialiased bicubic resampling of the
  latents to the output size before decoding;
- ``"upsample_image"``: ``floor(log2 f)`` steps, then a bicubic upsampling of the decoded image;
- ``"bilinear_latents"``: the authors' choice, ``ceil(log2 f)`` steps then a bilinear resize of the
  latents (``out_size`` of their extractor);
- ``"auto"`` (the default): ``"downsample_image"``, but never more steps than the model was trained
  for (its config's ``trained_upscale_factors``): beyond that, ``"upsample_image"`` from the
  largest trained factor. Measured with the TAEF2 model on 100 BSDS500 images
  (evaluation/results/any_size_study.md): resampling the decoded image beat resampling the
  latents (either filter) by 4.7-7 dB PSNR at 1.5x and 3x; at 6x, stepping past the trained depth
  (8x, then down, with a model trained for 2x and 4x) lost 1.8 dB to stopping at 4x and upsampling.

:func:`output_size_for` is the one rule turning "factor x size" or "an exact size / one side with
the aspect ratio kept" into an output size, with errors naming the argument.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor

from ..loaders.vae import decode_latents, vae_scale_factor
from ..utils.back_projection import back_project, check_back_projection_steps
from ..utils.color_correction import color_correct
from ..utils.output_size import is_int, check_latent_factor, check_upscale_factor, output_size_for

__all__ = [
    "UPLiFTUpscaleMixin",
    "UPSCALE_METHODS",
    "DEFAULT_UPSCALE_METHOD",
    "check_upscale_factor",
    "check_latent_factor",
    "output_size_for",
    "upscale_steps",
]

#: How a factor that is not a power of two is reached (see the module docstring).
UPSCALE_METHODS = ("auto", "downsample_image", "resample_latents", "upsample_image", "bilinear_latents")
#: The measured best of :data:`UPSCALE_METHODS` (evaluation/results/any_size_study.md).
DEFAULT_UPSCALE_METHOD = "auto"
#: Methods that run ``floor(log2 f)`` steps and upsample; the others run ``ceil(log2 f)`` and reduce.
_FLOOR_METHODS = ("upsample_image",)
_LATENT_METHODS = {"resample_latents": ("bicubic", True), "bilinear_latents": ("bilinear", False)}
#: log2 of a ratio of integer sizes is exact for powers of two; this absorbs rounding elsewhere.
_LOG_TOLERANCE = 1e-9

Size = Tuple[int, int]


# ---------------------------------------------------------------------------------------------
# Output sizes
# ---------------------------------------------------------------------------------------------
def _check_size(name: str, size, minimum: Optional[Size] = None) -> Size:
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(is_int(side) and side >= 1 for side in size):
        raise ValueError(f"`{name}` must be a (height, width) pair of ints >= 1, got {size!r}.")
    if minimum is not None and (size[0] < minimum[0] or size[1] < minimum[1]):
        raise ValueError(
            f"`{name}`={tuple(size)} is smaller than the guide's {tuple(minimum)}; UPLiFT only enlarges, pass at least that."
        )
    return int(size[0]), int(size[1])


def upscale_steps(
    output_size: Size, guide_size: Size, method: str = DEFAULT_UPSCALE_METHOD, trained_factors: Optional[Sequence[int]] = None
) -> int:
    """The number of UPLiFT 2x steps ``method`` runs to reach ``output_size`` from ``guide_size``:
    ``ceil(log2 f)`` (``floor`` for ``"upsample_image"``) of the larger of the two sides' factors.
    A power of two always runs ``log2 f`` steps. ``"auto"`` runs at most ``log2(max(trained_factors))``
    steps otherwise (``trained_factors``: the model's ``trained_upscale_factors``; None: unknown)."""
    if method not in UPSCALE_METHODS:
        raise ValueError(f"`upscale_method` must be one of {UPSCALE_METHODS}, got {method!r}.")
    output_size = _check_size("output_size", output_size)
    guide_size = _check_size("guide_size", guide_size)
    factor = max(output_size[0] / guide_size[0], output_size[1] / guide_size[1])
    log_factor = math.log2(factor)
    floor, ceil = math.floor(log_factor + _LOG_TOLERANCE), math.ceil(log_factor - _LOG_TOLERANCE)
    if method in _FLOOR_METHODS:
        return max(0, floor)
    if method == "auto" and trained_factors and floor != ceil:
        return max(0, min(ceil, int(math.log2(max(trained_factors)))))
    return max(0, ceil)


def _resample_latents(latents: torch.Tensor, scale: Tuple[float, float], size: Size, mode: str, antialias: bool) -> torch.Tensor:
    """``latents`` resampled by ``scale`` (per axis, pixel centres aligned as in the image), the
    first ``size`` latents kept; replicated at the bottom / right so that the result covers ``size``."""
    pad_h = max(0, math.ceil(size[0] / scale[0]) + 1 - latents.shape[-2])
    pad_w = max(0, math.ceil(size[1] / scale[1]) + 1 - latents.shape[-1])
    source = F.pad(latents.float(), (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else latents.float()
    resized = F.interpolate(
        source, scale_factor=scale, mode=mode, antialias=antialias, align_corners=False, recompute_scale_factor=False
    )
    return resized[:, :, : size[0], : size[1]]


# ---------------------------------------------------------------------------------------------
# The mixin
# ---------------------------------------------------------------------------------------------
class UPLiFTUpscaleMixin:
    """Pipeline mixin: UPLiFT upscaling and VAE decoding to an exact output size.

    Needs ``self.vae``, ``self.upscaler``, ``self._execution_device`` (a diffusers pipeline) and
    :class:`~uplift_diffusers.pipelines.pipeline_utils.TilingMixin`'s ``run_upscaler`` /
    ``upscaler_callback_count``: the upscaler runs tiled or not as the pipeline is set.

    Attributes:
        upscale_method: how factors that are not powers of two are reached, one of
            :data:`UPSCALE_METHODS` (default :data:`DEFAULT_UPSCALE_METHOD`, the measured best).
    """

    upscale_method: str = DEFAULT_UPSCALE_METHOD

    output_size_for = staticmethod(output_size_for)

    def upscale_stages(self, output_size: Size, guide_size: Size) -> int:
        """How many ``progress.update()`` calls :meth:`upscale_and_decode` makes for an output of
        ``output_size`` from a guide (content) of ``guide_size``: one per 2x step (per tile when
        tiling), one for the decode."""
        num_steps = self._upscale_steps(output_size, guide_size)
        factor = vae_scale_factor(self.vae)
        latent_size = (math.ceil(guide_size[0] / factor), math.ceil(guide_size[1] / factor))
        return (self.upscaler_callback_count(*latent_size, num_steps) if num_steps else 0) + 1

    def upscale_base_latents(
        self,
        latents: torch.Tensor,
        upscale_factor,
        output_type: str = "pil",
        generator=None,
        color_correction: bool = True,
        back_projection_steps: int = 0,
    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The stage after a generating pipeline: base latents -> base image -> UPLiFT -> final image,
        under the pipeline's own progress bar (decode of the base image, every 2x step, the decode).

        Args:
            latents: ``B x C x h x w`` unscaled base latents (the UNet's divided by ``scaling_factor``).
            upscale_factor: any real number >= 1, on the base size ``8h x 8w`` (checked).
            output_type: ``"latent"``: UPLiFT only (a power-of-two factor); anything else: images.
            generator, color_correction, back_projection_steps: as in :meth:`upscale_and_decode`
                (the base image is the reference).

        Returns:
            ``(base_image, result)``: the decoded base image in [-1, 1] (None for ``"latent"`` when
            the factor keeps the base size), and the upscaled unscaled latents for ``"latent"`` (None
            when the factor keeps the base size), else the final images in [-1, 1] (the base image
            itself when the factor keeps the base size).
        """
        factor = vae_scale_factor(self.vae)
        base_size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
        output_size = self.output_size_for(*base_size, upscale_factor)
        upscale = output_size != base_size
        latent_output = output_type == "latent"
        check_latent_factor(upscale_factor, output_type)
        num_steps = self._upscale_steps(output_size, base_size) if upscale else 0
        if not upscale:
            upscale_stages = 0
        elif latent_output:
            upscale_stages = self.upscaler_callback_count(*latents.shape[-2:], num_steps)
        else:
            upscale_stages = self.upscale_stages(output_size, base_size)
        needs_base_image = upscale or not latent_output
        stages = int(needs_base_image) + upscale_stages
        base_image = result = None
        with self.progress_bar(total=max(stages, 1)) as progress:
            if needs_base_image:
                base_image = decode_latents(self.vae, latents)
                progress.update()
            if upscale:
                guide = VaeImageProcessor.denormalize(base_image.float())
                if latent_output:
                    result = self.upscale_latents(latents, guide, num_steps, generator, progress)
                else:
                    image = self.upscale_and_decode(
                        latents, guide, output_size, generator, color_correction, progress,
                        back_projection_steps=back_projection_steps,
                    )
                    result = VaeImageProcessor.normalize(image).to(base_image.dtype)
            elif not latent_output:
                result = base_image
            if stages == 0:
                progress.update()
        return base_image, result

    def finish_images(self, image, base_image, output_type, return_base_images, run_safety_checker=None, image_processor=None):
        """Final images and base images in [-1, 1] -> ``(images, nsfw, base_images)`` in ``output_type``.

        ``run_safety_checker(image) -> (image, flags or None)`` runs on the final images; the base
        image of a flagged result is hidden too. ``base_images`` is None unless ``return_base_images``.
        Conversion by ``image_processor`` (default ``self.image_processor``)."""
        nsfw = None
        if run_safety_checker is not None:
            image, nsfw = run_safety_checker(image)
        processor = image_processor or self.image_processor
        denormalize = None if nsfw is None else [not flagged for flagged in nsfw]
        images = processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        base_images = None
        if return_base_images:
            if nsfw is not None:  # hide the base image of every flagged result as well
                base_image = base_image.clone()
                base_image[torch.tensor(nsfw, dtype=torch.bool, device=base_image.device)] = 0
            base_images = processor.postprocess(base_image, output_type=output_type, do_denormalize=denormalize)
        return images, nsfw, base_images

    def _safety_dtype(self) -> torch.dtype:
        """The dtype the safety checker's input is cast to: the text encoder's, else the UNet's
        (``StableDiffusionPipeline`` passes its prompt embeddings' dtype), else float32."""
        for name in ("text_encoder", "unet"):
            module = self.components.get(name)
            if isinstance(module, torch.nn.Module):
                return module.dtype
        return torch.float32

    def _upscale_steps(self, output_size: Size, guide_size: Size) -> int:
        trained = getattr(getattr(self.upscaler, "config", None), "trained_upscale_factors", None)
        return upscale_steps(output_size, guide_size, self.upscale_method, trained)

    def upscale_latents(
        self,
        latents: torch.Tensor,
        guide: torch.Tensor,
        num_steps: int,
        generator=None,
        progress=None,
    ) -> torch.Tensor:
        """``num_steps`` UPLiFT 2x steps on the execution device (unscaled latents in and out), through
        ``self.run_upscaler``; ``progress.update()`` after every step (of every tile when tiling)."""
        device = self._execution_device
        latents = latents.to(device=device)
        guide = guide.to(device=device, dtype=torch.float32)
        if num_steps == 0:
            return latents
        callback: Optional[Callable] = None if progress is None else (lambda index, step_latents: progress.update())
        return self.run_upscaler(latents, guide, num_steps, generator=generator, callback=callback)

    def upscale_and_decode(
        self,
        latents: torch.Tensor,
        guide: torch.Tensor,
        output_size: Size,
        generator=None,
        color_correction: bool = True,
        progress=None,
        guide_size: Optional[Size] = None,
        back_projection_steps: int = 0,
    ) -> torch.Tensor:
        """Upscale ``latents`` with UPLiFT and decode them to exactly ``output_size``.

        Args:
            latents: ``B x C x h x w`` unscaled latents (VAE posterior mode, or UNet latents divided
                by ``vae.config.scaling_factor``).
            guide: ``B x 3 x 8h x 8w`` in [0, 1], the image the latents describe.
            output_size: ``(height, width)`` of the result, at least ``guide_size``.
            generator: seeds the upscaler's noise (one generator, or one per image).
            color_correction: shift each channel's mean to the guide content's.
            progress: an object with ``update()`` (a pipeline's ``progress_bar``), called
                :meth:`upscale_stages` times: after every 2x step and after the decode.
            guide_size: ``(height, width)`` of the guide's content at its top left (the rest is
                padding, e.g. to a multiple of 8); default the whole guide.
            back_projection_steps: rounds of :func:`~uplift_diffusers.utils.back_projection.back_project`
                onto the guide's content after the colour correction (0: none, the paper's output).

        Returns:
            ``B x 3 x output_size`` float32 images in [0, 1] on the execution device.
        """
        factor = vae_scale_factor(self.vae)
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            raise ValueError(f"`latents` must be a B x C x h x w tensor, got {getattr(latents, 'shape', type(latents).__name__)}.")
        height, width = latents.shape[-2] * factor, latents.shape[-1] * factor
        if not isinstance(guide, torch.Tensor) or guide.ndim != 4 or tuple(guide.shape[-2:]) != (height, width):
            raise ValueError(
                f"`guide` must be B x 3 x {height} x {width} ({factor}x the latents), got {getattr(guide, 'shape', type(guide).__name__)}."
            )
        check_back_projection_steps(back_projection_steps)
        guide_size = _check_size("guide_size", (height, width) if guide_size is None else guide_size)
        if guide_size[0] > height or guide_size[1] > width:
            raise ValueError(f"`guide_size`={guide_size} is larger than the guide ({height} x {width}).")
        output_size = _check_size("output_size", output_size, minimum=guide_size)
        method = self.upscale_method
        num_steps = self._upscale_steps(output_size, guide_size)
        scale = 2**num_steps

        upscaled = self.upscale_latents(latents, guide, num_steps, generator, progress)
        reached = (scale * guide_size[0], scale * guide_size[1])
        latent_resample = _LATENT_METHODS.get(method) if reached != output_size else None
        if latent_resample is not None:
            ratio = (output_size[0] / guide_size[0] / scale, output_size[1] / guide_size[1] / scale)
            covered = (math.ceil(output_size[0] / factor), math.ceil(output_size[1] / factor))
            upscaled = _resample_latents(upscaled, ratio, covered, *latent_resample)
            reached = output_size
        decoded = VaeImageProcessor.denormalize(decode_latents(self.vae, upscaled).float())
        if progress is not None:
            progress.update()
        device = self._execution_device
        result = decoded[:, :, : reached[0], : reached[1]].to(device)
        if reached != output_size:  # an image method: PIL's bicubic filter (antialiased when reducing)
            result = F.interpolate(result, size=output_size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        # contiguous: the channel means then sum in the same order as for an unpadded image
        reference = guide[:, :, : guide_size[0], : guide_size[1]].to(device=device, dtype=torch.float32).contiguous()
        if color_correction:
            result = color_correct(result, reference)
        if back_projection_steps:
            result = back_project(result, reference, back_projection_steps)
        return result
