"""What the benchmarks share: one clock, one interleaving loop, one peak-memory probe, one
description of the device and one way of writing the results."""
from __future__ import annotations

import ctypes
import json
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch


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

    def __exit__(self, *_exc_info):
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


def write_results(output, result: Dict, table: str) -> None:
    """``result`` as JSON at ``output`` and ``table`` (Markdown) beside it as ``.md``."""
    from uplift_diffusers.utils.atomic_files import atomic_write_text

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    atomic_write_text(output.with_suffix(".md"), table)
