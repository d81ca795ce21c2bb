"""Loading: the authors' single-file checkpoints (``FromOriginalUPLiFTMixin``), VAEs of every supported
kind (:func:`load_vae`), an upscaler from one model string (:func:`load_upscaler`), and the Hub cache."""
from .hub import HubUnavailableError, from_hub
from .single_file_model import FromOriginalUPLiFTMixin
from .upscaler import load_upscaler
from .vae import decode_latents, encode_latents, load_vae, vae_scale_factor

__all__ = [
    "FromOriginalUPLiFTMixin",
    "load_upscaler",
    "load_vae",
    "encode_latents",
    "decode_latents",
    "vae_scale_factor",
    "from_hub",
    "HubUnavailableError",
]
