"""A diffusers model for the TAESD family of tiny autoencoders (TAESD, TAESDXL, TAEF1, TAEF2, ...).

The original madebyollin/taesd checkpoints are two state dicts, ``encoder.pth`` and ``decoder.pth``,
each indexing one ``nn.Sequential`` laid out as diffusers' ``EncoderTiny`` / ``DecoderTiny`` (the
decoder with a soft clamp ``3 tanh(x / 3)`` at index 0). TAEF2 makes some blocks "pooled"
(``x = x + pool(x)`` before the block), which diffusers' ``AutoencoderTiny`` cannot hold: hence this
model, keeping the files' key layout under ``encoder.layers.`` / ``decoder.layers.``.

As ``AutoencoderTiny``: images in [-1, 1], unscaled latents, ``enable_tiling()`` / ``enable_slicing()``;
the tiles are blended by :func:`~uplift_diffusers.models.tiled_upscaling.blend_tiles` (diffusers' own
tiled loops assume 4 latent / 3 image channels).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DecoderTiny, EncoderTiny
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

from ..utils.state_dicts import load_state_dict_file, state_dict_problems
from ..utils.validation import check_image_batch
from .tiled_upscaling import blend_tiles

#: Indices of the residual blocks in the original encoder ``nn.Sequential``.
ENCODER_BLOCK_POSITIONS = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13)
#: Indices of the residual blocks in the original decoder ``nn.Sequential``.
DECODER_BLOCK_POSITIONS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
_ENCODER_OUT_INDEX = 14  # conv(64, latent_channels)
_DECODER_IN_INDEX = 1  # conv(latent_channels, 64)
_DECODER_OUT_INDEX = 19  # conv(64, 3)


class PooledBlock(AutoencoderTinyBlock):
    """diffusers' TAESD block preceded by TAEF2's pooling branch: ``x = x + pool(x)``."""

    def __init__(self, channels: int, hidden_channels: int, num_groups: int):
        super().__init__(channels, channels, "relu")
        self.pool = nn.Sequential(
            nn.Conv2d(channels, hidden_channels, 1, bias=False),
            nn.GroupNorm(num_groups, hidden_channels),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pool(x))


class _TanhClamp(nn.Module):
    """The decoder's soft clamp of the latents, ``x -> 3 tanh(x / 3)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


def _pool_blocks(layers: nn.Sequential, name: str, pooled, allowed: Sequence[int], *pool: int) -> nn.Sequential:
    """``layers`` with the blocks at the indices ``pooled`` (the config argument ``name``, a subset of
    ``allowed``) swapped for :class:`PooledBlock` ``(*pool)``."""
    distinct = isinstance(pooled, Sequence) and not isinstance(pooled, str) and len(set(pooled)) == len(pooled)
    if not distinct or any(isinstance(v, bool) or not isinstance(v, int) or v not in allowed for v in pooled):
        raise ValueError(f"`{name}` must list distinct block indices out of {list(allowed)}, got {pooled!r}.")
    for index in pooled:
        layers[index] = PooledBlock(*pool)
    return layers


def _shape(state: Mapping[str, torch.Tensor], key: str, dim: int) -> int | None:
    tensor = state.get(key)
    return int(tensor.shape[dim]) if tensor is not None and tensor.ndim > dim else None


