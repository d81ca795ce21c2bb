"""Tiled UPLiFT inference: large outputs within bounded memory.

:func:`tiled_upscale` runs an :class:`~uplift_diffusers.UPLiFTLatentUpscaler` on overlapping tiles
of the latents (each with the matching pixels of the guide image) and cross-fades the upscaled
tiles, as diffusers' VAE tiling does; one tile covering everything gives the untiled result. Every
step's noise is drawn at full size, in the order of an untiled run, and sliced per tile; each tile
goes through the model's ``forward``, so fast inference and accelerate's hooks apply per tile. Only
the input, the noise and the output are full size; the encoder maps and activations exist for one
tile at a time.

Why the overlap matters: no operation of the model is global (its LayerNorms are per pixel), but a
tile sees zero padding where the image has neighbours. For the TAEF2 model trained here that
reaches, in input latents: the encoder's 10 ConvBlocks at 8 px per latent ~1.3, a 2x step's decoder,
17-neighbourhood Local Attender and refiner ~7, the next step half that (< 15 for any number of
steps). :data:`DEFAULT_TILE_OVERLAP` (16) covers it. Measured: a 384 x 256 image at 4x, 32-latent
tiles sharing 8, decodes within 76 dB of the untiled result (the full 1024 x 768 job:
``evaluation/results/tiling_memory.md``).
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .modeling_uplift import GeneratorArg

#: Default tile side, in latents of the input (x ``vae_scale_factor`` guide pixels: 64 -> 512 px).
DEFAULT_TILE_SIZE = 64
#: Default overlap of neighbouring tiles, in latents of the input (measured: see the module doc).
DEFAULT_TILE_OVERLAP = 16


def check_tile_arguments(tile_size, overlap) -> Tuple[int, int]:
    """``(tile_size, overlap)`` checked, ``None`` replaced by the default."""
    tile_size = DEFAULT_TILE_SIZE if tile_size is None else tile_size
    if not isinstance(tile_size, int) or tile_size < 2:  # True == 1 is rejected too
        raise ValueError(
            f"`tile_size` must be an int >= 2 (the tile side in latents of the input; "
            f"{DEFAULT_TILE_SIZE} is the default), got {tile_size!r}."
        )
    overlap = min(DEFAULT_TILE_OVERLAP, tile_size // 2) if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile_size:
        raise ValueError(
            f"`overlap` must be an int in [0, tile_size={tile_size}) (latents shared by neighbouring "
            f"tiles; {DEFAULT_TILE_OVERLAP} is the default), got {overlap!r}."
        )
    return tile_size, overlap


def tile_starts(length: int, tile_size: int, overlap: int) -> List[int]:
    """Start offsets of the tiles along one axis of ``length``: the fewest full tiles that share
    at least ``overlap`` pixels with each neighbour, evenly spaced from 0 to ``length - tile_size``
    (one tile at 0 when ``length <= tile_size``)."""
    if length <= tile_size:
        return [0]
    count = math.ceil((length - overlap) / (tile_size - overlap))
    return [round(index * (length - tile_size) / (count - 1)) for index in range(count)]


def axis_weights(starts: Sequence[int], length: int, tile_size: int, out_scale: int) -> List[torch.Tensor]:
    """1-D blend weights of each tile along one axis, in output pixels: rising over the pixels the
    tile shares with the previous one, falling over those it shares with the next, 1 elsewhere.
    The rise over ``n`` shared pixels is ``(i + 0.5) / n`` (never 0), so the neighbour's fall over
    the same pixels complements it to exactly 1."""
    weights = []
    for index, start in enumerate(starts):
        end = min(start + tile_size, length)
        position = torch.arange((end - start) * out_scale, dtype=torch.float32) + 0.5
        ramp = torch.ones_like(position)
        if index > 0:
            ramp = torch.minimum(ramp, position / ((starts[index - 1] + tile_size - start) * out_scale))
        if index + 1 < len(starts):
            ramp = torch.minimum(ramp, position.flip(0) / ((end - starts[index + 1]) * out_scale))
        weights.append(ramp)
    return weights


def count_tiles(height: int, width: int, tile_size: Optional[int] = None, overlap: Optional[int] = None) -> int:
    """How many tiles :func:`tiled_upscale` runs for ``height x width`` latents."""
    tile_size, overlap = check_tile_arguments(tile_size, overlap)
    return len(tile_starts(height, tile_size, overlap)) * len(tile_starts(width, tile_size, overlap))


def blend_tiles(
    run_tile: Callable[[int, int, int, int], torch.Tensor],
    height: int,
    width: int,
    tile_size: int,
    overlap: int,
    out_scale: int = 1,
) -> torch.Tensor:
    """Run ``run_tile(y0, y1, x0, x1)`` on overlapping tiles of a ``height x width`` grid and
    blend the results (the one tiling loop of the package: UPLiFT and TinyAutoencoder).

    ``run_tile`` returns the output of grid region ``[y0:y1, x0:x1]``, ``B x C x (y1 - y0) *
    out_scale x (x1 - x0) * out_scale``; the outputs are averaged with the :func:`axis_weights`
    (a linear cross-fade in each overlap), in the tiles' dtype. One tile (``height, width <=
    tile_size``) gives that tile unchanged.
    """
    rows, cols = tile_starts(height, tile_size, overlap), tile_starts(width, tile_size, overlap)
    if len(rows) == len(cols) == 1:
        return run_tile(0, height, 0, width)
    row_weights = axis_weights(rows, height, tile_size, out_scale)
    col_weights = axis_weights(cols, width, tile_size, out_scale)
    out = weight_sum = None
    for row, y0 in enumerate(rows):
        y1 = min(y0 + tile_size, height)
        for col, x0 in enumerate(cols):
            x1 = min(x0 + tile_size, width)
            tile = run_tile(y0, y1, x0, x1)
            if out is None:
                out = tile.new_zeros(tile.shape[:2] + (height * out_scale, width * out_scale), dtype=torch.float32)
                weight_sum = tile.new_zeros((1, 1) + out.shape[-2:], dtype=torch.float32)
            weight = row_weights[row].to(tile.device)[:, None] * col_weights[col].to(tile.device)[None, :]
            region = (slice(None), slice(None), slice(y0 * out_scale, y1 * out_scale), slice(x0 * out_scale, x1 * out_scale))
            out[region] += tile.float() * weight
            weight_sum[region] += weight
            dtype = tile.dtype
            del tile
    return out.div_(weight_sum).to(dtype)


def tiled_upscale(
    upscaler,
    latents: torch.Tensor,
    image: torch.Tensor,
    num_steps: int,
    generator: GeneratorArg = None,
    tile_size: Optional[int] = None,
    overlap: Optional[int] = None,
    callback: Optional[Callable[[int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Upscale ``latents`` by ``2 ** num_steps`` tile by tile (see the module doc).

    Args:
        upscaler: an :class:`~uplift_diffusers.UPLiFTLatentUpscaler`; ``latents``, ``image`` and
            ``num_steps`` as for its ``forward``.
        tile_size, overlap: tile side and overlap in latents of the input (None: the defaults
            :data:`DEFAULT_TILE_SIZE`, :data:`DEFAULT_TILE_OVERLAP`).
        callback: ``callback(step_index, tile_latents)`` after every 2x step of every tile
            (``count_tiles(h, w, ...) * num_steps`` calls in all), for progress.

    Returns:
        The upscaled latents ``B x C x (2**num_steps h) x (2**num_steps w)`` in the model's output dtype;
        equal to the untiled call when one tile covers the latents.
    """
    tile_size, overlap = check_tile_arguments(tile_size, overlap)
    upscaler.check_inputs(latents, image, num_steps, generator, callback=callback)
    # every step's noise drawn by the model at full size, in the order of an untiled run; step_noise
    # reads only the shape and device of the latents: zero-size stand-ins
    batch, channels, h, w = latents.shape
    stand_ins = [latents.new_zeros(()).expand(batch, channels, h * 2**step, w * 2**step) for step in range(num_steps)]
    noises = [upscaler.step_noise(stand_in, generator) for stand_in in stand_ins]

    def run_tile(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        def crop(tensor: torch.Tensor) -> torch.Tensor:  # the tile of the latents, the guide or a noise
            scale = tensor.shape[-2] // h
            return tensor[:, :, y0 * scale : y1 * scale, x0 * scale : x1 * scale]

        tile_noise = [tuple(None if n is None else crop(n).contiguous() for n in noise) for noise in noises]
        return upscaler(crop(latents), crop(image), num_steps=num_steps, callback=callback, noise=tile_noise).sample

    return blend_tiles(run_tile, latents.shape[-2], latents.shape[-1], tile_size, overlap, out_scale=2**num_steps)
