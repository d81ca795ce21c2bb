"""UPLiFT latent upsampling (Local Attenders) for the diffusers ecosystem.

The pipelines are imported on first use: the Stable Diffusion pipeline pulls in
transformers' CLIP classes, which `import uplift_diffusers` alone should not pay for.
"""
from .utils.color_correction import color_correct
from .models.local_attender import LocalAttender
from .models.modeling_uplift import UPLiFTLatentUpscaler, UPLiFTOutput
from .models.autoencoder_tiny import TinyAutoencoder
from .loaders.vae import decode_latents, encode_latents, load_vae, vae_scale_factor

__version__ = "0.1.0"

_LAZY = {
    "UPLiFTSuperResolutionPipeline": ".pipelines.pipeline_uplift_super_resolution",
    "UPLiFTSuperResolutionPipelineOutput": ".pipelines.pipeline_uplift_super_resolution",
    "StableDiffusionUPLiFTPipeline": ".pipelines.pipeline_stable_diffusion_uplift",
    "StableDiffusionUPLiFTPipelineOutput": ".pipelines.pipeline_stable_diffusion_uplift",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
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
    *_LAZY,
    "__version__",
]
