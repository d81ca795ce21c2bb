"""Reading foreign checkpoints and reporting how they differ from the state dict a model expects.

The loaders of the authors' UPLiFT files and of the TAESD ``.pth`` pairs read them with
:func:`load_state_dict_file` (no pickled code runs) and report every problem at once with
:func:`state_dict_problems`.
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

__all__ = ["load_state_dict_file", "state_dict_differences", "state_dict_problems"]

Shape = Tuple[int, ...]
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_WRAPPERS = ("state_dict", "model", "uplift")
#: The first bytes of what ``torch.save`` writes: a zip archive, or (the legacy format) a pickle.
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")


def _first_sentence(text: str) -> str:
    return " ".join(str(text).split(". ")[0].split()).rstrip(".")


def _read_safetensors(path: Path, argument: str):
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error type for any bad file
        raise ValueError(
            f"`{argument}` {str(path)!r} is not a readable .safetensors file ({_first_sentence(error)}): it is "
            "corrupt, truncated or another kind of file."
        ) from error


def _read_pickle(path: Path, argument: str):
    """``torch.load(weights_only=True)``, with errors that say what happened and never advise
    turning the safe loader off."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head.startswith(_TORCH_SAVE_MAGIC):
        raise ValueError(
            f"`{argument}` {str(path)!r} is not a PyTorch checkpoint: it is neither a torch.save archive nor a "
            "pickle (corrupt, or another kind of file)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says enough
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(error))))
        if refused or "Unsupported global" in str(error):
            raise ValueError(
                f"`{argument}` {str(path)!r} was refused for safety: besides tensors it holds pickled Python objects "
                f"({', '.join(refused) or 'unknown classes'}), and loading those could run arbitrary code. Ask its "
                "publisher for a .safetensors file, or re-save only its tensors where it was made "
                "(safetensors.torch.save_file(state_dict, 'model.safetensors')) and pass that file."
            ) from None
        reason = str(error).split("WeightsUnpickler error:")[-1]
        raise ValueError(
            f"`{argument}` {str(path)!r} cannot be read as a checkpoint of tensors ({_first_sentence(reason)}): it is "
            "corrupt, or not a state dict saved with torch.save."
        ) from None
    except Exception as error:  # noqa: BLE001 - a damaged archive or pickle
        raise ValueError(
            f"`{argument}` {str(path)!r} is corrupt or truncated ({_first_sentence(error)}); download or save it again."
        ) from error


def load_state_dict_file(path: Union[str, os.PathLike], argument: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt``/``.bin`` state dict without running pickled code.

    A ``.pth`` holding ``{"state_dict": ...}`` / ``{"model": ...}`` / ``{"uplift": ...}`` is
    unwrapped, and a ``module.`` prefix (DataParallel) is removed. ``argument`` is the name errors
    give the path.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: an unknown suffix, an unreadable file, or contents that are not a state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}` file not found: {str(path)!r}; pass the path to the .safetensors or .pth file.")
    if path.suffix not in _WEIGHT_SUFFIXES:
        raise ValueError(f"`{argument}` {str(path)!r} has suffix {path.suffix!r}; expected one of {', '.join(_WEIGHT_SUFFIXES)}.")
    state_dict = _read_safetensors(path, argument) if path.suffix == ".safetensors" else _read_pickle(path, argument)
    for wrapper in _WRAPPERS:
        if isinstance(state_dict, dict) and isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise ValueError(f"`{argument}` {str(path)!r} does not hold a state dict of tensors (got {type(state_dict).__name__}).")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def state_dict_differences(
    given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> Tuple[List[str], List[str], List[Tuple[str, Shape, Shape]]]:
    """``(missing, unexpected, mismatched)``, each sorted by key: keys ``expected`` has and
    ``given`` lacks, keys only ``given`` has, and ``(key, given shape, expected shape)`` for
    shared keys whose shapes differ."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        (key, tuple(given[key].shape), tuple(expected[key].shape))
        for key in sorted(set(given) & set(expected))
        if given[key].shape != expected[key].shape
    ]
    return missing, unexpected, mismatched


def state_dict_problems(
    given: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    display: Callable[[str], str] = str,
    limit: Optional[int] = None,
) -> List[str]:
    """How ``given`` differs from ``expected``, one phrase per kind (empty when they match)::

        ["missing keys: ['a', ...]", "unexpected keys: [...]", "shape mismatches: ['k: checkpoint (..) vs model (..)']"]

    ``display`` names a key in the message (e.g. its name in the user's file); ``limit`` cuts
    each list to that many entries plus a count of the rest.
    """
    missing, unexpected, mismatched = state_dict_differences(given, expected)
    kinds = (
        ("missing keys", sorted(display(k) for k in missing)),
        ("unexpected keys", sorted(display(k) for k in unexpected)),
        ("shape mismatches", [f"{display(k)}: checkpoint {have} vs model {want}" for k, have, want in mismatched]),
    )
    problems = []
    for label, keys in kinds:
        if keys:
            shown = keys if limit is None or len(keys) <= limit else keys[:limit] + [f"... ({len(keys) - limit} more)"]
            problems.append(f"{label}: {shown}")
    return problems
