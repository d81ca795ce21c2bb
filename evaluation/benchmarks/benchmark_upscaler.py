"""Speed and memory of the UPLiFT latent upscaler, eager float32 against fast inference.
Command: ``docs/evaluation.md``; the recorded run is ``evaluation/results/benchmark_upscaler.{json,md}``.

Official-size model and SD1.5-size VAE, random weights, one process:

- ``uplift``: ``--steps`` 2x steps (encoder included) at image sides ``--sides``;
- ``vae``: the VAE decode at the output size of one 2x step, the cost UPLiFT is compared with;
- ``cross_attention``: a plain cross-attention upsampler of the same width (512), quadratic in the tokens;
- ``paired``: the ratios "time(512 px) / time(256 px)" and "one step / VAE decode" measured
  interleaved (:func:`evaluation.benchmarks.common.interleaved`), so that the machine's drift
  between separate measurements does not enter them.

Times are medians of ``--repeats`` runs after ``--warmup`` runs (compiling happens there). Peak
memory comes from one more run of each measurement after all the timings (see :data:`MEMORY_METHOD`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from evaluation.arguments import read_json_file
from evaluation.benchmarks import common
from evaluation.benchmarks.sd15_sizes import SD15_VAE_CONFIG
from evaluation.sharding import LaunchMismatchError, require_one_process
from evaluation.smoke import add_smoke_test_argument
from uplift_diffusers.models.fast_inference import apply_fast_inference

RESULTS = Path(__file__).resolve().parents[1] / "results" / "benchmark_upscaler.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MEMORY_METHOD = (
    "one extra run after all the timings; CUDA: max_memory_allocated; CPU: peak RSS (psutil, 2 ms "
    "sampling) minus RSS before the run, glibc returning freed blocks >= 64 KiB at once (mallopt)"
)
#: ratio -> (comparison, target, label in the table)
TARGETS = {
    "fast_speedup_2x_step_256px": (">=", 2.5, "fast vs eager fp32, one 2x step at 256 px"),
    "fast_speedup_2x_step_512px": (">=", 2.5, "fast vs eager fp32, one 2x step at 512 px"),
    "fast_time_512_over_256": ("<=", 4.4, "fast time(512 px) / time(256 px)"),
    "fast_2x_step_256px_over_vae_decode_512px": ("<=", 0.5, "one 2x step at 256 px / SD1.5-size VAE decode at 512 px (both bf16)"),
    "fast_2x_step_512px_over_vae_decode_1024px": ("<=", 0.5, "the same at 512 px / 1024 px"),
    "eager_2x_step_256px_over_vae_decode_512px": ("<=", 0.5, "one 2x step at 256 px / VAE decode at 512 px (both eager fp32)"),
}
#: Held to on a GPU only (H100, bf16): SD1.5 4x at 512 px, the encoder and two 2x steps.
GPU_TARGETS = {"fast_4x_at_512px_ms": ("<=", 25.0, "SD1.5 4x at 512 px (encoder + 2 steps), ms")}


def make_upscaler(device: str):
    from uplift_diffusers import UPLiFTLatentUpscaler

    torch.manual_seed(0)
    return UPLiFTLatentUpscaler().eval().to(device)


def make_vae(device: str, dtype: Optional[torch.dtype]):
    """The SD1.5-size VAE: float32, or ``dtype`` in channels_last."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD15_VAE_CONFIG).eval().to(device)
    return vae if dtype is None else vae.to(dtype=dtype, memory_format=torch.channels_last)


