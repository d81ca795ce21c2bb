"""What both pipelines of the package share; it imports no Stable Diffusion or CLIP code.

- :class:`UPLiFTComponentsMixin`: the three hooks that saving and loading a pipeline with this
  package's components needs on top of diffusers' own (each is tested by a round trip that fails
  without it). diffusers records such a component as ``[<defining module>, "<Class>"]`` in
  ``model_index.json`` and loads it back from a local folder unaided.
- :class:`VAETilingMixin` adds ``enable_vae_tiling`` / ``disable_vae_tiling``.
- :func:`check_upscaler_matches_vae` checks that an upscaler works in a VAE's latent space.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from ..loaders.hub import hub_kwargs_of, locate_hub_file
from ..loaders.vae import vae_scale_factor
from ..models.modeling_uplift import UPLiFTLatentUpscaler

__all__ = [
    "LIBRARY_NAME",
    "UPLiFTComponentsMixin",
    "VAETilingMixin",
    "resolve_package_entries",
    "read_model_index",
    "vae_latent_channels",
    "check_upscaler_matches_vae",
]

LIBRARY_NAME = "uplift_diffusers"
_INDEX_NAME = "model_index.json"


# ---------------------------------------------------------------------------------------------
# Saving / loading this package's components inside diffusers pipelines
# ---------------------------------------------------------------------------------------------
def _package_entries(config: Mapping[str, Any]) -> List[str]:
    """Names of the components that ``model_index.json`` records as defined in this package."""
    return [
        name
        for name, entry in config.items()
        if not name.startswith("_")
        and isinstance(entry, (list, tuple))
        and len(entry) == 2
        and isinstance(entry[0], str)
        and entry[0].split(".")[0] == LIBRARY_NAME
    ]


def read_model_index(pretrained_model_name_or_path, kwargs: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``model_index.json`` of a pipeline folder or Hub repository (the cache first, with the
    Hub arguments in ``kwargs``), or None when it cannot be read here (``from_pretrained`` then
    reports why itself)."""
    location = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
    try:
        if os.path.isdir(location):
            index_file = os.path.join(location, _INDEX_NAME)
        else:
            index_file = locate_hub_file(location, [_INDEX_NAME], **hub_kwargs_of(dict(kwargs)))[0]
        with open(index_file, encoding="utf-8") as handle:
            index = json.load(handle)
    except Exception:  # noqa: BLE001 - missing, unreachable or unreadable: diffusers gives the error
        return None
    return index if isinstance(index, dict) else None


def resolve_package_entries(config: Mapping[str, Any], source: str = _INDEX_NAME) -> Dict[str, Any]:
    """Rewrite the ``["uplift_diffusers", "<Class>"]`` entries that earlier versions of this package
    saved to ``[<defining module>, "<Class>"]``, the form diffusers writes and can load (it looks
    for ``ModelMixin`` in the named module, which the package root does not export)."""
    import uplift_diffusers

    resolved = dict(config)
    for name in _package_entries(config):
        library, class_name = config[name]
        if library != LIBRARY_NAME:
            continue
        component_cls = getattr(uplift_diffusers, class_name, None)
        if not isinstance(component_cls, type):
            raise ValueError(
                f"{source} names the component {name!r} as {[library, class_name]}, but uplift_diffusers has no "
                f"class {class_name!r}; upgrade uplift-diffusers or pass `{name}=...` to from_pretrained."
            )
        resolved[name] = [component_cls.__module__, class_name]
    return resolved


