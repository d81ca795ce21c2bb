"""Load a VAE of any supported kind, and encode / decode with it uniformly.

The pipelines, the training script and the evaluation code use these so that they work the same
with diffusers' ``AutoencoderKL`` (and ``AutoencoderKLFlux2``), diffusers' ``AutoencoderTiny`` and
:class:`~uplift_diffusers.models.autoencoder_tiny.TinyAutoencoder`. Latents are always *unscaled*:
:func:`encode_latents` returns the raw encoder output (the posterior mode for KL autoencoders),
without ``scaling_factor`` / ``shift_factor``, and :func:`decode_latents` expects the same.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import diffusers
import torch
from diffusers.utils import CONFIG_NAME

from ..constants import SD15_VAE_SUBFOLDER
from ..models.autoencoder_tiny import TinyAutoencoder
from ..utils.validation import check_image_batch
from .hub import dtype_kwargs, locate_hub_file, looks_like_local_path

__all__ = ["load_vae", "encode_latents", "decode_latents", "vae_scale_factor", "SUPPORTED_VAE_CLASSES"]

#: The ``_class_name`` values :func:`load_vae` accepts: diffusers' autoencoders (loaded with
#: ``diffusers.AutoModel``) and this package's TinyAutoencoder (which AutoModel does not know).
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


def _class_for(config_file, source: str, argument: str) -> type:
    """The class that loads the VAE whose config is ``config_file``, by its ``_class_name``."""
    try:
        config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{argument} {source!r}: could not read the VAE config {config_file}: {error}") from error
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in SUPPORTED_VAE_CLASSES:
        raise ValueError(f"{argument} {source!r}: the VAE config {config_file} names _class_name={name!r}; supported "
                         f"classes are {list(SUPPORTED_VAE_CLASSES)}")
    return TinyAutoencoder if name == TinyAutoencoder.__name__ else diffusers.AutoModel


def load_vae(
    path_or_id: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    argument: str = "path_or_id",
) -> torch.nn.Module:
    """Load a VAE, in evaluation mode, from a local directory or a Hub id.

    * A directory holding ``encoder.pth`` and ``decoder.pth`` (or exactly one ``*encoder*.pth``
      and one ``*decoder*.pth``, e.g. ``taef2_encoder.pth``) loads with
      :meth:`TinyAutoencoder.from_original_checkpoint`.
    * A diffusers directory or Hub repository (``config.json`` at its root, or a pipeline's
      ``vae/``) loads with the class its config names in ``_class_name`` (one of
      :data:`SUPPORTED_VAE_CLASSES`).

    Args:
        path_or_id: local directory or Hub repository id.
        torch_dtype: a floating dtype, or None for the default (float32).
        subfolder: the folder holding the VAE; by default the root, else ``vae/``.
        revision, cache_dir, local_files_only, token: for a Hub id, as in ``from_pretrained``. The
            cache is read first: offline a cached pipeline's ``vae/`` loads, and a VAE missing from
            the cache is reported at once (``huggingface_hub.errors.LocalEntryNotFoundError``).
        argument: how errors name ``path_or_id`` (e.g. a command-line flag, ``"--vae"``).

    Raises:
        FileNotFoundError: a local path that does not exist, or a Hub repository without a VAE config.
        ValueError: a file, a directory without a VAE, an unsupported ``_class_name`` or a bad argument.
    """
    if not isinstance(path_or_id, (str, os.PathLike)) or not os.fspath(path_or_id):
        raise ValueError(f"{argument} must be a non-empty path or Hub id string, got {path_or_id!r}")
    if torch_dtype is not None and (not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point):
        raise ValueError(f"torch_dtype must be a floating torch.dtype or None, got {torch_dtype!r}")
    if subfolder is not None and (not isinstance(subfolder, str) or not subfolder):
        raise ValueError(f"subfolder must be a non-empty string or None, got {subfolder!r}")
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    places = [subfolder] if subfolder else ["", SD15_VAE_SUBFOLDER]
    hub = {}
    if path.is_file():
        raise ValueError(f"{argument} must be a directory or a Hub id, got the file {str(path)!r}; pass its directory, "
                         "or call TinyAutoencoder.from_original_checkpoint(encoder_path, decoder_path) for a .pth pair")
    if path.is_dir():
        pair = None if subfolder else _find_pth_pair(path, argument)
        if pair is not None:
            return TinyAutoencoder.from_original_checkpoint(*pair, torch_dtype=torch_dtype)
        found = next((place for place in places if (path / place / CONFIG_NAME).is_file()), None)
        if found is None:
            raise ValueError(f"{argument} {text!r} holds neither an encoder.pth / decoder.pth pair nor a diffusers "
                             f"{CONFIG_NAME} in {[place + '/' for place in places]}; point it at a VAE directory")
        config_file, source = path / found / CONFIG_NAME, str(path)
    elif looks_like_local_path(text, max_slashes=1):
        raise FileNotFoundError(f"{argument}: local path not found: {str(path)!r}")
    else:
        hub = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
        config_file, name = locate_hub_file(text, [f"{place}/{CONFIG_NAME}".lstrip("/") for place in places], **hub)
        found, source = name.rpartition("/")[0], text
    cls = _class_for(config_file, text, argument)
    return cls.from_pretrained(source, subfolder=found or None, **dtype_kwargs(torch_dtype), **hub).eval()


def vae_scale_factor(vae) -> int:
    """Spatial down-sampling factor of ``vae``: ``2 ** (len(vae.config.block_out_channels) - 1)``."""
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if not channels:
        raise ValueError(
            f"vae must be a diffusers autoencoder whose config has block_out_channels, got {type(vae).__name__}"
        )
    return 2 ** (len(channels) - 1)


def _model_dtype(vae) -> torch.dtype:
    """The dtype of ``vae``'s weights, which its inputs are cast to. The inputs keep the device
    the caller put them on (a pipeline's execution device): under accelerate's offloading the
    weights rest on the CPU or on the ``meta`` device and its hooks move them for the call."""
    if not isinstance(vae, torch.nn.Module) or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
        raise ValueError(f"vae must be an autoencoder module with encode/decode, got {type(vae).__name__}")
    parameter = next(vae.parameters(), None)
    if parameter is None:
        raise ValueError(f"vae ({type(vae).__name__}) has no parameters")
    return parameter.dtype


def encode_latents(vae, images_minus1_1: torch.Tensor) -> torch.Tensor:
    """Encode images in [-1, 1] of shape (batch, 3, H, W) into *unscaled* latents.

    KL autoencoders return the posterior mode (``vae.encode(x).latent_dist.mode()``), tiny
    autoencoders their ``.latents``. H and W must be multiples of :func:`vae_scale_factor`.
    The images are cast to the VAE's dtype and stay on their device (put them on the VAE's
    execution device). Gradients follow the caller's mode:
    wrap the call in ``torch.no_grad()`` for a frozen VAE. Shapes are checked, values are not
    (no device synchronisation per call): check data where it enters, with
    :func:`uplift_diffusers.utils.validation.check_values`.
    """
    dtype = _model_dtype(vae)
    channels = getattr(vae.config, "in_channels", 3)
    check_image_batch("images_minus1_1", images_minus1_1, channels=channels, multiple=vae_scale_factor(vae))
    output = vae.encode(images_minus1_1.to(dtype=dtype))
    if hasattr(output, "latent_dist"):
        return output.latent_dist.mode()
    if hasattr(output, "latents"):
        return output.latents
    raise ValueError(
        f"vae ({type(vae).__name__}).encode returned {type(output).__name__} with neither latent_dist nor latents"
    )


def decode_latents(vae, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Decode *unscaled* latents (batch, latent_channels, h, w) into images in [-1, 1].

    The latents are cast to the VAE's dtype and stay on their device. With ``clamp=True`` (default) the
    images are clamped to [-1, 1]; pass ``clamp=False`` for the raw decoder output. Gradients
    follow the caller's mode.
    """
    dtype = _model_dtype(vae)
    channels = getattr(vae.config, "latent_channels", None)
    if channels is None:
        raise ValueError(f"vae ({type(vae).__name__}) config has no latent_channels")
    check_image_batch("latents", latents, channels=channels)
    images = vae.decode(latents.to(dtype=dtype)).sample
    return images.clamp(-1, 1) if clamp else images
