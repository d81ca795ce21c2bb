"""One process group for ``torchrun`` and ``accelerate launch``, on GPUs and on CPU-only machines.

accelerate forms a CPU (gloo) group only when told to use the CPU (``cpu=True`` or
``ACCELERATE_USE_CPU``); without it, N processes started by ``torchrun`` on a machine without
GPUs each build their own one-process state and run N *independent duplicate* trainings. And
``accelerate launch --cpu --num_processes N`` starts a single process. :func:`init_process_group_state`,
called before any work, fixes the first and turns the second into a clear error.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional


class LaunchMismatchError(RuntimeError):
    """The launcher's environment and the process group disagree on the number of processes."""


def launched_world_size(environ: Optional[Mapping[str, str]] = None) -> int:
    """The number of processes the launcher says it started (``WORLD_SIZE``; 1 when unset)."""
    value = (os.environ if environ is None else environ).get("WORLD_SIZE", "").strip() or "1"
    if not value.isdigit():
        raise LaunchMismatchError(f"environment variable WORLD_SIZE={value!r} is not a number of processes.")
    return max(1, int(value))


def _has_accelerator_device() -> bool:
    import torch

    return torch.cuda.is_available() or bool(getattr(torch, "xpu", None) and torch.xpu.is_available())


def check_single_process_launch(environ: Optional[Mapping[str, str]] = None) -> None:
    """Raise when ``accelerate launch --cpu --num_processes N`` (N > 1) started one process: that
    launcher sets ``MASTER_ADDR`` and ``ACCELERATE_USE_CPU`` when asked for several processes but
    leaves ``WORLD_SIZE`` unset, because it starts just one."""
    environ = os.environ if environ is None else environ
    if "ACCELERATE_USE_CPU" in environ and environ.get("MASTER_ADDR") and "LOCAL_RANK" not in environ \
            and launched_world_size(environ) == 1:
        raise LaunchMismatchError(
            "`accelerate launch --cpu --num_processes N` started ONE process, so this would be a single-process run. "
            "On CPUs use `accelerate launch --multi_gpu --num_processes N -m training.train_uplift ...` or "
            "`torchrun --nproc_per_node N -m training.train_uplift ...` (both form one N-process gloo group); "
            "for one process drop --num_processes."
        )


def use_cpu_backend(cpu: Optional[bool] = None, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether accelerate must be told ``cpu=True``: as given, else ``ACCELERATE_USE_CPU``, else
    when the launcher started several processes on a machine without a GPU."""
    if cpu is not None:
        return bool(cpu)
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_CPU", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return launched_world_size(environ) > 1 and not _has_accelerator_device()


def init_process_group_state(cpu: Optional[bool] = None):
    """accelerate's ``PartialState`` for however this script was launched (``cpu``: None =
    :func:`use_cpu_backend` decides), checked: :class:`LaunchMismatchError` before any work when
    the launcher says N processes but the group has another number (never N independent runs)."""
    from accelerate import PartialState

    check_single_process_launch()
    expected = launched_world_size()
    state = PartialState(cpu=use_cpu_backend(cpu))
    if state.num_processes != expected:
        raise LaunchMismatchError(
            f"the launcher started {expected} processes (WORLD_SIZE={expected}) but accelerate formed a group of "
            f"{state.num_processes} (distributed type {state.distributed_type}, device {state.device}); "
            "each process would run its own duplicate job. Pass cpu=True (or set ACCELERATE_USE_CPU=1) "
            "on a machine without GPUs, or launch with `torchrun --nproc_per_node N` / "
            "`accelerate launch --multi_gpu --num_processes N`."
        )
    return state
