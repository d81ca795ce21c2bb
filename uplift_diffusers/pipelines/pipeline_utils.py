"""What both pipelines of the package add to diffusers' ``DiffusionPipeline`` (no Stable Diffusion
or CLIP code here)."""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from ..loaders.hub import HUB_KWARGS
from ..models.tiled_upscaling import check_tile_arguments

__all__ = ["HubComponentsMixin", "TilingMixin", "model_index"]

LIBRARY_NAME = "uplift_diffusers"


def model_index(cls, pretrained_model_name_or_path, kwargs: Mapping[str, Any]) -> Optional[dict]:
    """The ``model_index.json`` of a pipeline folder or Hub repository (diffusers' ``load_config``:
    the cache first), or None when it cannot be read here (``from_pretrained`` then says why)."""
    try:
        return cls.load_config(pretrained_model_name_or_path, **{k: kwargs[k] for k in HUB_KWARGS if k in kwargs})
    except Exception:  # noqa: BLE001 - missing, unreachable or unreadable: diffusers gives the error
        return None


class HubComponentsMixin:
    """``download`` of a Hub repository whose ``model_index.json`` names a component of this package
    (diffusers' own refuses a component library it does not know: it looks for the library's code in
    the repository): ``model_index.json`` and the folders of the components not passed as keyword
    arguments. Other repositories and local folders load with diffusers alone."""

    @classmethod
    def download(cls, pretrained_model_name, **kwargs):
        from huggingface_hub import snapshot_download

        index = model_index(cls, pretrained_model_name, kwargs)
        entries = {k: v for k, v in (index or {}).items() if not k.startswith("_") and isinstance(v, (list, tuple)) and v}
        if not any(isinstance(v[0], str) and v[0].split(".")[0] == LIBRARY_NAME for v in entries.values()):
            return super().download(pretrained_model_name, **kwargs)
        folders = [name for name, entry in entries.items() if entry[0] is not None and name not in kwargs]
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        return snapshot_download(
            pretrained_model_name, allow_patterns=["model_index.json"] + [f"{folder}/*" for folder in folders], **hub
        )


class TilingMixin:
    """``enable_tiling`` / ``disable_tiling``: one switch for tiled inference, UPLiFT and the VAE
    (``self.vae``)."""

    #: ``(tile_size, overlap)`` while tiling is on, else None.
    tiling_settings: Optional[Tuple[int, int]] = None

    def enable_tiling(self, tile_size: Optional[int] = None, overlap: Optional[int] = None) -> None:
        """Upscale in overlapping tiles with blended seams, and encode / decode with the VAE's
        own tiling, to bound the memory of large outputs. ``tile_size``: UPLiFT's tile side in
        latents of the input; ``overlap``: latents shared by neighbouring tiles (None: the defaults
        of :mod:`uplift_diffusers.models.tiled_upscaling`). The tiled result differs slightly from
        the untiled one (docs/fast-inference.md)."""
        settings = check_tile_arguments(tile_size, overlap)
        if not hasattr(self.vae, "enable_tiling"):
            raise ValueError(
                f"The VAE ({type(self.vae).__name__}) does not support tiled encoding and decoding (no `enable_tiling`); "
                "use a diffusers AutoencoderKL / AutoencoderTiny or a uplift_diffusers TinyAutoencoder."
            )
        self.vae.enable_tiling()
        self.tiling_settings = settings

    def disable_tiling(self) -> None:
        """Back to single-pass upscaling, encoding and decoding (after :meth:`enable_tiling`)."""
        self.tiling_settings = None
        if hasattr(self.vae, "disable_tiling"):
            self.vae.disable_tiling()
