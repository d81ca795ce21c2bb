"""One process group for every launcher of ``python -m training.train_uplift``: ``torchrun`` /
``python -m torch.distributed.run``, ``accelerate launch`` and MPI, on GPUs and on CPU-only machines.

accelerate forms a CPU (gloo) group only when it is told to use the CPU (``cpu=True`` or
``ACCELERATE_USE_CPU``); without it, N processes started by ``torchrun`` on a machine without
GPUs each build their own one-process state and run N *independent duplicate* trainings.
And ``accelerate launch --cpu --num_processes N`` starts a single process (accelerate starts
several CPU processes only through mpirun, ``--mpirun_hostfile``). :func:`init_process_group_state`,
called before any work, fixes the first and turns the second into a clear error that names the
commands that work.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

# the environment variables launchers use for the number of processes (torchrun / accelerate,
# Intel MPI / MPICH, Open MPI, MVAPICH), in the order accelerate reads them
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchMismatchError(RuntimeError):
    """The launcher's environment and the process group disagree on the number of processes."""


def launched_world_size(environ: Optional[Mapping[str, str]] = None) -> int:
    """The number of processes the launcher says it started (1 when it says nothing)."""
    environ = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise LaunchMismatchError(f"environment variable {name}={value!r} is not a number of processes.") from None
    return 1


def _has_accelerator_device() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


def check_single_process_launch(environ: Optional[Mapping[str, str]] = None) -> None:
    """Raise when ``accelerate launch --cpu --num_processes N`` (N > 1, without mpirun) started
    one process: that launcher sets ``MASTER_ADDR`` and ``ACCELERATE_USE_CPU`` only when asked
    for several processes, but leaves ``WORLD_SIZE`` unset because it starts just one."""
    environ = os.environ if environ is None else environ
    if "ACCELERATE_USE_CPU" in environ and environ.get("MASTER_ADDR") and launched_world_size(environ) == 1 \
            and "LOCAL_RANK" not in environ:
        raise LaunchMismatchError(
            "`accelerate launch --cpu --num_processes N` started ONE process (accelerate starts several CPU "
            "processes only through mpirun, --mpirun_hostfile), so this would be a single-process run. On CPUs use "
            f"`accelerate launch --multi_gpu --num_processes N -m training.train_uplift ...` or `torchrun --nproc_per_node N -m training.train_uplift ...` "
            "(both form one N-process gloo group); for one process drop --num_processes."
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


def accelerator_kwargs(cpu: Optional[bool] = None) -> Dict[str, bool]:
    """Keyword arguments for ``accelerate.Accelerator`` matching :func:`init_process_group_state`."""
    return {"cpu": use_cpu_backend(cpu)}


def init_process_group_state(cpu: Optional[bool] = None):
    """Initialise accelerate's process state for however this script was launched and check it.

    ``cpu``: ``None`` = decide (CPU / gloo when the launcher started N > 1 processes and there
    is no GPU, or when ``ACCELERATE_USE_CPU`` is set), ``True`` / ``False`` = force. Returns
    accelerate's ``PartialState`` (``num_processes``, ``process_index``, ``is_main_process``,
    ``device``, ...). Any ``Accelerator`` created afterwards joins the same group; pass it
    ``**accelerator_kwargs(cpu)``.

    Raises :class:`LaunchMismatchError` before any work when the launcher's environment says
    N processes but the group has a different number (never N independent runs), or when
    ``accelerate launch --cpu --num_processes N`` started a single process.
    """
    from accelerate import PartialState

    check_single_process_launch()
    expected = launched_world_size()
    state = PartialState(cpu=use_cpu_backend(cpu))
    if state.num_processes != expected:
        names = ", ".join(f"{name}={os.environ[name]}" for name in WORLD_SIZE_VARIABLES if os.environ.get(name))
        raise LaunchMismatchError(
            f"the launcher started {expected} processes ({names}) but accelerate formed a group of "
            f"{state.num_processes} (distributed type {state.distributed_type}, device {state.device}); "
            "each process would run its own duplicate job. Pass cpu=True (or set ACCELERATE_USE_CPU=1) "
            "on a machine without GPUs, or launch with `torchrun --nproc_per_node N` / "
            "`accelerate launch --multi_gpu --num_processes N`."
        )
    return state
