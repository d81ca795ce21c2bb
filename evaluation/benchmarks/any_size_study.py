"""Any output size: which way of reaching a factor that is not a power of two is best.
Command: ``docs/evaluation.md``; the recorded run is ``evaluation/results/any_size_study.{json,md}``.

Every ``upscale_method`` of the super-resolution pipeline runs with colour correction and no
back-projection (the paper's output; back-projection after it is the same for every candidate),
next to PIL bicubic. The default ``--hr-size 192`` makes the LR sides 128, 64 and 32 at 1.5x, 3x and 6x.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from evaluation.arguments import attempt, check_at_least, load_upscaler, load_vae
from evaluation.benchmarks import common
from evaluation.metrics.image_metrics import ssim
from evaluation.sharding import require_one_process
from evaluation.smoke import add_smoke_test_argument, save_smoke_models, use_one_thread, write_smoke_images
from evaluation.sr_protocol import SRBatch, SRPairs, bicubic_upscale, psnr, score_super_resolution
from uplift_diffusers import UPLiFTSuperResolutionPipeline
from uplift_diffusers.image_processor import list_images
from uplift_diffusers.pipelines.upscale_decode import DEFAULT_UPSCALE_METHOD, UPSCALE_METHODS

BICUBIC = "bicubic"
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DIR = Path(os.environ.get("UPLIFT_SHARED_DIR", REPO_ROOT.parent / "shared"))

#: One line per candidate for the table.
METHOD_DESCRIPTIONS = {
    "auto": "downsample_image, but no more 2x steps than the model was trained for (then upsample_image)",
    "downsample_image": "ceil(log2 f) 2x steps, then antialiased bicubic downsampling of the decoded image",
    "resample_latents": "ceil(log2 f) 2x steps, then antialiased bicubic resampling of the latents",
    "upsample_image": "floor(log2 f) 2x steps, then bicubic upsampling of the decoded image",
    "bilinear_latents": "the authors' choice: ceil(log2 f) 2x steps, then bilinear resize of the latents",
    BICUBIC: "PIL bicubic in pixel space",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO_ROOT / "examples" / "models" / "uplift-taef2-bsds500"),
                        help="the UPLiFT model (folder, Hub id or the authors' file; default: the example TAEF2 model)")
    parser.add_argument("--vae", default=str(SHARED_DIR / "models" / "taef2"), help="its VAE (folder or Hub id; default ../shared/models/taef2)")
    parser.add_argument("--data", default=str(SHARED_DIR / "data" / "bsds500" / "test"),
                        help="folder of test images (default: BSDS500 test, ../shared/data/bsds500/test)")
    parser.add_argument("--output", default=None, help="JSON results, the table beside it as .md (default evaluation/results/any_size_study.json; "
                        "with --smoke-test a temporary folder)")
    add_smoke_test_argument(parser)
    parser.add_argument("--factors", type=float, nargs="+", default=[1.5, 3.0, 6.0])
    parser.add_argument("--hr-size", type=int, default=192, help="HR centre crop side; hr-size / factor must be an integer")
    parser.add_argument("--num-images", type=int, default=None, help="the first N images (sorted by name); default all")
    parser.add_argument("--methods", nargs="+", default=list(UPSCALE_METHODS), choices=list(UPSCALE_METHODS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the upscaler's noise channels")
    return parser


def prepare(args):
    """Check the one-process launch, apply ``--smoke-test`` (the tiny upscaler and KL VAE, two
    synthetic 96 px images: LR 64, 32 and 16 px), check the flags and return ``(pipeline, image files)``."""
    require_one_process("evaluation.benchmarks.any_size_study")
    if args.smoke_test:
        use_one_thread()
        args.output = args.output or str(Path(tempfile.mkdtemp(prefix="uplift-smoke-any_size_study-")) / "any_size_study.json")
        inputs = Path(args.output).parent / "smoke-inputs"
        models = save_smoke_models(inputs, upscaler=True, vae=True)
        write_smoke_images(inputs / "images", count=2, size=96)
        args.model, args.vae, args.data = models["upscaler"], models["vae"], str(inputs / "images")
        args.num_images, args.hr_size = 2, 96
    args.output = args.output or str(REPO_ROOT / "evaluation" / "results" / "any_size_study.json")
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


def lr_sides(args) -> List[int]:
    """The LR side of every factor; ValueError (one line, naming the flag) for bad values."""
    sides = []
    for factor in args.factors:
        lr = args.hr_size / factor
        if factor < 1 or abs(lr - round(lr)) > 1e-9:
            raise ValueError(f"--factors: {factor:g} must be >= 1 and divide --hr-size {args.hr_size} into an integer LR side.")
        sides.append(int(round(lr)))
    check_at_least(args, {"hr_size": 1, "batch_size": 1, "threads": 1})
    return sides


def study(pipe, files: Sequence[Path], args, lr_sides: Sequence[int]) -> List[Dict]:
    """One row per (factor, method): mean PSNR / SSIM and seconds per image."""
    rows = []
    for factor, lr_side in zip(args.factors, lr_sides):

        def uplift(method: str):
            def run(batch: SRBatch) -> torch.Tensor:
                pipe.upscale_method = method
                generators = [torch.Generator().manual_seed(args.seed + index) for index in batch.indices]
                return pipe(batch.lr, upscale_factor=factor, generator=generators, output_type="pt", back_projection_steps=0).images

            return run

        candidates = {method: uplift(method) for method in args.methods}
        size = (args.hr_size, args.hr_size)
        candidates[BICUBIC] = lambda batch: torch.cat([bicubic_upscale(lr, size) for lr in batch.lr_images])
        pairs = SRPairs(files, hr_size=args.hr_size, lr_size=lr_side, batch_size=args.batch_size)
        for name, score in score_super_resolution(candidates, pairs, metrics={"psnr": psnr, "ssim": ssim}).items():
            rows.append({"factor": factor, "lr_size": lr_side, "method": name, "psnr": score.mean("psnr"), "ssim": score.mean("ssim"),
                         "seconds_per_image": score.seconds / score.count, "images": score.count})
            print(f"{factor:g}x {name:>18}: PSNR {rows[-1]['psnr']:.3f}  SSIM {rows[-1]['ssim']:.4f}", file=sys.stderr)
    return rows


def best_methods(rows: Sequence[Dict], methods: Sequence[str]) -> Dict[str, object]:
    """Per factor the UPLiFT method with the highest PSNR, and the method with the best mean PSNR
    over the factors (ties: the best mean SSIM)."""
    factors = sorted({row["factor"] for row in rows})
    per_factor = {}
    for factor in factors:
        candidates = [row for row in rows if row["factor"] == factor and row["method"] in methods]
        per_factor[f"{factor:g}"] = max(candidates, key=lambda row: (row["psnr"], row["ssim"]))["method"]

    def mean(method: str, metric: str) -> float:
        values = [row[metric] for row in rows if row["method"] == method]
        return sum(values) / len(values)

    overall = max(methods, key=lambda method: (mean(method, "psnr"), mean(method, "ssim")))
    return {"per_factor": per_factor, "overall": overall}


def markdown_table(rows: Sequence[Dict], config: Dict, best: Dict) -> str:
    factors = sorted({row["factor"] for row in rows})
    methods = list(dict.fromkeys(row["method"] for row in rows))
    value = {(row["method"], row["factor"]): row for row in rows}
    lr = {row["factor"]: row["lr_size"] for row in rows}
    header = "| Method | " + " | ".join(f"{f:g}x ({lr[f]} -> {config['hr_size']}) PSNR / SSIM" for f in factors) + " |"
    lines = [
        f"Any output size: {config['images']} BSDS500 test images (the first {config['images']} by name), "
        f"centre {config['hr_size']} px crops, LR = PIL bilinear; model `{config['model']}`, VAE `{config['vae']}`; "
        f"{config['threads']} CPU thread(s).",
        "",
        header,
        "|---|" + "---:|" * len(factors),
    ]
    for method in methods:
        cells = []
        for factor in factors:
            row = value[(method, factor)]
            text = f"{row['psnr']:.2f} / {row['ssim']:.4f}"
            cells.append(f"**{text}**" if best["per_factor"].get(f"{factor:g}") == method else text)
        lines.append(f"| `{method}`: {METHOD_DESCRIPTIONS.get(method, method)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Bold: the best UPLiFT method per factor. Best over the factors (mean PSNR): `{best['overall']}`; "
        f"the pipelines' default (`DEFAULT_UPSCALE_METHOD`) is `{config['default_method']}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    prepared, status = attempt(lambda: prepare(args))
    if status:
        return status
    pipe, files = prepared
    try:
        sides = lr_sides(args)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with torch.no_grad():
        rows = study(pipe, files, args, sides)
    best = best_methods(rows, args.methods)

    def relative(path):
        return os.path.relpath(path, REPO_ROOT) if Path(path).exists() and not args.smoke_test else str(path)

    config = {"model": relative(args.model), "vae": relative(args.vae), "data": relative(args.data), "images": len(files),
              "hr_size": args.hr_size, "factors": args.factors, "threads": args.threads, "seed": args.seed,
              "default_method": DEFAULT_UPSCALE_METHOD, "seconds_total": round(time.perf_counter() - start, 1),
              "smoke_test": args.smoke_test, "torch": torch.__version__, "machine": platform.machine()}
    common.write_results(args.output, {"config": config, "best": best, "rows": rows}, markdown_table(rows, config, best))
    print(markdown_table(rows, config, best))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
