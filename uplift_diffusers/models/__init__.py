"""The models: the UPLiFT latent upscaler (with its Local Attender) and the TAESD-family tiny
autoencoder; fast inference is applied to the upscaler from outside (:func:`apply_fast_inference`)."""
from .autoencoder_tiny import TinyAutoencoder
from .fast_inference import apply_fast_inference, remove_fast_inference
from .local_attender import LocalAttender
from .modeling_uplift import UPLiFTLatentUpscaler, UPLiFTOutput

__all__ = ["UPLiFTLatentUpscaler", "UPLiFTOutput", "LocalAttender", "TinyAutoencoder", "apply_fast_inference", "remove_fast_inference"]
