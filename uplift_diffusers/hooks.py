"""UPLiFT on any diffusers pipeline: a hook on its VAE's ``decode`` (the flow: docs/architecture.md).

Every diffusers pipeline ends with ``self.vae.decode(latents)`` on the VAE's raw latents, exactly
UPLiFT's input space: with that ``decode`` replaced (as ``diffusers.hooks`` replace a module's
``forward``), the pipeline's post-processing, safety checker, offloading, LoRA and callbacks run
unchanged on the larger image.

    >>> pipe = StableDiffusionPipeline.from_pretrained(...)
    >>> apply_uplift(pipe, UPLiFTLatentUpscaler.from_pretrained("UPLiFT-upsampler/uplift_sd1.5vae"))
    >>> image = pipe("a photo of a cat").images[0]   # 1024 x 1024
    >>> remove_uplift(pipe)
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import weakref
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import logging

from .constants import LATENT_SPACES
from .loaders.vae import vae_scale_factor
from .models.modeling_uplift import UPLiFTLatentUpscaler
from .models.tiled_upscaling import check_tile_arguments
from .pipelines.upscale_decode import DEFAULT_UPSCALE_METHOD, UPSCALE_METHODS, plan_upscale, silent_progress_bar
from .pipelines.upscale_decode import upscale_and_decode, vae_tiling
from .utils.memory import DEFAULT_MAX_MEMORY, parse_memory
from .utils.output_size import check_upscale_factor, output_size_for
from .utils.validation import check_back_projection_steps, check_flag

__all__ = ["apply_uplift", "remove_uplift", "UPLiFTDecodeHook", "guard_latent_space", "vae_latent_space", "vae_scale_factor"]

logger = logging.get_logger(__name__)

#: Upscalers already warned about naming no latent space (one warning per model).
_WARNED_NO_SPACE: "weakref.WeakSet" = weakref.WeakSet()


def vae_latent_space(vae: Any) -> Optional[str]:
    """The latent space a VAE's ``decode`` takes (a key of :data:`~uplift_diffusers.constants.LATENT_SPACES`),
    or None when it is none of them. Channel counts alone do not tell (SD1.5 and SDXL both have 4):
    the config's ``scaling_factor`` / ``shift_factor`` do; the FLUX.2 VAE's config has neither."""
    if type(vae).__name__ == "AutoencoderKLFlux2":
        return "flux2"
    found = [vae.config.get(key) or 0.0 for key in ("latent_channels", "scaling_factor", "shift_factor")]
    for space, (_, *signature) in LATENT_SPACES.items():
        if all(math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-6) for value, expected in zip(found, signature)):
            return space
    return None


def guard_latent_space(vae: Any, upscaler: UPLiFTLatentUpscaler, check: bool = True) -> None:
    """Refuse an upscaler trained for another latent space than the VAE's (ValueError naming both
    and the override); ``check=False`` (the override, for experiments) only logs a warning. An
    upscaler whose config names no ``latent_space`` is checked on its channel count alone, with
    a one-line warning."""
    check_flag("check_latent_space", check)
    if not isinstance(upscaler, UPLiFTLatentUpscaler):
        raise ValueError(f"`upscaler` must be an UPLiFTLatentUpscaler, got {type(upscaler).__name__}.")
    if not isinstance(vae, torch.nn.Module) or not callable(getattr(vae, "decode", None)):
        raise ValueError(f"`vae` must be an autoencoder module with a `decode`, got {type(vae).__name__}.")
    for name, got, unit in (("latent_channels", vae.config.get("latent_channels"), "latent channels"),
                            ("vae_scale_factor", vae_scale_factor(vae), "pixels per latent")):
        if upscaler.config[name] != got:
            raise ValueError(
                f"`upscaler` expects {name}={upscaler.config[name]} but the VAE ({type(vae).__name__}) has "
                f"{got} {unit}; use an UPLiFT model trained for this VAE."
            )
    trained = upscaler.config.get("latent_space")
    if trained is None:
        if upscaler not in _WARNED_NO_SPACE:
            _WARNED_NO_SPACE.add(upscaler)
            logger.warning("The upscaler's config names no `latent_space`: it is checked against the VAE on its channel count alone.")
        return
    space = vae_latent_space(vae)
    if space == trained:
        return
    described = LATENT_SPACES[space][0] if space else "of a latent space this package does not know"
    message = (
        f"The upscaler was trained for {LATENT_SPACES[trained][0]} (latent_space={trained!r}), but the VAE "
        f"({type(vae).__name__}) is {described}; use an UPLiFT model trained for this VAE, or pass "
        "check_latent_space=False to try it anyway."
    )
    if check:
        raise ValueError(message)
    logger.warning(message)


def check_uplift_settings(upscale_factor, output_size, color_correction, back_projection_steps, max_memory,
                          upscale_method=DEFAULT_UPSCALE_METHOD) -> float:
    """The arguments :func:`apply_uplift` and the pipelines share, checked at the door; returns
    ``max_memory`` in bytes."""
    if output_size is None:
        check_upscale_factor(upscale_factor)
    elif upscale_factor is not None:
        raise ValueError(f"pass either `upscale_factor` or `output_size`, not both (got {upscale_factor!r} and {output_size!r}).")
    elif not (isinstance(output_size, (tuple, list)) and len(output_size) == 2
              and all(type(side) is int and side >= 1 for side in output_size)):
        raise ValueError(f"`output_size` must be a (height, width) pair of ints >= 1, got {output_size!r}.")
    check_flag("color_correction", color_correction)
    check_back_projection_steps(back_projection_steps)
    if upscale_method not in UPSCALE_METHODS:
        raise ValueError(f"`upscale_method` must be one of {UPSCALE_METHODS}, got {upscale_method!r}.")
    return parse_memory(max_memory)


@dataclasses.dataclass(eq=False, repr=False)  # its repr would print the whole pipeline
class UPLiFTDecodeHook:
    """The ``decode`` that :func:`apply_uplift` puts on a pipeline's VAE: called as the VAE's
    ``decode`` was, it returns what that returned (a ``DecoderOutput`` or a tuple) holding the
    upscaled image in [-1, 1]; at the base size (``upscale_factor=1``) the original output untouched.
    The settings are :func:`apply_uplift`'s; with ``keep_base_images``, every call appends its base
    images (in [-1, 1]) to ``base_images``."""

    pipe: Any
    upscaler: UPLiFTLatentUpscaler
    upscale_factor: Optional[float] = 2
    output_size: Optional[Sequence[int]] = None
    generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None
    color_correction: bool = True
    back_projection_steps: int = 0
    tiling: Union[None, bool, Tuple[int, int]] = None
    upscale_method: str = DEFAULT_UPSCALE_METHOD
    keep_base_images: bool = False
    max_memory: float = DEFAULT_MAX_MEMORY

    def __post_init__(self):
        self.vae = self.pipe.vae
        self.output_size = None if self.output_size is None else tuple(self.output_size)
        self.base_images: Optional[List[torch.Tensor]] = [] if self.keep_base_images else None
        previous = self.vae.__dict__.get("decode")  # a decode set on the instance: a hook, or another one
        if isinstance(previous, UPLiFTDecodeHook):  # replacing a hook: keep the true original
            self.original, self._own_decode = previous.original, previous._own_decode
        else:
            self.original, self._own_decode = self.vae.decode, previous
        functools.update_wrapper(self, self.original)

    def uninstall(self) -> None:
        if self._own_decode is None:
            del self.vae.__dict__["decode"]
        else:
            self.vae.decode = self._own_decode

    def __enter__(self) -> "UPLiFTDecodeHook":
        """Installed for a ``with`` block (the arguments trusted: the caller has checked them); a
        hook applied before is restored afterwards."""
        self._previous = self.vae.decode
        self.vae.decode = self
        return self

    def __exit__(self, *exc_info) -> None:
        if isinstance(self._previous, UPLiFTDecodeHook):
            self.vae.decode = self._previous
        else:
            self.uninstall()

    def __call__(self, latents: torch.Tensor, *args, **kwargs):
        factor = vae_scale_factor(self.vae)
        base_size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
        output_size = self.output_size or output_size_for(*base_size, self.upscale_factor)
        upscale = output_size != base_size
        tiling, total = self.tiling, 1
        if upscale:
            output_size_for(*base_size, None, *output_size, names=("upscale_factor", "output_size height", "output_size width"))
            if tiling is None and getattr(self.vae, "use_tiling", False):  # follow the VAE's own tiling
                tiling = True
            tiling, total = plan_upscale(self.upscaler, self.vae, latents.shape[0], base_size, output_size,
                                         self.upscale_method, self.max_memory, tiling)
        # any pipe with a VAE may be hooked: without diffusers' progress_bar, a silent bar counts
        with getattr(self.pipe, "progress_bar", silent_progress_bar)(total=total) as progress:
            base_output = self.original(latents, *args, **kwargs)
            base = base_output[0]  # the image, first in a tuple or a ``DecoderOutput``
            progress.update()
            if self.base_images is not None:
                self.base_images.append(base)
            if not upscale:
                return base_output
            # as apply_uplift says; seeded from the latents, not from torch's global random state
            generator = self.generator if self.generator is not None else kwargs.get("generator")
            if generator is None:
                digest = hashlib.sha256(latents.detach().float().cpu().numpy().tobytes()).digest()
                generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            progress.set_description(f"{latents.shape[0]} image(s)")
            with vae_tiling(self.vae, tiling is not None):
                image = upscale_and_decode(
                    self.upscaler, lambda upscaled: self.original(upscaled, *args, **kwargs)[0], latents,
                    VaeImageProcessor.denormalize(base.float()), output_size, progress, generator=generator,
                    color_correction=self.color_correction, back_projection_steps=self.back_projection_steps, tiling=tiling,
                    method=self.upscale_method,
                )
        image = (image * 2 - 1).to(base.dtype)
        return (image, *base_output[1:]) if isinstance(base_output, tuple) else type(base_output)(sample=image)


def apply_uplift(
    pipe,
    upscaler: UPLiFTLatentUpscaler,
    upscale_factor: Optional[float] = None,
    *,
    output_size: Optional[Sequence[int]] = None,
    generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
    color_correction: bool = True,
    back_projection_steps: int = 0,
    tiling: Union[None, bool, Tuple[int, int]] = None,
    upscale_method: str = DEFAULT_UPSCALE_METHOD,
    check_latent_space: bool = True,
    max_memory: Union[int, float, str] = DEFAULT_MAX_MEMORY,
) -> None:
    """Make ``pipe`` generate its images ``upscale_factor`` times larger with UPLiFT.

    Works on any pipeline whose ``vae`` decodes the upscaler's latent space (text-to-image,
    img2img, inpainting, ControlNet, PAG, ...). Calling it again replaces the settings.

    Args:
        pipe: a diffusers pipeline with a ``vae`` (left unmodified but for its ``decode``).
        upscaler: an :class:`~uplift_diffusers.UPLiFTLatentUpscaler` for that VAE's latents, on
            the pipeline's device (or managed by its offloading).
        upscale_factor: any real number >= 1: each side of the base size becomes ``round(factor x
            side)``, halves up (1: the pipeline's own output; None: 2, unless ``output_size`` is given).
            Powers of two run one UPLiFT step per 2x; others also resample once
            (:mod:`uplift_diffusers.pipelines.upscale_decode`).
        output_size: ``(height, width)`` of the final image, at least the base size, instead of ``upscale_factor``.
        generator: seeds UPLiFT's noise; None: the ``generator`` the pipeline passes to the VAE's
            ``decode`` (Stable Diffusion pipelines pass the call's own), else a generator seeded
            from the latents (so a seeded call of any pipeline is reproducible).
        color_correction: shift each RGB channel of the result to the base image's mean.
        back_projection_steps: rounds of back-projection onto the base image (0: the paper's output).
        tiling: upscale in tiles to bound memory (the VAE then decodes with its own tiling too):
            None follows the VAE (``pipe.enable_vae_tiling()``), else tiles above ``max_memory``;
            True: the default tiles; ``(tile_size, overlap)`` in latents; False: never.
        upscale_method: how a factor that is not a power of two is reached (one of
            :data:`~uplift_diffusers.pipelines.upscale_decode.UPSCALE_METHODS`).
        check_latent_space: refuse an upscaler trained for another latent space than the VAE's
            (its config's ``latent_space``); False only warns, for experiments.
        max_memory: the upscale stage's budget in bytes, or a size such as ``"3GB"`` (default
            1.5 GB; ``float("inf")``: no limit): with ``tiling=None``, UPLiFT and the VAE tile when
            the estimated untiled peak (:func:`~uplift_diffusers.utils.memory.estimate_upscale_bytes`) passes it.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError(f"`pipe` ({type(pipe).__name__}) has no `vae`; UPLiFT hooks the VAE's decode.")
    guard_latent_space(vae, upscaler, check_latent_space)
    if upscale_factor is None and output_size is None:
        upscale_factor = 2
    budget = check_uplift_settings(upscale_factor, output_size, color_correction, back_projection_steps, max_memory,
                                   upscale_method)
    if isinstance(tiling, (tuple, list)) and len(tiling) == 2:
        check_tile_arguments(*tiling)
    elif tiling is not None and not isinstance(tiling, bool):
        raise ValueError(
            f"`tiling` must be None (follow the VAE's tiling), True / False, or a (tile_size, overlap) pair, got {tiling!r}."
        )
    vae.decode = UPLiFTDecodeHook(pipe, upscaler, upscale_factor, output_size, generator, color_correction,
                                  back_projection_steps, tiling, upscale_method, max_memory=budget)


def remove_uplift(pipe) -> None:
    """Undo :func:`apply_uplift`: the VAE's original ``decode`` is back (nothing to do without one)."""
    hook = getattr(getattr(pipe, "vae", None), "decode", None)
    if isinstance(hook, UPLiFTDecodeHook):
        hook.uninstall()
