"""Split work over the processes of ``accelerate launch`` and gather per-item results.

With a plain ``python -m evaluation.tasks.<script>`` there is one process and these are no-ops.
Under ``accelerate launch --multi_gpu --num_processes N -m evaluation.tasks.<script> ...`` (GPUs) or
``torchrun --nproc_per_node N -m evaluation.tasks.<script> ...`` (also CPUs) every process takes a contiguous shard
of the items (``PartialState().split_between_processes``), and per-item values (PSNR / SSIM
lists, counts) are gathered back in item order with ``accelerate.utils.gather_object``. The
FID / patch-FID / CLIP metric objects synchronise themselves (torchmetrics states).
"""
from __future__ import annotations

from typing import Any, List, Sequence

__all__ = ["process_state", "shard", "gather_list"]


def process_state():
    """The accelerate ``PartialState`` (initialises ``torch.distributed`` under a launcher).

    Without CUDA it is created with ``cpu=True``, so that CPU processes started by ``torchrun``
    are recognised as one multi-process (gloo) run instead of N independent single runs.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def shard(items: Sequence[Any], state) -> List[Any]:
    """This process's contiguous share of ``items`` (all of them with one process)."""
    items = list(items)
    if state.num_processes == 1:
        return items
    with state.split_between_processes(items) as part:
        return list(part)


def gather_list(values: Sequence[Any], state) -> List[Any]:
    """Concatenate every process's ``values`` in process order (the input with one process)."""
    values = list(values)
    if state.num_processes == 1:
        return values
    from accelerate.utils import gather_object

    return list(gather_object(values))
