"""Reading foreign checkpoints (the authors' UPLiFT files, TAESD ``.pth`` pairs) without running
pickled code, and listing every way one differs from what a model expects at once."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
#: Training checkpoints nest the weights under one of these keys.
_WRAPPERS = ("state_dict", "model", "uplift")


def _first_sentence(error) -> str:
    return " ".join(str(error).split(". ")[0].split()).rstrip(".")


def _torch_load(path: Path, name: str):
    """``torch.load(weights_only=True)``, with errors that say what happened and never advise
    turning the safe loader off."""
    with open(path, "rb") as handle:
        if not handle.read(4).startswith((b"PK\x03\x04", b"\x80")):  # a torch.save zip archive, or a pickle
            raise ValueError(f"{name} is not a PyTorch checkpoint: it is neither a torch.save archive nor a pickle "
                             "(corrupt, or another kind of file).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the errors below say enough
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a refused, damaged or foreign pickle or archive
        message = str(error)
    if "Unsupported global" in message:
        refused = ", ".join(sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))) or "unknown classes"
        raise ValueError(
            f"{name} was refused for safety: besides tensors it holds pickled Python objects ({refused}), and loading "
            "those could run arbitrary code. Ask its publisher for a .safetensors file, or re-save only its tensors "
            "where it was made (safetensors.torch.save_file(state_dict, 'model.safetensors')) and pass that file."
        )
    reason = _first_sentence(message.split("WeightsUnpickler error:")[-1])
    raise ValueError(f"{name} is corrupt or truncated, or not saved with torch.save ({reason}); download or save it again.")


def load_state_dict_file(path: Union[str, os.PathLike], argument: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt``/``.bin`` state dict without running
    pickled code. A training checkpoint's ``{"state_dict" | "model" | "uplift": ...}`` is unwrapped
    and DataParallel's ``module.`` prefix removed. Errors (FileNotFoundError, ValueError for
    anything that is not a readable state dict) name the path as ``argument``."""
    path = Path(path).expanduser()
    name = f"`{argument}` {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}` file not found: {str(path)!r}; pass the path to the .safetensors or .pth file.")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"{name} has suffix {path.suffix!r}; expected one of {', '.join(_WEIGHT_SUFFIXES)}.")
    if path.suffix == ".safetensors":
        try:
            state_dict = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{name} is not a readable .safetensors file ({_first_sentence(error)}): it is corrupt, "
                             "truncated or another kind of file.") from error
    else:
        state_dict = _torch_load(path, name)
    for wrapper in _WRAPPERS:
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise ValueError(f"{name} does not hold a state dict of tensors (got {type(state_dict).__name__}).")
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def state_dict_problems(
    given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], limit: Optional[int] = None
) -> List[str]:
    """How ``given`` differs from ``expected``: one phrase per kind (missing keys, unexpected keys,
    shape mismatches), empty when they match; ``limit`` cuts each list to that many entries plus a
    count of the rest."""
    shared = sorted(set(given) & set(expected))
    kinds = {
        "missing keys": sorted(set(expected) - set(given)),
        "unexpected keys": sorted(set(given) - set(expected)),
        "shape mismatches": [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                             for k in shared if given[k].shape != expected[k].shape],
    }
    problems = []
    for label, keys in kinds.items():
        if keys:
            shown = keys if limit is None or len(keys) <= limit else keys[:limit] + [f"... ({len(keys) - limit} more)"]
            problems.append(f"{label}: {shown}")
    return problems
