"""UPLiFT latent upsampling (Local Attenders) for the diffusers ecosystem."""
from .local_attender import LocalAttender
from .modeling_uplift import UPLiFTLatentUpscaler, UPLiFTOutput

__version__ = "0.1.0"

__all__ = ["LocalAttender", "UPLiFTLatentUpscaler", "UPLiFTOutput", "__version__"]
