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

:class:`UPLiFTComponentsMixin` (shared with the super-resolution pipeline) makes
``save_pretrained`` record this package's components as ``["uplift_diffusers", "<Class>"]`` in
``model_index.json`` and makes ``from_pretrained`` rebuild them from a saved directory or Hub
repository without being passed.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

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
from .vae_loading import vae_scale_factor

__all__ = ["StableDiffusionUPLiFTPipeline", "StableDiffusionUPLiFTPipelineOutput", "UPLiFTComponentsMixin"]

LIBRARY_NAME = "uplift_diffusers"
#: Upscale factors of the text-to-image pipeline (1: no upscaling).
UPSCALE_FACTORS = (1, 2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# ---------------------------------------------------------------------------------------------
# Saving / loading this package's components inside diffusers pipelines
# ---------------------------------------------------------------------------------------------
def _package_library_tuple(module: Any) -> Optional[Tuple[str, str]]:
    """``("uplift_diffusers", class name)`` when ``module``'s class is exported by this package."""
    import uplift_diffusers

    cls = type(module)
    if cls.__module__.split(".")[0] == LIBRARY_NAME and getattr(uplift_diffusers, cls.__name__, None) is cls:
        return (LIBRARY_NAME, cls.__name__)
    return None


def _package_entries(config: Mapping[str, Any]) -> List[str]:
    """Names of the components that ``model_index.json`` records as defined in this package."""
    return [
        name
        for name, entry in config.items()
        if not name.startswith("_")
        and isinstance(entry, (list, tuple))
        and len(entry) == 2
        and isinstance(entry[0], str)
        and entry[0].split(".")[0] == LIBRARY_NAME
    ]


def resolve_package_entries(config: Mapping[str, Any], source: str = "model_index.json") -> Dict[str, Any]:
    """Rewrite ``["uplift_diffusers", "<Class>"]`` entries to ``[<defining module>, "<Class>"]``.

    diffusers resolves a component's save / load methods in the namespace of the library named
    in ``model_index.json``; the defining module (e.g. ``uplift_diffusers.modeling_uplift``)
    has ``ModelMixin`` in its namespace, the package root does not.
    """
    import uplift_diffusers

    resolved = dict(config)
    for name in _package_entries(config):
        library, class_name = config[name]
        if library != LIBRARY_NAME:
            continue
        component_cls = getattr(uplift_diffusers, class_name, None)
        if not isinstance(component_cls, type):
            raise ValueError(
                f"{source} names the component {name!r} as {[library, class_name]}, but uplift_diffusers has no "
                f"class {class_name!r}; upgrade uplift-diffusers or pass `{name}=...` to from_pretrained."
            )
        resolved[name] = [component_cls.__module__, class_name]
    return resolved


def _download_package_pipeline(repo_id: str, kwargs: Mapping[str, Any]) -> Optional[str]:
    """Fetch a Hub pipeline whose ``model_index.json`` names components of this package.

    diffusers' own download refuses component libraries it does not know, so the component
    folders are fetched here (only ``model_index.json`` and the listed folders, not the
    repository root) and the local snapshot path is returned. Returns ``None`` when the
    repository has no such component (then diffusers downloads it as usual).
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    hub_kwargs = {
        key: kwargs[key]
        for key in ("cache_dir", "force_download", "local_files_only", "token", "revision")
        if kwargs.get(key) is not None
    }
    index_file = hf_hub_download(repo_id, "model_index.json", **hub_kwargs)
    with open(index_file, encoding="utf-8") as handle:
        config = json.load(handle)
    if not _package_entries(config):
        return None
    folders = [
        name
        for name, entry in config.items()
        if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry and entry[0] is not None and name not in kwargs
    ]
    patterns = ["model_index.json"] + [f"{folder}/*" for folder in folders]
    return snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs)


class UPLiFTComponentsMixin:
    """Pipeline mixin: save and reload components defined in ``uplift_diffusers``.

    ``save_pretrained`` records this package's exported classes as ``["uplift_diffusers",
    "<Class>"]`` in ``model_index.json``; ``from_pretrained`` (local directory or Hub id) rebuilds
    them without being passed.
    """

    def register_modules(self, **kwargs):
        super().register_modules(**kwargs)
        for name, module in kwargs.items():
            entry = None if module is None else _package_library_tuple(module)
            if entry is not None:
                self.register_to_config(**{name: entry})

    def __setattr__(self, name: str, value: Any):
        super().__setattr__(name, value)
        # Reassigning a registered component (pipe.upscaler = ...) re-records its library.
        config = self.__dict__.get("_internal_dict")
        if value is not None and config is not None and isinstance(config.get(name), (list, tuple)):
            entry = _package_library_tuple(value)
            if entry is not None:
                self.register_to_config(**{name: entry})

    @classmethod
    def _dict_from_json_file(cls, json_file):
        return resolve_package_entries(super()._dict_from_json_file(json_file), source=str(json_file))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; also fetches Hub repositories holding this package's components.

        Accepts every argument of ``DiffusionPipeline.from_pretrained``; components passed as
        keyword arguments (e.g. ``upscaler=...``) are used as given.
        """
        location = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(os.path.expanduser(location)):
            snapshot = _download_package_pipeline(location, kwargs)
            if snapshot is not None:
                pretrained_model_name_or_path = snapshot
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


