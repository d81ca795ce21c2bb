"""What both pipelines of the package share; it imports no Stable Diffusion or CLIP code.

- :class:`UPLiFTComponentsMixin`: the three hooks that saving and loading a pipeline with this
  package's components needs on top of diffusers' own (each is tested by a round trip that fails
  without it). diffusers records such a component as ``[<defining module>, "<Class>"]`` in
  ``model_index.json`` and loads it back from a local folder unaided.
- :class:`TilingMixin` adds ``enable_tiling`` / ``disable_tiling`` (tiled UPLiFT and VAE; the
  aliases ``enable_vae_tiling`` / ``disable_vae_tiling``) and ``run_upscaler``.
- :func:`check_upscaler_matches_vae` checks that an upscaler works in a VAE's latent space.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..loaders.hub import hub_kwargs_of, locate_hub_file
from ..loaders.vae import vae_scale_factor
from ..models.modeling_uplift import UPLiFTLatentUpscaler
from ..models.tiled_upscaling import check_tile_arguments, count_tiles, tiled_upscale

__all__ = [
    "LIBRARY_NAME",
    "UPLiFTComponentsMixin",
    "TilingMixin",
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
# Tiling, upscaler / VAE checks, argument and output helpers
# ---------------------------------------------------------------------------------------------
class TilingMixin:
    """Pipeline mixin: one switch for tiled inference, covering UPLiFT and the VAE.

    Needs ``self.vae`` and ``self.upscaler``. :meth:`run_upscaler` is the one way the pipelines
    call the upscaler: untiled it is the model's call, tiled it is
    :func:`~uplift_diffusers.models.tiled_upscaling.tiled_upscale`.
    """

    def enable_tiling(self, tile_size: Optional[int] = None, overlap: Optional[int] = None) -> None:
        """Upscale in overlapping tiles with blended seams, and encode / decode with the VAE's
        own tiling, to bound the memory of large outputs.

        Args:
            tile_size: UPLiFT tile side in latents of the input image (x ``vae_scale_factor``
                pixels); None: :data:`~uplift_diffusers.models.tiled_upscaling.DEFAULT_TILE_SIZE`.
            overlap: latents shared by neighbouring tiles; None:
                :data:`~uplift_diffusers.models.tiled_upscaling.DEFAULT_TILE_OVERLAP`.

        The tiled result differs slightly from the untiled one (measured closeness in the
        README). Raises ``ValueError`` naming the argument for a bad ``tile_size`` / ``overlap``,
        and for a VAE without ``enable_tiling``.
        """
        settings = check_tile_arguments(tile_size, overlap)
        vae = getattr(self, "vae", None)
        if vae is not None and not hasattr(vae, "enable_tiling"):
            raise ValueError(
                f"The VAE ({type(vae).__name__}) does not support tiled encoding and decoding (no `enable_tiling`); "
                "use a diffusers AutoencoderKL / AutoencoderTiny or a uplift_diffusers TinyAutoencoder."
            )
        if vae is not None:
            vae.enable_tiling()
        self._uplift_tiling = settings

    def disable_tiling(self) -> None:
        """Back to single-pass upscaling, encoding and decoding (after :meth:`enable_tiling`)."""
        self._uplift_tiling = None
        vae = getattr(self, "vae", None)
        if vae is not None and hasattr(vae, "disable_tiling"):
            vae.disable_tiling()

    def enable_vae_tiling(self) -> None:
        """Alias of :meth:`enable_tiling` (with the default tiles), kept from earlier versions."""
        self.enable_tiling()

    def disable_vae_tiling(self) -> None:
        """Alias of :meth:`disable_tiling`."""
        self.disable_tiling()

    @property
    def tiling_settings(self) -> Optional[Tuple[int, int]]:
        """``(tile_size, overlap)`` while tiling is on, else None."""
        return self.__dict__.get("_uplift_tiling")

    def upscaler_callback_count(self, height: int, width: int, num_steps: int) -> int:
        """How many times :meth:`run_upscaler` calls its ``callback`` for ``height x width``
        latents: ``num_steps`` untiled, ``num_steps`` per tile when tiling."""
        settings = self.tiling_settings
        if settings is None:
            return num_steps
        return count_tiles(height, width, *settings) * num_steps

    def run_upscaler(self, latents, guide, num_steps: int, generator=None, callback=None):
        """Upscale unscaled ``latents`` (B x C x h x w) by ``2 ** num_steps`` guided by ``guide``
        (B x 3 x fh x fw in [0, 1]); returns the unscaled upscaled latents. ``callback(step_index,
        latents)`` runs after every 2x step (of every tile when tiling: see
        :meth:`upscaler_callback_count`)."""
        settings = self.tiling_settings
        if settings is not None:
            tile_size, overlap = settings
            return tiled_upscale(
                self.upscaler, latents, guide, num_steps, generator=generator, tile_size=tile_size, overlap=overlap, callback=callback
            )
        return self.upscaler(latents, guide, num_steps=num_steps, generator=generator, callback=callback).sample


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
