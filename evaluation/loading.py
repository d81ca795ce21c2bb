"""The models an evaluation command line names, loaded one way for every script.

``--upscaler`` goes to :func:`uplift_diffusers.loaders.upscaler.load_upscaler` (the authors' single
file, a ``save_pretrained`` folder, a Hub id, or nothing: the authors' release) and ``--vae`` to
:func:`uplift_diffusers.load_vae`, through :mod:`uplift_diffusers.loaders.user_models` (as the CLI):
when the Hub cannot be reached and a model is not cached,
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

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.loaders.hub import HubModel, hub_models_available
from uplift_diffusers.loaders.user_models import load_user_upscaler, load_user_vae, upscaler_hub_model

__all__ = ["load_upscaler", "load_vae_from", "hub_model", "upscaler_model", "models_available"]


def load_upscaler(
    source: Optional[str], config: Optional[str] = None, flag: str = "--upscaler DIR|FILE", dtype: Optional[torch.dtype] = None
) -> UPLiFTLatentUpscaler:
    """The upscaler ``source`` names (``None``: the authors' release) in ``dtype`` (``None``:
    float32); ``config`` is the YAML of an authors' file trained with another configuration.
    ``flag`` is what to pass instead when the Hub cannot be used; its first word names ``source`` in errors."""
    return load_user_upscaler(upscaler_model(source, flag), flag.split()[0], dtype, original_config=config)


def load_vae_from(spec: str, flag: str = "--vae DIR", dtype: Optional[torch.dtype] = None):
    """The VAE ``spec`` names (Hub id, diffusers folder or TAESD-family folder), in evaluation mode
    (``flag`` as in :func:`load_upscaler`)."""
    return load_user_vae(spec, flag.split()[0], flag, dtype).eval()


def hub_model(source: Optional[str], what: str, hint: str, files: Sequence[str] = ()) -> Optional[HubModel]:
    """A :class:`HubModel` for :func:`models_available` (``None`` when ``source`` is None)."""
    return None if source is None else HubModel(source, tuple(files), what=f"{what} {source!r}", hint=hint)


def upscaler_model(source: Optional[str], hint: str = "--upscaler DIR|FILE") -> HubModel:
    """The upscaler ``source`` names (``None``: the authors' release) for :func:`models_available`."""
    return upscaler_hub_model(source, hint)


@contextmanager
def models_available(models: Iterable[Optional[HubModel]]) -> Iterator[bool]:
    """Check every model of ``models`` (``None`` entries ignored) before loading; see the module docstring."""
    with hub_models_available([m for m in models if m is not None], notify=lambda message: print(f"note: {message}", file=sys.stderr)) as online:
        yield online
