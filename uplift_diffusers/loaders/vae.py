"""Load a VAE of any supported kind (diffusers' ``AutoencoderKL``, ``AutoencoderKLFlux2`` and
``AutoencoderTiny``, this package's :class:`~uplift_diffusers.models.autoencoder_tiny.TinyAutoencoder`)
and encode / decode with all of them alike, for the pipelines, training and evaluation. Latents are
*unscaled*: the raw encoder output (a KL autoencoder's posterior mode), without ``scaling_factor`` /
``shift_factor``."""
from __future__ import annotations

import os
from pathlib import Path

import diffusers
import torch
from diffusers.utils import CONFIG_NAME

from ..constants import SD15_VAE_SUBFOLDER
from ..models.autoencoder_tiny import TinyAutoencoder
from ..utils.validation import check_image_batch
from .hub import local_folder, locate_file, read_model_config

#: The ``_class_name`` values :func:`load_vae` accepts.
SUPPORTED_VAE_CLASSES = ("AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderTiny", "TinyAutoencoder")


def _find_pth_pair(directory: Path, argument: str) -> tuple[Path, Path] | None:
    """The (encoder, decoder) ``.pth`` files of ``directory``, or None when it holds none."""
    if (directory / "encoder.pth").is_file() and (directory / "decoder.pth").is_file():
        return directory / "encoder.pth", directory / "decoder.pth"
    encoders = sorted(p for p in directory.glob("*encoder*.pth") if p.is_file())
    decoders = sorted(p for p in directory.glob("*decoder*.pth") if p.is_file())
    if not encoders and not decoders:
        return None
    if len(encoders) != 1 or len(decoders) != 1:
        raise ValueError(
            f"{argument} {str(directory)!r} must hold exactly one *encoder*.pth and one *decoder*.pth, found encoders "
            f"{[p.name for p in encoders]} and decoders {[p.name for p in decoders]}; remove the extra files or call "
            "TinyAutoencoder.from_original_checkpoint(encoder_path, decoder_path)"
        )
    return encoders[0], decoders[0]


def load_vae(
    path_or_id: str | os.PathLike,
    dtype: torch.dtype | None = None,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    argument: str = "path_or_id",
) -> torch.nn.Module:
    """Load a VAE, in evaluation mode, from a local directory or a Hub id.

    A directory holding one ``*encoder*.pth`` and one ``*decoder*.pth`` (a TAESD-family pair) loads
    with :meth:`TinyAutoencoder.from_original_checkpoint`; a diffusers folder or Hub repository
    (``config.json`` in ``subfolder``, by default at its root or else in a pipeline's ``vae/``) with
    the class its ``_class_name`` names (one of :data:`SUPPORTED_VAE_CLASSES`); offline, a VAE
    missing from the cache is reported at once. ``argument`` names ``path_or_id`` in errors.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    path = local_folder(path_or_id, argument, "pass its directory, or call "
                        "TinyAutoencoder.from_original_checkpoint(encoder_path, decoder_path) for a .pth pair")
    text = os.fspath(path_or_id)
    pair = _find_pth_pair(path, argument) if path is not None and not subfolder else None
    if pair is not None:
        return TinyAutoencoder.from_original_checkpoint(*pair, dtype)
    places = [subfolder] if subfolder else ["", SD15_VAE_SUBFOLDER]
    hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    found = locate_file(path or text, [f"{place}/{CONFIG_NAME}".lstrip("/") for place in places], **hub)
    if found is None:
        raise ValueError(f"{argument} {text!r} holds neither an encoder.pth / decoder.pth pair nor a diffusers "
                         f"{CONFIG_NAME} in {[place + '/' for place in places]}; point it at a VAE directory")
    config_file, name = found
    class_name = read_model_config(config_file, f"{argument} {text!r}").get("_class_name")
    if class_name not in SUPPORTED_VAE_CLASSES:
        raise ValueError(f"{argument} {text!r}: the VAE config {config_file} names _class_name={class_name!r}; supported "
                         f"classes are {list(SUPPORTED_VAE_CLASSES)}")
    # diffusers.AutoModel knows every supported class but this package's TinyAutoencoder
    cls = TinyAutoencoder if class_name == TinyAutoencoder.__name__ else diffusers.AutoModel
    return cls.from_pretrained(str(path or text), subfolder=name.rpartition("/")[0] or None, dtype=dtype, **hub).eval()


def vae_scale_factor(vae) -> int:
    """Pixels per latent of ``vae``: ``2 ** (len(vae.config.block_out_channels) - 1)``."""
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if not channels:
        raise ValueError(f"vae must be a diffusers autoencoder whose config has block_out_channels, got {type(vae).__name__}")
    return 2 ** (len(channels) - 1)


def _weights_dtype(vae) -> torch.dtype:
    """The dtype the inputs are cast to. They keep their device (the caller's execution device):
    under accelerate's offloading the weights rest on the CPU or on ``meta``, and its hooks move
    them for the call."""
    if not isinstance(vae, torch.nn.Module) or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
        raise ValueError(f"vae must be an autoencoder module with encode/decode, got {type(vae).__name__}")
    return next(vae.parameters()).dtype


def encode_latents(vae, images_minus1_1: torch.Tensor) -> torch.Tensor:
    """Encode images in [-1, 1] (``B x 3 x H x W``, H and W multiples of :func:`vae_scale_factor`)
    into *unscaled* latents: a KL autoencoder's posterior mode, a tiny autoencoder's ``.latents``.

    Gradients follow the caller's mode (wrap the call in ``torch.no_grad()`` for a frozen VAE).
    Shapes are checked, values are not (where data is checked, and why: :mod:`~uplift_diffusers.utils.validation`).
    """
    dtype = _weights_dtype(vae)
    channels = getattr(vae.config, "in_channels", 3)
    check_image_batch("images_minus1_1", images_minus1_1, channels=channels, multiple=vae_scale_factor(vae))
    output = vae.encode(images_minus1_1.to(dtype=dtype))
    return output.latent_dist.mode() if hasattr(output, "latent_dist") else output.latents


def decode_latents(vae, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Decode *unscaled* latents (``B x latent_channels x h x w``) into images in [-1, 1]
    (``clamp=False``: the raw decoder output). Gradients follow the caller's mode."""
    dtype = _weights_dtype(vae)
    check_image_batch("latents", latents, channels=getattr(vae.config, "latent_channels", None))
    images = vae.decode(latents.to(dtype=dtype)).sample
    return images.clamp(-1, 1) if clamp else images
