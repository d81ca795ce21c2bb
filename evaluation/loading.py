"""The models an evaluation command line names, loaded one way for every script.

``--upscaler`` goes to :func:`uplift_diffusers.loaders.upscaler.load_upscaler` (the authors' single
file, a ``save_pretrained`` folder, a Hub id, or nothing: the authors' release) and ``--vae`` to
:func:`uplift_diffusers.load_vae`. When the Hub cannot be reached and a model is not cached,
:class:`~uplift_diffusers.loaders.hub.HubUnavailableError` says so and names the flag that takes a
local path instead.

:func:`models_available` checks, before anything is loaded, that every model a command names can
be had: from the local Hub cache, or from the Hub when it answers within a few seconds. Models
missing from the cache while the Hub cannot be used (``HF_HUB_OFFLINE=1``, or no answer) are all
named at once in one :class:`~uplift_diffusers.loaders.hub.MissingModelsError` (a
``FileNotFoundError``); when the Hub does not answer but everything is cached, the block runs in
offline mode (no time-outs per file) and a note says so.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional, Sequence

import torch

from uplift_diffusers import UPLiFTLatentUpscaler, load_vae
from uplift_diffusers.constants import UPLIFT_SD15_REPO_ID
from uplift_diffusers.loaders.hub import HubModel, from_hub, hub_models_available
from uplift_diffusers.loaders.upscaler import load_upscaler as _load_upscaler

__all__ = ["load_upscaler", "load_vae_from", "hub_model", "upscaler_model", "models_available"]


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


def hub_model(source: Optional[str], what: str, hint: str, files: Sequence[str] = ()) -> Optional[HubModel]:
    """A :class:`HubModel` for :func:`models_available` (``None`` when ``source`` is None)."""
    return None if source is None else HubModel(source, tuple(files), what=f"{what} {source!r}", hint=hint)


def upscaler_model(source: Optional[str], hint: str = "--upscaler DIR|FILE") -> HubModel:
    """The upscaler ``source`` names (``None``: the authors' release) for :func:`models_available`."""
    return hub_model(source or UPLIFT_SD15_REPO_ID, "the upscaler", hint)


@contextmanager
def models_available(models: Iterable[Optional[HubModel]]) -> Iterator[bool]:
    """Check every model of ``models`` (``None`` entries ignored) before loading; see the module docstring."""
    with hub_models_available([m for m in models if m is not None], notify=lambda message: print(f"note: {message}", file=sys.stderr)) as online:
        yield online
