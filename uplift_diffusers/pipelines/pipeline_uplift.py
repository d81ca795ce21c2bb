"""UPLiFT for any Stable Diffusion 1.5-family diffusers pipeline.

:class:`UPLiFTPipeline` wraps a pipeline that returns SD1.5-VAE latents with
``output_type="latent"`` (text-to-image, img2img, inpainting, ControlNet, PAG, LCM / Hyper-SD
LoRAs, IP-Adapter, ...)::

    base = StableDiffusionControlNetPipeline.from_pretrained(SD15_MODEL_ID, controlnet=controlnet)
    pipe = UPLiFTPipeline.from_pipe(base)                    # + the authors' UPLiFT release
    image = pipe(prompt, image=edges, upscale_factor=2).images[0]

A call runs the base pipeline with its own arguments to latents, decodes the base image (the
guide), upscales with UPLiFT and decodes (the shared upscale-and-decode stage,
:class:`~uplift_diffusers.pipelines.upscale_decode.UPLiFTUpscaleMixin`), colour-corrects, and
runs the base pipeline's safety checker on the final images.

The wrapper owns one component, ``upscaler``; every other component *is* the base pipeline's
(the same objects: nothing is loaded twice). Public attributes and methods it does not define
are the base pipeline's (``pipe.unet``, ``pipe.load_lora_weights(...)``, ``pipe.scheduler = ...``).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging as std_logging
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging

from ..constants import SD15_VAE_SCALING_FACTOR, UPSCALER_SUBFOLDER
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..utils.back_projection import check_back_projection_steps
from ..utils.validation import check_flag
from .pipeline_stable_diffusion_uplift import load_default_upscaler
from .pipeline_utils import TilingMixin, check_upscaler_matches_vae, read_model_index
from .upscale_decode import UPLiFTUpscaleMixin, check_latent_factor, check_upscale_factor

__all__ = ["UPLiFTPipeline", "UPLiFTPipelineOutput", "check_base_pipeline"]

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
#: ``from_pipe`` / ``from_pretrained`` without ``upscaler=``: the authors' release.
_DEFAULT = object()


@dataclass
class UPLiFTPipelineOutput(BaseOutput):
    """Output of :class:`UPLiFTPipeline`.

    Args:
        images: the upscaled images, as PIL images, a ``B x H x W x 3`` numpy array, a
            ``B x 3 x H x W`` tensor, or, for ``output_type="latent"``, the upscaled latents in the
            UNet's scaled space.
        nsfw_content_detected: per image, whether the base pipeline's safety checker flagged it
            (``None`` without one).
        base_images: with ``return_base_images=True``, the base pipeline's images in the same
            ``output_type`` (for ``"latent"``: its latents); otherwise ``None``.
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    nsfw_content_detected: Optional[List[bool]] = None
    base_images: Optional[Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]] = None


def _call_parameters(pipeline) -> Dict[str, inspect.Parameter]:
    return dict(inspect.signature(pipeline.__call__).parameters)


