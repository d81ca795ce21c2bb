"""Reading foreign checkpoints and reporting how they differ from the state dict a model expects.

The loaders of the authors' UPLiFT files and of the TAESD ``.pth`` pairs read them with
:func:`load_state_dict_file` (no pickled code runs) and report every problem at once with
:func:`state_dict_problems`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

__all__ = ["load_state_dict_file", "state_dict_differences", "state_dict_problems"]

Shape = Tuple[int, ...]
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
_WRAPPERS = ("state_dict", "model", "uplift")


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
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict = load_file(str(path))
        else:
            state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unreadable, truncated or not a weights-only pickle
        raise ValueError(f"`{argument}`: could not read {str(path)!r} as a state dict: {error}") from error
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
