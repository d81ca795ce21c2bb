"""Image super-resolution with a VAE and UPLiFT: encode, upscale the latents, decode (the flow:
docs/architecture.md), every output in its input's mode (gray, alpha: :mod:`uplift_diffusers.image_processor`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL, AutoencoderTiny
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput

from ..constants import DEFAULT_BACK_PROJECTION_STEPS, ENSEMBLE_SIZES
from ..hooks import check_uplift_settings, guard_latent_space
from ..image_processor import ImageInput, pad_to_multiple, restore_mode, size_groups, split_images
from ..loaders.vae import decode_latents, encode_latents, vae_scale_factor
from ..models.autoencoder_tiny import TinyAutoencoder
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..utils.color_correction import project_to
from ..utils.memory import DEFAULT_MAX_MEMORY
from ..utils.output_size import output_size_for
from .pipeline_utils import HubComponentsMixin, TilingMixin
from .upscale_decode import DEFAULT_UPSCALE_METHOD, plan_upscale, silent_progress_bar, upscale_and_decode, vae_tiling

__all__ = ["UPLiFTSuperResolutionPipeline", "UPLiFTSuperResolutionPipelineOutput", "DEFAULT_SUPER_RESOLUTION_FACTOR", "ENSEMBLE_SIZES"]

#: The upscale factor when neither ``upscale_factor`` nor an output size is given.
DEFAULT_SUPER_RESOLUTION_FACTOR = 4
#: Geometric self-ensemble: the transforms of the image square, ``(quarter turns, mirrored)``, in the
#: order ``ensemble`` takes them (2: + mirror; 4: + the 180-degree pair, no transposes; 8: all).
ENSEMBLE_TRANSFORMS = ((0, False), (0, True), (2, True), (2, False), (1, False), (1, True), (3, False), (3, True))
OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class UPLiFTSuperResolutionPipelineOutput(ImagePipelineOutput):
    """Output of :class:`UPLiFTSuperResolutionPipeline`.

    Args:
        images: one image per input image, of the requested size, in the input's
            mode: a list of PIL images (``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``) for ``"pil"``;
            for ``"np"`` a ``B x H x W x C`` float array and for ``"pt"`` a ``B x C x H x W`` tensor
            in [0, 1] when all outputs share a size and channels (C = 1 gray, 2 gray + alpha,
            3 RGB, 4 RGBA), otherwise a list of per-image ``H x W x C`` arrays / ``C x H x W`` tensors.
    """


class UPLiFTSuperResolutionPipeline(HubComponentsMixin, TilingMixin, DiffusionPipeline):
    r"""Super-resolution of images of any size and mode with a VAE and UPLiFT (see the module).

    Args:
        vae: a VAE whose latent space the upscaler was trained for: diffusers ``AutoencoderKL``
            (posterior mode is used) or ``AutoencoderTiny``, or a :class:`~uplift_diffusers.TinyAutoencoder`.
        upscaler, check_latent_space: as in :func:`~uplift_diffusers.apply_uplift`.
    """

    model_cpu_offload_seq = "vae->upscaler"

    def __init__(
        self, vae: Union[AutoencoderKL, AutoencoderTiny, TinyAutoencoder], upscaler: UPLiFTLatentUpscaler, check_latent_space: bool = True
    ):
        super().__init__()
        if vae is not None and upscaler is not None:
            guard_latent_space(vae, upscaler, check_latent_space)
        self.register_modules(vae=vae, upscaler=upscaler)
        self.register_to_config(check_latent_space=check_latent_space)

    #: ``upscale_method`` of :func:`~uplift_diffusers.apply_uplift`, for every call (default: the measured best).
    upscale_method: str = DEFAULT_UPSCALE_METHOD

    def check_inputs(self, generator, color_correction, output_type, num_images, back_projection_steps, ensemble,
                     max_memory) -> float:
        """The arguments of :meth:`__call__` but ``image`` (checked as it is read) and the output size (checked
        per input size, before any work); returns ``max_memory`` in bytes."""
        guard_latent_space(self.vae, self.upscaler, self.config.check_latent_space)
        budget = check_uplift_settings(1, None, color_correction, back_projection_steps, max_memory, self.upscale_method)
        generators = generator if isinstance(generator, list) and len(generator) == num_images else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(
                f"`generator` must be None, a torch.Generator or a list of one per image ({num_images} images), "
                f"got {generator!r}."
            )
        if type(ensemble) is not int or ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"`ensemble` must be one of {ENSEMBLE_SIZES} (the number of flips / rotations averaged; 1: none), got {ensemble!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        return budget

    def upscale_batch(self, images: torch.Tensor, output_size: Tuple[int, int], generator=None, color_correction: bool = True,
                      progress=None, back_projection_steps: int = DEFAULT_BACK_PROJECTION_STEPS, ensemble: int = 1,
                      tiling=None) -> torch.Tensor:
        """Upscale a batch of same-size images ``B x 3 x H x W`` in [0, 1] to ``output_size`` in [0, 1],
        once per transform of the ``ensemble`` (:data:`ENSEMBLE_TRANSFORMS`, turned back), averaged,
        then back-projected once. ``tiling`` and ``ensemble`` x the ``progress.update()`` calls: as
        :func:`~uplift_diffusers.pipelines.upscale_decode.plan_upscale` gives them (the caller switches
        the VAE's tiling)."""
        progress = silent_progress_bar() if progress is None else progress
        images = images.to(device=self._execution_device, dtype=torch.float32)
        total = 0.0
        for turns, mirrored in ENSEMBLE_TRANSFORMS[:ensemble]:
            view = _transform(images, turns, mirrored)
            size = tuple(output_size)[::-1] if turns % 2 else tuple(output_size)  # a quarter turn swaps the sides
            padded = pad_to_multiple(view, vae_scale_factor(self.vae))
            progress.set_postfix_str("encode")
            latents = encode_latents(self.vae, padded * 2 - 1)
            progress.update()
            upscaled = upscale_and_decode(
                self.upscaler, lambda upscaled: decode_latents(self.vae, upscaled), latents, padded, size, progress,
                guide_size=tuple(view.shape[-2:]), generator=generator, color_correction=color_correction, tiling=tiling,
                method=self.upscale_method,
            )
            # turned back: a mirrored transform is a reflection, its own inverse; a turn is undone by the opposite one
            total = total + _transform(upscaled, turns if mirrored else -turns, mirrored)
        if not back_projection_steps:
            return total / ensemble
        progress.set_postfix_str("back-projection")
        return project_to(total / ensemble, images, back_projection_steps).clamp(0, 1)  # the input: checked at the door

    @torch.no_grad()
    def __call__(
        self,
        image: Union[ImageInput, Sequence[ImageInput]],
        upscale_factor: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        color_correction: bool = True,
        output_type: str = "pil",
        return_dict: bool = True,
        height: Optional[int] = None,
        width: Optional[int] = None,
        back_projection_steps: int = DEFAULT_BACK_PROJECTION_STEPS,
        ensemble: int = 1,
        max_memory: Union[int, float, str] = DEFAULT_MAX_MEMORY,
    ):
        r"""Upscale ``image`` by ``upscale_factor``, or to ``height`` x ``width``.

        Args:
            image: a PIL image (any mode), a numpy array (``H x W``, ``H x W x C`` or
                ``B x H x W x C``; uint8, uint16 or float in [0, 1]), a tensor (``C x H x W`` or
                ``B x C x H x W`` in [0, 1]), or a list of them, of any sizes. Every output keeps
                the input's mode: gray (PIL ``"1"``, ``"L"``, 16-bit, ``"I"``, ``"F"``; 1-channel
                arrays / tensors) gives ``"L"`` / 1 channel, the mean of the three upscaled
                channels; transparent images (``"RGBA"``, ``"LA"``, ``"PA"``, premultiplied modes,
                palette or gray with a transparent value; 2- / 4-channel arrays) give ``"RGBA"`` /
                ``"LA"`` with the alpha channel upscaled (Lanczos) to exactly the output size; the
                colour under transparent pixels is filled from the visible ones before encoding.
            upscale_factor, color_correction, back_projection_steps: as in :func:`~uplift_diffusers.apply_uplift`,
                on the input. ``upscale_factor`` defaults to 4 unless ``height`` / ``width`` is given;
                ``back_projection_steps`` to 5: +0.64 dB PSNR on BSDS500 at 4x with the example TAEF2 model.
            generator: a ``torch.Generator`` (or one per image) for the upscaler's noise channels.
            output_type: ``"pil"``, ``"np"`` or ``"pt"``.
            return_dict: False returns the tuple ``(images,)``.
            height, width: an exact output size in pixels instead of ``upscale_factor``, at least
                the input's; with only one of them each image keeps its aspect ratio.
            ensemble: geometric self-ensemble, 1, 2, 4 or 8: the image is upscaled that many times,
                mirrored / rotated (:data:`ENSEMBLE_TRANSFORMS`), and the results turned back and
                averaged before the back-projection. It costs ``ensemble`` times the time; 8 adds
                0.18 dB on BSDS500 at 4x with the example TAEF2 model. Default 1 (none).
            max_memory: as in :func:`~uplift_diffusers.apply_uplift`, per group of same-size images
                (without :meth:`enable_tiling`). Default 1.5 GB: a 4096 x 4096 output stays under 3 GB.

        Images of the same size are upscaled as one batch, others one size at a time; the progress
        bar names them (``"images 1-2/3"``) and the stage. An error names ``image[i]`` for an image of a list.
        """
        if upscale_factor is None and height is None and width is None:
            upscale_factor = DEFAULT_SUPER_RESOLUTION_FACTOR
        items = split_images(image)
        tensors = [item.rgb for item in items]
        budget = self.check_inputs(generator, color_correction, output_type, len(tensors), back_projection_steps,
                                   ensemble, max_memory)
        groups = size_groups(tensors)
        input_sizes = [tuple(tensors[indices[0]].shape[-2:]) for indices in groups]
        output_sizes = [output_size_for(*size, upscale_factor, height, width) for size in input_sizes]
        # per size group: :meth:`enable_tiling`'s tiles, else those the memory budget asks for
        plans = [
            plan_upscale(
                self.upscaler, self.vae, len(indices), size, out, self.upscale_method, budget, self.tiling_settings
            )
            for indices, size, out in zip(groups, input_sizes, output_sizes)
        ]
        total = ensemble * sum(updates for _, updates in plans)  # a turned view counts as many updates
        results: List[Optional[torch.Tensor]] = [None] * len(tensors)
        done = 0
        with self.progress_bar(total=total) as progress:
            for indices, output_size, (tiling, _) in zip(groups, output_sizes, plans):
                group_generator = [generator[i] for i in indices] if isinstance(generator, list) else generator
                batch = torch.cat([tensors[i] for i in indices])
                first, done = done + 1, done + len(indices)
                counted = f"image {done}" if first == done else f"images {first}-{done}"
                progress.set_description(f"{counted}/{len(tensors)}")
                with vae_tiling(self.vae, tiling is not None):
                    upscaled = self.upscale_batch(
                        batch, output_size, group_generator, color_correction, progress, back_projection_steps, ensemble, tiling
                    )
                for position, index in enumerate(indices):
                    results[index] = restore_mode(upscaled[position].cpu(), items[index])

        processor = VaeImageProcessor(do_normalize=False)  # the results are in [0, 1]
        images = [processor.postprocess(result[None], output_type)[0] for result in results]
        if output_type != "pil" and len({tuple(result.shape) for result in results}) == 1:  # a batch
            images = torch.stack(images) if output_type == "pt" else np.stack(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return UPLiFTSuperResolutionPipelineOutput(images=images)


def _transform(images: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """``images`` mirrored (left-right), then turned ``turns`` quarter turns."""
    images = images.flip(-1) if mirrored else images
    return torch.rot90(images, turns, dims=(-2, -1))
