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

The module and parameter names follow the paper (encoder, decoder, local attender,
refiner); :mod:`uplift_diffusers.loaders.single_file` maps the authors' checkpoint layout onto them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from ..loaders.single_file_model import FromOriginalUPLiFTMixin
from .local_attender import LocalAttender, channel_residual


GeneratorArg = Optional[Union[torch.Generator, List[torch.Generator]]]


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


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension of a B x C x H x W map (per pixel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvBlock(nn.Module):
    """Conv3x3 (no bias) -> LayerNorm over channels -> ReLU -> Conv1x1, plus a residual of the
    input (first channels kept, or zero-padded, when the widths differ)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm = ChannelLayerNorm(out_channels, eps=1e-6)
        self.proj = nn.Conv2d(out_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.conv(x.to(self.conv.weight.dtype)), x)

    def pointwise(self, conv_out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Everything after the 3x3 convolution: LayerNorm -> ReLU -> Conv1x1 -> + residual.
        ``residual`` is the block input at the pixels where ``conv_out`` was evaluated. The
        sum is in the residual's dtype: with half-precision weights and a float32 input
        (fast inference) the block computes in half precision and the residual stream stays
        float32."""
        out = self.proj(F.relu(self.norm(conv_out)))
        return out.to(residual.dtype) + channel_residual(residual, self.out_channels)

    def forward_strided(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        """``forward(x)[..., ::stride, ::stride]``, computing only those pixels.

        The 3x3 convolution runs with ``stride`` (same zero padding) on the dense input; the
        LayerNorm, ReLU, 1x1 convolution and the residual are per pixel."""
        if stride == 1:
            return self.forward(x)
        conv_out = F.conv2d(x.to(self.conv.weight.dtype), self.conv.weight, None, stride=stride, padding=1)
        return self.pointwise(conv_out, x[:, :, ::stride, ::stride])


def conv_blocks(in_channels: int, widths: Sequence[int]) -> nn.ModuleList:
    """A chain of ConvBlocks with the given output widths."""
    blocks = nn.ModuleList()
    for width in widths:
        blocks.append(ConvBlock(in_channels, width))
        in_channels = width
    return blocks


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        x = block(x)
    return x


def group_widths(encoder_channels: Sequence, blocks_per_group: int) -> List[List[int]]:
    """Per-group block widths: an int entry repeats ``blocks_per_group`` times, a list is used as is."""
    return [list(c) if isinstance(c, (list, tuple)) else [int(c)] * blocks_per_group for c in encoder_channels]


class UPLiFTEncoder(nn.Module):
    """Dense encoder: groups of ConvBlocks at image resolution; returns every group's output."""

    def __init__(self, encoder_channels: Sequence, blocks_per_group: int, in_channels: int = 3):
        super().__init__()
        self.groups = nn.ModuleList()
        for widths in group_widths(encoder_channels, blocks_per_group):
            self.groups.append(conv_blocks(in_channels, widths))
            in_channels = widths[-1]

    def forward(
        self,
        image: torch.Tensor,
        last_map_stride: int = 1,
        feature_dtype: Optional[torch.dtype] = None,
        feature_dtype_stream_from: Optional[int] = None,
    ) -> List[torch.Tensor]:
        """Every group's output.

        Args:
            image: ``B x 3 x H x W``.
            last_map_stride: with s > 1 the last map is returned only at every s-th pixel
                (``dense[..., ::s, ::s]``), computed without the rest: exact, and what the
                upscaler does when its reads of that map all fall on that grid.
            feature_dtype: return the maps in this dtype, each cast as soon as it is made
                (fast inference stores them in bf16 while its residual stream is float32).
            feature_dtype_stream_from: from this group on, the residual stream itself is
                in ``feature_dtype`` (fast inference: the widest full-resolution groups,
                which set the peak memory).
        """
        if isinstance(last_map_stride, bool) or not isinstance(last_map_stride, int) or last_map_stride < 1:
            raise ValueError(f"`last_map_stride` must be an int >= 1, got {last_map_stride!r}.")
        features, x = [], image
        for index, group in enumerate(self.groups):
            if feature_dtype is not None and feature_dtype_stream_from is not None and index >= feature_dtype_stream_from:
                x = x.to(feature_dtype)
            if index == len(self.groups) - 1 and last_map_stride > 1:
                x = self.last_group_strided(x, last_map_stride)
            else:
                x = run_blocks(group, x)
            features.append(x if feature_dtype is None else x.to(feature_dtype))
        return features

    def last_group_strided(self, x: torch.Tensor, stride: int, phases: Optional[bool] = None) -> torch.Tensor:
        """The last group's output at every ``stride``-th pixel, from its dense input ``x``.

        The last block runs as a strided ConvBlock. Its 3x3 convolution reads the block
        before it only at rows and columns ``stride * i + {-1, 0, 1}``; for ``stride >= 3``
        those are fewer than all pixels, so with ``phases`` that block is evaluated only
        there, as nine strided "phases" (see :func:`conv_block_phases`: 9 / stride**2 of
        its work), and the last block's 3x3 convolution becomes one 1x1 convolution over
        the nine phases stacked as channels. ``phases=None`` uses them in float32 / float64,
        where they pay; in half precision (AMX / tensor cores) the convolutions are so
        fast that the nine strided phase convolutions and their input copies cost more
        than the dense block (measured on an AMX CPU), so that block stays dense there."""
        group = self.groups[-1]
        if phases is None:
            phases = group[0].conv.weight.dtype in (torch.float32, torch.float64)
        if stride < 3 or len(group) < 2 or not phases:
            x = run_blocks(group[:-1], x)
            return group[-1].forward_strided(x, stride)
        x = run_blocks(group[:-2], x)
        phases = conv_block_phases(group[-2], x, stride)  # B x 9 x C x H/s x W/s
        last = group[-1]
        batch, _, channels, height, width = phases.shape
        weight = last.conv.weight.permute(0, 2, 3, 1).reshape(last.out_channels, 9 * channels, 1, 1)
        conv_out = F.conv2d(phases.reshape(batch, 9 * channels, height, width).to(weight.dtype), weight)
        return last.pointwise(conv_out, phases[:, 4])  # phase 4 is the offset (0, 0)


PHASE_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def conv_block_phases(block: ConvBlock, x: torch.Tensor, stride: int) -> torch.Tensor:
    """``block(x)`` at the pixels ``(stride * i + dy, stride * j + dx)`` for the nine
    ``(dy, dx)`` in :data:`PHASE_OFFSETS`, with ``i, j`` running over ``ceil(H / stride)``,
    ``ceil(W / stride)``; pixels outside the image are zero (the next block's zero padding).
    Returns ``B x 9 x C_out x ceil(H / stride) x ceil(W / stride)``."""
    batch, _, height, width = x.shape
    rows, cols = -(-height // stride), -(-width // stride)
    padded = F.pad(x, (2, 2, 2, 2))  # padded[r + 2] = x[r]; zeros outside
    padded_in = padded.to(block.conv.weight.dtype)
    phases = []
    for dy, dx in PHASE_OFFSETS:
        # the 3x3 window centred at x[stride*i + dy] starts at padded[stride*i + dy + 1]
        window = padded_in[:, :, dy + 1 :, dx + 1 :]
        conv_out = F.conv2d(window, block.conv.weight, None, stride=stride)[:, :, :rows, :cols]
        residual = padded[:, :, dy + 2 :: stride, dx + 2 :: stride][:, :, :rows, :cols]
        out = block.pointwise(conv_out, residual)
        row_pos = torch.arange(rows, device=x.device) * stride + dy
        col_pos = torch.arange(cols, device=x.device) * stride + dx
        inside = ((row_pos >= 0) & (row_pos < height))[:, None] & ((col_pos >= 0) & (col_pos < width))[None, :]
        phases.append(out * inside.to(out.dtype))
    return torch.stack(phases, dim=1)


class UPLiFTDecoder(nn.Module):
    """One 2x step's decoder: ConvBlocks, a 2x transpose conv plus bilinear 2x, ConvBlocks.

    Its output is the guide of the Local Attender. ``forward`` takes the inputs already
    concatenated with their encoder maps and noise by the caller (``concat``)."""

    def __init__(self, in_channels: int, skip_channels: int, channels: int, blocks_before: int, blocks_after: int, noise_channels: int, bilinear_residual: bool = True):
        super().__init__()
        self.in_blocks = conv_blocks(in_channels, [channels] * blocks_before)
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.bilinear_residual = bilinear_residual
        self.out_blocks = conv_blocks(channels + skip_channels + noise_channels, [channels] * blocks_after)

    def upsample2x(self, x: torch.Tensor) -> torch.Tensor:
        up = self.upsample(x.to(self.upsample.weight.dtype)).to(x.dtype)
        if self.bilinear_residual:
            up = up + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return up


class UPLiFTRefiner(nn.Module):
    """ConvBlocks on [attended latents, encoder map, noise] -> Conv1x1 back to the latent width."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, latent_channels: int):
        super().__init__()
        self.blocks = conv_blocks(in_channels, [channels] * num_blocks)
        self.out = nn.Conv2d(channels, latent_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.blocks, x)
        return self.out(x.to(self.out.weight.dtype))


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
        refiner_channels, refiner_blocks: width and depth of the refiner.
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
    """

    _supports_gradient_checkpointing = False

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
    ):
        super().__init__()
        widths = group_widths(encoder_channels, encoder_blocks_per_group)
        if len(widths) < 2:
            raise ValueError(f"`encoder_channels` needs at least 2 groups (the decoder reads the last two), got {encoder_channels!r}.")
        for name, value in (("decoder_blocks_before_upsample", decoder_blocks_before_upsample), ("refiner_blocks", refiner_blocks)):
            if value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}.")
        ref_noise = noise_channels if refiner_noise_channels is None else refiner_noise_channels
        ref_skip = 0 if refiner_encoder_group is None else widths[refiner_encoder_group][-1]
        self.encoder = UPLiFTEncoder(widths, encoder_blocks_per_group)
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

    # ------------------------------------------------------------------ fast inference
    def enable_fast_inference(self, dtype: torch.dtype = torch.bfloat16, compile: bool = True, compile_mode: Optional[str] = None, channels_last: bool = True):
        """Run in ``dtype`` with channels_last weights and ``torch.compile`` (eager fallback
        with a warning); inputs are cast automatically and the output comes back in the
        latents' dtype. See :func:`uplift_diffusers.models.fast_inference.enable_fast_inference`."""
        from .fast_inference import enable_fast_inference

        return enable_fast_inference(self, dtype=dtype, compile=compile, compile_mode=compile_mode, channels_last=channels_last)

    def disable_fast_inference(self) -> None:
        """Back to the exact float32 eager model (the original weights are restored)."""
        from .fast_inference import disable_fast_inference

        disable_fast_inference(self)

    # ------------------------------------------------------------------ helpers
    def _noise_settings(self, noise_scale: Optional[float]):
        cfg = self.config
        dec_scale = cfg.noise_scale if noise_scale is None else noise_scale
        if noise_scale is not None:
            ref_scale = noise_scale
        else:
            ref_scale = cfg.noise_scale if cfg.refiner_noise_scale is None else cfg.refiner_noise_scale
        ref_channels = cfg.noise_channels if cfg.refiner_noise_channels is None else cfg.refiner_noise_channels
        return (cfg.noise_channels, float(dec_scale)), (ref_channels, float(ref_scale))

    @staticmethod
    def _concat(x: torch.Tensor, skip: Optional[torch.Tensor], noise: tuple, generator: GeneratorArg) -> torch.Tensor:
        """``cat(x, nearest(skip -> size of x), noise)``; fresh noise at every call."""
        parts = [x]
        if skip is not None:
            parts.append(F.interpolate(skip, size=x.shape[-2:], mode="nearest"))
        channels, scale = noise
        if channels:
            shape = (x.shape[0], channels, *x.shape[-2:])
            if scale == 0.0:
                parts.append(x.new_zeros(shape))
            else:
                parts.append(randn_tensor(shape, generator=generator, device=x.device, dtype=x.dtype) * scale)
        return torch.cat(parts, dim=1)

    def encoder_read_stride(self, num_steps: int) -> int:
        """Stride of the grid on which ``num_steps`` steps read the last encoder map.

        The map is at image size ``f * h`` (``f = vae_scale_factor``) and is read by nearest
        resampling at ``2**k * h`` for ``k = 0 .. K`` (``K = num_steps`` when the refiner
        reads it, else ``num_steps - 1``): source pixel ``dst * f / 2**k``. When ``2**K``
        divides ``f`` all reads fall on every ``f / 2**K``-th pixel; otherwise 1 (dense)."""
        group = self.config.refiner_encoder_group
        refiner_reads_last = group is not None and group % len(self.encoder.groups) == len(self.encoder.groups) - 1
        finest = 2 ** (num_steps if refiner_reads_last else num_steps - 1)
        factor = self.config.vae_scale_factor
        return factor // finest if factor % finest == 0 else 1

    def encode(self, image: torch.Tensor, num_steps: Optional[int] = None) -> List[torch.Tensor]:
        """Encoder maps E0 ... E4 of ``image``. With ``num_steps`` the last map is computed
        only on the grid those steps read (:meth:`encoder_read_stride`): the steps' outputs
        are the same as with the dense maps, for less work. ``None``: all maps dense."""
        stride = 1 if num_steps is None else self.encoder_read_stride(num_steps)
        return self.encoder(image, last_map_stride=stride)

    def upscale_step(self, latents: torch.Tensor, features: List[torch.Tensor], generator: GeneratorArg = None, noise_scale: Optional[float] = None) -> torch.Tensor:
        """One 2x step: decoder -> Local Attender -> refiner, given the encoder maps."""
        dec_noise, ref_noise = self._noise_settings(noise_scale)
        decoder = self.decoder
        x = run_blocks(decoder.in_blocks, self._concat(latents, features[-1], dec_noise, generator))
        x = decoder.upsample2x(x)
        guide = run_blocks(decoder.out_blocks, self._concat(x, features[-2], dec_noise, generator))
        attended = self.attender(guide, latents)
        group = self.config.refiner_encoder_group
        skip = None if group is None else features[group]
        return self.refiner(self._concat(attended, skip, ref_noise, generator))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        latents: torch.Tensor,
        image: torch.Tensor,
        num_steps: int = 1,
        generator: GeneratorArg = None,
        noise_scale: Optional[float] = None,
        output_intermediate: bool = False,
        return_dict: bool = True,
    ) -> Union[UPLiFTOutput, tuple]:
        """Upscale ``latents`` by ``2 ** num_steps``.

        Args:
            latents: ``B x latent_channels x h x w``, the VAE posterior mode (unscaled: divide
                a UNet's latents by ``vae.config.scaling_factor`` first).
            image: ``B x 3 x (8h) x (8w)`` RGB in [0, 1], the image the latents describe.
            num_steps: number of 2x steps (>= 1); the encoder runs once for all of them.
            generator: a ``torch.Generator`` or a list of one per batch element, for the noise.
            noise_scale: override of the configured noise scale (0 gives a deterministic output).
            output_intermediate: also return every step's latents.
            return_dict: return an :class:`UPLiFTOutput` instead of a tuple.
        """
        self._check_inputs(latents, image, num_steps, generator, noise_scale)
        if getattr(self, "_fast_inference", None) is not None:
            return self._fast_inference.forward(latents, image, num_steps, generator, noise_scale, output_intermediate, return_dict)
        features = self.encode(image.to(dtype=self.dtype), num_steps)
        z = latents.to(dtype=self.dtype)
        steps = []
        for _ in range(num_steps):
            z = self.upscale_step(z, features, generator, noise_scale)
            steps.append(z)
        intermediate = steps if output_intermediate else None
        if not return_dict:
            return (z, intermediate)
        return UPLiFTOutput(sample=z, intermediate=intermediate)

    def _check_inputs(self, latents, image, num_steps, generator, noise_scale) -> None:
        channels = self.config.latent_channels
        factor = self.config.vae_scale_factor
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"`latents` must be a 4-D tensor B x {channels} x h x w, got {got}.")
        if latents.shape[1] != channels:
            raise ValueError(
                f"`latents` has {latents.shape[1]} channels but this upscaler expects latent_channels={channels}; "
                "use an upscaler trained for this VAE."
            )
        batch, _, h, w = latents.shape
        if h < 1 or w < 1:
            raise ValueError(f"`latents` has an empty spatial size {h} x {w}.")
        expected = (batch, 3, factor * h, factor * w)
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != expected[-2:]:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"`image` must be B x 3 x {factor * h} x {factor * w} (RGB in [0, 1], {factor}x the {h} x {w} latents), got {got}."
            )
        if image.shape[0] != batch:
            raise ValueError(f"`image` batch {image.shape[0]} differs from `latents` batch {batch}; pass one image per latent.")
        for name, tensor in (("latents", latents), ("image", image)):
            if not tensor.is_floating_point():
                raise ValueError(f"`{name}` must be a floating-point tensor, got dtype {tensor.dtype}.")
            if not torch.isfinite(tensor).all():
                raise ValueError(f"`{name}` contains NaN or infinite values; pass finite values.")
        if latents.device != image.device:
            raise ValueError(f"`latents` is on {latents.device} but `image` on {image.device}; put both on the model's device.")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"`num_steps` must be an int >= 1 (each step upscales 2x), got {num_steps!r}.")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"`generator` is a list of {len(generator)} generators but the batch has {batch}; pass one per batch element.")
        if noise_scale is not None and (not isinstance(noise_scale, (int, float)) or noise_scale < 0):
            raise ValueError(f"`noise_scale` must be a number >= 0 or None, got {noise_scale!r}.")
