"""Image super-resolution with a VAE and UPLiFT: encode, upscale the latents, decode.

For every input image (any size, any PIL mode, numpy array or tensor)::

    image (RGB, [0, 1], H x W) -> pad to a multiple of 8 (reflection; replication when too small)
      -> VAE encode (posterior mode, unscaled)                 latents  H/8 x W/8
      -> upscaler(latents, padded image, num_steps=log2(f))    latents  f H/8 x f W/8
      -> VAE decode -> crop to f H x f W -> colour correction against the input

Images are converted to RGB first; a transparent image is composited on a white background
(the alpha channel is not carried to the output).

This module also holds what both pipelines of the package share (and that needs no Stable
Diffusion import): :class:`UPLiFTComponentsMixin`, which makes ``save_pretrained`` record this
package's components as ``["uplift_diffusers", "<Class>"]`` in ``model_index.json`` and makes
``from_pretrained`` rebuild them from a saved directory or Hub repository,
:class:`VAETilingMixin` (``enable_vae_tiling`` / ``disable_vae_tiling``), and the checks that an
upscaler matches a VAE.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL, AutoencoderTiny
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from .color_correction import color_correct
from .modeling_uplift import UPLiFTLatentUpscaler
from .tiny_autoencoder import TinyAutoencoder
from .vae_loading import decode_latents, encode_latents, vae_scale_factor

__all__ = [
    "UPLiFTSuperResolutionPipeline",
    "UPLiFTComponentsMixin",
    "VAETilingMixin",
    "UPLiFTSuperResolutionPipelineOutput",
    "images_to_tensors",
    "pad_to_multiple",
    "SUPER_RESOLUTION_FACTORS",
]

LIBRARY_NAME = "uplift_diffusers"
#: Upscale factors of the super-resolution pipeline (powers of two; one UPLiFT step per 2x).
SUPER_RESOLUTION_FACTORS = (2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt")
# Float inputs this far outside [0, 1] are accepted (and clamped): rounding of resampled images.
_RANGE_TOLERANCE = 1e-3
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_PREMULTIPLIED_MODES = ("RGBa", "La")

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]


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
class VAETilingMixin:
    """Pipeline mixin: ``enable_vae_tiling`` / ``disable_vae_tiling`` acting on ``self.vae``."""

    def enable_vae_tiling(self) -> None:
        """Encode and decode with the VAE in overlapping tiles, to save memory on very large outputs.

        Useful from about 2048 px outputs (e.g. 512 px with ``upscale_factor=4``), where a
        single-pass decode of the SD VAE needs tens of GB. Tile seams are blended, so the output
        differs slightly from an untiled decode. Raises ``ValueError`` for a VAE without
        ``enable_tiling``.
        """
        if not hasattr(self.vae, "enable_tiling"):
            raise ValueError(f"The VAE ({type(self.vae).__name__}) does not support tiled decoding.")
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Go back to single-pass encoding and decoding (after :meth:`enable_vae_tiling`)."""
        if hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()


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
# Input conversion: everything becomes 1 x 3 x H x W float32 tensors in [0, 1]
# ---------------------------------------------------------------------------------------------
def _composite_on_white(pixels: np.ndarray) -> np.ndarray:
    """H x W x 4 (RGB + alpha, [0, 1]) -> H x W x 3: the image over a white background."""
    rgb, alpha = pixels[..., :3], pixels[..., 3:4]
    return rgb * alpha + (1.0 - alpha)