def uplift_call(model, side: int, steps: int, device: str) -> Callable:
    latents = torch.randn(1, 4, side // 8, side // 8, device=device)
    image = torch.rand(1, 3, side, side, device=device)
    return torch.no_grad()(lambda: model(latents, image, num_steps=steps))


def vae_call(vae, side: int, device: str) -> Callable:
    """Decodes random latents into a ``side`` x ``side`` image."""
    latents = torch.randn(1, 4, side // 8, side // 8, device=device, dtype=vae.dtype)
    return torch.no_grad()(lambda: vae.decode(latents))


def cross_attention_call(side: int, device: str, dtype: torch.dtype, width: int = 512, heads: int = 8) -> Callable:
    """A plain cross-attention upsampler: queries from the 2h x 2w output grid, keys and values from
    the h x w input tokens, q / k / v / output projections; quadratic in the number of tokens."""
    torch.manual_seed(0)
    proj = torch.nn.ModuleDict({k: torch.nn.Linear(width, width) for k in "qkvo"}).to(device=device, dtype=dtype)
    h = side // 8
    tokens = torch.randn(1, h * h, width, device=device, dtype=dtype)
    queries = torch.randn(1, 4 * h * h, width, device=device, dtype=dtype)

    def split(t):
        return t.view(1, -1, heads, width // heads).transpose(1, 2)

    @torch.no_grad()
    def call():
        out = F.scaled_dot_product_attention(split(proj["q"](queries)), split(proj["k"](tokens)), split(proj["v"](tokens)))
        return proj["o"](out.transpose(1, 2).reshape(1, -1, width))

    return call


def fast_upscaler(args):
    model = make_upscaler(args.device)
    state = apply_fast_inference(model, dtype=DTYPES[args.dtype], compile=not args.no_compile, compile_mode=args.compile_mode)
    return model, bool(state.compiled)


def run_paired(args, sides: List[int]) -> Dict:
    """The ratio targets, interleaved: one fast 2x step at each of ``sides`` and the fast VAE decode at twice each side."""
    model, compiled = fast_upscaler(args)
    vae = make_vae(args.device, DTYPES[args.dtype])
    sides = sorted(sides)
    calls = {}
    for side in sides:
        calls[f"uplift_{side}"] = uplift_call(model, side, 1, args.device)
        calls[f"vae_{2 * side}"] = vae_call(vae, 2 * side, args.device)
    walls, cpus = common.interleaved(calls, args.repeats, args.warmup, args.device)
    return dict(kind="paired", mode="fast", sides=sides, compiled=compiled, times_s=walls, cpu_times_s=cpus)


def measurements(args) -> List[Tuple[Dict, Callable, int, int]]:
    """``(row, function, repeats, warmup)`` of every uplift / vae / cross-attention measurement."""
    eager_repeats = args.eager_repeats or args.repeats
    out = []
    fast, compiled = fast_upscaler(args)
    # eager float32 and exact: the fast path's float32 mode, which evaluates the last encoder group
    # only on the pixels the steps read (the plain dense forward gives the same output, slower)
    eager = make_upscaler(args.device)
    apply_fast_inference(eager, dtype=torch.float32, compile=False, channels_last=False)
    vaes = {"fast": make_vae(args.device, DTYPES[args.dtype]), "eager": make_vae(args.device, None)}
    for side in sorted(args.sides):
        eager_ok = args.skip_eager_above is None or side <= args.skip_eager_above
        eager_vae_ok = args.skip_eager_vae_above is None or 2 * side <= args.skip_eager_vae_above
        for steps in sorted(args.steps):
            row = dict(kind="uplift", mode="fast", side=side, steps=steps, compiled=compiled)
            out.append((row, uplift_call(fast, side, steps, args.device), args.repeats, args.warmup))
        for steps in sorted(args.eager_steps or args.steps) if eager_ok else []:
            row = dict(kind="uplift", mode="eager", side=side, steps=steps, compiled=False)
            out.append((row, uplift_call(eager, side, steps, args.device), eager_repeats, args.warmup))
        for mode, dtype in (("fast", DTYPES[args.dtype]), ("eager", torch.float32)):
            if mode == "fast" or eager_vae_ok:
                out.append((dict(kind="vae", mode=mode, side=2 * side), vae_call(vaes[mode], 2 * side, args.device),
                            args.repeats if mode == "fast" else eager_repeats, args.warmup))
            if mode == "fast" or eager_ok:
                out.append((dict(kind="cross_attention", mode=mode, side=side), cross_attention_call(side, args.device, dtype),
                            args.repeats if mode == "fast" else eager_repeats, args.warmup))
    return out


def find(rows: List[Dict], **match) -> Optional[Dict]:
    return next((r for r in rows if "median_s" in r and all(r.get(k) == v for k, v in match.items())), None)


def ratios(rows: List[Dict], key: str = "median_s", paired: bool = True) -> Dict:
    """The headline ratios from the medians ``key`` (wall or CPU time) of the separate rows; with
    ``paired``, those the interleaved row measures come from it."""
    out = {}

    def step(side, mode="fast", steps=1):
        return find(rows, kind="uplift", mode=mode, side=side, steps=steps)

    for side in (256, 512):
        if step(side, "eager") and step(side):
            out[f"fast_speedup_2x_step_{side}px"] = round(step(side, "eager")[key] / step(side)[key], 2)
    if step(512, steps=2):
        out["fast_4x_at_512px_ms"] = round(step(512, steps=2)[key] * 1000, 1)
    if step(256) and step(512):
        out["fast_time_512_over_256"] = round(step(512)[key] / step(256)[key], 2)
    for side in sorted({r["side"] for r in rows if r.get("kind") == "uplift"}):
        for mode in ("eager", "fast"):
            vae = find(rows, kind="vae", mode=mode, side=2 * side)
            if step(side, mode) and vae:
                out[f"{mode}_2x_step_{side}px_over_vae_decode_{2 * side}px"] = round(step(side, mode)[key] / vae[key], 3)
    pair = next((r for r in rows if r.get("kind") == "paired"), None)
    if paired and pair:
        times = pair["cpu_times_s" if key == "median_cpu_s" else "times_s"]
        if "uplift_256" in times and "uplift_512" in times:
            out["fast_time_512_over_256"] = common.median_ratio(times["uplift_512"], times["uplift_256"], 2)
        for side in pair["sides"]:
            out[f"fast_2x_step_{side}px_over_vae_decode_{2 * side}px"] = common.median_ratio(times[f"uplift_{side}"], times[f"vae_{2 * side}"])
    return out


def check_targets(measured: Dict, gpu: bool) -> Dict:
    out = {}
    for key, (op, value, _) in {**TARGETS, **(GPU_TARGETS if gpu else {})}.items():
        if key in measured:
            got = measured[key]
            out[key] = {"target": f"{op} {value}", "measured": got, "met": got >= value if op == ">=" else got <= value}
    return out


def summarise(rows: List[Dict], meta: Dict) -> Dict:
    measured, measured_cpu = ratios(rows), ratios(rows, key="median_cpu_s")
    gpu = meta["device"].startswith("cuda")
    pair = next((r for r in rows if r.get("kind") == "paired"), None)
    return {
        "meta": meta,
        "ratios": measured,
        "targets": check_targets(measured, gpu),
        "ratios_from_cpu_time": measured_cpu,
        "ratios_unpaired": ratios(rows, paired=False),  # from medians of separate measurements, for comparison
        "paired": sorted(ratios([pair], paired=True)) if pair else [],
        "targets_from_cpu_time": check_targets(measured_cpu, gpu),
        "results": rows,
    }


def markdown(result: Dict) -> str:
    """The targets and the per-size timings as Markdown tables."""
    meta, rows = result["meta"], result["results"]
    labels = {key: label for key, (_, _, label) in {**TARGETS, **GPU_TARGETS}.items()}
    lines = [f"Device: {meta['device']}, {meta['threads']} threads, torch {meta['torch']}; fast mode: {meta['fast_mode']}.", ""]
    lines += ["| ratio (one run) | target | measured | met | from CPU time |", "|---|---|---|---|---|"]
    for key, target in result["targets"].items():
        label = labels[key] + (" (interleaved)" if key in result["paired"] else "")
        met = "yes" if target["met"] else "no"
        lines.append(f"| {label} | {target['target']} | {target['measured']} | {met} | {result['ratios_from_cpu_time'].get(key, '')} |")
    lines += ["", "| image side | latent tokens | UPLiFT 1 step fast | 2 steps fast | 1 step eager fp32 "
              "| VAE decode at 2x side, bf16 | eager fp32 | cross-attention, bf16 |", "|---|---|---|---|---|---|---|---|"]

    def cell(**match):
        r = find(rows, **match)
        return "-" if r is None else f"{r['median_s']:.3g} s / {r['peak_extra_mib']:.0f} MiB"

    for side in sorted({r["side"] for r in rows if r.get("kind") == "uplift"}):
        cells = [cell(kind="uplift", mode="fast", side=side, steps=1), cell(kind="uplift", mode="fast", side=side, steps=2),
                 cell(kind="uplift", mode="eager", side=side, steps=1), cell(kind="vae", mode="fast", side=2 * side),
                 cell(kind="vae", mode="eager", side=2 * side), cell(kind="cross_attention", mode="fast", side=side)]
        lines.append(f"| {side} | {(side // 8) ** 2} | " + " | ".join(cells) + " |")
    lines += ["", f"Each cell: median time / peak extra memory (peak memory: {meta['memory']})."]
    if result["paired"]:
        rounds = len(next(iter(next(r for r in rows if r.get("kind") == "paired")["times_s"].values())))
        unpaired = ", ".join(f"{key} {result['ratios_unpaired'][key]}" for key in result["paired"] if key in result["ratios_unpaired"])
        lines += ["", f"Ratios marked (interleaved): measured in one process, the step and the VAE decode at each side "
                  f"timed in turn, {rounds} rounds; the median of the per-round ratios. From the medians of the "
                  f"separate rows above instead (taken minutes apart): {unpaired or 'not measured'}."]
    return "\n".join(lines) + "\n"


def write(result: Dict, output: Path) -> Dict:
    common.write_results(output, result, markdown(result))
    print(f"wrote {output} and {output.with_suffix('.md')}")
    print(json.dumps({"ratios": result["ratios"], "targets": result["targets"]}, indent=2))
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 512, 768, 1024], help="image sides of the upscaler input (multiples of 8)")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="numbers of 2x steps")
    parser.add_argument("--eager-steps", type=int, nargs="+", default=None, help="numbers of steps run eagerly (default: --steps)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--eager-repeats", type=int, default=None, help="timed runs of the eager fp32 measurements (default: --repeats)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (compiling happens there)")
    parser.add_argument("--skip-eager-above", type=int, default=None, metavar="N", help="no eager fp32 runs for image sides above N px")
    parser.add_argument("--skip-eager-vae-above", type=int, default=None, metavar="N", help="no eager fp32 VAE decodes above N px output side")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of the fast mode")
    parser.add_argument("--no-compile", action="store_true", help="fast mode without torch.compile")
    parser.add_argument("--compile-mode", default=None, help='torch.compile mode, e.g. "max-autotune-no-cudagraphs"')
    parser.add_argument("--note", default="", help="free text stored in the JSON")
    parser.add_argument("--output", type=Path, default=None, help=f"JSON file to write, a .md beside it (default {RESULTS})")
    parser.add_argument("--from-json", type=Path, default=None, help="redo ratios, targets and table from a saved JSON (no measuring)")
    add_smoke_test_argument(parser, "check the installation: one short run of every row kind (64 px, 1 step, 1 repeat, no compile, "
                            "1 thread), results in a temporary folder unless --output is given; the times mean nothing")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.sides, args.steps, args.eager_steps, args.repeats, args.warmup, args.threads = [64], [1], None, 1, 0, 1
        args.no_compile, args.note = True, "--smoke-test: the times mean nothing"
        if args.output is None:
            args.output = Path(tempfile.mkdtemp(prefix="uplift-smoke-benchmark-upscaler-")) / "benchmark_upscaler.json"
    args.output = args.output or RESULTS
    bad = [side for side in args.sides if side < 64 or side % 8]
    if bad:
        parser.error(f"--sides: {bad[0]} is not a multiple of 8 of at least 64")
    if min(args.steps) < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--steps and --repeats must be >= 1, --warmup >= 0, --threads >= 1")
    return args


