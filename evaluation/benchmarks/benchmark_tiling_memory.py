"""Peak memory and closeness of tiled UPLiFT super-resolution.
Command: ``docs/evaluation.md``; the recorded runs are ``evaluation/results/tiling_memory.{json,md}``
(a 1024 x 768 photo) and ``evaluation/results/tiling_memory_sizes.{json,md}`` (1024, 2048 and
4096 px outputs: ``--sizes 256x256 512x512 1024x1024``).

The job: a photo (``--image``, PIL bicubic-resized to each of ``--sizes``, default 1024 x 768)
upscaled 4x by :class:`~uplift_diffusers.UPLiFTSuperResolutionPipeline`, as
``uplift-diffusers upscale --scale 4`` does. Every setting of ``--settings`` (``auto``: the default
settings, which tile by themselves above the memory budget; ``untiled``: never tiled,
``max_memory=inf``; ``tiled``: ``enable_tiling()``; ``tiled:T:O``: ``enable_tiling(tile_size=T,
overlap=O)``) runs in a FRESH one-thread subprocess so that its peak resident memory
(``ru_maxrss``, models and libraries included) is its own. Closeness: PSNR and the largest pixel
difference (of 255) of each output against the untiled one of its size, where that ran.
``--reuse`` takes a setting's earlier output and numbers from ``--work-dir`` (the untiled runs
of large outputs take minutes and ~10 GB: run them once).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from evaluation.benchmarks import common
from evaluation.sharding import require_one_process
from evaluation.smoke import add_smoke_test_argument, save_smoke_models, write_smoke_images

DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "results" / "tiling_memory.json"
#: The bounds the tiled job is held to: its peak RSS, and PSNR(tiled, untiled).
RSS_BOUND_GB = 3.0
PSNR_BOUND_DB = 35.0
_SEED = 0


# ============================================================================== one setting (subprocess)
def parse_setting(text: str) -> Optional[Dict[str, int]]:
    """``"untiled"`` / ``"auto"`` -> None; ``"tiled"`` -> {} (the defaults); ``"tiled:T:O"`` -> tile_size / overlap."""
    if text in ("untiled", "auto"):
        return None
    parts = text.split(":")
    if parts[0] != "tiled" or len(parts) not in (1, 3) or not all(p.isdigit() for p in parts[1:]):
        raise ValueError(f"--settings: {text!r} is not 'auto', 'untiled', 'tiled' or 'tiled:TILE_SIZE:OVERLAP' (e.g. tiled:64:16).")
    return {} if len(parts) == 1 else {"tile_size": int(parts[1]), "overlap": int(parts[2])}


def run_worker(args) -> Dict:
    """Load the models, upscale ``args.input`` once with ``args.setting``, save the 8-bit output;
    returns the seconds and the peak RSS of this process."""
    import torch

    torch.set_num_threads(1)
    from evaluation.arguments import load_upscaler, load_vae
    from uplift_diffusers import UPLiFTSuperResolutionPipeline
    from uplift_diffusers.pipelines.upscale_decode import plan_upscale
    from uplift_diffusers.utils.memory import DEFAULT_MAX_MEMORY

    tiling = parse_setting(args.setting)
    pipe = UPLiFTSuperResolutionPipeline(vae=load_vae(args.vae), upscaler=load_upscaler(args.upscaler))
    pipe.set_progress_bar_config(disable=True)
    if tiling is not None:
        pipe.enable_tiling(**tiling)
    max_memory = math.inf if args.setting == "untiled" else DEFAULT_MAX_MEMORY
    image = Image.open(args.input).convert("RGB")
    output_size = (round(args.scale * image.height), round(args.scale * image.width))
    used_tiling, _ = plan_upscale(pipe.upscaler, pipe.vae, 1, (image.height, image.width), output_size,
                                  pipe.upscale_method, max_memory, pipe.tiling_settings)
    start = time.perf_counter()
    out = pipe(image, upscale_factor=args.scale, generator=torch.Generator().manual_seed(_SEED), output_type="pil",
               max_memory=max_memory).images[0]
    seconds = time.perf_counter() - start
    out.save(args.result)
    return {
        "setting": args.setting, "tiling": tiling, "tiles_used": used_tiling, "input_size": [image.width, image.height],
        "seconds": round(seconds, 1), "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3),
        "output_size": list(out.size),
    }


# ============================================================================== the driver
def make_photo(source: Path, size, path: Path) -> Path:
    """The benchmark's input: ``source`` resized to ``size`` (width, height), PIL bicubic."""
    Image.open(source).convert("RGB").resize(tuple(size), Image.BICUBIC).save(path)
    return path


def run_setting(setting: str, photo: Path, work_dir: Path, args) -> Dict:
    """One setting in a fresh subprocess (one thread); returns its numbers and output path."""
    result = work_dir / f"{photo.stem}-{setting.replace(':', '-')}.png"
    stats = result.with_suffix(".json")
    if args.reuse and result.exists() and stats.exists():
        return json.loads(stats.read_text())
    command = [
        sys.executable, "-m", "evaluation.benchmarks.benchmark_tiling_memory", "--worker",
        "--setting", setting, "--input", str(photo), "--result", str(result), "--stats", str(stats),
        "--upscaler", args.upscaler, "--vae", args.vae, "--scale", str(args.scale),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"running {setting} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True, env=env, cwd=Path(__file__).resolve().parents[2])
    row = json.loads(stats.read_text())
    row["result"] = str(result)
    stats.write_text(json.dumps(row, indent=2) + "\n")
    return row


def closeness(path: str, reference: str) -> Dict:
    """PSNR (dB, data range 1) and largest difference (of 255) of two 8-bit images."""
    import torch

    from evaluation.sr_protocol import psnr

    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (path, reference))
    ta, tb = (torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255 for x in (a, b))
    return {
        "psnr_vs_untiled_db": round(float(psnr(ta, tb)[0]), 2),
        "max_abs_diff_255": int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()),
    }