def check_base_pipeline(base_pipeline: Any) -> None:
    """Raise ValueError unless ``base_pipeline`` can be wrapped: a diffusers pipeline without an
    upscaler of its own, whose ``__call__`` takes ``output_type`` and ``return_dict``, with a VAE
    in the Stable Diffusion 1.5 latent space (4 channels, 8 pixels per latent,
    ``scaling_factor`` 0.18215, no shift). Needs no upscaler: runs before the default one loads."""
    if not isinstance(base_pipeline, DiffusionPipeline):
        raise ValueError(
            f"`base_pipeline` must be a diffusers DiffusionPipeline (e.g. StableDiffusionControlNetPipeline), "
            f"got {type(base_pipeline).__name__}."
        )
    name = type(base_pipeline).__name__
    components = base_pipeline.components
    if UPSCALER_SUBFOLDER in components:
        raise ValueError(
            f"`base_pipeline` ({name}) already has an `upscaler`: call it directly, or wrap the plain pipeline, "
            f"e.g. `UPLiFTPipeline.from_pipe(StableDiffusionPipeline.from_pipe(pipe, upscaler=None))`."
        )
    parameters = _call_parameters(base_pipeline)
    missing = [arg for arg in ("output_type", "return_dict") if arg not in parameters]
    if missing:
        raise ValueError(
            f"`base_pipeline` ({name}) cannot return latents: its __call__ has no {', '.join(f'`{m}`' for m in missing)}; "
            "UPLiFTPipeline wraps pipelines that accept `output_type='latent'` (the Stable Diffusion 1.5 family)."
        )
    vae = components.get("vae")
    if vae is None:
        raise ValueError(f"`base_pipeline` ({name}) has no `vae`; UPLiFTPipeline decodes with the base pipeline's VAE.")
    config = getattr(vae, "config", None)
    scaling = getattr(config, "scaling_factor", None)
    shift = getattr(config, "shift_factor", None)
    if not isinstance(scaling, (int, float)) or not math.isclose(scaling, SD15_VAE_SCALING_FACTOR, rel_tol=1e-6) or shift:
        raise ValueError(
            f"`base_pipeline` ({name}) has a VAE ({type(vae).__name__}) with scaling_factor={scaling}"
            f"{f', shift_factor={shift}' if shift else ''}, but UPLiFTPipeline works in the Stable Diffusion 1.5 VAE's "
            f"latent space (scaling_factor={SD15_VAE_SCALING_FACTOR}, no shift), the one the UPLiFT model was trained on "
            "(an SDXL VAE has scaling_factor=0.13025). Wrap an SD1.5-family pipeline with the SD1.5 VAE, or upscale its "
            "images with UPLiFTSuperResolutionPipeline and an UPLiFT model trained for this VAE."
        )