def main(argv=None) -> Dict:
    args = parse_args(argv)
    if args.from_json is not None:
        saved = read_json_file(args.from_json, "--from-json", "pass a JSON this script wrote.")
        return write(summarise(saved["results"], saved["meta"]), args.output)
    require_one_process("evaluation.benchmarks.benchmark_upscaler")
    torch.set_num_threads(args.threads)
    started = time.time()
    # the ratio targets compare 256 and 512 px; a run without them (the smoke test) pairs its smallest side
    rows = [run_paired(args, [side for side in args.sides if side in (256, 512)] or [min(args.sides)])]
    measured = measurements(args)
    for row, call, repeats, warmup in measured:
        print(f"measuring {row}", flush=True)
        row.update(common.timed(call, repeats, warmup, args.device), latent_tokens=(row["side"] // 8) ** 2)
    if not args.device.startswith("cuda"):
        common.return_freed_memory_to_the_system()
    for row, call, _, _ in measured:
        with common.PeakMemory(args.device) as memory:
            call()
        row["peak_extra_mib"] = round(memory.peak_extra / 2**20, 1)
        rows.append(row)
    compile_text = "no compile" if args.no_compile else f"torch.compile (mode={args.compile_mode}, freezing)"
    meta = {
        "torch": torch.__version__, "device": common.device_name(args.device), "threads": args.threads, "note": args.note,
        "fast_mode": f"{args.dtype}, channels_last, {compile_text}",
        "model": "UPLiFTLatentUpscaler() official size, random weights",
        "vae": f"diffusers AutoencoderKL, SD1.5 config, random weights, decode only; fast = {args.dtype} channels_last eager",
        "repeats": args.repeats, "warmup": args.warmup, "memory": MEMORY_METHOD,
        "command": "python -m evaluation.benchmarks.benchmark_upscaler " + " ".join(sys.argv[1:] if argv is None else argv),
        "wall_s": round(time.time() - started, 1),
    }
    return write(summarise(rows, meta), args.output)


if __name__ == "__main__":
    try:
        main()
    except (LaunchMismatchError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