# ---------------------------------------------------------------------------------------------
# Shared helpers of the two pipelines
# ---------------------------------------------------------------------------------------------
def vae_latent_channels(vae: Any) -> int:
    """Latent channels of a diffusers-style VAE (``vae.config.latent_channels``)."""
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    if not isinstance(channels, int):
        raise ValueError(
            f"`vae` ({type(vae).__name__}) has no integer `config.latent_channels`; pass a diffusers "
            "AutoencoderKL / AutoencoderTiny or a uplift_diffusers TinyAutoencoder."
        )
    return channels


def check_upscaler_matches_vae(vae: Any, upscaler: Any) -> None:
    """Raise ValueError unless ``upscaler`` works in ``vae``'s latent space (channels and pixels per latent)."""
    if not isinstance(upscaler, UPLiFTLatentUpscaler):
        raise ValueError(f"`upscaler` must be an UPLiFTLatentUpscaler, got {type(upscaler).__name__}.")
    vae_channels = vae_latent_channels(vae)
    if upscaler.config.latent_channels != vae_channels:
        raise ValueError(
            f"`upscaler` expects latent_channels={upscaler.config.latent_channels} but the VAE "
            f"({type(vae).__name__}) has {vae_channels} latent channels; use an UPLiFT model trained for this VAE."
        )
    vae_factor = vae_scale_factor(vae)
    if upscaler.config.vae_scale_factor != vae_factor:
        raise ValueError(
            f"`upscaler` expects vae_scale_factor={upscaler.config.vae_scale_factor} pixels per latent but the VAE "
            f"({type(vae).__name__}) has {vae_factor}; use an UPLiFT model trained for this VAE."
        )


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (VAE convention) -> [0, 1], clamped."""
    return (image / 2 + 0.5).clamp(0, 1)


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


class StableDiffusionUPLiFTPipeline(UPLiFTComponentsMixin, StableDiffusionPipeline):
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

    # ------------------------------------------------------------------ VAE memory options
    def enable_vae_tiling(self) -> None:
        """Decode (and encode) with the VAE in overlapping tiles, to save memory.

        Useful from about 2048 px outputs (e.g. 512 px with ``upscale_factor=4``), where a
        single-pass decode of the SD VAE needs tens of GB. Tile seams are blended, so the output
        differs slightly from an untiled decode.
        """
        if not hasattr(self.vae, "enable_tiling"):
            raise ValueError(f"The VAE ({type(self.vae).__name__}) does not support tiled decoding.")
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Go back to decoding in one pass (after :meth:`enable_vae_tiling`)."""
        if hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()

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