def _pil_to_array(image: PIL.Image.Image, where: str) -> np.ndarray:
    """A PIL image of any mode -> H x W x 3 float32 in [0, 1]."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "I":  # 32-bit integer; PIL opens 16-bit PNGs in this mode
        values = np.asarray(image).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"{where}: a mode 'I' image must hold 16-bit values in [0, 65535], got [{low}, {high}]; "
                "rescale it, or pass a float array in [0, 1]."
            )
        return np.repeat((values.astype(np.float32) / 65535.0)[..., None], 3, axis=2)
    if mode == "F":  # PIL's convention for float images: the 0..255 scale of mode "L"
        values = np.asarray(image).astype(np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"{where}: the mode 'F' image holds NaN or infinite values.")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"{where}: a mode 'F' image must hold values in [0, 255] (PIL's scale), got [{low:.4g}, {high:.4g}]; "
                "pass a float numpy array in [0, 1] instead."
            )
        return np.repeat((values / 255.0)[..., None], 3, axis=2)
    if mode in _PREMULTIPLIED_MODES:  # colour already multiplied by alpha: over white = colour + (1 - alpha)
        values = np.asarray(image).astype(np.float32) / 255.0
        colour, alpha = values[..., :-1], values[..., -1:]
        composited = colour + (1.0 - alpha)
        return np.repeat(composited, 3, axis=2) if composited.shape[-1] == 1 else composited
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
        return _composite_on_white(rgba)
    return np.asarray(image.convert("RGB")).astype(np.float32) / 255.0


def _check_float_range(values: torch.Tensor, where: str) -> torch.Tensor:
    if not torch.isfinite(values).all():
        raise ValueError(f"{where} contains NaN or infinite values; pass finite values in [0, 1].")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{where} must hold values in [0, 1], got [{low:.4g}, {high:.4g}]; divide 8-bit values by 255 "
            "(or pass uint8), convert [-1, 1] images with x / 2 + 0.5."
        )
    return values.clamp(0.0, 1.0)


def _to_unit_float(values: torch.Tensor, where: str) -> torch.Tensor:
    """uint8 / uint16 / floating tensor -> float32 in [0, 1]."""
    if values.dtype == torch.uint8:
        return values.float() / 255.0
    if values.dtype == torch.uint16:
        return values.float() / 65535.0
    if values.is_floating_point():
        return _check_float_range(values.float(), where)
    raise ValueError(f"{where} has dtype {values.dtype}; pass uint8, uint16 or floating-point values in [0, 1].")


def _channels_to_rgb(batch: torch.Tensor, where: str) -> torch.Tensor:
    """B x C x H x W with C in {1, 3, 4} -> B x 3 x H x W (gray replicated, alpha composited on white)."""
    channels = batch.shape[1]
    if channels == 1:
        return batch.expand(-1, 3, -1, -1)
    if channels == 3:
        return batch
    if channels == 4:
        rgb, alpha = batch[:, :3], batch[:, 3:4]
        return rgb * alpha + (1.0 - alpha)
    raise ValueError(
        f"{where} has {channels} channels; pass 1 (gray), 3 (RGB) or 4 (RGBA) channels."
    )


def _check_size(height: int, width: int, where: str) -> None:
    if height < 1 or width < 1:
        raise ValueError(f"{where} has zero size ({height} x {width}); pass images of at least 1 x 1 pixels.")


def _numpy_to_tensors(array: np.ndarray, where: str) -> List[torch.Tensor]:
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.floating) or array.dtype in (np.uint8, np.uint16)):
        raise ValueError(f"{where} has dtype {array.dtype}; pass uint8, uint16 or float arrays in [0, 1].")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(
            f"{where} has shape {array.shape}; numpy images are H x W, H x W x C or B x H x W x C."
        )
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{where} has shape {array.shape}: the last axis must be the channels (1, 3 or 4); numpy images are "
            "H x W x C (pass a torch tensor for C x H x W)."
        )
    if array.shape[0] == 0:
        raise ValueError(f"{where} is an empty batch (shape {array.shape}); pass at least one image.")
    _check_size(array.shape[1], array.shape[2], where)
    if array.dtype == np.uint16:
        tensor = torch.from_numpy(array.astype(np.float32) / 65535.0)
    else:
        # a copy when the array is read-only (e.g. np.asarray of a PIL image): torch needs writable memory
        tensor = torch.from_numpy(np.ascontiguousarray(array) if array.flags.writeable else np.array(array))
    batch = _channels_to_rgb(_to_unit_float(tensor, where).permute(0, 3, 1, 2), where)
    return [image[None].contiguous() for image in batch]


def _tensor_to_tensors(tensor: torch.Tensor, where: str) -> List[torch.Tensor]:
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4:
        raise ValueError(f"{where} has shape {tuple(tensor.shape)}; tensors are C x H x W or B x C x H x W.")
    if tensor.shape[0] == 0:
        raise ValueError(f"{where} is an empty batch (shape {tuple(tensor.shape)}); pass at least one image.")
    _check_size(tensor.shape[2], tensor.shape[3], where)
    if tensor.shape[1] not in (1, 3, 4):
        raise ValueError(
            f"{where} has shape {tuple(tensor.shape)}: dimension 1 must be the channels (1, 3 or 4); tensors are "
            "C x H x W or B x C x H x W (pass a numpy array for H x W x C)."
        )
    batch = _channels_to_rgb(_to_unit_float(tensor.detach().cpu(), where), where)
    return [image[None].contiguous() for image in batch]


def images_to_tensors(image: Union[ImageInput, Sequence[ImageInput]]) -> List[torch.Tensor]:
    """Convert the pipeline's ``image`` argument to a list of ``1 x 3 x H x W`` float32 tensors in [0, 1].

    Accepted: a PIL image of any mode (16-bit modes scaled by 65535, mode ``"F"`` read on PIL's
    0..255 scale, palette / CMYK / YCbCr / ... converted by PIL), a numpy array (``H x W``,
    ``H x W x C`` or ``B x H x W x C``; uint8, uint16 or float in [0, 1]), a tensor (``C x H x W`` or
    ``B x C x H x W``; float in [0, 1] or uint8), or a list of them. One or four channels mean
    gray or RGBA. Transparent images are composited on white.

    Raises:
        ValueError: an empty list, a zero-size image, an unknown type, dtype, layout or value range.
    """
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if not items:
        raise ValueError("`image` is an empty list; pass at least one image.")
    tensors: List[torch.Tensor] = []
    for index, item in enumerate(items):
        where = "`image`" if len(items) == 1 and not isinstance(image, (list, tuple)) else f"`image[{index}]`"
        if isinstance(item, PIL.Image.Image):
            _check_size(item.height, item.width, where)
            array = _pil_to_array(item, where)
            tensors.append(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].contiguous())
        elif isinstance(item, np.ndarray):
            tensors.extend(_numpy_to_tensors(item, where))
        elif isinstance(item, torch.Tensor):
            tensors.extend(_tensor_to_tensors(item, where))
        else:
            raise ValueError(
                f"{where} has type {type(item).__name__}; pass a PIL image, a numpy array, a torch tensor or a list of them."
            )
    return tensors


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``B x C x H x W`` at the bottom and right to multiples of ``multiple``.

    Reflection padding, or replication along a side shorter than the padding it needs (where
    reflection is undefined).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"`image` must be a B x C x H x W tensor, got {getattr(image, 'shape', type(image).__name__)}.")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"`multiple` must be an int >= 1, got {multiple!r}.")
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_w:
        image = F.pad(image, (0, pad_w, 0, 0), mode="reflect" if pad_w < width else "replicate")
    if pad_h:
        image = F.pad(image, (0, 0, 0, pad_h), mode="reflect" if pad_h < height else "replicate")
    return image


def _size_groups(tensors: List[torch.Tensor]) -> List[List[int]]:
    """Indices of the images grouped by size, in order of first appearance."""
    groups: Dict[Tuple[int, int], List[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    return list(groups.values())


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class UPLiFTSuperResolutionPipelineOutput(ImagePipelineOutput):
    """Output of :class:`UPLiFTSuperResolutionPipeline`.

    Args:
        images: one image per input image, ``upscale_factor`` times its size: a list of RGB PIL
            images (``"pil"``); for ``"np"`` a ``B x H x W x 3`` float array and for ``"pt"`` a
            ``B x 3 x H x W`` tensor in [0, 1] when all outputs share a size, otherwise a list of
            per-image ``H x W x 3`` arrays / ``3 x H x W`` tensors.
    """


class UPLiFTSuperResolutionPipeline(UPLiFTComponentsMixin, VAETilingMixin, DiffusionPipeline):
    r"""Super-resolution: VAE encode -> UPLiFT latent upscaling -> VAE decode -> colour correction.

    Args:
        vae: a VAE whose latent space the upscaler was trained for: diffusers ``AutoencoderKL``
            (posterior mode is used) or ``AutoencoderTiny``, or a :class:`~uplift_diffusers.TinyAutoencoder`.
        upscaler (:class:`~uplift_diffusers.UPLiFTLatentUpscaler`): the UPLiFT model; its
            ``latent_channels`` must equal the VAE's.
    """

    model_cpu_offload_seq = "vae->upscaler"

    def __init__(self, vae: Union[AutoencoderKL, AutoencoderTiny, TinyAutoencoder], upscaler: UPLiFTLatentUpscaler):
        super().__init__()
        if vae is not None and upscaler is not None:
            check_upscaler_matches_vae(vae, upscaler)
        self.register_modules(vae=vae, upscaler=upscaler)

    def check_inputs(self, upscale_factor, generator, color_correction, output_type, num_images) -> None:
        if self.vae is None or self.upscaler is None:
            raise ValueError("The pipeline needs both a `vae` and an `upscaler`.")
        check_upscaler_matches_vae(self.vae, self.upscaler)
        if isinstance(upscale_factor, bool) or not isinstance(upscale_factor, int) or upscale_factor not in SUPER_RESOLUTION_FACTORS:
            raise ValueError(f"`upscale_factor` must be one of {SUPER_RESOLUTION_FACTORS}, got {upscale_factor!r}.")
        if isinstance(generator, list):
            if len(generator) != num_images or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(
                    f"`generator` is a list of {len(generator)} items but there are {num_images} images; "
                    "pass one torch.Generator, or a list with one per image."
                )
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"`generator` must be a torch.Generator, a list of them or None, got {type(generator).__name__}.")
        check_flag("color_correction", color_correction)
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")

    def upscale_batch(
        self,
        images: torch.Tensor,
        upscale_factor: int,
        generator=None,
        color_correction: bool = True,
    ) -> torch.Tensor:
        """Upscale a batch of same-size images ``B x 3 x H x W`` in [0, 1]; returns ``B x 3 x fH x fW`` in [0, 1]."""
        device = self._execution_device
        images = images.to(device=device, dtype=torch.float32)
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, vae_scale_factor(self.vae))
        latents = encode_latents(self.vae, padded * 2 - 1)
        upscaled = self.upscaler(
            latents.to(device=device),
            padded,
            num_steps=int(math.log2(upscale_factor)),
            generator=generator,
        ).sample
        decoded = to_unit_range(decode_latents(self.vae, upscaled).float())
        result = decoded[:, :, : upscale_factor * height, : upscale_factor * width].to(device)
        if color_correction:
            result = color_correct(result, images)
        return result

    @torch.no_grad()
    def __call__(
        self,
        image: Union[ImageInput, Sequence[ImageInput]],
        upscale_factor: int = 4,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        color_correction: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        r"""Upscale ``image`` by ``upscale_factor``.

        Args:
            image: a PIL image (any mode), a numpy array (``H x W``, ``H x W x C`` or
                ``B x H x W x C``; uint8, uint16 or float in [0, 1]), a tensor (``C x H x W`` or
                ``B x C x H x W`` in [0, 1]), or a list of them, of any sizes. Gray is replicated to
                RGB; transparent images (RGBA, LA, PA, palette with transparency, 4-channel
                arrays) are composited on a white background, and the output has no alpha.
            upscale_factor: 2, 4 or 8; every output is exactly ``upscale_factor`` times its input.
            generator: a ``torch.Generator`` (or one per image) for the upscaler's noise channels.
            color_correction: shift each RGB channel of the output to the input's mean.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_dict: return a :class:`UPLiFTSuperResolutionPipelineOutput` instead of a tuple.

        Sizes that are not multiples of 8 are padded (reflection) for the VAE and the result is
        cropped. Images of the same size are processed as one batch, others one size at a time.
        """
        tensors = images_to_tensors(image)
        self.check_inputs(upscale_factor, generator, color_correction, output_type, len(tensors))
        results: List[Optional[torch.Tensor]] = [None] * len(tensors)
        with self.progress_bar(total=len(tensors)) as progress:
            for indices in _size_groups(tensors):
                group_generator = [generator[i] for i in indices] if isinstance(generator, list) else generator
                batch = torch.cat([tensors[i] for i in indices])
                upscaled = self.upscale_batch(batch, upscale_factor, group_generator, color_correction)
                for position, index in enumerate(indices):
                    results[index] = upscaled[position].cpu()
                progress.update(len(indices))

        images = self._postprocess(results, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return UPLiFTSuperResolutionPipelineOutput(images=images)

    @staticmethod
    def _postprocess(results: List[torch.Tensor], output_type: str):
        """Per-image ``3 x H x W`` tensors in [0, 1] -> the requested output type."""
        same_size = len({tuple(r.shape) for r in results}) == 1
        if output_type == "pt":
            return torch.stack(results) if same_size else results
        arrays = [r.permute(1, 2, 0).float().numpy() for r in results]
        if output_type == "np":
            return np.stack(arrays) if same_size else arrays
        return [VaeImageProcessor.numpy_to_pil(array[None])[0] for array in arrays]
