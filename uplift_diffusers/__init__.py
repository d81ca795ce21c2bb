"""UPLiFT latent upsampling (Local Attenders) for the diffusers ecosystem.

The pipelines are imported on first use: the Stable Diffusion pipeline pulls in transformers'
CLIP classes, which `import uplift_diffusers` alone should not pay for.
"""
from . import pipelines
from .loaders import decode_latents, encode_latents, load_vae, vae_scale_factor
from .models import LocalAttender, TinyAutoencoder, UPLiFTLatentUpscaler, UPLiFTOutput
from .utils.color_correction import color_correct

__version__ = "0.1.0"


def __getattr__(name):
    if name in pipelines.__all__:
        return getattr(pipelines, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LocalAttender",
    "UPLiFTLatentUpscaler",
    "UPLiFTOutput",
    "TinyAutoencoder",
    "color_correct",
    "load_vae",
    "encode_latents",
    "decode_latents",
    "vae_scale_factor",
    *pipelines.__all__,
    "__version__",
]
