"""Models a user names by one string (a command-line flag), for the CLI and the evaluation scripts.

Both check every model before loading any (:func:`~.hub.hub_models_available`, which takes the
:class:`~.hub.HubModel` that :func:`upscaler_hub_model` and :func:`vae_hub_model` build) and then
load each with this package's loaders, where "the Hub cannot be reached and the model is not
cached" becomes one :class:`~.hub.HubUnavailableError` naming what to pass instead
(:func:`~.hub.from_hub`). They differ only in their flag names, which are arguments here:

- ``flag``: how loader errors name the string (e.g. ``"--upscaler"``);
- ``hint``: what to pass instead when the Hub cannot be used (e.g. ``"--upscaler DIR|FILE"``).

No torch or diffusers at import (the CLI's ``--help`` answers before them).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..constants import SD15_VAE_SUBFOLDER, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME, UPSCALER_SUBFOLDER
from .hub import HubModel, from_hub

if TYPE_CHECKING:
    import torch

__all__ = ["UPSCALER_HUB_FILES", "VAE_HUB_FILES", "upscaler_hub_model", "vae_hub_model", "load_user_upscaler", "load_user_vae"]

#: Files of a Hub repository that :func:`~.upscaler.load_upscaler` reads an upscaler from (any one
#: cached counts): a ``save_pretrained`` config, the authors' single file, a pipeline's upscaler.
UPSCALER_HUB_FILES = ("config.json", UPLIFT_SD15_WEIGHTS_NAME, f"{UPSCALER_SUBFOLDER}/config.json")
#: Files of a Hub repository that :func:`~.vae.load_vae` reads a VAE from (any one cached counts):
#: a VAE's own ``config.json`` or a pipeline's ``vae/config.json``.
VAE_HUB_FILES = ("config.json", f"{SD15_VAE_SUBFOLDER}/config.json")


def upscaler_hub_model(source: Optional[str], hint: str, what: Optional[str] = None) -> HubModel:
    """The upscaler ``source`` names (``None``: the authors' release) for the checks before
    loading; ``what`` overrides how messages name it."""
    if source is None:
        return HubModel(UPLIFT_SD15_REPO_ID, UPSCALER_HUB_FILES, what=what or f"the default UPLiFT model ({UPLIFT_SD15_REPO_ID}, {UPLIFT_SD15_WEIGHTS_NAME})", hint=hint)
    return HubModel(source, UPSCALER_HUB_FILES, what=what or f"the upscaler {source!r}", hint=hint)


def vae_hub_model(source: str, hint: str, what: Optional[str] = None) -> HubModel:
    """The VAE ``source`` names for the checks before loading; ``what`` overrides how messages name it."""
    return HubModel(source, VAE_HUB_FILES, what=what or f"the VAE {source!r}", hint=hint)


def load_user_upscaler(model: HubModel, flag: str, dtype: Optional["torch.dtype"] = None, original_config=None):
    """The upscaler of ``model`` (from :func:`upscaler_hub_model`) by
    :func:`~.upscaler.load_upscaler`, errors naming ``flag``; ``original_config`` is the YAML of an
    authors' file trained with another configuration."""
    from .upscaler import load_upscaler

    return from_hub(model.label, model.hint, lambda: load_upscaler(model.source, dtype, original_config=original_config, argument=flag))


def load_user_vae(source: str, flag: str, hint: str, dtype: Optional["torch.dtype"] = None):
    """The VAE ``source`` names by :func:`~.vae.load_vae`, errors naming ``flag``."""
    from .vae import load_vae

    return from_hub(f"the VAE {source!r}", hint, lambda: load_vae(source, torch_dtype=dtype, argument=flag))
