"""The memory budget of the upscale stage. Untiled, its memory grows with the output's pixels (the
VAE decodes the whole image at once: 10.7 GB for 4096 x 3072 on the CPU), so the pipelines and
:func:`~uplift_diffusers.apply_uplift` tile when :func:`estimate_upscale_bytes` passes ``max_memory``."""
from __future__ import annotations

import re
from typing import Union

__all__ = ["DEFAULT_MAX_MEMORY", "parse_memory", "estimate_upscale_bytes"]

#: The default budget of the upscale stage, on top of the loaded models and libraries (about 1.1 GB
#: for the embedded TAEF2 model): the whole process then stays under 3 GB.
DEFAULT_MAX_MEMORY = 1_500_000_000
#: Measured peak bytes of the untiled stage, float32, per pixel and per channel of the widest
#: encoder group (UPLiFT, per guide pixel) or of the VAE decoder's full-resolution block (per
#: decoded pixel): fitted on 256 px at 4x and 512 px at 2x with the embedded TAEF2 model
#: (tests/test_memory.py checks them against measured peaks).
UPLIFT_BYTES_PER_CHANNEL = 4.4
DECODE_BYTES_PER_CHANNEL = 14.8
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_memory(value: Union[int, float, str], name: str = "max_memory") -> float:
    """Bytes from a positive number of bytes or a string such as ``"3GB"``, ``"500MB"``, ``"2GiB"``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*", value.lower()) if isinstance(value, str) else None
    if match and match.group(2) in _UNITS:
        value = float(match.group(1)) * _UNITS[match.group(2)]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"`{name}` must be a positive number of bytes or a size such as '3GB' or '500MB', got {value!r}."
        )
    return float(value)


def estimate_upscale_bytes(upscaler, vae, batch: int, guide_size, decoded_size) -> int:
    """The untiled upscale stage's estimated peak bytes for ``batch`` images: UPLiFT's encoder on
    the ``guide_size`` image and the VAE decoding ``decoded_size`` pixels (the largest image the
    steps reach, before any resampling to the output size)."""
    encoder_width = max(max(c) if isinstance(c, (list, tuple)) else c for c in upscaler.config.encoder_channels)
    decoder_width = vae.config.block_out_channels[0]
    guide_pixels = batch * guide_size[0] * guide_size[1]
    decoded_pixels = batch * decoded_size[0] * decoded_size[1]
    return int(UPLIFT_BYTES_PER_CHANNEL * encoder_width * guide_pixels + DECODE_BYTES_PER_CHANNEL * decoder_width * decoded_pixels)
