"""Reading foreign checkpoints (the authors' UPLiFT files, TAESD ``.pth`` pairs) without running
pickled code, and listing every way one differs from what a model expects at once."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import torch
from safetensors.torch import load_file

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
#: Training checkpoints nest the weights under one of these keys.
_WRAPPERS = ("state_dict", "model", "uplift")


def load_state_dict_file(path: Union[str, os.PathLike], argument: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt``/``.bin`` state dict without running
    pickled code. A training checkpoint's ``{"state_dict" | "model" | "uplift": ...}`` is unwrapped
    and DataParallel's ``module.`` prefix removed. Errors name the path as ``argument`` (a missing file:
    FileNotFoundError); none advises turning the safe loader off."""
    path = Path(path).expanduser()
    name = f"`{argument}` {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}` file not found: {str(path)!r}; pass the path to the .safetensors or .pth file.")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"{name} has suffix {path.suffix!r}; expected one of {', '.join(_WEIGHT_SUFFIXES)}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the errors below say enough
            if path.suffix == ".safetensors":
                state_dict = load_file(str(path))
            else:
                state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a refused, damaged or foreign file
        message = str(error)
        if "Unsupported global" in message:
            refused = ", ".join(sorted(set(re.findall(r"GLOBAL ([\w.]+)", message)))) or "unknown classes"
            raise ValueError(
                f"{name} was refused for safety: besides tensors it holds pickled Python objects ({refused}), "
                "and loading those could run arbitrary code. Ask its publisher for a .safetensors file, or re-save "
                "only its tensors where it was made (safetensors.torch.save_file(state_dict, 'model.safetensors')) "
                "and pass that file."
            ) from None
        # torch's message ends with advice to turn the safe loader off: only the first line of its reason is kept
        reason = message.split("WeightsUnpickler error:")[-1].strip().split("\n")[0].split(". ")[0].rstrip(". ")
        kind = "a readable .safetensors file" if path.suffix == ".safetensors" else "a PyTorch checkpoint"
        raise ValueError(
            f"{name} is not {kind} ({reason or type(error).__name__}): it is corrupt, truncated or another kind of "
            "file; download or save it again."
        ) from None
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
    kinds = {
        "missing keys": sorted(set(expected) - set(given)),
        "unexpected keys": sorted(set(given) - set(expected)),
        "shape mismatches": [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
                             for k in sorted(set(given) & set(expected)) if given[k].shape != expected[k].shape],
    }
    problems = []
    for label, keys in kinds.items():
        if keys:
            shown = keys if limit is None or len(keys) <= limit else keys[:limit] + [f"... ({len(keys) - limit} more)"]
            problems.append(f"{label}: {shown}")
    return problems
