"""Split work over the processes of a launcher and gather per-item results, with accelerate.

With a plain ``python -m evaluation.tasks.<script>`` there is one process and these are no-ops.
Under ``torchrun --nproc_per_node N -m evaluation.tasks.<script> ...`` or
``accelerate launch --multi_gpu --num_processes N -m evaluation.tasks.<script> ...`` every process
takes a contiguous shard of the items (``PartialState().split_between_processes``) and per-item
values (PSNR / SSIM lists, counts) are gathered back in item order (``gather_object``). The FID /
CLIP metric objects synchronise themselves (torchmetrics states).

accelerate forms a CPU (gloo) group only when told to use the CPU, so on a machine without GPUs
:func:`process_state` asks for it when the launcher started several processes; a launch whose
group does not have the launcher's process count (N independent duplicate runs) is a
:class:`LaunchMismatchError` before any work.
"""
from __future__ import annotations

import os
from typing import Any, List, Sequence

import torch


class LaunchMismatchError(RuntimeError):
    """The launcher's environment and the process group disagree on the number of processes."""


def launched_processes() -> int:
    """The number of processes the launcher says it started (``WORLD_SIZE``; 1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "").strip() or "1"
    if not value.isdigit() or int(value) < 1:
        raise LaunchMismatchError(f"environment variable WORLD_SIZE={value!r} is not a number of processes.")
    return int(value)


def process_state():
    """The accelerate ``PartialState`` of this launch (initialises ``torch.distributed`` under a
    launcher; gloo on a machine without GPUs), checked against the launcher's process count."""
    from accelerate import PartialState

    expected = launched_processes()
    if "ACCELERATE_USE_CPU" in os.environ and os.environ.get("MASTER_ADDR") and expected == 1 and "LOCAL_RANK" not in os.environ:
        # what `accelerate launch --cpu --num_processes N` sets when it starts just one process
        raise LaunchMismatchError(
            "`accelerate launch --cpu --num_processes N` started ONE process (accelerate starts several CPU processes "
            "only through mpirun); on CPUs use `accelerate launch --multi_gpu --num_processes N` or "
            "`torchrun --nproc_per_node N` (both form one N-process gloo group); for one process drop --num_processes."
        )
    state = PartialState(cpu=expected > 1 and not torch.cuda.is_available())
    if state.num_processes != expected:
        raise LaunchMismatchError(
            f"the launcher started {expected} processes but accelerate formed a group of {state.num_processes}; "
            "each process would run its own duplicate job. Launch with `torchrun --nproc_per_node N` "
            "or `accelerate launch --multi_gpu --num_processes N`."
        )
    return state


def require_one_process(script: str) -> None:
    """Raise :class:`LaunchMismatchError` when a launcher started several processes of ``script``,
    which measures one process (a benchmark): N copies would disturb each other's times and write
    the same files."""
    count = launched_processes()
    if count > 1:
        raise LaunchMismatchError(
            f"{script} times ONE process, but the launcher started {count}; run it with plain `python -m ...` "
            "(one process per machine / GPU: pass --device to pick the GPU)."
        )


def shard(items: Sequence[Any], state) -> List[Any]:
    """This process's contiguous share of ``items`` (all of them with one process)."""
    with state.split_between_processes(list(items)) as part:
        return list(part)
