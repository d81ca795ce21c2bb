"""Comparing a checkpoint's state dict with the one a model expects.

Loaders of foreign checkpoints (the authors' UPLiFT files, TAESD ``.pth`` pairs) report every
problem at once; this is the comparison they share, each keeping its own wording.
"""
from __future__ import annotations

from typing import List, Mapping, Tuple

import torch

Shape = Tuple[int, ...]


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
