"""The pipelines, imported on first use (as diffusers does): the Stable Diffusion pipeline pulls in
transformers' CLIP classes, which ``import uplift_diffusers`` alone should not pay for."""
import contextlib

from ..utils.lazy_exports import lazy_exports

_MODULES = {
    ".pipeline_uplift_super_resolution": ("UPLiFTSuperResolutionPipeline", "UPLiFTSuperResolutionPipelineOutput"),
    ".pipeline_stable_diffusion_uplift": ("StableDiffusionUPLiFTPipeline", "StableDiffusionUPLiFTPipelineOutput"),
}


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs import-time notices (e.g. image-processor fallbacks without torchvision)
    that say nothing about these pipelines."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


__all__ = [name for names in _MODULES.values() for name in names]
__getattr__ = lazy_exports(__name__, globals(), _MODULES, context=_quiet_transformers)
