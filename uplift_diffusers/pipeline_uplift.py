"""Text-to-image with Stable Diffusion followed by UPLiFT latent upscaling.

:class:`StableDiffusionUPLiFTPipeline` is diffusers' ``StableDiffusionPipeline`` with one more
component, ``upscaler`` (an :class:`~uplift_diffusers.UPLiFTLatentUpscaler`). A call runs the
parent's denoising at the base size, decodes the base image, upscales the latents 2x per
step guided by that image, decodes the result and shifts its colours back to the base
image's channel means::

    prompt -> StableDiffusionPipeline (output_type="latent")      latents   h x w  (scaled)
           -> vae.decode(latents / scaling_factor)                 base      8h x 8w
           -> upscaler(latents / scaling_factor, base in [0, 1])   latents   fh x fw (unscaled)
           -> vae.decode -> color_correct(., base)                 image     8fh x 8fw

Saving and loading (``save_pretrained`` / ``from_pretrained`` rebuilding ``upscaler`` without
being passed) come from :class:`~uplift_diffusers.pipeline_utils.UPLiFTComponentsMixin`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .color_correction import color_correct
from .modeling_uplift import UPLiFTLatentUpscaler
from .pipeline_utils import (
    UPLiFTComponentsMixin,
    VAETilingMixin,
    check_flag,
    check_upscaler_matches_vae,
    to_unit_range,
)

__all__ = ["StableDiffusionUPLiFTPipeline", "StableDiffusionUPLiFTPipelineOutput"]

#: Upscale factors of the text-to-image pipeline (1: no upscaling).
UPSCALE_FACTORS = (1, 2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ---------------------------------------------------------------------------------------------
# Text-to-image pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class StableDiffusionUPLiFTPipelineOutput(StableDiffusionPipelineOutput):
    """Output of :class:`StableDiffusionUPLiFTPipeline`.

    Args:
        images: the upscaled images (``upscale_factor`` times the base size), as PIL images, a
            ``B x H x W x 3`` numpy array, a ``B x 3 x H x W`` tensor, or, for
            ``output_type="latent"``, the upscaled latents in the UNet's scaled space.
        nsfw_content_detected: per image, whether the safety checker flagged it (``None`` without one).
        base_images: with ``return_base_images=True``, the images at the base size in the same
            ``output_type`` (for ``"latent"``: the base latents); otherwise ``None``.
    """

    base_images: Optional[Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]] = None


class StableDiffusionUPLiFTPipeline(UPLiFTComponentsMixin, VAETilingMixin, StableDiffusionPipeline):
    r"""Stable Diffusion text-to-image at a base size, then UPLiFT latent upscaling by 2, 4 or 8.

    Inherits everything from diffusers' ``StableDiffusionPipeline`` (LoRA / textual inversion /
    IP-Adapter loading, schedulers, offloading, ``from_pipe``) and adds the component
    ``upscaler``.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: as in ``StableDiffusionPipeline``.
        upscaler (:class:`~uplift_diffusers.UPLiFTLatentUpscaler`): an UPLiFT model for this VAE's
            latent space (e.g. the authors' SD1.5-VAE model).
        safety_checker, feature_extractor, image_encoder: optional, as in ``StableDiffusionPipeline``.
            When a safety checker is present it runs on the final (upscaled) images.
        requires_safety_checker: warn when no safety checker is given (default False).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae->upscaler"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        upscaler: UPLiFTLatentUpscaler,
        safety_checker: StableDiffusionSafetyChecker = None,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = False,
    ):
        super().__init__(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            requires_safety_checker=requires_safety_checker,
        )
        if vae is not None and upscaler is not None:
            check_upscaler_matches_vae(vae, upscaler)
        self.register_modules(upscaler=upscaler)

    # ------------------------------------------------------------------ helpers
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents -> images in [-1, 1], like the parent pipeline's decode.

        The latents go to the execution device (not the VAE's current one), so that model CPU
        offloading works; the VAE's tiling setting applies."""
        latents = latents.to(device=self._execution_device, dtype=self.vae.dtype)
        return self.vae.decode(latents, return_dict=False)[0]

    def _safety_dtype(self) -> torch.dtype:
        for module in (self.text_encoder, self.unet):
            if module is not None:
                return module.dtype
        return torch.float32

    def check_upscale_inputs(self, upscale_factor, color_correction, return_base_images, output_type) -> None:
        """Validate the arguments this pipeline adds to ``StableDiffusionPipeline.__call__``."""
        if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, int) or upscale_factor not in UPSCALE_FACTORS:
            raise ValueError(
                f"`upscale_factor` must be one of {UPSCALE_FACTORS} (1: no upscaling), got {upscale_factor!r}."
            )
        check_flag("color_correction", color_correction)
        check_flag("return_base_images", return_base_images)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if upscale_factor > 1:
            if self.upscaler is None:
                raise ValueError("`upscale_factor` > 1 needs an `upscaler`; load one or pass upscale_factor=1.")
            check_upscaler_matches_vae(self.vae, self.upscaler)

    def _postprocess(self, images: torch.Tensor, output_type: str, nsfw: Optional[List[bool]]):
        denormalize = None if nsfw is None else [not flagged for flagged in nsfw]
        return self.image_processor.postprocess(images, output_type=output_type, do_denormalize=denormalize)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: List[int] = None,
        sigmas: List[float] = None,
        guidance_scale: float = 7.5,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: Optional[int] = 1,
        eta: float = 0.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: Optional[List[torch.Tensor]] = None,
        output_type: Optional[str] = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        guidance_rescale: float = 0.0,
        clip_skip: Optional[int] = None,
        callback_on_step_end: Optional[Callable] = None,
        callback_on_step_end_tensor_inputs: Optional[List[str]] = None,
        upscale_factor: int = 2,
        color_correction: bool = True,
        return_base_images: bool = False,
        **kwargs,
    ):
        r"""Generate images at ``height x width`` and upscale them ``upscale_factor`` times.

        Accepts every argument of ``StableDiffusionPipeline.__call__`` (same meaning; ``height``
        and ``width`` are the *base* size, by default the UNet's sample size x 8, 512 for
        SD1.5) plus:

        Args:
            upscale_factor: 1, 2, 4 or 8 (1: no upscaling). The output is ``upscale_factor *
                height`` x ``upscale_factor * width``.
            color_correction: shift each RGB channel of the upscaled image to the base image's
                mean (the authors' post-processing).
            return_base_images: also return the base-size images in ``base_images``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the upscaled latents
                multiplied by ``vae.config.scaling_factor``, the UNet's space).
            generator: also seeds the upscaler's noise channels.

        Returns:
            :class:`StableDiffusionUPLiFTPipelineOutput`, or with ``return_dict=False`` the tuple
            ``(images, nsfw_content_detected)``, plus ``base_images`` when requested.
        """
        self.check_upscale_inputs(upscale_factor, color_correction, return_base_images, output_type)
        base = super().__call__(
            prompt=prompt,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt,
            eta=eta,
            generator=generator,
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image=ip_adapter_image,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
            output_type="latent",
            return_dict=True,
            cross_attention_kwargs=cross_attention_kwargs,
            guidance_rescale=guidance_rescale,
            clip_skip=clip_skip,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=(
                ["latents"] if callback_on_step_end_tensor_inputs is None else callback_on_step_end_tensor_inputs
            ),
            **kwargs,
        )
        scaled_latents = base.images
        scaling = self.vae.config.scaling_factor
        unscaled = scaled_latents / scaling
        latent_output = output_type == "latent"
        needs_base_image = upscale_factor > 1 or not latent_output
        num_steps = int(math.log2(upscale_factor))
        stages = int(needs_base_image) + (num_steps > 0) + (num_steps > 0 and not latent_output)

        base_image = image = upscaled = None
        with self.progress_bar(total=max(stages, 1)) as progress:
            if needs_base_image:
                base_image = self._decode(unscaled)
                progress.update()
            if num_steps > 0:
                device = self._execution_device
                upscaled = self.upscaler(
                    unscaled.to(device=device),
                    to_unit_range(base_image).to(device=device),
                    num_steps=num_steps,
                    generator=generator,
                ).sample
                progress.update()
                if not latent_output:
                    image = self._decode(upscaled)
                    if color_correction:
                        corrected = color_correct(to_unit_range(image.float()), to_unit_range(base_image.float()))
                        image = (corrected * 2 - 1).to(image.dtype)
                    progress.update()
            elif not latent_output:
                image = base_image
            if stages == 0:
                progress.update()

        nsfw = None
        if latent_output:
            images = scaled_latents if upscaled is None else upscaled * scaling
            base_images = scaled_latents if return_base_images else None
        else:
            image, nsfw = self.run_safety_checker(image, self._execution_device, self._safety_dtype())
            images = self._postprocess(image, output_type, nsfw)
            base_images = None
            if return_base_images:
                if nsfw is not None:  # hide the base image of every flagged result as well
                    base_image = base_image.clone()
                    base_image[torch.tensor(nsfw, dtype=torch.bool, device=base_image.device)] = 0
                base_images = self._postprocess(base_image, output_type, nsfw)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, nsfw, base_images) if return_base_images else (images, nsfw)
        return StableDiffusionUPLiFTPipelineOutput(images=images, nsfw_content_detected=nsfw, base_images=base_images)