def markdown(rows: List[Dict], meta: Dict) -> str:
    lines = [
        f"Peak RSS and closeness of tiled UPLiFT super-resolution: {meta['scale']}x, upscaler `{meta['upscaler']}`, "
        f"VAE `{meta['vae']}`, one CPU thread, each setting in a fresh process "
        f"(`python -m evaluation.benchmarks.benchmark_tiling_memory {meta['command']}`). "
        "auto: the default settings (tiles: those it chose; - untiled).",
        "",
        "| input | output | setting | tiles | peak RSS (GB) | time (s) | PSNR vs untiled (dB) | max diff (/255) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        psnr_text = "-" if row.get("psnr_vs_untiled_db") is None else f"{row['psnr_vs_untiled_db']:.2f}"
        diff = "-" if row.get("max_abs_diff_255") is None else str(row["max_abs_diff_255"])
        tiles = "-" if not row.get("tiles_used") else "x".join(map(str, row["tiles_used"]))
        sizes = "| " + " | ".join("x".join(map(str, row[key])) for key in ("input_size", "output_size"))
        lines.append(f"{sizes} | {row['setting']} | {tiles} | {row['peak_rss_gb']:.2f} | {row['seconds']:.0f} | {psnr_text} | {diff} |")
    lines += ["", f"Bounds: tiled peak RSS <= {RSS_BOUND_GB} GB, PSNR(tiled, untiled) >= {PSNR_BOUND_DB} dB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="untiled,tiled", help="comma-separated: auto, untiled, tiled, tiled:TILE:OVERLAP (latents)")
    parser.add_argument("--upscaler", default="examples/models/uplift-taef2-bsds500/upscaler")
    parser.add_argument("--vae", default="../shared/models/taef2")
    parser.add_argument("--image", default="../shared/data/bsds500/test/100039.jpg", help="the photo to resize to --sizes")
    parser.add_argument("--sizes", nargs="+", default=["1024x768"], help="WIDTHxHEIGHT of each input photo")
    parser.add_argument("--scale", type=float, default=4)
    parser.add_argument("--work-dir", default=None, help="outputs and per-setting numbers (default: a new temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse the outputs and numbers of settings already in --work-dir")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="results JSON (and .md beside it)")
    add_smoke_test_argument(parser, help="tiny random models, 128x96 at 4x, 16-latent tiles (seconds)")
    # the subprocess of one setting
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        row = run_worker(args)
        Path(args.stats).write_text(json.dumps(row, indent=2) + "\n")
        return row

    require_one_process("evaluation.benchmarks.benchmark_tiling_memory")
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for setting in settings:
        parse_setting(setting)  # errors before any work
    try:
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    except ValueError:
        raise SystemExit(f"--sizes must be WIDTHxHEIGHT, e.g. 1024x768, got {args.sizes!r}.") from None
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="uplift-tiling-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    source = Path(args.image)
    if args.smoke_test:
        models = save_smoke_models(work_dir / "smoke-inputs", upscaler=True, vae=True)
        args.upscaler, args.vae = models["upscaler"], models["vae"]
        source = write_smoke_images(work_dir, 1, 64)[0]
        sizes = [(128, 96)]
        settings = ["untiled", "tiled:8:2"]
        if args.output == str(DEFAULT_OUTPUT):
            args.output = str(work_dir / "tiling_memory.json")
    elif not source.is_file():
        raise SystemExit(f"--image {source} does not exist; pass a photo (e.g. a BSDS500 test image).")
    named = {"upscaler": args.upscaler, "vae": args.vae}  # as given, for the results
    # the settings run from the repository root: local model paths made absolute
    args.upscaler, args.vae = (str(Path(p).resolve()) if Path(p).exists() else p for p in (args.upscaler, args.vae))
    rows = []
    for width, height in sizes:
        photo = make_photo(source, (width, height), work_dir / f"input-{width}x{height}.png")
        size_rows = [run_setting(setting, photo, work_dir, args) for setting in settings]
        reference = next((row for row in size_rows if row["setting"] == "untiled"), None)
        for row in size_rows:
            if reference is not None and row is not reference:
                row.update(closeness(row["result"], reference["result"]))
        rows += size_rows
    command = " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "input": str(source), "input_sizes": [list(size) for size in sizes], "scale": args.scale, **named, "command": command,
        "threads": 1, "seed": _SEED, "platform": platform.platform(), "python": platform.python_version(),
        "bounds": {"peak_rss_gb": RSS_BOUND_GB, "psnr_db": PSNR_BOUND_DB}, "smoke_test": args.smoke_test,
    }
    result = {"meta": meta, "rows": [{k: v for k, v in row.items() if k != "result"} for row in rows]}
    output = Path(args.output)
    common.write_results(output, result, markdown(rows, meta))
    print(markdown(rows, meta))
    print(f"wrote {output} and {output.with_suffix('.md')} (outputs in {work_dir})", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
