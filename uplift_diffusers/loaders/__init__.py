"""Loading: the authors' single-file checkpoints (:mod:`.single_file`), VAEs of every supported kind
(:mod:`.vae`) and model files (:mod:`.hub`, which imports neither torch nor diffusers: names here
are imported on first use)."""
from ..utils.lazy_exports import lazy_exports

_MODULES = {
    ".single_file": ("FromOriginalUPLiFTMixin",),
    ".vae": ("load_vae", "encode_latents", "decode_latents", "vae_scale_factor"),
}

__all__ = [name for names in _MODULES.values() for name in names]
__getattr__ = lazy_exports(__name__, globals(), _MODULES)
