"""Text-to-image with Stable Diffusion followed by UPLiFT latent upscaling: a call of
:class:`StableDiffusionUPLiFTPipeline` is its parent's own call with UPLiFT's decode hook
(:func:`~uplift_diffusers.apply_uplift`) on the VAE for its duration, so the parent's safety
checker and post-processing run on the upscaled image (the flow: docs/architecture.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models import AutoencoderKL, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..constants import UPLIFT_SD15_REPO_ID, UPSCALER_SUBFOLDER
from ..hooks import UPLiFTDecodeHook, check_uplift_settings, guard_latent_space
from ..loaders.hub import HUB_KWARGS
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..utils.memory import DEFAULT_MAX_MEMORY
from ..utils.validation import check_flag, check_values
from .pipeline_utils import HubComponentsMixin, TilingMixin, model_index
from .upscale_decode import upscale_latents_guided

__all__ = ["StableDiffusionUPLiFTPipeline", "StableDiffusionUPLiFTPipelineOutput"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: The tensor arguments whose values are checked once, where they enter (NaN / infinite).
_CHECKED_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds", "ip_adapter_image_embeds")

logger = logging.get_logger(__name__)


def _add_default_upscaler(kwargs: dict, own: Optional[str], dtype=None, **hub_kwargs) -> None:
    """Pop ``upscaler_revision`` from a loader's ``kwargs`` and, for a pipeline without an upscaler of
    its own (``own``: why it has one, else None), add the authors' released UPLiFT model at that
    revision, in the pipeline's ``dtype`` (a per-component dict: its ``"upscaler"``, else ``"default"``)."""
    revision = kwargs.pop("upscaler_revision", None)
    if own is not None:
        if revision is not None:
            raise ValueError(
                f"`upscaler_revision`={revision!r} applies only to the default UPLiFT model, but {own}; leave it out."
            )
        return
    if isinstance(dtype, dict):
        dtype = dtype.get(UPSCALER_SUBFOLDER, dtype.get("default"))
    logger.info(
        f"No `upscaler` given: loading the authors' UPLiFT release {UPLIFT_SD15_REPO_ID}"
        + (f" (revision {revision})" if revision else "")
        + "; pass `upscaler=None` for plain Stable Diffusion output or `upscaler=...` for another model."
    )
    upscaler = UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, revision=revision, dtype=dtype, **hub_kwargs)
    kwargs[UPSCALER_SUBFOLDER] = upscaler


@dataclass
class StableDiffusionUPLiFTPipelineOutput(StableDiffusionPipelineOutput):
    """Output of :class:`StableDiffusionUPLiFTPipeline`: ``StableDiffusionPipelineOutput``'s fields plus:

    Args:
        images: the upscaled images in the ``output_type`` (``"latent"``: see ``__call__``).
        base_images: with ``return_base_images=True``, the images at the base size in the same
            ``output_type`` (for ``"latent"``: the base latents); otherwise ``None``.
    """

    base_images: Optional[Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]] = None


