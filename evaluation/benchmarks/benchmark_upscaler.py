"""Speed and memory of the UPLiFT latent upscaler, eager float32 against fast inference.
Command: ``docs/evaluation.md``; the recorded run is ``evaluation/results/benchmark_upscaler.*``.

Official-size model, random weights; every measurement in its own subprocess, so that peak
memory is that of the measurement alone:

- ``uplift``: ``--steps`` 2x steps (encoder included) at image sides ``--sides``;
- ``vae``: an SD1.5-size VAE decode at the output size of one 2x step, the cost UPLiFT is compared with;
- ``cross_attention``: a plain cross-attention upsampler of the same width (512), quadratic in the tokens;
- ``encoder``: the encoder dense and with the exact savings (time, and FLOPs counted on the meta device);
- ``attender_memory``: peak extra memory of the Local Attender against a naive broadcast
  formulation that materialises n x output;
- ``paired``: the ratios "time(512 px) / time(256 px)" and "one step / VAE decode" measured
  interleaved in one process (each ratio the median of per-round ratios), so that the machine's
  drift between separate measurements does not enter them (the separate rows' ratios are kept
  as ``ratios_unpaired``).

Times are medians of ``--repeats`` runs after ``--warmup`` runs (compiling happens there). Peak
memory comes from one more run after all the timings: on CUDA ``max_memory_allocated``; on CPU
the resident size sampled every 2 ms (psutil) minus the size before, with glibc told to return
freed blocks at once (``mallopt``, which slows allocation-heavy code: hence the separate run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO_ROOT / "evaluation" / "results"

from evaluation.benchmarks.sd15_sizes import SD15_VAE_CONFIG
from evaluation.sharding import require_one_process
from evaluation.smoke import add_smoke_test_argument

#: This script's models are random (official sizes) anyway: its smoke test is the shortest run of every row kind.
SMOKE_HELP = ("check the installation: one short run of every row kind (64 px, 1 step, 1 repeat, eager, 1 thread; "
              "about 30 s: six worker processes), results in a temporary folder unless --output is given; the times mean nothing")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# =============================================================================== worker side
class PeakMemory:
    """Peak extra memory (bytes) of the code run inside the ``with`` block."""

    def __init__(self, device: str, interval: float = 0.002):
        self.device, self.interval, self.peak_extra = device, interval, 0

    def __enter__(self):
        import torch

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
        import torch

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
    """Make glibc give every freed block of 64 KiB or more back to the system at once
    (``mallopt``, ``malloc_trim``), so that the resident size follows the live tensors.
    This slows allocation-heavy code down (fresh pages on every large allocation: 40% for
    the compiled upscaler), which is why it is switched on only after the timings."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: peak RSS is then an upper bound
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 65536)
    libc.mallopt(m_trim_threshold, 0)
    libc.malloc_trim(0)


def add_peak_memory(measurements: List[Tuple[Dict, Callable]], device: str) -> List[Dict]:
    """One more run of every measurement's function, after all the timings, recording its
    peak extra memory (MiB) in its row."""
    if not device.startswith("cuda"):
        return_freed_memory_to_the_system()
    for row, fn in measurements:
        if fn is None:  # a row that measures no memory
            continue
        with PeakMemory(device) as memory:
            fn()
        row["peak_extra_mib"] = round(memory.peak_extra / 2**20, 1)
    return [row for row, _ in measurements]


def time_call(fn, device: str) -> Tuple[float, float]:
    """One call of ``fn``: its wall and CPU times (s), CUDA work waited for."""
    import torch

    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def timed(fn, repeats: int, warmup: int, device: str) -> Dict:
    """Run ``fn`` ``warmup`` then ``repeats`` times: wall and CPU times (s). Memory is
    measured separately (:func:`add_peak_memory`), so that it does not slow the timings."""
    first = None
    for index in range(warmup):
        wall, _ = time_call(fn, device)
        if index == 0:
            first = wall
    times, cpu_times = zip(*(time_call(fn, device) for _ in range(repeats)))
    return {
        "times_s": [round(t, 4) for t in times],
        "median_s": round(statistics.median(times), 4),
        "median_cpu_s": round(statistics.median(cpu_times), 4),
        "first_call_s": None if first is None else round(first, 3),
    }


