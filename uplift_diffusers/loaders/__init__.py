"""Loading: the authors' single-file checkpoints (``FromOriginalUPLiFTMixin``), VAEs of every supported
kind (:func:`load_vae`), an upscaler from one model string (:func:`load_upscaler`), and the Hub cache.

Names are imported on first use, so that ``loaders.hub``'s checks run before torch and diffusers
are imported.
"""
from ..utils.lazy_exports import lazy_exports

_MODULES = {
    ".single_file_model": ("FromOriginalUPLiFTMixin",),
    ".upscaler": ("load_upscaler",),
    ".vae": ("load_vae", "encode_latents", "decode_latents", "vae_scale_factor"),
    ".hub": ("from_hub", "HubUnavailableError"),
}

__all__ = [name for names in _MODULES.values() for name in names]
__getattr__ = lazy_exports(__name__, globals(), _MODULES)
