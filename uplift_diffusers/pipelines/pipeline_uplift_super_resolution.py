"""Image super-resolution with a VAE and UPLiFT: encode, upscale the latents, decode.

For every input image (any size, any PIL mode, numpy array or tensor)::

    image (RGB, [0, 1], H x W) -> pad to a multiple of 8 (reflection; replication when too small)
      -> VAE encode (posterior mode, unscaled)                 latents  H/8 x W/8
      -> upscaler(latents, padded image, num_steps=log2(f))    latents  f H/8 x f W/8
      -> VAE decode -> crop to f H x f W -> colour correction against the input

Images are converted to RGB first (:func:`uplift_diffusers.image_processor.images_to_tensors`); a
transparent image is composited on a white background (the alpha channel is not carried to the
output). Saving / loading and VAE tiling come from :mod:`uplift_diffusers.pipelines.pipeline_utils`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL, AutoencoderTiny
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..image_processor import ImageInput, images_to_tensors, pad_to_multiple, size_groups
from ..loaders.vae import decode_latents, encode_latents, vae_scale_factor
from ..models.autoencoder_tiny import TinyAutoencoder
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..utils.color_correction import color_correct
from ..utils.validation import check_flag
from .pipeline_utils import UPLiFTComponentsMixin, VAETilingMixin, check_upscaler_matches_vae

__all__ = [
    "UPLiFTSuperResolutionPipeline",
    "UPLiFTSuperResolutionPipelineOutput",
    "SUPER_RESOLUTION_FACTORS",
]

#: Upscale factors of the super-resolution pipeline (powers of two; one UPLiFT step per 2x).
SUPER_RESOLUTION_FACTORS = (2, 4, 8)
OUTPUT_TYPES = ("pil", "np", "pt")


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
        latents = encode_latents(self.vae, VaeImageProcessor.normalize(padded))
        upscaled = self.upscaler(
            latents.to(device=device),
            padded,
            num_steps=int(math.log2(upscale_factor)),
            generator=generator,
        ).sample
        decoded = VaeImageProcessor.denormalize(decode_latents(self.vae, upscaled).float())
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

        Raises:
            ValueError: naming ``image`` (or ``image[i]``) for a wrong type, layout, dtype or size,
                NaN / infinite values, or float values outside [0, 1]: the values are checked here,
                once, where they enter (the VAE and the upscaler do not check them).
        """
        tensors = images_to_tensors(image)
        self.check_inputs(upscale_factor, generator, color_correction, output_type, len(tensors))
        results: List[Optional[torch.Tensor]] = [None] * len(tensors)
        with self.progress_bar(total=len(tensors)) as progress:
            for indices in size_groups(tensors):
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
        """Per-image ``3 x H x W`` tensors in [0, 1] -> the requested output type, converted by
        ``VaeImageProcessor``; a batch when all share a size, else a list (PIL: always a list)."""
        same_size = len({tuple(r.shape) for r in results}) == 1
        if output_type == "pt":
            return torch.stack(results) if same_size else results
        arrays = [VaeImageProcessor.pt_to_numpy(r[None])[0] for r in results]
        if output_type == "np":
            return np.stack(arrays) if same_size else arrays
        return [VaeImageProcessor.numpy_to_pil(array)[0] for array in arrays]
