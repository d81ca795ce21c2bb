"""What both pipelines of the package share; it imports no Stable Diffusion or CLIP code.

- :class:`UPLiFTComponentsMixin` makes ``save_pretrained`` record this package's components as
  ``["uplift_diffusers", "<Class>"]`` in ``model_index.json``, rewrites those entries on loading
  (:func:`resolve_package_entries`) and makes ``from_pretrained`` fetch Hub repositories that hold
  such components.
- :class:`VAETilingMixin` adds ``enable_vae_tiling`` / ``disable_vae_tiling``.
- :func:`check_upscaler_matches_vae` checks that an upscaler works in a VAE's latent space.
- :func:`check_flag` and :func:`to_unit_range`: small argument and output helpers.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..loaders.vae import vae_scale_factor

__all__ = [
    "LIBRARY_NAME",
    "UPLiFTComponentsMixin",
    "VAETilingMixin",
    "resolve_package_entries",
    "vae_latent_channels",
    "check_upscaler_matches_vae",
    "check_flag",
    "to_unit_range",
]

LIBRARY_NAME = "uplift_diffusers"


# ---------------------------------------------------------------------------------------------
# Saving / loading this package's components inside diffusers pipelines
# ---------------------------------------------------------------------------------------------
def _package_library_tuple(module: Any) -> Optional[Tuple[str, str]]:
    """``("uplift_diffusers", class name)`` when ``module``'s class is exported by this package."""
    import uplift_diffusers

    cls = type(module)
    if cls.__module__.split(".")[0] == LIBRARY_NAME and getattr(uplift_diffusers, cls.__name__, None) is cls:
        return (LIBRARY_NAME, cls.__name__)
    return None


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


def resolve_package_entries(config: Mapping[str, Any], source: str = "model_index.json") -> Dict[str, Any]:
    """Rewrite ``["uplift_diffusers", "<Class>"]`` entries to ``[<defining module>, "<Class>"]``.

    diffusers resolves a component's save / load methods in the namespace of the library named
    in ``model_index.json``; the defining module (e.g. ``uplift_diffusers.models.modeling_uplift``)
    has ``ModelMixin`` in its namespace, the package root does not.
    """
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


def _download_package_pipeline(repo_id: str, kwargs: Mapping[str, Any]) -> Optional[str]:
    """Fetch a Hub pipeline whose ``model_index.json`` names components of this package.

    diffusers' own download refuses component libraries it does not know, so the component
    folders are fetched here (only ``model_index.json`` and the listed folders, not the
    repository root) and the local snapshot path is returned. Returns ``None`` when the
    repository has no such component (then diffusers downloads it as usual).
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    hub_kwargs = {
        key: kwargs[key]
        for key in ("cache_dir", "force_download", "local_files_only", "token", "revision")
        if kwargs.get(key) is not None
    }
    index_file = hf_hub_download(repo_id, "model_index.json", **hub_kwargs)
    with open(index_file, encoding="utf-8") as handle:
        config = json.load(handle)
    if not _package_entries(config):
        return None
    folders = [
        name
        for name, entry in config.items()
        if not name.startswith("_") and isinstance(entry, (list, tuple)) and entry and entry[0] is not None and name not in kwargs
    ]
    patterns = ["model_index.json"] + [f"{folder}/*" for folder in folders]
    return snapshot_download(repo_id, allow_patterns=patterns, **hub_kwargs)


class UPLiFTComponentsMixin:
    """Pipeline mixin: save and reload components defined in ``uplift_diffusers``.

    ``save_pretrained`` records this package's exported classes as ``["uplift_diffusers",
    "<Class>"]`` in ``model_index.json``; ``from_pretrained`` (local directory or Hub id) rebuilds
    them without being passed.
    """

    def register_modules(self, **kwargs):
        super().register_modules(**kwargs)
        for name, module in kwargs.items():
            entry = None if module is None else _package_library_tuple(module)
            if entry is not None:
                self.register_to_config(**{name: entry})

    def __setattr__(self, name: str, value: Any):
        super().__setattr__(name, value)
        # Reassigning a registered component (pipe.upscaler = ...) re-records its library.
        config = self.__dict__.get("_internal_dict")
        if value is not None and config is not None and isinstance(config.get(name), (list, tuple)):
            entry = _package_library_tuple(value)
            if entry is not None:
                self.register_to_config(**{name: entry})

    @classmethod
    def _dict_from_json_file(cls, json_file):
        return resolve_package_entries(super()._dict_from_json_file(json_file), source=str(json_file))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; also fetches Hub repositories holding this package's components.

        Accepts every argument of ``DiffusionPipeline.from_pretrained``; components passed as
        keyword arguments (e.g. ``upscaler=...``) are used as given.
        """
        location = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(os.path.expanduser(location)):
            snapshot = _download_package_pipeline(location, kwargs)
            if snapshot is not None:
                pretrained_model_name_or_path = snapshot
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


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


def check_flag(name: str, value: Any) -> None:
    """Raise ValueError unless the argument ``name`` is exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (VAE convention) -> [0, 1], clamped."""
    return (image / 2 + 0.5).clamp(0, 1)