def make_upscaler(device: str):
    import torch

    from uplift_diffusers import UPLiFTLatentUpscaler

    torch.manual_seed(0)
    return UPLiFTLatentUpscaler().eval().to(device)


def enable_fast(model, task):
    import torch

    dtype = getattr(torch, DTYPES[task["dtype"]])
    return model.enable_fast_inference(dtype=dtype, compile=task["compile"], compile_mode=task.get("compile_mode"))


def uplift_call(model, side: int, steps: int, device: str) -> Callable:
    """A function running ``model`` (``steps`` 2x steps) on random inputs of image side ``side``."""
    import torch

    latents = torch.randn(1, 4, side // 8, side // 8, device=device)
    image = torch.rand(1, 3, side, side, device=device)

    def call():
        with torch.no_grad():
            model(latents, image, num_steps=steps)

    return call


def run_uplift(task) -> List[Dict]:
    import torch

    device, side = task["device"], task["side"]
    model = make_upscaler(device)
    if task["mode"] == "fast":
        enable_fast(model, task)
    else:
        # eager float32, exact: the model's step with the last encoder group evaluated only on
        # the pixels the steps read (the fast path's exact float32 mode; the plain dense forward
        # gives the same output, 1.2x slower at 256 px)
        model.enable_fast_inference(dtype=torch.float32, compile=False, channels_last=False)
    rows = []
    for steps in sorted(task["steps"]):
        call = uplift_call(model, side, steps, device)  # kept: the memory run comes after the loop
        row = timed(call, task["repeats"], task["warmup"], device)
        state = getattr(model, "_fast_inference", None)
        row.update(steps=steps, compiled=bool(state is not None and state.compiled))
        rows.append((row, call))
    return rows


def make_vae(task):
    """The SD1.5-size VAE (random weights): float32, or the fast dtype in channels_last."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE_CONFIG).eval().to(task["device"])
    if task["mode"] == "fast":
        vae = vae.to(dtype=getattr(torch, DTYPES[task["dtype"]]), memory_format=torch.channels_last)
    return vae


def vae_call(vae, side: int, device: str) -> Callable:
    """A function decoding random latents into a ``side`` x ``side`` image."""
    import torch

    latents = torch.randn(1, 4, side // 8, side // 8, device=device, dtype=vae.dtype)

    def call():
        with torch.no_grad():
            vae.decode(latents)

    return call


def run_vae(task) -> List[Dict]:
    call = vae_call(make_vae(task), task["side"], task["device"])
    return [(timed(call, task["repeats"], task["warmup"], task["device"]), call)]


def run_paired(task) -> List[Dict]:
    """The ratio targets measured interleaved, in one process: round after round, one fast
    2x step at each side of ``task["sides"]`` and the fast VAE decode at twice each side.
    A ratio is the median over rounds of the ratio of two times taken in the same round: on
    a shared machine, whose speed drifts by up to 2x over minutes, that is much steadier
    than the ratio of two medians taken minutes apart (a slow spell hits both)."""
    device = task["device"]
    model = make_upscaler(device)
    state = enable_fast(model, task)
    vae = make_vae(dict(task, mode="fast"))
    calls = {}
    for side in sorted(task["sides"]):
        calls[f"uplift_{side}"] = uplift_call(model, side, 1, device)
        calls[f"vae_{2 * side}"] = vae_call(vae, 2 * side, device)
    for call in calls.values():
        for _ in range(task["warmup"]):
            call()
    times = {name: [] for name in calls}
    cpu_times = {name: [] for name in calls}
    for _ in range(task["repeats"]):
        for name, call in calls.items():
            wall, cpu = time_call(call, device)
            times[name].append(round(wall, 4))
            cpu_times[name].append(round(cpu, 4))
    row = dict(sides=sorted(task["sides"]), compiled=bool(state.compiled), times_s=times, cpu_times_s=cpu_times)
    return [(row, None)]  # no memory run: the other rows measure memory one function at a time


class CrossAttentionUpsampler:
    """A plain cross-attention upsampler of width ``width``: queries from the output grid
    (2h x 2w tokens), keys and values from the input tokens (h x w), 8 heads, with the
    q / k / v / output projections; quadratic in the number of tokens."""

    def __init__(self, width: int, device: str, dtype):
        import torch

        torch.manual_seed(0)
        self.heads = 8
        self.proj = torch.nn.ModuleDict({k: torch.nn.Linear(width, width) for k in "qkvo"}).to(device=device, dtype=dtype)

    def __call__(self, queries, tokens):
        import torch.nn.functional as F

        b, n, c = queries.shape
        split = lambda t: t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.proj["q"](queries)), split(self.proj["k"](tokens)), split(self.proj["v"](tokens))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj["o"](out.transpose(1, 2).reshape(b, n, c))


def run_cross_attention(task) -> List[Dict]:
    import torch

    device, side = task["device"], task["side"]
    dtype = torch.float32 if task["mode"] == "eager" else getattr(torch, DTYPES[task["dtype"]])
    layer = CrossAttentionUpsampler(512, device, dtype)
    h = side // 8
    tokens = torch.randn(1, h * h, 512, device=device, dtype=dtype)
    queries = torch.randn(1, 4 * h * h, 512, device=device, dtype=dtype)

    def call():
        with torch.no_grad():
            layer(queries, tokens)

    return [(timed(call, task["repeats"], task["warmup"], device), call)]


def run_encoder(task) -> List[Dict]:
    """Encoder time dense and with the savings of 1 and 2 steps, plus counted FLOPs. The
    encoder pass of fast inference (eager, no compile): in fast mode its dtype and memory
    format, in eager mode float32 (the dense row is then the eager model's encoder)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from uplift_diffusers.models.fast_inference import enable_fast_inference, last_group_strided

    device, side = task["device"], task["side"]
    model = make_upscaler(device)
    if task["mode"] == "fast":
        state = enable_fast(model, dict(task, compile=False))
    else:
        state = enable_fast_inference(model, dtype=torch.float32, compile=False, channels_last=False)
    image = torch.rand(1, 3, side, side, device=device).to(memory_format=state.memory_format)

    with torch.device("meta"):
        meta_encoder = make_upscaler("meta").encoder
    meta_image = torch.empty(1, 3, side, side, device="meta")

    def flops(stride, phases):
        with FlopCounterMode(display=False) as counter:
            x = meta_image
            for group in meta_encoder.groups[:-1]:
                x = group(x)
            last_group_strided(meta_encoder.groups[-1], x, stride, phases)
        return counter.get_total_flops()

    rows = []
    for label, stride in (("dense", 1), ("1 step (stride 4)", 4), ("2 steps (stride 2)", 2)):
        phases = state.phases and stride > 1

        def call(stride=stride):
            with torch.no_grad():
                state.encode(image, stride)

        row = timed(call, task["repeats"], task["warmup"], device)
        row.update(variant=label, stride=stride, phases=phases, tflops=round(flops(stride, phases) / 1e12, 4), compile=False)
        rows.append((row, call))
    return rows


def run_attender_memory(task) -> List[Dict]:
    """LocalAttender (in-place accumulation) against a naive broadcast formulation."""
    import torch
    import torch.nn.functional as F

    from uplift_diffusers.models.local_attender import LocalAttender, attend, triton_installed

    device = task["device"]
    channels, size = task.get("channels", 512), task.get("size", 128)
    torch.manual_seed(0)
    attender = LocalAttender(channels, 17).to(device)
    guide = torch.randn(1, channels, 2 * size, 2 * size, device=device)
    value = torch.randn(1, channels, size, size, device=device)
    with torch.no_grad():
        weights = attender.attention(guide)

    def naive():
        pad = attender.padding
        padded = F.pad(value, (pad,) * 4, mode="replicate")
        shifted = torch.stack(
            [padded[:, :, pad + dy : pad + dy + size, pad + dx : pad + dx + size] for dy, dx in attender.offsets], dim=1
        )  # B x n x C x H x W
        up = shifted.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # n x output
        return (weights[:, :, None] * up).sum(dim=1)

    with torch.no_grad():
        reference = naive()
        assert torch.allclose(attend(weights, value, attender.offsets, attender.padding, 2), reference, atol=1e-4)
        del reference
        logits = attender.logits(guide)
    mib = lambda t: t.numel() * t.element_size() / 2**20  # noqa: E731
    output_mib = mib(value) * 4
    variants = [
        ("LocalAttender.forward(guide, value)", lambda: attender(guide, value), mib(guide) + mib(value)),
        ("attend(weights, value) (per-offset in-place loop)", lambda: attend(weights, value, attender.offsets, attender.padding, 2), mib(weights) + mib(value)),
        ("naive broadcast (materialises n x output)", naive, mib(weights) + mib(value)),
    ]
    if device.startswith("cuda") and triton_installed():
        from uplift_diffusers.models.triton_local_attender import fused_local_attention

        variants.insert(2, ("fused Triton kernel (logits, value)", lambda: fused_local_attention(logits, value, attender.offsets, 2), mib(logits) + mib(value)))
    rows = []
    for label, fn, inputs_mib in variants:
        def call(fn=fn):
            with torch.no_grad():
                fn()

        row = timed(call, task["repeats"], task["warmup"], device)
        row.update(variant=label, inputs_mib=round(inputs_mib, 1), output_mib=round(output_mib, 1), bound_mib=round(inputs_mib + output_mib, 1))
        rows.append((row, call))
    return rows


WORKERS = {
    "uplift": run_uplift,
    "vae": run_vae,
    "paired": run_paired,
    "cross_attention": run_cross_attention,
    "encoder": run_encoder,
    "attender_memory": run_attender_memory,
}


def worker_main(task_json: str) -> None:
    import torch

    task = json.loads(task_json)
    torch.set_num_threads(task["threads"])
    rows = add_peak_memory(WORKERS[task["kind"]](task), task["device"])
    for row in rows:
        if "bound_mib" in row:  # the attender's memory bound: inputs + one output
            row["within_bound"] = row["peak_extra_mib"] <= row["bound_mib"]
    print("RESULT " + json.dumps(rows), flush=True)


# =============================================================================== driver side
def run_task(task: Dict, log) -> List[Dict]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    label = {k: v for k, v in task.items() if k in ("kind", "mode", "side", "steps")}
    log(f"running {label}")
    start = time.perf_counter()
    # run from the repository root, as documented: `python -m` makes it importable (no path edits)
    proc = subprocess.run([sys.executable, "-m", "evaluation.benchmarks.benchmark_upscaler", "--worker", json.dumps(task)], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        log(f"  FAILED ({proc.returncode}): {proc.stderr[-2000:]}")
        return [dict(task, error=proc.stderr[-2000:])]
    rows = json.loads(lines[-1][len("RESULT "):])
    for row in rows:
        for key in ("kind", "mode", "side", "dtype", "compile", "threads", "device", "repeats", "warmup"):
            row.setdefault(key, task.get(key))
        if task["mode"] == "eager":  # eager rows are float32, never compiled
            row.update(dtype="fp32", compile=False)
        if task["kind"] in ("uplift", "cross_attention"):
            row["latent_tokens"] = (task["side"] // 8) ** 2
        if task["kind"] == "vae":
            row["compile"] = False  # the VAE runs eagerly (bf16 channels_last in fast mode)
            row["latent_tokens"] = (task["side"] // 16) ** 2  # tokens of the UPLiFT input it is compared with
            row["upscaler_side"] = task["side"] // 2
        log(f"  {json.dumps(row)}")
    log(f"  ({time.perf_counter() - start:.0f} s)")
    return rows


def find(rows, **match) -> Optional[Dict]:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and "median_s" in row:
            return row
    return None


def paired_row(rows: List[Dict]) -> Optional[Dict]:
    """The interleaved measurement's row (:func:`run_paired`), if the run has one."""
    return next((r for r in rows if r.get("kind") == "paired" and "times_s" in r), None)


def paired_ratios(rows: List[Dict], key: str = "median_s") -> Dict:
    """The ratios of the interleaved measurement (:func:`run_paired`), if there is one: the
    median over rounds of each round's ratio (wall clock, or CPU time for ``median_cpu_s``)."""
    row = paired_row(rows)
    if row is None:
        return {}
    times = row["cpu_times_s" if key == "median_cpu_s" else "times_s"]

    def median_ratio(num, den, digits=3):
        return round(statistics.median(a / b for a, b in zip(times[num], times[den])), digits)

    out = {}
    if "uplift_256" in times and "uplift_512" in times:
        out["fast_time_512_over_256"] = median_ratio("uplift_512", "uplift_256", 2)
    for side in row["sides"]:
        out[f"fast_2x_step_{side}px_over_vae_decode_{2 * side}px"] = median_ratio(f"uplift_{side}", f"vae_{2 * side}")
    return out


def ratios(rows: List[Dict], key: str = "median_s", paired: bool = True) -> Dict:
    """The headline ratios, from wall-clock medians (``median_s``) or CPU-time medians; with
    ``paired``, those the interleaved measurement has come from it."""
    out = {}
    for side in (256, 512):
        eager, fast = find(rows, kind="uplift", mode="eager", side=side, steps=1), find(rows, kind="uplift", mode="fast", side=side, steps=1)
        if eager and fast:
            out[f"fast_speedup_2x_step_{side}px"] = round(eager[key] / fast[key], 2)
    four_x = find(rows, kind="uplift", mode="fast", side=512, steps=2)
    if four_x:  # SD1.5 4x at 512 px: the encoder and two 2x steps (the H100 target)
        out["fast_4x_at_512px_ms"] = round(four_x[key] * 1000, 1)
    f256, f512 = find(rows, kind="uplift", mode="fast", side=256, steps=1), find(rows, kind="uplift", mode="fast", side=512, steps=1)
    if f256 and f512:
        out["fast_time_512_over_256"] = round(f512[key] / f256[key], 2)
    for side in (256, 512, 768, 1024):
        for mode in ("eager", "fast"):
            up, vae = find(rows, kind="uplift", mode=mode, side=side, steps=1), find(rows, kind="vae", mode=mode, side=2 * side)
            if up and vae:
                out[f"{mode}_2x_step_{side}px_over_vae_decode_{2 * side}px"] = round(up[key] / vae[key], 3)
        up, vae = find(rows, kind="uplift", mode="fast", side=side, steps=1), find(rows, kind="vae", mode="eager", side=2 * side)
        if up and vae:
            out[f"fast_2x_step_{side}px_over_eager_fp32_vae_decode_{2 * side}px"] = round(up[key] / vae[key], 3)
    if paired:
        out.update(paired_ratios(rows, key))
    return out


TARGETS = {
    "fast_speedup_2x_step_256px": (">=", 2.5),
    "fast_speedup_2x_step_512px": (">=", 2.5),
    "fast_time_512_over_256": ("<=", 4.4),
    "fast_2x_step_256px_over_vae_decode_512px": ("<=", 0.5),
    "fast_2x_step_512px_over_vae_decode_1024px": ("<=", 0.5),
    "eager_2x_step_256px_over_vae_decode_512px": ("<=", 0.5),
}

#: Targets that only a GPU run is held to (H100, bf16).
GPU_TARGETS = {"fast_4x_at_512px_ms": ("<=", 25.0)}


def check_targets(measured: Dict, gpu: bool = False) -> Dict:
    out = {}
    for key, (op, value) in {**TARGETS, **(GPU_TARGETS if gpu else {})}.items():
        if key in measured:
            got = measured[key]
            out[key] = {"target": f"{op} {value}", "measured": got, "met": got >= value if op == ">=" else got <= value}
    return out


def plot(rows: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [
        ("uplift", "eager", 1, "UPLiFT 1 step, eager fp32", "C0", "-"),
        ("uplift", "fast", 1, "UPLiFT 1 step, fast", "C0", "--"),
        ("uplift", "eager", 2, "UPLiFT 2 steps, eager fp32", "C1", "-"),
        ("uplift", "fast", 2, "UPLiFT 2 steps, fast", "C1", "--"),
        ("vae", "eager", None, "SD1.5 VAE decode at 2x side, eager fp32", "C2", "-"),
        ("vae", "fast", None, "SD1.5 VAE decode at 2x side, bf16", "C2", "--"),
        ("cross_attention", "eager", None, "cross-attention upsampler (quadratic), fp32", "C3", "-"),
        ("cross_attention", "fast", None, "cross-attention upsampler (quadratic), bf16", "C3", "--"),
    ]
    for kind, mode, steps, label, color, style in series:
        points = sorted(
            (r["latent_tokens"], r["median_s"], r["peak_extra_mib"])
            for r in rows
            if r.get("kind") == kind and r.get("mode") == mode and "median_s" in r and (steps is None or r.get("steps") == steps)
        )
        if not points:
            continue
        x = [p[0] for p in points]
        ax_time.plot(x, [p[1] for p in points], style, color=color, marker="o", label=label)
        ax_mem.plot(x, [p[2] for p in points], style, color=color, marker="o", label=label)
    for ax, ylabel in ((ax_time, "median time (s)"), (ax_mem, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input latent tokens (h x w)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_time.legend(fontsize=7)
    fig.suptitle("UPLiFT latent upscaler (official size, random weights): time and memory vs tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def device_name(device: str) -> str:
    """``cpu: <model name>`` or ``cuda: <GPU name>``, recorded with the timings."""
    if device.startswith("cuda"):
        import torch

        return f"{device}: {torch.cuda.get_device_name(torch.device(device))}"
    return f"cpu: {cpu_name()}"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 768, 1024], help="image sides of the upscaler input (multiples of 8)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="numbers of 2x steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (compiling happens there)")
    parser.add_argument("--skip-eager-above", type=int, default=None, metavar="N", help="no eager fp32 runs for image sides above N px (VAE: output sides above 2N)")
    parser.add_argument("--eager-repeats", type=int, default=None, help="timed runs of the eager fp32 measurements (default: --repeats)")
    parser.add_argument("--eager-warmup", type=int, default=None, help="warm-up runs of the eager fp32 measurements (default: --warmup)")
    parser.add_argument("--eager-steps", type=int, nargs="+", default=None, help="numbers of steps run eagerly (default: --steps)")
    parser.add_argument("--skip-eager-vae-above", type=int, default=None, metavar="N", help="no eager fp32 VAE decodes above N px output side")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the fast mode")
    parser.add_argument("--no-compile", action="store_true", help="fast mode without torch.compile")
    parser.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"')
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(WORKERS), help="parts to leave out")
    parser.add_argument("--encoder-side", type=int, default=256, help="image side of the encoder-savings measurement")
    parser.add_argument("--cpu-shared", action="store_true", help="record that the CPU was shared with other work")
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "benchmark_upscaler.json", help="JSON file to write")
    parser.add_argument("--plot", type=Path, default=None, help="PNG file (default: the JSON path with .png)")
    parser.add_argument("--from-json", type=Path, default=None, help="recompute ratios, targets, plot and table from a saved JSON (no measuring)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_smoke_test_argument(parser, SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke_test:  # one of every row kind, as small and short as the protocol allows
        import tempfile

        args.sides, args.steps, args.repeats, args.warmup, args.threads, args.no_compile = [64], [1], 1, 0, 1, True
        args.eager_steps, args.eager_repeats, args.eager_warmup, args.skip = None, None, None, ["encoder", "attender_memory"]
        if "--output" not in (argv if argv is not None else sys.argv[1:]):
            args.output = Path(tempfile.mkdtemp(prefix="uplift-smoke-benchmark-upscaler-")) / "benchmark_upscaler.json"
        args.note = "--smoke-test: the times mean nothing"
    for side in args.sides:
        if side < 64 or side % 8:
            parser.error(f"--sides: {side} is not a multiple of 8 of at least 64")
    if any(s < 1 for s in args.steps) or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0, --threads >= 1")
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return {}
    require_one_process("evaluation.benchmarks.benchmark_upscaler")

    def log(message):
        print(message, flush=True)

    if args.from_json is not None:  # recompute ratios, targets, plot and table from saved rows
        if not args.from_json.is_file():
            raise FileNotFoundError(f"--from-json file not found: {str(args.from_json)!r}; pass a JSON this script wrote.")
        saved = json.loads(args.from_json.read_text())
        return write_results(saved["results"], saved["meta"], args, log)
    import torch

    def eager_allowed(side):
        return args.skip_eager_above is None or side <= args.skip_eager_above

    eager = dict(repeats=args.eager_repeats or args.repeats, warmup=args.warmup if args.eager_warmup is None else args.eager_warmup)
    base = dict(device=args.device, threads=args.threads, repeats=args.repeats, warmup=args.warmup, dtype=args.dtype, compile=not args.no_compile, compile_mode=args.compile_mode)
    tasks = []
    if "attender_memory" not in args.skip:
        tasks.append(dict(base, kind="attender_memory", mode="eager", side=None, repeats=min(args.repeats, 2)))
    paired_sides = [side for side in (256, 512) if side in args.sides]
    if "paired" not in args.skip and paired_sides:
        tasks.append(dict(base, kind="paired", mode="fast", side=None, sides=paired_sides))
    if "encoder" not in args.skip:
        for mode in ("eager", "fast"):
            tasks.append(dict(base, kind="encoder", mode=mode, side=args.encoder_side, **(eager if mode == "eager" else {})))
    for side in sorted(args.sides):
        for mode in ("fast", "eager"):
            if mode == "eager" and not eager_allowed(side):
                continue
            settings = dict(base, mode=mode, **(eager if mode == "eager" else {}))
            steps = sorted(args.eager_steps or args.steps) if mode == "eager" else sorted(args.steps)
            if "uplift" not in args.skip:
                tasks.append(dict(settings, kind="uplift", side=side, steps=steps))
            vae_eager_ok = args.skip_eager_vae_above is None or 2 * side <= args.skip_eager_vae_above
            if "vae" not in args.skip and (mode == "fast" or vae_eager_ok):
                tasks.append(dict(settings, kind="vae", side=2 * side))
            if "cross_attention" not in args.skip:
                tasks.append(dict(settings, kind="cross_attention", side=side))
    rows = []
    started = time.time()
    for task in tasks:
        rows.extend(run_task(task, log))
    meta = {
        "torch": torch.__version__,
        "device": device_name(args.device),
        "threads": args.threads,
        "cpu_shared": args.cpu_shared,
        "note": args.note,
        "fast_mode": f"{args.dtype}, channels_last, " + ("no compile" if args.no_compile else f"torch.compile (mode={args.compile_mode}, freezing)"),
        "model": "UPLiFTLatentUpscaler() official size (53,487,445 parameters), random weights",
        "vae": "diffusers AutoencoderKL, SD1.5 config, random weights, decode only; fast = bf16 channels_last eager",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "memory": MEMORY_METHOD,
        "command": "python -m evaluation.benchmarks.benchmark_upscaler " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_s": round(time.time() - started, 1),
    }
    return write_results(rows, meta, args, log)


MEMORY_METHOD = (
    "one extra run after all the timings; CUDA: max_memory_allocated; CPU: peak RSS (psutil, 2 ms "
    "sampling) minus RSS before the run, glibc returning freed blocks >= 64 KiB at once (mallopt)"
)


def write_results(rows: List[Dict], meta: Dict, args, log) -> Dict:
    """The JSON (rows, ratios, targets), the PNG plot and the Markdown table."""
    measured = ratios(rows)
    measured_cpu = ratios(rows, key="median_cpu_s")
    gpu = meta["device"].startswith("cuda")
    result = {
        "meta": meta,
        "ratios": measured,
        "targets": check_targets(measured, gpu=gpu),
        "ratios_from_cpu_time": measured_cpu,
        # the same ratios from medians of separate measurements (minutes apart), for comparison
        "ratios_unpaired": ratios(rows, paired=False),
        "paired": sorted(paired_ratios(rows)),
        "targets_from_cpu_time": check_targets(measured_cpu, gpu=gpu),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    plot_path = args.plot or args.output.with_suffix(".png")
    plot(rows, plot_path)
    table_path = args.output.with_suffix(".md")
    table_path.write_text(markdown(result))
    log(f"wrote {args.output}, {plot_path} and {table_path}")
    log(json.dumps({"ratios": measured, "targets": result["targets"]}, indent=2))
    return result


TARGET_LABELS = {
    "fast_speedup_2x_step_256px": "fast vs eager fp32, one 2x step at 256 px",
    "fast_speedup_2x_step_512px": "fast vs eager fp32, one 2x step at 512 px",
    "fast_time_512_over_256": "fast time(512 px) / time(256 px)",
    "fast_2x_step_256px_over_vae_decode_512px": "one 2x step at 256 px / SD1.5-size VAE decode at 512 px (both bf16)",
    "fast_2x_step_512px_over_vae_decode_1024px": "the same at 512 px / 1024 px",
    "eager_2x_step_256px_over_vae_decode_512px": "one 2x step at 256 px / VAE decode at 512 px (both eager fp32)",
    "fast_4x_at_512px_ms": "SD1.5 4x at 512 px (encoder + 2 steps), ms",
}


def markdown(result: Dict) -> str:
    """The targets and the per-size timings as Markdown tables (for the README)."""
    meta, rows = result["meta"], result["results"]
    lines = [f"Device: {meta['device']}, {meta['threads']} threads, torch {meta['torch']}; fast mode: {meta['fast_mode']}.", ""]
    lines += ["| ratio (one run) | target | measured | met | from CPU time |", "|---|---|---|---|---|"]
    for key, target in result["targets"].items():
        cpu = result["ratios_from_cpu_time"].get(key, "")
        label = TARGET_LABELS.get(key, key) + (" (interleaved)" if key in result.get("paired", ()) else "")
        lines.append(f"| {label} | {target['target']} | {target['measured']} | {'yes' if target['met'] else 'no'} | {cpu} |")
    lines += ["", "| image side | latent tokens | UPLiFT 1 step fast | 2 steps fast | 1 step eager fp32 | VAE decode at 2x side, bf16 | eager fp32 | cross-attention, bf16 |", "|---|---|---|---|---|---|---|---|"]

    def cell(**match):
        r = find(rows, **match)
        return "-" if r is None else f"{r['median_s']:.3g} s / {r['peak_extra_mib']:.0f} MiB"

    for side in sorted({r["side"] for r in rows if r.get("kind") == "uplift"}):
        lines.append(
            f"| {side} | {(side // 8) ** 2} | {cell(kind='uplift', mode='fast', side=side, steps=1)} | {cell(kind='uplift', mode='fast', side=side, steps=2)} "
            f"| {cell(kind='uplift', mode='eager', side=side, steps=1)} | {cell(kind='vae', mode='fast', side=2 * side)} | {cell(kind='vae', mode='eager', side=2 * side)} "
            f"| {cell(kind='cross_attention', mode='fast', side=side)} |"
        )
    lines += ["", f"Each cell: median time / peak extra memory (peak memory: {meta['memory']})."]
    if result.get("paired"):
        rounds = len(next(iter(paired_row(rows)["times_s"].values())))
        unpaired = ", ".join(f"{key} {result['ratios_unpaired'][key]}" for key in result["paired"] if key in result.get("ratios_unpaired", {}))
        lines += [
            "",
            f"Ratios marked (interleaved): measured in one process, the step and the VAE decode at each side "
            f"timed in turn, {rounds} rounds; the median of the per-round ratios. From the medians of the "
            f"separate rows above instead (taken minutes apart): {unpaired or 'not measured'}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from evaluation.sharding import LaunchMismatchError

    try:
        main()
    except (LaunchMismatchError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
