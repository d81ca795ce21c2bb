"""The models an evaluation command line names, loaded one way for every script.

``--upscaler`` goes to :func:`uplift_diffusers.loaders.upscaler.load_upscaler` (the authors' single
file, a ``save_pretrained`` folder, a Hub id, or nothing: the authors' release) and ``--vae`` to
:func:`uplift_diffusers.load_vae`. When the Hub cannot be reached and a model is not cached,
:class:`~uplift_diffusers.loaders.hub.HubUnavailableError` says so and names the flag that takes a
local path instead.
"""
from __future__ import annotations

from typing import Optional

import torch

from uplift_diffusers import UPLiFTLatentUpscaler, load_vae
from uplift_diffusers.constants import UPLIFT_SD15_REPO_ID
from uplift_diffusers.loaders.hub import from_hub
from uplift_diffusers.loaders.upscaler import load_upscaler as _load_upscaler

__all__ = ["load_upscaler", "load_vae_from"]


def load_upscaler(
    source: Optional[str], config: Optional[str] = None, flag: str = "--upscaler DIR|FILE", dtype: Optional[torch.dtype] = None
) -> UPLiFTLatentUpscaler:
    """The upscaler ``source`` names (``None``: the authors' release) in ``dtype`` (``None``:
    float32); ``config`` is the YAML of an authors' file trained with another configuration."""
    what = f"the upscaler {source or UPLIFT_SD15_REPO_ID!r}"
    return from_hub(what, flag, lambda: _load_upscaler(source, dtype, original_config=config))


def load_vae_from(spec: str, flag: str = "--vae DIR", dtype: Optional[torch.dtype] = None):
    """The VAE ``spec`` names (Hub id, diffusers folder or TAESD-family folder), in evaluation mode."""
    return from_hub(f"the VAE {spec!r}", flag, lambda: load_vae(spec, torch_dtype=dtype)).eval()
