"""`UPLiFTLatentUpscaler`: the UPLiFT model for VAE latents, in the paper's order.

Data flow for one call (``num_steps`` 2x steps, weights shared between steps)::

    image (B x 3 x 8h x 8w, RGB in [0, 1])
      -> encoder (dense ConvBlocks, no downsampling) -> E0 ... E4, run once
    latents z (B x C x h x w, VAE posterior mode, unscaled)
      repeat num_steps times:
        decoder:  [z, nearest(E4), noise] -> ConvBlock -> 2x transpose conv + bilinear 2x
                  -> [x, nearest(E3), noise] -> ConvBlocks          (guide, 2h x 2w)
        local attender: softmax(guide) mixes a neighbourhood of z    (C x 2h x 2w)
        refiner:  [attended, nearest(E4), noise] -> ConvBlocks -> 1x1 conv -> z (2h x 2w)

The file follows that order: ConvBlock, encoder, decoder, (Local Attender, in
:mod:`.local_attender`), refiner, then the model. The names follow the paper;
:mod:`uplift_diffusers.loaders.single_file` maps the authors' checkpoint layout onto them; speed
is applied from outside (:mod:`.fast_inference`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..constants import LATENT_SPACES
from ..loaders.single_file import FromOriginalUPLiFTMixin
from .local_attender import LocalAttender, channel_residual

logger = logging.get_logger(__name__)

GeneratorArg = Optional[Union[torch.Generator, List[torch.Generator]]]
#: The noise of one 2x step, one tensor (or ``None``: no noise channels) per concatenation:
#: decoder input (h x w), decoder after upsampling (2h x 2w), refiner input (2h x 2w).
StepNoise = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


# =============================================================================== building blocks
class ConvBlock(nn.Module):
    """Conv3x3 (no bias) -> LayerNorm over channels -> ReLU -> Conv1x1, plus a residual of the
    input (first channels kept, or zero-padded, when the widths differ)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.LayerNorm(out_channels, eps=1e-6)
        self.proj = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv(x), x)

    def pointwise(self, conv_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Everything after the 3x3 convolution, pixel by pixel: LayerNorm over the channels ->
        ReLU -> Conv1x1 -> + residual (the block input at the pixels of ``conv_out``)."""
        normed = self.norm(conv_out.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.proj(F.relu(normed)) + channel_residual(residual, self.out_channels)


def conv_blocks(in_channels: int, widths: Sequence[int]) -> nn.Sequential:
    return nn.Sequential(*(ConvBlock(i, o) for i, o in zip([in_channels, *widths], widths)))


def concat(x: torch.Tensor, encoder_map: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
    """``cat(x, nearest(encoder_map -> size of x), noise)``, the noise channels last."""
    parts = [x]
    if encoder_map is not None:
        parts.append(F.interpolate(encoder_map, size=x.shape[-2:], mode="nearest"))
    if noise is not None:
        parts.append(noise)
    return torch.cat(parts, dim=1)


# =============================================================================== encoder
class UPLiFTEncoder(nn.Module):
    """Dense encoder: groups of ConvBlocks at image resolution (no downsampling), one per entry of ``widths``."""

    def __init__(self, widths: Sequence[Sequence[int]], in_channels: int = 3):
        super().__init__()
        self.groups = nn.ModuleList()
        for group in widths:
            self.groups.append(conv_blocks(in_channels, group))
            in_channels = group[-1]

    def forward(self, image: torch.Tensor) -> List[torch.Tensor]:
        """``B x 3 x H x W`` -> every group's output E0 ... E4, each ``B x width x H x W``."""
        maps, x = [], image
        for group in self.groups:
            x = group(x)
            maps.append(x)
        return maps


# =============================================================================== one 2x step
class UPLiFTDecoder(nn.Module):
    """The decoder of one 2x step (as in the module's diagram); its output is the guide of the Local Attender."""

    def __init__(self, in_channels: int, skip_channels: int, channels: int, blocks_before: int, blocks_after: int, noise_channels: int, bilinear_residual: bool = True):
        super().__init__()
        self.in_blocks = conv_blocks(in_channels, [channels] * blocks_before)
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.bilinear_residual = bilinear_residual
        self.out_blocks = conv_blocks(channels + skip_channels + noise_channels, [channels] * blocks_after)

    def forward(
        self,
        latents: torch.Tensor,
        last_map: torch.Tensor,
        skip_map: torch.Tensor,
        noise_in: Optional[torch.Tensor],
        noise_out: Optional[torch.Tensor],
    ) -> torch.Tensor:
        """``latents`` ``B x C x h x w`` -> guide ``B x channels x 2h x 2w``."""
        x = self.in_blocks(concat(latents, last_map, noise_in))
        up = self.upsample(x)
        if self.bilinear_residual:  # what nn.UpsamplingBilinear2d does
            up = up + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_blocks(concat(up, skip_map, noise_out))


class UPLiFTRefiner(nn.Module):
    """The refiner of one 2x step (as in the module's diagram); its Conv1x1 has no residual around it."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, latent_channels: int):
        super().__init__()
        self.blocks = conv_blocks(in_channels, [channels] * num_blocks)
        self.out = nn.Conv2d(channels, latent_channels, kernel_size=1)

    def forward(self, attended: torch.Tensor, encoder_map: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
        return self.out(self.blocks(concat(attended, encoder_map, noise)))


# =============================================================================== the model
@dataclass
class UPLiFTOutput(BaseOutput):
    """Output of :class:`UPLiFTLatentUpscaler`.

    Args:
        sample: the upscaled latents, ``2 ** num_steps`` times larger than the input.
        intermediate: with ``output_intermediate=True``, the latents after every step (the
            last element is ``sample``); otherwise ``None``.
    """

    sample: torch.Tensor
    intermediate: Optional[List[torch.Tensor]] = None


class UPLiFTLatentUpscaler(FromOriginalUPLiFTMixin, ModelMixin, ConfigMixin):
    """UPLiFT latent upscaler: 2x per step, guided by the image the latents came from.

    The defaults are the authors' released model for the Stable Diffusion 1.5 VAE
    (53,487,445 parameters).

    Args:
        latent_channels: channels of the VAE latents (4 for SD1.5, 32 for FLUX.2 / TAEF2).
        encoder_channels: width of each encoder group; an entry may also be a list of
            per-block widths.
        encoder_blocks_per_group: ConvBlocks per encoder group (for int entries).
        decoder_channels: width of the decoder (and the Local Attender's guide).
        decoder_blocks_before_upsample / decoder_blocks_after_upsample: ConvBlocks around
            the 2x transpose convolution.
        refiner_channels, refiner_blocks: width and number of ConvBlocks of the refiner.
        refiner_encoder_group: index of the encoder group fed to the refiner (official
            ``ref_con``; -1 is the last group), or ``None`` for no connection.
        neighborhood: Local Attender neighbourhood: 5, 9, 13, 17, 25 or a list of (dy, dx).
        noise_channels, noise_scale: noise channels appended at every concatenation of the
            decoder, and their standard deviation (official ``ncat_c`` / ``ncat_s``).
        refiner_noise_channels, refiner_noise_scale: the same for the refiner (``None``: as
            the decoder).
        bilinear_residual: add a bilinear 2x upsampling (align_corners=True) to the
            transpose convolution's output.
        vae_scale_factor: pixels per latent (8 for the usual VAEs).
        trained_upscale_factors: the factors the model was trained for, e.g. ``[2, 4]`` (training
            depth ``d`` trains ``2 ** d``; a multi-step loss trains every depth up to ``d``), or
            ``None`` when unknown. Asking for a larger factor logs one warning per model.
        latent_space: the VAE latent space the model was trained for, a key of
            :data:`~uplift_diffusers.constants.LATENT_SPACES` (``"sd15"``, ``"flux2"``, ...), or
            ``None`` when unknown (then only the channel count is checked against a VAE).
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        encoder_channels: Sequence = (64, 128, 256, 512, 512),
        encoder_blocks_per_group: int = 2,
        decoder_channels: int = 512,
        decoder_blocks_before_upsample: int = 1,
        decoder_blocks_after_upsample: int = 2,
        refiner_channels: int = 512,
        refiner_blocks: int = 12,
        refiner_encoder_group: Optional[int] = -1,
        neighborhood: Union[int, Sequence[Sequence[int]]] = 17,
        noise_channels: int = 4,
        noise_scale: float = 1.0,
        refiner_noise_channels: Optional[int] = None,
        refiner_noise_scale: Optional[float] = None,
        bilinear_residual: bool = True,
        vae_scale_factor: int = 8,
        trained_upscale_factors: Optional[List[int]] = None,
        latent_space: Optional[str] = None,
    ):
        super().__init__()
        factors = trained_upscale_factors
        if factors is not None and (
            not isinstance(factors, (list, tuple))
            or not factors
            or any(not isinstance(f, int) or f < 2 or f & (f - 1) for f in factors)
            or len(set(factors)) != len(factors)
        ):
            raise ValueError(
                f"`trained_upscale_factors` must be None (unknown) or a list of distinct powers of two >= 2 "
                f"(the factors 2 ** depth the model was trained for, e.g. [2, 4]), got {factors!r}."
            )
        if latent_space is not None and latent_space not in LATENT_SPACES:
            raise ValueError(f"`latent_space` must be None or one of {sorted(LATENT_SPACES)}, got {latent_space!r}.")
        self._warned_untrained_factor = False
        widths = [list(c) if isinstance(c, (list, tuple)) else [int(c)] * encoder_blocks_per_group
                  for c in encoder_channels]  # the blocks' widths, group by group
        if len(widths) < 2:
            raise ValueError(f"`encoder_channels` needs at least 2 groups (the decoder reads the last two), got {encoder_channels!r}.")
        for name, value in (("decoder_blocks_before_upsample", decoder_blocks_before_upsample), ("refiner_blocks", refiner_blocks)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        ref_noise = noise_channels if refiner_noise_channels is None else refiner_noise_channels
        ref_skip = 0 if refiner_encoder_group is None else widths[refiner_encoder_group][-1]
        self.encoder = UPLiFTEncoder(widths)
        self.decoder = UPLiFTDecoder(
            in_channels=latent_channels + widths[-1][-1] + noise_channels,
            skip_channels=widths[-2][-1],
            channels=decoder_channels,
            blocks_before=decoder_blocks_before_upsample,
            blocks_after=decoder_blocks_after_upsample,
            noise_channels=noise_channels,
            bilinear_residual=bilinear_residual,
        )
        self.attender = LocalAttender(decoder_channels, neighborhood)
        self.refiner = UPLiFTRefiner(latent_channels + ref_skip + ref_noise, refiner_channels, refiner_blocks, latent_channels)

    def forward(
        self,
        latents: torch.Tensor,
        image: torch.Tensor,
        num_steps: int = 1,
        generator: GeneratorArg = None,
        noise_scale: Optional[float] = None,
        output_intermediate: bool = False,
        return_dict: bool = True,
        callback: Optional[Callable[[int, torch.Tensor], None]] = None,
        noise: Optional[Sequence[StepNoise]] = None,
    ) -> Union[UPLiFTOutput, tuple]:
        """Upscale ``latents`` by ``2 ** num_steps``.

        Args:
            latents: ``B x latent_channels x h x w``, the VAE posterior mode (unscaled: divide
                a UNet's latents by ``vae.config.scaling_factor`` first).
            image: ``B x 3 x (8h) x (8w)`` RGB in [0, 1], the image the latents describe.
            num_steps: number of 2x steps (>= 1); the encoder runs once for all of them.
            generator: a ``torch.Generator`` or a list of one per batch element, for the noise.
            noise_scale: override of the configured noise scale (0 gives a deterministic output).
            output_intermediate: also return every step's latents (``UPLiFTOutput.intermediate``).
            callback: called as ``callback(step_index, latents)`` after every 2x step
                (``step_index`` from 0), e.g. to advance a progress bar.
            noise: the noise to use instead of drawing it: one :data:`StepNoise` per step, as
                :meth:`step_noise` returns it (already scaled, in the model's dtype; e.g. the
                tiles of one full-size draw). ``generator`` and ``noise_scale`` only shape the
                drawing, so they must be ``None`` with it.
        """
        self.check_inputs(latents, image, num_steps, generator, noise_scale, noise, callback)
        features = self.encode(image)
        z, steps = latents.to(self.dtype), []
        for index in range(num_steps):
            step_noise = self.step_noise(z, generator, noise_scale) if noise is None else noise[index]
            z = self.upscale_step(z, features, step_noise)
            steps.append(z)
            if callback is not None:
                callback(index, z)
        intermediate = steps if output_intermediate else None
        if not return_dict:
            return (z, intermediate)
        return UPLiFTOutput(sample=z, intermediate=intermediate)

    def encode(self, image: torch.Tensor) -> List[torch.Tensor]:
        """The encoder pass, run once per call: every encoder group's map (E0 ... E4)."""
        return self.encoder(image.to(self.dtype))

    def upscale_step(self, latents: torch.Tensor, features: List[torch.Tensor], noise: StepNoise) -> torch.Tensor:
        """One 2x step: decoder -> Local Attender -> refiner, given the encoder maps and the
        step's noise (:meth:`step_noise`)."""
        guide = self.decoder(latents, features[-1], features[-2], noise[0], noise[1])
        attended = self.attender(guide, latents)
        group = self.config.refiner_encoder_group
        return self.refiner(attended, None if group is None else features[group], noise[2])

    def step_noise(self, latents: torch.Tensor, generator: GeneratorArg = None, noise_scale: Optional[float] = None) -> StepNoise:
        """Fresh noise for the three concatenations of one step, in the model's dtype, drawn
        in the order they are used (``noise_scale`` overrides the configured scales)."""
        noise = []
        for shape, scale in self._noise_layout(latents.shape, noise_scale):
            if shape is None:
                noise.append(None)
            elif scale == 0.0:
                noise.append(torch.zeros(shape, device=latents.device, dtype=self.dtype))
            else:
                noise.append(randn_tensor(shape, generator=generator, device=latents.device, dtype=self.dtype) * scale)
        return tuple(noise)

    def _noise_layout(self, latents_shape, noise_scale: Optional[float] = None) -> List[Tuple[Optional[Tuple[int, ...]], float]]:
        """``(shape, scale)`` of each tensor of :meth:`step_noise` for latents of ``latents_shape``
        (shape ``None`` where there are no noise channels)."""
        cfg = self.config
        batch, _, h, w = latents_shape
        ref_channels = cfg.noise_channels if cfg.refiner_noise_channels is None else cfg.refiner_noise_channels
        dec_scale = cfg.noise_scale if noise_scale is None else noise_scale
        ref_scale = dec_scale  # the decoder's, unless the refiner has its own and no override is given
        if noise_scale is None and cfg.refiner_noise_scale is not None:
            ref_scale = cfg.refiner_noise_scale
        parts = ((cfg.noise_channels, 1, dec_scale), (cfg.noise_channels, 2, dec_scale), (ref_channels, 2, ref_scale))
        return [((batch, channels, up * h, up * w) if channels else None, float(scale)) for channels, up, scale in parts]

    def check_inputs(self, latents, image, num_steps, generator=None, noise_scale=None, noise=None, callback=None) -> None:
        """The arguments of :meth:`forward`, checked from shapes, dtypes and devices only: no device
        synchronisation (values are checked where data enters: :mod:`~uplift_diffusers.utils.validation`)."""
        channels, factor = self.config.latent_channels, self.config.vae_scale_factor
        latents_ok = isinstance(latents, torch.Tensor) and latents.ndim == 4 and latents.shape[1] == channels
        if not latents_ok or not latents.is_floating_point():
            raise ValueError(
                f"`latents` must be a floating-point 4-D tensor B x {channels} x h x w (latent_channels={channels}: "
                f"use an upscaler trained for this VAE), got {_summary(latents)}."
            )
        batch, _, h, w = latents.shape
        expected = (batch, 3, factor * h, factor * w)
        if not isinstance(image, torch.Tensor) or image.shape != expected or not image.is_floating_point():
            raise ValueError(
                f"`image` must be a floating-point tensor {expected}: per latent its RGB image in [0, 1], {factor}x "
                f"the {h} x {w} latents; got {_summary(image)}."
            )
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1 (each step upscales 2x), got {num_steps!r}.")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"`generator` is a list of {len(generator)} generators but the batch has {batch}; pass one per batch element.")
        if noise_scale is not None and (not isinstance(noise_scale, (int, float)) or noise_scale < 0):
            raise ValueError(f"`noise_scale` must be a number >= 0 or None, got {noise_scale!r}.")
        if callback is not None and not callable(callback):
            raise ValueError(f"`callback` must be None or a function called as callback(step_index, latents), got {type(callback).__name__}.")
        if noise is not None and (generator is not None or noise_scale is not None):
            raise ValueError(
                f"`noise` is given, so `generator` and `noise_scale` must be None (they only shape drawing the noise), "
                f"got generator={generator!r}, noise_scale={noise_scale!r}; scale the given noise yourself or drop `noise`."
            )
        if noise is not None:
            # the noise step_noise would draw, as stand-ins of no memory (compared by shape, dtype, device)
            zero = torch.empty((), dtype=self.dtype, device=latents.device)
            steps = [self._noise_layout((batch, channels, h * 2**step, w * 2**step)) for step in range(num_steps)]
            expected = _summary(
                [[None if shape is None else zero.expand(shape) for shape, _ in step] for step in steps]
            )
            if _summary(noise) != expected:
                raise ValueError(
                    f"`noise` must hold one tuple of 3 tensors per 2x step (num_steps={num_steps}) as `step_noise` "
                    f"draws them (None: no noise channels), in the model's dtype on the latents' device: {expected}; "
                    f"got {_summary(noise)}."
                )
        trained = self.config.get("trained_upscale_factors")
        if trained and 2**num_steps > max(trained) and not self._warned_untrained_factor:
            self._warned_untrained_factor = True
            logger.warning(
                f"Upscaling the latents {2 ** num_steps}x ({num_steps} steps of 2x), but this UPLiFT model was trained "
                f"for the factors {list(trained)} only: beyond {max(trained)}x expect a grid pattern and doubled edges. "
                f"To avoid it, upscale by at most {max(trained)}x per pass (e.g. {max(trained)}x, then "
                f"{2 ** num_steps // max(trained)}x on the result), or use a model trained to depth {num_steps}."
            )


def _summary(x) -> str:
    """An argument as the errors show it: a tensor by its shape, dtype and device, a list item by item."""
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {x.dtype} {x.device}"
    if isinstance(x, (list, tuple)):
        return f"[{', '.join(_summary(item) for item in x)}]"
    return "None" if x is None else type(x).__name__