class UPLiFTPipeline(UPLiFTUpscaleMixin, TilingMixin, DiffusionPipeline):
    r"""UPLiFT latent upscaling after any SD1.5-family diffusers pipeline.

    Build it with :meth:`from_pipe` (or ``UPLiFTPipeline(base_pipeline, upscaler)``). Calling it
    takes the base pipeline's own arguments plus ``upscale_factor``, ``color_correction``,
    ``return_base_images`` and ``output_type``.

    Args:
        base_pipeline: the pipeline to wrap (see :func:`check_base_pipeline`). Its components are
            this pipeline's components (the same objects).
        upscaler: an :class:`~uplift_diffusers.UPLiFTLatentUpscaler` for the SD1.5 VAE (e.g. the
            authors' release).

    ``enable_tiling`` / ``disable_tiling`` act on the upscaler and the shared VAE;
    ``enable_model_cpu_offload`` offloads the base pipeline's models in its own order, then the
    upscaler; ``set_progress_bar_config`` applies to the base pipeline too. ``save_pretrained``
    writes the base pipeline's folder plus ``upscaler/``; :meth:`from_pretrained` reads it back.
    """

    _optional_components = []

    def __init__(self, base_pipeline: DiffusionPipeline, upscaler: UPLiFTLatentUpscaler):
        super().__init__()
        if upscaler is None:
            raise ValueError(
                "`upscaler` is None: UPLiFTPipeline needs an UPLiFTLatentUpscaler; call the base pipeline itself for "
                "plain output, or leave `upscaler` out of `from_pipe` to use the authors' release."
            )
        check_base_pipeline(base_pipeline)
        check_upscaler_matches_vae(base_pipeline.components["vae"], upscaler)
        object.__setattr__(self, "base_pipeline", base_pipeline)
        self.register_modules(upscaler=upscaler)
        if base_pipeline.name_or_path is not None:
            self.register_to_config(_name_or_path=base_pipeline.name_or_path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(upscaler={type(self.upscaler).__name__}) over {self.base_pipeline!r}"

    # ------------------------------------------------------------------ the base pipeline's parts
    def __getattr__(self, name: str):
        """Public attributes this class does not define are the base pipeline's (components,
        ``image_processor``, ``load_lora_weights``, ...)."""
        base = self.__dict__.get("base_pipeline")
        if base is not None and not name.startswith("_"):
            try:
                return getattr(base, name)
            except AttributeError:
                pass
        return super().__getattr__(name)

    def __setattr__(self, name: str, value: Any):
        """Assigning one of the base pipeline's components (``pipe.scheduler = ...``) replaces it
        in the base pipeline, so both keep sharing it."""
        base = self.__dict__.get("base_pipeline")
        if base is not None and name != UPSCALER_SUBFOLDER and isinstance(base.config.get(name), (list, tuple)):
            setattr(base, name, value)
            return
        super().__setattr__(name, value)

    @property
    def components(self) -> Dict[str, Any]:
        """The base pipeline's components (the same objects) plus ``upscaler``."""
        return {**self.base_pipeline.components, UPSCALER_SUBFOLDER: self.upscaler}

    @property
    def model_cpu_offload_seq(self) -> Optional[str]:
        """The base pipeline's offload order, then the upscaler (it runs last)."""
        sequence = self.base_pipeline.model_cpu_offload_seq
        return None if sequence is None else f"{sequence}->{UPSCALER_SUBFOLDER}"

    @property
    def _exclude_from_cpu_offload(self) -> List[str]:
        return list(self.base_pipeline._exclude_from_cpu_offload)

    @property
    def device(self) -> torch.device:
        return self.base_pipeline.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_pipeline.dtype

    def to(self, *args, **kwargs):
        """Move / cast the base pipeline and the upscaler (as ``DiffusionPipeline.to``)."""
        self.base_pipeline.to(*args, **kwargs)
        super().to(*args, **kwargs)
        return self

    def set_progress_bar_config(self, **kwargs):
        """Configure this pipeline's progress bar (the upscaling stages) and the base pipeline's."""
        super().set_progress_bar_config(**kwargs)
        self.base_pipeline.set_progress_bar_config(**kwargs)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pipe(cls, pipeline: DiffusionPipeline, upscaler: Any = _DEFAULT, upscaler_revision: Optional[str] = None, **kwargs):
        """Wrap ``pipeline``, sharing its components.

        Args:
            pipeline: an SD1.5-family pipeline (an ``UPLiFTPipeline`` is unwrapped, keeping its
                upscaler unless ``upscaler`` is given).
            upscaler: the UPLiFT model; left out: the authors' release
                (:data:`~uplift_diffusers.constants.UPLIFT_SD15_REPO_ID`), in the VAE's dtype and on
                the pipeline's device.
            upscaler_revision: revision of the authors' repository for that default.
            **kwargs: components or settings to replace in the base pipeline: it is rebuilt with
                ``type(pipeline).from_pipe(pipeline, **kwargs)`` (diffusers' rules, e.g. ``dtype``).
        """
        if isinstance(pipeline, UPLiFTPipeline):
            if upscaler is _DEFAULT:
                upscaler = pipeline.upscaler
            pipeline = pipeline.base_pipeline
        if kwargs:
            pipeline = type(pipeline).from_pipe(pipeline, **kwargs)
        check_base_pipeline(pipeline)
        if upscaler is _DEFAULT:
            vae = pipeline.components["vae"]
            upscaler = load_default_upscaler(dtype=vae.dtype, revision=upscaler_revision).to(pipeline.device)
        elif upscaler_revision is not None:
            raise ValueError(
                f"`upscaler_revision`={upscaler_revision!r} applies only to the default UPLiFT model, but `upscaler` was "
                "passed; leave it out."
            )
        return cls(pipeline, upscaler)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, upscaler: Any = _DEFAULT, upscaler_revision: Optional[str] = None, **kwargs):
        """Load the base pipeline with ``DiffusionPipeline.from_pretrained(pretrained_model_name_or_path,
        **kwargs)`` (the class its ``model_index.json`` names; ``kwargs`` as diffusers', e.g.
        ``controlnet=``, ``dtype=``) and wrap it. The upscaler: ``upscaler=`` if given, else the
        folder's ``upscaler/`` (written by :meth:`save_pretrained`), else the authors' release."""
        index = read_model_index(pretrained_model_name_or_path, kwargs) or {}
        saved = index.get(UPSCALER_SUBFOLDER)
        use_saved = upscaler is _DEFAULT and isinstance(saved, (list, tuple)) and bool(saved) and saved[0] is not None
        location = os.fspath(pretrained_model_name_or_path)
        if use_saved and upscaler_revision is not None:
            raise ValueError(
                f"`upscaler_revision`={upscaler_revision!r} applies only to the default UPLiFT model, but {location} has "
                "its own upscaler; leave it out."
            )
        if use_saved and not os.path.isdir(location):
            raise ValueError(
                f"{location} is a Hub repository holding an UPLiFTPipeline; download it first "
                "(huggingface_hub.snapshot_download) and load the folder, or pass `upscaler=...`."
            )
        with _without_upscaler_notices():  # the base class is told about `upscaler`, which this class loads
            base = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        if use_saved:
            vae = base.components.get("vae")
            upscaler = UPLiFTLatentUpscaler.from_pretrained(
                os.path.join(location, UPSCALER_SUBFOLDER), dtype=None if vae is None else vae.dtype
            ).to(base.device)
        return cls.from_pipe(base, upscaler=upscaler, upscaler_revision=upscaler_revision)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, variant: Optional[str] = None,
                        max_shard_size=None, push_to_hub: bool = False, **kwargs):
        """Save the base pipeline (diffusers' layout, its own ``_class_name``) and the upscaler in
        ``upscaler/``, recorded in ``model_index.json``. ``DiffusionPipeline.from_pretrained`` of the
        folder gives the base pipeline; :meth:`from_pretrained` gives this wrapper back."""
        if push_to_hub:
            raise ValueError(
                "UPLiFTPipeline.save_pretrained does not push to the Hub: save to a folder, then upload it with "
                "`huggingface_hub.upload_folder`."
            )
        if kwargs:
            raise ValueError(f"Unexpected arguments {sorted(kwargs)} for UPLiFTPipeline.save_pretrained.")
        options = dict(safe_serialization=safe_serialization, variant=variant)
        if max_shard_size is not None:
            options["max_shard_size"] = max_shard_size
        self.base_pipeline.save_pretrained(save_directory, **options)
        self.upscaler.save_pretrained(os.path.join(save_directory, UPSCALER_SUBFOLDER), **options)
        index_file = os.path.join(save_directory, self.config_name)
        with open(index_file, encoding="utf-8") as handle:
            index = json.load(handle)
        index[UPSCALER_SUBFOLDER] = list(self.config[UPSCALER_SUBFOLDER])
        with open(index_file, "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=2, sort_keys=True)
            handle.write("\n")

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self, upscale_factor, color_correction, return_base_images, output_type, base_kwargs, back_projection_steps=0
    ) -> None:
        """Validate this pipeline's own arguments and the components, before the base pipeline runs."""
        check_base_pipeline(self.base_pipeline)  # components may have been swapped since construction
        check_upscaler_matches_vae(self.vae, self.upscaler)
        check_flag("color_correction", color_correction)
        check_back_projection_steps(back_projection_steps)
        check_flag("return_base_images", return_base_images)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        check_upscale_factor(upscale_factor)
        check_latent_factor(upscale_factor, output_type)
        if upscale_factor != 1:
            if base_kwargs.get("padding_mask_crop") is not None:
                raise ValueError(
                    "`padding_mask_crop` pastes the inpainted crop back into the original image at the base size, which "
                    f"cannot be upscaled afterwards; leave it out or use upscale_factor=1 (got {upscale_factor!r})."
                )

    # ------------------------------------------------------------------ call
    def _run_safety_checker(self, image: torch.Tensor):
        """The base pipeline's ``run_safety_checker`` on images in [-1, 1]: (images, flags or None)."""
        run = getattr(self.base_pipeline, "run_safety_checker", None)
        if run is None:
            return image, None
        return run(image, self._execution_device, self._safety_dtype())

    def _image_processor(self) -> VaeImageProcessor:
        """The base pipeline's ``image_processor`` (so images convert as the base pipeline's do)."""
        processor = getattr(self.base_pipeline, "image_processor", None)
        return processor if isinstance(processor, VaeImageProcessor) else VaeImageProcessor(
            vae_scale_factor=self.upscaler.config.vae_scale_factor
        )

    @torch.no_grad()
    def __call__(
        self,
        *args,
        upscale_factor: float = 2,
        color_correction: bool = True,
        return_base_images: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        back_projection_steps: int = 0,
        **kwargs,
    ):
        r"""Run the base pipeline with ``*args`` / ``**kwargs`` (its own arguments: ``prompt``,
        ``image``, ``mask_image``, ``generator``, ...) and upscale its result.

        Args:
            upscale_factor: any real number >= 1: the output side is ``round(upscale_factor x``
                base side). 1 returns exactly what the base pipeline returns.
            color_correction: shift each RGB channel of the upscaled image to the base image's mean.
            return_base_images: also return the base pipeline's images in ``base_images``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (the upscaled latents x
                ``vae.config.scaling_factor``; power-of-two factors only).
            return_dict: return an :class:`UPLiFTPipelineOutput` instead of a tuple.
            back_projection_steps: rounds of back-projection of the upscaled image onto the base
                image (:mod:`uplift_diffusers.utils.back_projection`). Default 0, the paper's output.

        ``generator`` (a base pipeline argument) also seeds the upscaler's noise.

        Returns:
            :class:`UPLiFTPipelineOutput`, or with ``return_dict=False`` the tuple ``(images,
            nsfw_content_detected)``, plus ``base_images`` when requested.
        """
        self.check_inputs(upscale_factor, color_correction, return_base_images, output_type, kwargs, back_projection_steps)
        if upscale_factor == 1:  # exactly the base pipeline's output
            result = self.base_pipeline(*args, output_type=output_type, return_dict=False, **kwargs)
            images = result[0]
            nsfw = result[1] if len(result) > 1 and output_type != "latent" else None
            self.maybe_free_model_hooks()
            return self._output(images, nsfw, images if return_base_images else None, return_dict, return_base_images)

        scaled_latents = self.base_pipeline(*args, output_type="latent", return_dict=False, **kwargs)[0]
        scaling = self.vae.config.scaling_factor
        base_image, result = self.upscale_base_latents(
            scaled_latents / scaling, upscale_factor, output_type, kwargs.get("generator"), color_correction,
            back_projection_steps,
        )
        if output_type == "latent":
            images, nsfw = scaled_latents if result is None else result * scaling, None
            base_images = scaled_latents if return_base_images else None
        else:
            images, nsfw, base_images = self.finish_images(
                result, base_image, output_type, return_base_images, self._run_safety_checker, self._image_processor()
            )
        self.maybe_free_model_hooks()
        return self._output(images, nsfw, base_images, return_dict, return_base_images)

    @staticmethod
    def _output(images, nsfw, base_images, return_dict: bool, return_base_images: bool):
        if not return_dict:
            return (images, nsfw, base_images) if return_base_images else (images, nsfw)
        return UPLiFTPipelineOutput(images=images, nsfw_content_detected=nsfw, base_images=base_images)


class _DropUpscalerNotices(std_logging.Filter):
    """Drops diffusers' notices that the base pipeline class does not expect ``upscaler``."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return f"'{UPSCALER_SUBFOLDER}'" not in record.getMessage()


@contextlib.contextmanager
def _without_upscaler_notices():
    """While a base pipeline loads from a folder saved by :meth:`UPLiFTPipeline.save_pretrained`:
    diffusers would warn (twice) that its ``model_index.json`` names an unexpected ``upscaler``."""
    loggers = [logging.get_logger(name) for name in ("diffusers.configuration_utils", "diffusers.pipelines.pipeline_utils")]
    notice_filter = _DropUpscalerNotices()
    for logger_ in loggers:
        logger_.addFilter(notice_filter)
    try:
        yield
    finally:
        for logger_ in loggers:
            logger_.removeFilter(notice_filter)
