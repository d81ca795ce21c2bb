"""The models: the UPLiFT latent upscaler (with its Local Attender) and the TAESD-family tiny autoencoder."""
from .autoencoder_tiny import TinyAutoencoder
from .local_attender import LocalAttender
from .modeling_uplift import UPLiFTLatentUpscaler, UPLiFTOutput

__all__ = ["UPLiFTLatentUpscaler", "UPLiFTOutput", "LocalAttender", "TinyAutoencoder"]
