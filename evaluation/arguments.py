"""Checks of the evaluation scripts' command-line flags and of the files they name, one wording for
all, and the loading of the models the flags name."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Tuple

import torch

from evaluation.sharding import LaunchMismatchError


def attempt(function: Callable[[], Any]) -> Tuple[Any, int]:
    """``(function(), 0)``; on a bad argument or a missing input (ValueError, OSError, a launch of the
    wrong size) one ``error:`` line on stderr and ``(None, 2)``: the scripts' exit status."""
    try:
        return function(), 0
    except (ValueError, OSError, LaunchMismatchError) as error:
        print(f"error: {error}", file=sys.stderr)
        return None, 2


def check_at_least(args, minimums: Mapping[str, float]) -> None:
    """ValueError naming the first flag of ``minimums`` (``args`` attribute -> least value, e.g.
    ``{"num": 1, "warmup": 0}``) whose value is below it: ``--num must be >= 1, got 0.``; an
    unset flag (``None``) passes."""
    for name, least in minimums.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}.")


def read_json_file(path, name: str, fix: str) -> Any:
    """The JSON document at ``path``, which ``name`` (a flag, or a description such as
    ``"results"``) names: FileNotFoundError ``<name> file not found: <path>; <fix>`` when it is
    missing, ValueError ``<name> <path> is not valid JSON: ...`` when it does not parse."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{name} file not found: {str(path)!r}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{name} {str(path)!r} is not valid JSON: {error}") from error


SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


def loading(what: str, source: str, flag: str, load: Callable[[], Any]) -> Any:
    """``load()``, with a failure to find or fetch the model (offline, not cached, a wrong path)
    turned into one FileNotFoundError line naming ``what``, ``source`` and the ``flag`` that takes a
    local copy instead."""
    try:
        return load()
    except OSError as error:  # huggingface_hub's and diffusers' not-found / offline errors are OSErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"cannot load {what} {source!r} ({reason}); pass a local copy with {flag}.") from error


def load_upscaler(source: Optional[str], config: Optional[str] = None, dtype: Optional[torch.dtype] = None, flag: str = "--upscaler DIR|FILE"):
    """The upscaler ``source`` names: an authors' ``.safetensors`` / ``.pth`` file
    (``from_single_file``, ``config``: its YAML when not the official configuration), a diffusers
    folder or Hub id (``from_pretrained``), or ``None``: the authors' release."""
    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.constants import UPLIFT_SD15_REPO_ID

    source = source or UPLIFT_SD15_REPO_ID
    options = {"torch_dtype": dtype} if config is None else {"torch_dtype": dtype, "original_config": config}
    single_file = source.lower().endswith(SINGLE_FILE_SUFFIXES)
    from_source = UPLiFTLatentUpscaler.from_single_file if single_file else UPLiFTLatentUpscaler.from_pretrained
    return loading("the upscaler", source, flag, lambda: from_source(source, **options)).eval()


def load_vae(source: str, dtype: Optional[torch.dtype] = None, flag: str = "--vae DIR"):
    """The VAE ``source`` names (Hub id, diffusers folder or TAESD-family folder), in evaluation mode."""
    from uplift_diffusers.loaders import load_vae as load

    return loading("the VAE", source, flag, lambda: load(source, dtype=dtype)).eval()
