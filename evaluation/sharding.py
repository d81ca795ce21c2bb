"""Split work over the processes of a launcher and gather per-item results.

With a plain ``python -m evaluation.tasks.<script>`` there is one process and these are no-ops.
Under ``torchrun --nproc_per_node N -m evaluation.tasks.<script> ...`` or
``accelerate launch --multi_gpu --num_processes N -m evaluation.tasks.<script> ...`` (on GPUs, and on
a CPU-only machine, where the processes form one gloo group) every process takes a contiguous shard
of the items (``PartialState().split_between_processes``), and per-item values (PSNR / SSIM
lists, counts) are gathered back in item order with ``accelerate.utils.gather_object``. The
FID / patch-FID / CLIP metric objects synchronise themselves (torchmetrics states).
:func:`process_state` is the library's :func:`~uplift_diffusers.utils.distributed.init_process_group_state`:
a launch that would give N independent one-process runs (the environment says N processes, the
group has 1) is a :class:`~uplift_diffusers.utils.distributed.LaunchMismatchError` before any work.
"""
from __future__ import annotations

from typing import Any, List, Sequence

from uplift_diffusers.utils.distributed import LaunchMismatchError, init_process_group_state, launched_world_size

__all__ = ["LaunchMismatchError", "process_state", "require_one_process", "shard", "gather_list", "broadcast_value"]


def process_state():
    """The accelerate ``PartialState`` of this launch, checked (initialises ``torch.distributed``
    under a launcher; a CPU-only machine gets the gloo backend). Raises ``LaunchMismatchError``
    when the launcher's process count and the group's differ."""
    return init_process_group_state()


def require_one_process(script: str) -> None:
    """Raise :class:`LaunchMismatchError` when a launcher started several processes of ``script``,
    which measures one process (a benchmark): N copies would disturb each other's times and write
    the same files."""
    count = launched_world_size()
    if count > 1:
        raise LaunchMismatchError(
            f"{script} times ONE process, but the launcher started {count}; run it with plain `python -m ...` "
            "(one process per machine / GPU: pass --device to pick the GPU)."
        )


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


def broadcast_value(value: Any, state) -> Any:
    """The main process's ``value`` on every process (``value`` itself with one process)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]