class UPLiFTComponentsMixin:
    """Pipeline mixin: save and reload components defined in ``uplift_diffusers``.

    - ``__setattr__``: a component assigned where there was none (``pipe.upscaler = model`` after
      ``upscaler=None``) is recorded; diffusers keeps the null entry, and ``save_pretrained`` then
      writes a pipeline that reloads without it.
    - ``_dict_from_json_file``: reads the ``["uplift_diffusers", "<Class>"]`` entries of pipelines
      saved by earlier versions (:func:`resolve_package_entries`).
    - ``download``: fetches Hub repositories holding such components; diffusers' download refuses
      a component library it does not know (it looks for the library's code in the repository).
    """

    def __setattr__(self, name: str, value: Any):
        config = self.__dict__.get("_internal_dict")
        entry = None if config is None else config.get(name)
        if value is not None and name in self.__dict__ and isinstance(entry, (list, tuple)) and entry[0] is None:
            self.register_modules(**{name: value})  # records [library, class], then sets the attribute
            return
        super().__setattr__(name, value)

    @classmethod
    def _dict_from_json_file(cls, json_file):
        return resolve_package_entries(super()._dict_from_json_file(json_file), source=str(json_file))

    @classmethod
    def download(cls, pretrained_model_name, **kwargs):
        """diffusers' ``DiffusionPipeline.download``; a repository whose ``model_index.json`` names
        components of this package is fetched here instead: ``model_index.json`` and the folders
        of the components not passed as keyword arguments (the Hub cache first, as diffusers)."""
        from huggingface_hub import snapshot_download

        config = read_model_index(pretrained_model_name, kwargs)
        if config is None or not _package_entries(config):
            return super().download(pretrained_model_name, **kwargs)
        folders = [
            name
            for name, entry in config.items()
            if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry and entry[0] is not None
            and name not in kwargs
        ]
        return snapshot_download(
            pretrained_model_name, allow_patterns=[_INDEX_NAME] + [f"{folder}/*" for folder in folders], **hub_kwargs_of(kwargs)
        )


# ---------------------------------------------------------------------------------------------
# VAE tiling, upscaler / VAE checks, argument and output helpers
# ---------------------------------------------------------------------------------------------
class VAETilingMixin:
    """Pipeline mixin: ``enable_vae_tiling`` / ``disable_vae_tiling`` acting on ``self.vae``."""

    def enable_vae_tiling(self) -> None:
        """Encode and decode with the VAE in overlapping tiles, to save memory on very large outputs.

        Useful from about 2048 px outputs (e.g. 512 px with ``upscale_factor=4``), where a
        single-pass decode of the SD VAE needs tens of GB. Tile seams are blended, so the output
        differs slightly from an untiled decode. Raises ``ValueError`` for a VAE without
        ``enable_tiling``.
        """
        if not hasattr(self.vae, "enable_tiling"):
            raise ValueError(f"The VAE ({type(self.vae).__name__}) does not support tiled decoding.")
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Go back to single-pass encoding and decoding (after :meth:`enable_vae_tiling`)."""
        if hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()


def vae_latent_channels(vae: Any) -> int:
    """Latent channels of a diffusers-style VAE (``vae.config.latent_channels``)."""
    channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    if not isinstance(channels, int):
        raise ValueError(
            f"`vae` ({type(vae).__name__}) has no integer `config.latent_channels`; pass a diffusers "
            "AutoencoderKL / AutoencoderTiny or a uplift_diffusers TinyAutoencoder."
        )
    return channels


def check_upscaler_matches_vae(vae: Any, upscaler: Any) -> None:
    """Raise ValueError unless ``upscaler`` works in ``vae``'s latent space (channels and pixels per latent)."""
    if not isinstance(upscaler, UPLiFTLatentUpscaler):
        raise ValueError(f"`upscaler` must be an UPLiFTLatentUpscaler, got {type(upscaler).__name__}.")
    vae_channels = vae_latent_channels(vae)
    if upscaler.config.latent_channels != vae_channels:
        raise ValueError(
            f"`upscaler` expects latent_channels={upscaler.config.latent_channels} but the VAE "
            f"({type(vae).__name__}) has {vae_channels} latent channels; use an UPLiFT model trained for this VAE."
        )
    vae_factor = vae_scale_factor(vae)
    if upscaler.config.vae_scale_factor != vae_factor:
        raise ValueError(
            f"`upscaler` expects vae_scale_factor={upscaler.config.vae_scale_factor} pixels per latent but the VAE "
            f"({type(vae).__name__}) has {vae_factor}; use an UPLiFT model trained for this VAE."
        )
