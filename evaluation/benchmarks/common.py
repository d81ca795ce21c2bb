"""What the benchmarks share: one clock, one interleaving loop, one peak-memory probe, one
description of the device, and the setup of the one-process studies on BSDS500."""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

__all__ = [
    "DTYPES", "default_device", "time_call", "timed", "interleaved", "median_ratio", "PeakMemory",
    "return_freed_memory_to_the_system", "device_name", "add_study_arguments", "prepare_study", "study_config", "write_results",
]

#: The ``--dtype`` choices of the latency benchmarks.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def default_device(name) -> torch.device:
    """``--device``, or cuda when available, else cpu."""
    return torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def time_call(fn: Callable[[], object], device: str) -> Tuple[float, float]:
    """One call of ``fn``: its wall and CPU times (s), CUDA work waited for."""
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def timed(fn: Callable[[], object], repeats: int, warmup: int, device: str) -> Dict:
    """``warmup`` untimed calls (compiling happens there), then ``repeats`` timed ones: their
    wall times and the medians of the wall and CPU times (s)."""
    for _ in range(warmup):
        fn()
    times, cpu_times = zip(*(time_call(fn, device) for _ in range(repeats)))
    return {
        "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "median_cpu_s": round(statistics.median(cpu_times), 4),
    }


def interleaved(calls: Dict[str, Callable[[], object]], repeats: int, warmup: int, device: str) -> Tuple[Dict, Dict]:
    """``warmup`` untimed rounds, then ``repeats`` timed rounds, each calling every function of
    ``calls`` once, in turn (the order reversed every other round): ``(wall, cpu)`` seconds per name.

    A shared machine's speed drifts by up to 2x over minutes; two times taken in the same round
    see the same spell, so the median of per-round ratios (:func:`median_ratio`) is much steadier
    than the ratio of two medians taken minutes apart."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()  # the first timed call must not wait for warm-up work
    walls: Dict[str, List[float]] = {name: [] for name in names}
    cpus: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            wall, cpu = time_call(calls[name], device)
            walls[name].append(wall)
            cpus[name].append(cpu)
    return walls, cpus


def median_ratio(numerator: List[float], denominator: List[float], digits: int = 3) -> float:
    """The median over rounds of ``numerator / denominator`` (times of :func:`interleaved`)."""
    return round(statistics.median(a / b for a, b in zip(numerator, denominator)), digits)


class PeakMemory:
    """Peak extra memory (bytes, ``peak_extra``) of the code run inside the ``with`` block: on CUDA
    ``max_memory_allocated``, on CPU the resident size sampled every 2 ms (psutil) minus the size before."""

    def __init__(self, device: str, interval: float = 0.002):
        self.device, self.interval, self.peak_extra = str(device), interval, 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.peak_extra = max(0, self.peak - self.base)
        return False


def return_freed_memory_to_the_system() -> None:
    """Make glibc give every freed block of 64 KiB or more back to the system at once (``mallopt``),
    so that the resident size follows the live tensors. This slows allocation-heavy code down,
    which is why the benchmarks switch it on only after their timings."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: peak RSS is then an upper bound
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 65536)
    libc.mallopt(m_trim_threshold, 0)
    libc.malloc_trim(0)


def device_name(device: str) -> str:
    """``cpu: <model name>`` or ``cuda: <GPU name>``, recorded with the timings."""
    device = str(device)
    if device.startswith("cuda"):
        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"cpu: {platform.processor()}"


REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = Path(os.environ.get("UPLIFT_SHARED_DIR", REPO_ROOT.parent / "shared"))


def add_study_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--model``, ``--vae``, ``--data``, ``--output`` (None until :func:`prepare_study` sets it) and ``--smoke-test``."""
    from evaluation.smoke import add_smoke_test_argument

    parser.add_argument("--model", default=str(REPO_ROOT / "examples" / "models" / "uplift-taef2-bsds500"),
                        help="the UPLiFT model (folder, Hub id or the authors' file; default: the example TAEF2 model)")
    parser.add_argument("--vae", default=str(SHARED_DIR / "models" / "taef2"), help="its VAE (folder or Hub id; default ../shared/models/taef2)")
    parser.add_argument("--data", default=str(SHARED_DIR / "data" / "bsds500" / "test"),
                        help="folder of test images (default: BSDS500 test, ../shared/data/bsds500/test)")
    parser.add_argument("--output", default=None, help=f"JSON results, the tables beside it as .md "
                        f"(default evaluation/results/{name}.json; with --smoke-test a temporary folder)")
    add_smoke_test_argument(parser)


def prepare_study(args, name: str, smoke_images: int, smoke_hr_size: int):
    """Check the one-process launch, apply ``--smoke-test`` (tiny random models, ``smoke_images``
    synthetic images of ``smoke_hr_size`` px), fill in ``--output``, check ``--data`` and return
    ``(pipeline, image files)``: the first ``args.num_images`` images (all when None)."""
    from evaluation.arguments import load_upscaler, load_vae
    from evaluation.sharding import require_one_process
    from evaluation.smoke import prepare_smoke_study
    from uplift_diffusers import UPLiFTSuperResolutionPipeline
    from uplift_diffusers.image_processor import list_images

    require_one_process(f"evaluation.benchmarks.{name}")
    if args.smoke_test:
        prepare_smoke_study(args, name, smoke_images, smoke_hr_size)
        args.num_images, args.hr_size = smoke_images, smoke_hr_size
    args.output = args.output or str(REPO_ROOT / "evaluation" / "results" / f"{name}.json")
    if not args.output.endswith(".json"):
        raise ValueError(f"--output must end in .json (the tables are written beside it as .md), got {args.output!r}.")
    if args.num_images is not None and args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}.")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data!r} is not a folder (set UPLIFT_SHARED_DIR or pass --data).")
    files = list_images(args.data)[: args.num_images]
    if not files:
        raise ValueError(f"--data {args.data!r} holds no images.")
    pipe = UPLiFTSuperResolutionPipeline(vae=load_vae(args.vae), upscaler=load_upscaler(args.model, flag="--model DIR|FILE"))
    pipe.set_progress_bar_config(disable=True)
    return pipe, files


def study_config(args, files, **settings) -> Dict:
    """The ``config`` record of a study's results: its inputs (paths relative to the repository) and settings."""

    def relative(path):
        return os.path.relpath(path, REPO_ROOT) if Path(path).exists() and not args.smoke_test else str(path)

    return {"model": relative(args.model), "vae": relative(args.vae), "data": relative(args.data), "images": len(files),
            **settings, "smoke_test": bool(args.smoke_test), "torch": torch.__version__, "machine": platform.machine()}


def write_results(output, result: Dict, table: str) -> None:
    """``result`` as JSON at ``output`` and ``table`` (Markdown) beside it as ``.md``."""
    from uplift_diffusers.utils.atomic_files import atomic_write_text

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    atomic_write_text(output.with_suffix(".md"), table)
