"""One function from a user's model string to an :class:`~uplift_diffusers.UPLiFTLatentUpscaler`.

The CLI, the evaluation and training scripts and the examples are given a model as one string
(a flag, a config entry); :func:`load_upscaler` picks the loading method for it, so that each of
them does not decide again between ``from_single_file`` and ``from_pretrained``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Union

from ..constants import UPLIFT_SD15_REPO_ID, UPSCALER_SUBFOLDER
from .hub import HUB_KWARGS, dtype_kwargs, looks_like_local_path, pick_dtype

if TYPE_CHECKING:
    import torch

__all__ = ["load_upscaler"]


def load_upscaler(
    source: Union[str, os.PathLike, None] = None,
    torch_dtype: Optional["torch.dtype"] = None,
    *,
    original_config: Union[str, os.PathLike, Mapping, None] = None,
    argument: str = "source",
    **hub_kwargs,
):
    """Load an UPLiFT upscaler with ``UPLiFTLatentUpscaler.from_single_file`` or ``from_pretrained``.

    * ``None``: the authors' release (:data:`~uplift_diffusers.constants.UPLIFT_SD15_REPO_ID`).
    * A file, a Hub file URL or ``"<org>/<repo>/<file>"``: the authors' single-file checkpoint,
      with ``from_single_file``.
    * A folder or a Hub repository id: ``from_pretrained`` (a diffusers ``config.json``, or the
      authors' single file). A pipeline folder written by ``save_pretrained`` loads its
      ``upscaler/`` component.

    Args:
        source: see above.
        torch_dtype: dtype of the weights (floating), or None for float32.
        original_config: the authors' YAML for a single file not trained with the official
            configuration (by default the configuration is read off the weights' shapes).
        argument: how errors name ``source`` (e.g. a command-line flag, ``"--upscaler"``).
        **hub_kwargs: ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
            ``force_download``, ``proxies``, as in ``from_pretrained`` (the cache is read first).

    Raises:
        FileNotFoundError: a local path that does not exist (or a Hub file missing from the cache
            offline: ``huggingface_hub.errors.LocalEntryNotFoundError``).
        ValueError: a bad argument, an unreadable ``config.json`` or checkpoint, or a checkpoint
            that does not match its configuration.
    """
    from diffusers.loaders.single_file_utils import is_valid_url
    from diffusers.utils import CONFIG_NAME

    from ..models.modeling_uplift import UPLiFTLatentUpscaler

    unknown = sorted(set(hub_kwargs) - set(HUB_KWARGS))
    if unknown:
        raise ValueError(f"load_upscaler got unknown arguments {unknown}; the Hub arguments are {list(HUB_KWARGS)}.")
    if source is None:
        source = UPLIFT_SD15_REPO_ID
    if not isinstance(source, (str, os.PathLike)) or not os.fspath(source):
        raise ValueError(f"`{argument}` must be a file, a folder, a Hub id or URL, or None, got {source!r}.")
    text = os.fspath(source)
    path = Path(text).expanduser()
    single_file = path.is_file() or is_valid_url(text) or (
        not path.exists() and text.count("/") >= 2 and not looks_like_local_path(text)
    )
    if single_file:
        return UPLiFTLatentUpscaler._load_original(text, argument, original_config, pick_dtype(torch_dtype, None), hub_kwargs)
    subfolder = None
    if path.is_dir() and not (path / CONFIG_NAME).is_file() and (path / UPSCALER_SUBFOLDER / CONFIG_NAME).is_file():
        subfolder = UPSCALER_SUBFOLDER
    if path.is_dir():
        _check_config_file(path / (subfolder or "") / CONFIG_NAME, text, argument)
    return UPLiFTLatentUpscaler.from_pretrained(
        text, subfolder=subfolder, original_config=original_config, **dtype_kwargs(torch_dtype), **hub_kwargs
    )


def _check_config_file(config_file: Path, source: str, argument: str) -> None:
    """A local model folder's ``config.json`` must be a JSON object (diffusers' own error for a
    damaged one is two chained tracebacks without the fix)."""
    if not config_file.is_file():
        return  # from_pretrained says what the folder lacks
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"`{argument}` {source!r}: its {config_file.name} ({str(config_file)!r}) is not valid JSON ({error}); "
            "restore it, or save the model again (save_pretrained, or `uplift-diffusers convert` for the authors' file)."
        ) from error
    if not isinstance(config, dict):
        raise ValueError(
            f"`{argument}` {source!r}: its {config_file.name} holds a JSON {type(config).__name__}, not a model "
            "config object; restore it, or save the model again."
        )