class TinyAutoencoder(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""TAESD-family tiny autoencoder (8x spatial compression) as a diffusers model.

    Use :meth:`from_original_checkpoint` for the original ``encoder.pth`` / ``decoder.pth``
    pairs and ``from_pretrained`` for a directory written by ``save_pretrained``.

    Parameters:
        latent_channels (`int`, defaults to 4): channels of the latent space (4 for TAESD,
            16 for TAEF1 / TAESD3, 32 for TAEF2).
        encoder_pooled_blocks / decoder_pooled_blocks (`list[int]`, defaults to `[]`): indices (in
            the ``nn.Sequential``) of the blocks with a pooling branch, out of
            ``ENCODER_BLOCK_POSITIONS`` / ``DECODER_BLOCK_POSITIONS``.
        block_out_channels (`list[int]`, defaults to `[64, 64, 64, 64]`): the one width, four times so
            that pipelines computing ``2 ** (len(block_out_channels) - 1)`` get the spatial factor 8.
        in_channels / out_channels (`int`, defaults to 3): image channels.
        pool_hidden_channels (`int`, defaults to 256), pool_num_groups (`int`, defaults to 4):
            width and GroupNorm groups of the pooling branch.
        scaling_factor (1.0), shift_factor (0.0), force_upcast (False): for the pipelines that read
            them; the latents are used unscaled, and the model runs in half precision without trouble.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        encoder_pooled_blocks: Sequence[int] = (),
        decoder_pooled_blocks: Sequence[int] = (),
        block_out_channels: Sequence[int] = (64, 64, 64, 64),
        in_channels: int = 3,
        out_channels: int = 3,
        pool_hidden_channels: int = 256,
        pool_num_groups: int = 4,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        force_upcast: bool = False,
    ):
        super().__init__()
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or latent_channels < 1:
            raise ValueError(f"`latent_channels` must be a positive int, got {latent_channels!r}.")
        if not isinstance(block_out_channels, Sequence) or len(block_out_channels) != 4 or len(set(block_out_channels)) != 1:
            raise ValueError(
                f"`block_out_channels` must list four equal widths, e.g. [64, 64, 64, 64]; got {block_out_channels!r}."
            )
        width = block_out_channels[0]

        # diffusers' EncoderTiny / DecoderTiny lay their layers out as the original files; the
        # decoder's soft clamp is prepended so that the indices match the files' keys. Both are
        # run through ``.layers`` (their ``forward`` also rescales the images / clamps).
        pool = (width, pool_hidden_channels, pool_num_groups)
        widths, blocks = (width,) * 4, (1, 3, 3, 3)
        self.encoder = EncoderTiny(in_channels, latent_channels, blocks, widths, "relu")
        _pool_blocks(self.encoder.layers, "encoder_pooled_blocks", encoder_pooled_blocks, ENCODER_BLOCK_POSITIONS,
                     *pool)
        self.decoder = DecoderTiny(latent_channels, out_channels, blocks[::-1], widths, 2, "relu", "nearest")
        self.decoder.layers = _pool_blocks(nn.Sequential(_TanhClamp(), *self.decoder.layers), "decoder_pooled_blocks",
                                           decoder_pooled_blocks, DECODER_BLOCK_POSITIONS, *pool)
        # AutoencoderMixin's switches (enable_tiling / enable_slicing) and diffusers' tile settings:
        # 512 px tiles sharing 128 px, which covers the decoder's receptive field (TAEF2 tiled vs
        # untiled decode: tests/test_tiling.py)
        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = 512
        self.tile_overlap_factor = 0.25

    @classmethod
    def from_original_checkpoint(
        cls,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        dtype: torch.dtype | None = None,
    ) -> "TinyAutoencoder":
        """The model, in evaluation mode, of an original madebyollin/taesd pair ``encoder_path`` /
        ``decoder_path`` (``encoder.pth``, ``taef2_encoder.pth``, ...), its config read from the
        state-dict keys and shapes; ``dtype`` a floating dtype, float32 when None (the files store
        float16). Errors list the missing or unexpected keys and the shape mismatches."""
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"`dtype` must be a floating torch.dtype (e.g. torch.float16) or None, got {dtype!r}.")
        enc_sd = load_state_dict_file(encoder_path, "encoder_path")
        dec_sd = load_state_dict_file(decoder_path, "decoder_path")
        enc_latent = _shape(enc_sd, f"{_ENCODER_OUT_INDEX}.weight", 0)
        dec_latent = _shape(dec_sd, f"{_DECODER_IN_INDEX}.weight", 1)
        counts = {enc_latent, dec_latent} - {None}  # either key may be missing, not both; the two must agree
        if len(counts) != 1:
            raise ValueError(
                f"cannot read one latent channel count: encoder_path ({encoder_path}) gives {enc_latent} latent "
                f"channels ('{_ENCODER_OUT_INDEX}.weight') and decoder_path ({decoder_path}) expects {dec_latent} "
                f"('{_DECODER_IN_INDEX}.weight'; None: the key is missing); pass the encoder and decoder of one "
                "TAESD-family variant."
            )
        pool_widths = [int(sd[k].shape[0]) for sd in (enc_sd, dec_sd) for k in sorted(sd) if k.endswith(".pool.0.weight")]
        model = cls(
            latent_channels=enc_latent or dec_latent,
            encoder_pooled_blocks=[i for i in ENCODER_BLOCK_POSITIONS if f"{i}.pool.0.weight" in enc_sd],
            decoder_pooled_blocks=[i for i in DECODER_BLOCK_POSITIONS if f"{i}.pool.0.weight" in dec_sd],
            block_out_channels=[_shape(enc_sd, "0.weight", 0) or _shape(dec_sd, f"{_DECODER_IN_INDEX}.weight", 0) or 64] * 4,
            in_channels=_shape(enc_sd, "0.weight", 1) or 3,
            out_channels=_shape(dec_sd, f"{_DECODER_OUT_INDEX}.weight", 0) or 3,
            pool_hidden_channels=pool_widths[0] if pool_widths else 256,
        )
        problems = []
        for arg, path, given, layers in (
            ("encoder_path", encoder_path, enc_sd, model.encoder.layers),
            ("decoder_path", decoder_path, dec_sd, model.decoder.layers),
        ):
            parts = state_dict_problems(given, layers.state_dict(), limit=12)
            if parts:
                problems.append(f"{arg} ({path}): " + "; ".join(parts))
        if problems:
            detected = {key: model.config[key] for key in ("latent_channels", "encoder_pooled_blocks", "decoder_pooled_blocks")}
            raise ValueError(f"the checkpoint does not match the TAESD layout (detected config {detected}): " + " | ".join(problems))
        model.encoder.layers.load_state_dict(enc_sd)
        model.decoder.layers.load_state_dict(dec_sd)
        if dtype is not None:
            model = nn.Module.to(model, dtype)  # ModelMixin.to(dtype) logs a spurious fp32-modules warning
        return model.eval()

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderTinyOutput | tuple[torch.Tensor]:
        """Encode images in [-1, 1] of shape (batch, 3, H, W), H and W multiples of 8, into
        latents (batch, latent_channels, H / 8, W / 8). Shapes and dtypes are checked, values are
        not (a device synchronisation per call: :mod:`~uplift_diffusers.utils.validation`)."""
        check_image_batch("x", x, channels=self.config.in_channels, multiple=8, dtype=self.dtype)
        latents = self._run_sliced(self._encode_one, x)
        if not return_dict:
            return (latents,)
        return AutoencoderTinyOutput(latents=latents)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Decode latents of shape (batch, latent_channels, h, w) into images (batch, 3, 8h, 8w)
        in [-1, 1], not clamped, like diffusers' autoencoders (image post-processing clamps).
        ``generator`` is unused (decoding is deterministic), there for diffusers' signature."""
        check_image_batch("z", z, channels=self.config.latent_channels, dtype=self.dtype)
        images = self._run_sliced(self._decode_one, z)
        if not return_dict:
            return (images,)
        return DecoderOutput(sample=images)

    def _run_sliced(self, run, x: torch.Tensor) -> torch.Tensor:
        """``run(x)``, one batch element at a time when slicing is on (as diffusers does)."""
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([run(item) for item in x.split(1)])
        return run(x)

    def _tile_grid(self, pixels_per_unit: int) -> tuple[int, int]:
        """``(tile, overlap)`` in units of ``pixels_per_unit`` image pixels, from diffusers'
        ``tile_sample_min_size`` (pixels) and ``tile_overlap_factor``."""
        tile = max(2, self.tile_sample_min_size // pixels_per_unit)
        return tile, min(tile - 1, int(tile * self.tile_overlap_factor))

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents. With tiling, the layers before the first pooled block
        (or up to the last downsampling) run on overlapping blended tiles, the rest on the whole
        map: a pooled block's GroupNorm reads the statistics of the whole map, which a tile
        would change (TAEF2 pools only at latent resolution, where the whole map is cheap)."""
        x = x * 0.5 + 0.5
        if not self.use_tiling:
            return self.encoder.layers(x)
        layers = self.encoder.layers
        downs = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d) and layer.stride[0] > 1]
        split = min([downs[-1] + 1] + [int(p) for p in self.config.encoder_pooled_blocks])
        step = 2 ** sum(1 for i in downs if i < split)  # image pixels per pixel of the tiled part's output
        tiled_part, rest = layers[:split], layers[split:]

        def run_tile(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return tiled_part(x[:, :, y0 * step : y1 * step, x0 * step : x1 * step])

        return rest(blend_tiles(run_tile, x.shape[-2] // step, x.shape[-1] // step, *self._tile_grid(step)))

    def _decode_one(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1]. With tiling, the layers up to the first upsampling (or
        the last pooled block, see :meth:`_encode_one`) run on the whole map, the rest on
        overlapping blended tiles."""
        if not self.use_tiling:
            return self.decoder.layers(z).mul(2).sub_(1)
        layers = self.decoder.layers
        ups = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Upsample)]
        split = max([ups[0]] + [int(p) + 1 for p in self.config.decoder_pooled_blocks])
        scale = 2 ** sum(1 for i in ups if i >= split)  # output pixels per pixel of the whole-map part
        features = layers[:split](z)
        tiled_part = layers[split:]

        def run_tile(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
            return tiled_part(features[:, :, y0:y1, x0:x1]).mul(2).sub_(1)

        return blend_tiles(run_tile, features.shape[-2], features.shape[-1], *self._tile_grid(scale), out_scale=scale)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruct images in [-1, 1]: ``decode(encode(sample).latents)`` (no latent quantisation)."""
        return self.decode(self.encode(sample).latents, return_dict=return_dict)
