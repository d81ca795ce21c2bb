"""The pipelines, imported on first use (as diffusers does): the Stable Diffusion pipeline pulls in
transformers' CLIP classes, which ``import uplift_diffusers`` alone should not pay for."""
import importlib

_MODULES = {
    "UPLiFTSuperResolutionPipeline": "pipeline_uplift_super_resolution",
    "UPLiFTSuperResolutionPipelineOutput": "pipeline_uplift_super_resolution",
    "StableDiffusionUPLiFTPipeline": "pipeline_stable_diffusion_uplift",
    "StableDiffusionUPLiFTPipelineOutput": "pipeline_stable_diffusion_uplift",
}

__all__ = list(_MODULES)


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from transformers.utils import logging as transformers_logging

    # transformers logs import-time notices (e.g. image-processor fallbacks without torchvision)
    # that say nothing about these pipelines
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        module = importlib.import_module(f".{_MODULES[name]}", __name__)
    finally:
        transformers_logging.set_verbosity(verbosity)
    for exported in (key for key, value in _MODULES.items() if value == _MODULES[name]):
        globals()[exported] = getattr(module, exported)
    return globals()[name]