class StableDiffusionUPLiFTPipeline(HubComponentsMixin, TilingMixin, StableDiffusionPipeline):
    r"""Stable Diffusion text-to-image at a base size, then UPLiFT latent upscaling by any factor >= 1.

    Inherits everything from diffusers' ``StableDiffusionPipeline`` (LoRA / textual inversion /
    IP-Adapter loading, schedulers, offloading) and adds the component ``upscaler``.

    ``from_pretrained`` of a Stable Diffusion repository or folder without an ``upscaler``
    component and ``from_pipe`` of a pipeline without one load the authors' released UPLiFT
    model, with the same dtype, cache, offline and token settings, and log it (INFO).
    ``upscaler=...`` selects another model, ``upscaler=None`` none (plain Stable Diffusion
    output); ``pipe.register_modules(upscaler=model)`` adds one later.

    Args:
        upscaler (:class:`~uplift_diffusers.UPLiFTLatentUpscaler` or ``None``): an UPLiFT model for
            this VAE's latent space; ``None`` allows only ``upscale_factor=1``.
        safety_checker: optional; when present it runs on the final (upscaled) images.
        requires_safety_checker: warn when no safety checker is given (default False).
        check_latent_space: as in :func:`~uplift_diffusers.apply_uplift`.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae->upscaler"
    _optional_components = ["safety_checker", "feature_extractor", "image_encoder", "upscaler"]

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
        check_latent_space: bool = True,
    ):
        super().__init__(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=safety_checker,
            feature_extractor=feature_extractor, image_encoder=image_encoder, requires_safety_checker=requires_safety_checker,
        )
        if vae is not None and upscaler is not None:
            guard_latent_space(vae, upscaler, check_latent_space)
        self.register_modules(upscaler=upscaler)
        self.register_to_config(check_latent_space=check_latent_space)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained`` (every argument), with the default upscaler (see the class)
        at the revision ``upscaler_revision`` (``revision`` is the Stable Diffusion repository's only)."""
        passed = UPSCALER_SUBFOLDER in kwargs
        index = None if passed else model_index(cls, pretrained_model_name_or_path, kwargs)
        entry = None if index is None else index.get(UPSCALER_SUBFOLDER)  # [library, class] or [None, None]
        if passed:
            _add_default_upscaler(kwargs, "`upscaler` was passed")
        elif index is None:
            kwargs.pop("upscaler_revision", None)  # no index readable here: diffusers says why
        elif entry:
            own = "the pipeline has its own upscaler" if entry[0] else "the pipeline was saved without an upscaler"
            _add_default_upscaler(kwargs, own)
        else:  # a plain Stable Diffusion pipeline
            hub = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs and key != "revision"}
            _add_default_upscaler(kwargs, None, kwargs.get("dtype") or kwargs.get("torch_dtype"), **hub)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``, with the default upscaler (see the class) at the revision
        ``upscaler_revision`` for a source pipeline without one."""
        own = "`upscaler` was passed" if UPSCALER_SUBFOLDER in kwargs else None
        if UPSCALER_SUBFOLDER in pipeline.components:
            own = "the source pipeline has its own upscaler"
        _add_default_upscaler(kwargs, own, kwargs.get("dtype"))
        return super().from_pipe(pipeline, **kwargs)

    def check_upscale_inputs(self, upscale_factor, output_size, color_correction, return_base_images, output_type,
                             back_projection_steps, max_memory, **kwargs) -> float:
        """Validate the arguments this pipeline adds to ``StableDiffusionPipeline.__call__``, and the
        values of its tensor arguments (``kwargs``: ``latents``, ``prompt_embeds``, ...); returns
        ``max_memory`` in bytes."""
        budget = check_uplift_settings(upscale_factor, output_size, color_correction, back_projection_steps, max_memory)
        check_flag("return_base_images", return_base_images)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if output_type == "latent" and (output_size is not None or not math.log2(upscale_factor).is_integer()):
            raise ValueError(
                "output_type='latent' takes a power-of-two `upscale_factor` (1, 2, 4, 8: latents exist only at "
                f"those sizes) and no `output_size`, got upscale_factor={upscale_factor!r}, "
                f"output_size={output_size!r}; pass such a factor, or an image output_type."
            )
        if output_size is not None or upscale_factor > 1:
            if self.upscaler is None:
                raise ValueError(
                    f"`upscale_factor`={upscale_factor} needs an upscaler, but this pipeline has none (upscaler=None); "
                    "pass upscale_factor=1 (or leave it out), or add one with `pipe.register_modules(upscaler=model)`."
                )
            guard_latent_space(self.vae, self.upscaler, self.config.check_latent_space)
        for name in _CHECKED_TENSORS:  # the denoising, the upscaler and the decoder do not check values
            value = kwargs.get(name)
            for index, tensor in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(tensor, torch.Tensor):
                    check_values(name if not isinstance(value, (list, tuple)) else f"{name}[{index}]", tensor)
        return budget

    @torch.no_grad()
    def __call__(
        self,
        *args,
        upscale_factor: Optional[float] = None,
        output_size: Optional[Tuple[int, int]] = None,
        color_correction: bool = True,
        back_projection_steps: int = 0,
        return_base_images: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        max_memory: Union[int, float, str] = DEFAULT_MAX_MEMORY,
        **kwargs,
    ):
        r"""Generate images at the base size (``height`` x ``width``) and upscale them.

        Takes every argument of ``StableDiffusionPipeline.__call__``, with the same meaning
        (``height`` and ``width`` are the *base* size: the UNet's sample size x 8 by default, 512
        for SD1.5; ``generator`` also seeds UPLiFT's noise), plus:

        Args:
            upscale_factor, output_size, color_correction, back_projection_steps, max_memory: as in
                :func:`~uplift_diffusers.apply_uplift` (:meth:`enable_tiling` sets the tiles); an
                ``upscale_factor`` of ``None`` (default) is 2, or 1 for a pipeline without an upscaler.
            return_base_images: also return the base-size images in ``base_images``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the upscaled latents
                multiplied by ``vae.config.scaling_factor``, the UNet's space; a power-of-two
                ``upscale_factor`` only).

        Returns:
            :class:`StableDiffusionUPLiFTPipelineOutput`, or with ``return_dict=False`` the tuple
            ``(images, nsfw_content_detected)``, plus ``base_images`` when requested.
        """
        if upscale_factor is None and output_size is None:
            upscale_factor = 1 if self.upscaler is None else 2
        budget = self.check_upscale_inputs(
            upscale_factor, output_size, color_correction, return_base_images, output_type, back_projection_steps, max_memory, **kwargs
        )
        if output_type == "latent":  # the base latents upscaled (a power-of-two factor, checked)
            latents = super().__call__(*args, output_type="latent", **kwargs).images
            base_images = latents if return_base_images else None
            scaling = self.vae.config.scaling_factor
            upscaled = upscale_latents_guided(self.upscaler, self.vae, latents / scaling, int(math.log2(upscale_factor)),
                                              kwargs.get("generator"), self.tiling_settings, self.progress_bar)
            images = latents if upscale_factor == 1 else upscaled.to(latents.dtype) * scaling
            nsfw = None
            self.maybe_free_model_hooks()
        else:  # without an upscaler the factor is 1: the hook hands the base images on untouched
            with UPLiFTDecodeHook(
                self, self.upscaler, upscale_factor=upscale_factor, output_size=output_size, color_correction=color_correction,
                back_projection_steps=back_projection_steps, tiling=self.tiling_settings, keep_base_images=return_base_images,
                max_memory=budget,
            ) as hook:
                out = super().__call__(*args, output_type=output_type, **kwargs)
            images, nsfw, base_images = out.images, out.nsfw_content_detected, None
            if return_base_images:  # those of the results the safety checker flagged are hidden (black)
                base, keep = hook.base_images[0], None if nsfw is None else [not flagged for flagged in nsfw]
                if keep is not None:
                    base = torch.where(torch.tensor(keep, device=base.device).view(-1, 1, 1, 1), base, 0.0)
                base_images = self.image_processor.postprocess(base, output_type=output_type, do_denormalize=keep)

        if not return_dict:
            return (images, nsfw, base_images) if return_base_images else (images, nsfw)
        return StableDiffusionUPLiFTPipelineOutput(images=images, nsfw_content_detected=nsfw, base_images=base_images)
