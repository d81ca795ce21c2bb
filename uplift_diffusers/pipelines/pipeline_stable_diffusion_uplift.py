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
being passed) come from :class:`~uplift_diffusers.pipelines.pipeline_utils.UPLiFTComponentsMixin`. Loading a
plain Stable Diffusion pipeline (``from_pretrained`` / ``from_pipe`` without ``upscaler=``) adds
the authors' released UPLiFT model; ``upscaler=None`` gives plain Stable Diffusion output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..constants import UPLIFT_SD15_REPO_ID, UPSCALER_SUBFOLDER
from ..loaders.hub import hub_kwargs_of
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..utils.color_correction import color_correct
from ..utils.validation import check_flag, check_values
from .pipeline_utils import UPLiFTComponentsMixin, VAETilingMixin, check_upscaler_matches_vae, read_model_index

__all__ = ["StableDiffusionUPLiFTPipeline", "StableDiffusionUPLiFTPipelineOutput"]

#: Upscale factors of the text-to-image pipeline (1: no upscaling).
UPSCALE_FACTORS = (1, 2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")

logger = logging.get_logger(__name__)


def _saved_upscaler_entry(pretrained_model_name_or_path, kwargs: Dict[str, Any]) -> Optional[list]:
    """The ``upscaler`` entry of the pipeline's ``model_index.json``: ``[library, class]``,
    ``[None, None]`` when it was saved without an upscaler, ``[]`` when the index has no such
    entry (a plain Stable Diffusion pipeline), or ``None`` when the index cannot be read here."""
    index = read_model_index(pretrained_model_name_or_path, kwargs)
    entry = None if index is None else index.get(UPSCALER_SUBFOLDER, [])
    return list(entry) if isinstance(entry, (list, tuple)) else None


def load_default_upscaler(dtype=None, revision: Optional[str] = None, **hub_kwargs) -> UPLiFTLatentUpscaler:
    """The authors' released UPLiFT model (:data:`~uplift_diffusers.constants.UPLIFT_SD15_REPO_ID`),
    for a pipeline given no ``upscaler``: ``dtype`` as the pipeline's (a per-component dict is
    looked up under ``"upscaler"``, then ``"default"``), ``revision`` of the UPLiFT repository
    (not the pipeline's), and the pipeline's cache / offline / token settings."""
    if isinstance(dtype, dict):
        dtype = dtype.get(UPSCALER_SUBFOLDER, dtype.get("default"))
    logger.info(
        f"No `upscaler` given: loading the authors' UPLiFT release {UPLIFT_SD15_REPO_ID}"
        + (f" (revision {revision})" if revision else "")
        + "; pass `upscaler=None` for plain Stable Diffusion output or `upscaler=...` for another model."
    )
    return UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, revision=revision, dtype=dtype, **hub_kwargs)


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

    ``from_pretrained`` of a Stable Diffusion repository or folder without an ``upscaler``
    component (e.g. ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``) and ``from_pipe`` of a
    pipeline without one load the authors' released UPLiFT model, with the same dtype, cache,
    offline and token settings (``revision`` stays the pipeline's; ``upscaler_revision=`` pins the
    UPLiFT repository's) and one log line (INFO) saying so. ``upscaler=...`` selects another model,
    ``upscaler=None`` none (plain Stable Diffusion output).

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: as in ``StableDiffusionPipeline``.
        upscaler (:class:`~uplift_diffusers.UPLiFTLatentUpscaler` or ``None``): an UPLiFT model for
            this VAE's latent space (e.g. the authors' SD1.5-VAE model); ``None`` allows only
            ``upscale_factor=1``.
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

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; without ``upscaler=`` and without an ``upscaler``
        component in the folder / repository, the authors' released UPLiFT model is added (see
        the class docstring).

        Args:
            upscaler_revision: revision of the UPLiFT repository for that default (``revision``
                applies to the Stable Diffusion repository only).
            **kwargs: every argument of ``DiffusionPipeline.from_pretrained``.
        """
        upscaler_revision = kwargs.pop("upscaler_revision", None)
        no_default = "`upscaler` was passed" if UPSCALER_SUBFOLDER in kwargs else None
        if no_default is None:
            entry = _saved_upscaler_entry(pretrained_model_name_or_path, kwargs)
            if entry == []:  # a plain Stable Diffusion pipeline
                hub = {key: value for key, value in hub_kwargs_of(kwargs).items() if key != "revision"}
                dtype = kwargs.get("dtype") if kwargs.get("dtype") is not None else kwargs.get("torch_dtype")
                kwargs[UPSCALER_SUBFOLDER] = load_default_upscaler(dtype, upscaler_revision, **hub)
            elif entry and entry[0] is None:
                kwargs[UPSCALER_SUBFOLDER] = None  # diffusers needs a component saved as null passed explicitly
                no_default = "the pipeline was saved without an upscaler"
            elif entry:
                no_default = "the pipeline has its own upscaler"
        if upscaler_revision is not None and no_default is not None:
            raise ValueError(
                f"`upscaler_revision`={upscaler_revision!r} applies only to the default UPLiFT model, but {no_default}; "
                "leave it out."
            )
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``; a source pipeline without an ``upscaler`` gets the authors'
        released UPLiFT model unless ``upscaler=`` is passed (``None``: none). ``upscaler_revision``
        pins the UPLiFT repository's revision for that default."""
        upscaler_revision = kwargs.pop("upscaler_revision", None)
        if UPSCALER_SUBFOLDER not in kwargs:
            if UPSCALER_SUBFOLDER in pipeline.components:
                kwargs[UPSCALER_SUBFOLDER] = pipeline.components[UPSCALER_SUBFOLDER]
            else:
                kwargs[UPSCALER_SUBFOLDER] = load_default_upscaler(revision=upscaler_revision)
                upscaler_revision = None
        if upscaler_revision is not None:
            raise ValueError(f"`upscaler_revision`={upscaler_revision!r} applies only to the default UPLiFT model; leave it out.")
        return super().from_pipe(pipeline, **kwargs)

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
        """Validate the arguments this pipeline adds to ``StableDiffusionPipeline.__call__``
        (``upscale_factor`` already resolved: ``None`` is not accepted here)."""
        if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, int) or upscale_factor not in UPSCALE_FACTORS:
            raise ValueError(
                f"`upscale_factor` must be one of {UPSCALE_FACTORS} (1: no upscaling) or None, got {upscale_factor!r}."
            )
        check_flag("color_correction", color_correction)
        check_flag("return_base_images", return_base_images)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if upscale_factor > 1:
            if self.upscaler is None:
                raise ValueError(
                    f"`upscale_factor`={upscale_factor} needs an upscaler, but this pipeline has none (upscaler=None); "
                    "pass upscale_factor=1 (or leave it out), or set `pipe.upscaler` to an UPLiFTLatentUpscaler."
                )
            check_upscaler_matches_vae(self.vae, self.upscaler)

    @staticmethod
    def check_input_values(**tensors) -> None:
        """Raise ValueError naming the first of the given tensors (``latents``, ``prompt_embeds``,
        ...; None or a list of tensors allowed) that holds NaN or infinite values: checked once,
        where the data enters (the denoising, the upscaler and the decoder do not check values)."""
        for name, value in tensors.items():
            for index, tensor in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(tensor, torch.Tensor):
                    check_values(name if not isinstance(value, (list, tuple)) else f"{name}[{index}]", tensor)

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
        upscale_factor: Optional[int] = None,
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
                height`` x ``upscale_factor * width``. ``None`` (default): 2, or 1 for a pipeline
                without an upscaler (``upscaler=None``).
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
        if upscale_factor is None:
            upscale_factor = 1 if self.upscaler is None else 2
        self.check_upscale_inputs(upscale_factor, color_correction, return_base_images, output_type)
        self.check_input_values(
            latents=latents,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            ip_adapter_image_embeds=ip_adapter_image_embeds,
        )
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
                    VaeImageProcessor.denormalize(base_image).to(device=device),
                    num_steps=num_steps,
                    generator=generator,
                ).sample
                progress.update()
                if not latent_output:
                    image = self._decode(upscaled)
                    if color_correction:
                        corrected = color_correct(
                            VaeImageProcessor.denormalize(image.float()), VaeImageProcessor.denormalize(base_image.float())
                        )
                        image = VaeImageProcessor.normalize(corrected).to(image.dtype)
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
