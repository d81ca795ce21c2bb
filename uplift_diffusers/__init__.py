"""UPLiFT latent upsampling (Local Attenders) for the diffusers ecosystem. Names are imported on
first use: ``import uplift_diffusers`` and the command line's ``--help`` import neither torch nor
diffusers."""
from . import pipelines  # lazy itself: one pipeline module at a time
from .utils.lazy_exports import lazy_exports

__version__ = "0.1.0"

_MODULES = {
    ".models": ("LocalAttender", "UPLiFTLatentUpscaler", "UPLiFTOutput", "TinyAutoencoder"),
    ".loaders": ("load_vae", "encode_latents", "decode_latents", "vae_scale_factor"),
    ".utils.color_correction": ("color_correct",),
    ".hooks": ("apply_uplift", "remove_uplift"),
    ".hires_fix": ("hires_fix",),
    ".pipelines": tuple(pipelines.__all__),
}
__all__ = [name for names in _MODULES.values() for name in names] + ["__version__"]
__getattr__ = lazy_exports(__name__, globals(), _MODULES)
