"""Text-to-image evaluation (the paper's Table 2): FID, patch-FID and CLIP score.

For every caption of ``--prompts`` (a caption set from ``prepare_coco.py`` /
``prepare_relaion.py``), Stable Diffusion (``--model``, its default scheduler, float32,
``--steps`` denoising steps, guidance ``--guidance-scale``) generates a ``--size`` image with
the seed ``--seed + i`` (i = the caption's position in the file), once; the rows of
``--methods`` are all made from that one generation:

* ``base512``: the base image (no upscaling);
* ``uplift``: ``StableDiffusionUPLiFTPipeline`` with ``--upscaler``: UPLiFT ``--upscale-factor``
  x, decode, colour correction against the base image;
* ``bilinear`` / ``nearest``: the same final latents, interpolated (``align_corners=False`` for
  bilinear; :mod:`evaluation.latent_baseline`), decoded and colour-corrected the same way.

Images are written to ``OUTPUT/images/<method>/<id>.png``; a rerun skips every caption whose
images all exist (resumable), and only writes missing files. The metrics are then computed
from the saved PNGs: FID between the generated images and the reference images
(``--reference-dir``/``file_name``, centre-cropped to a square and PIL-bicubic resized to the
generated size), patch-FID on the same random ``--patch-size`` crops of each generated /
reference pair (a row smaller than ``--patch-size``, e.g. ``base512``, uses crops of its own
size; ``patch_size`` in the results says which), and the CLIP score of each image with its
caption (``--clip-model``). Results: ``OUTPUT/results.json`` (layout in :mod:`evaluation.reports`) and ``OUTPUT/results.md``.

Scale out with ``accelerate launch --multi_gpu --num_processes N evaluation/eval_text_to_image.py ...``:
every process generates and scores a shard of the captions; metrics are gathered (on CPUs
use ``torchrun --nproc_per_node N``).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image

from evaluation.atomic_files import atomic_save_image
from evaluation.caption_sets import CaptionRow, read_caption_set
from evaluation.latent_baseline import LATENT_BASELINES, LatentInterpolationUpscaler, decode_and_correct
from evaluation.metric_setup import FEATURE_EXTRACTORS, build_clip_scorer, build_fid, build_patch_fid
from evaluation.metrics import DEFAULT_CLIP_MODEL
from evaluation.reports import top_level_metrics, write_report
from evaluation.sharding import gather_list, process_state, shard
from evaluation.reference_images import square_crop_resize
from uplift_diffusers.image_io import pil_to_tensor

METHODS = ("uplift", "bilinear", "nearest", "base512")
DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def parse_method_list(text: str) -> List[str]:
    """``"uplift,bilinear"`` -> ``["uplift", "bilinear"]`` (known names, no repeats)."""
    methods = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise ValueError(f"--methods must be a comma-separated subset of {','.join(METHODS)}, got {text!r}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods lists a method twice: {text!r}.")
    return methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate SD1.5 + latent upscaling (FID, patch-FID, CLIP): the paper's Table 2.")
    parser.add_argument("--prompts", required=True, help="caption set (.jsonl / .csv) from prepare_coco.py or prepare_relaion.py")
    parser.add_argument("--reference-dir", default=None, help="folder of the reference images named by file_name (needed for FID)")
    parser.add_argument("--output-dir", required=True, help="images/<method>/<id>.png, results.json and results.md go here")
    parser.add_argument("--model", default=DEFAULT_SD_MODEL, help=f"Stable Diffusion folder or Hub id (default {DEFAULT_SD_MODEL})")
    parser.add_argument("--upscaler", default=None,
                        help="UPLiFT model folder / Hub id / official .safetensors|.pth (default: the authors' SD1.5 model)")
    parser.add_argument("--upscaler-config", default=None, help="official YAML for an official checkpoint file")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"rows to produce (default {','.join(METHODS)})")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (the paper: 25 or 40)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--size", type=int, default=512, help="base image side (default 512)")
    parser.add_argument("--upscale-factor", type=int, default=2, choices=(2, 4, 8), help="latent upscaling factor (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="caption i is generated with seed + i")
    parser.add_argument("--batch-size", type=int, default=4, help="captions per pipeline call (per process)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N captions")
    parser.add_argument("--dataset-name", default=None, help="column label in the tables (default: the prompts file's folder name)")
    parser.add_argument("--no-fid", action="store_true", help="skip FID and patch-FID")
    parser.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help=f"CLIP model folder / Hub id (default {DEFAULT_CLIP_MODEL})")
    parser.add_argument("--patch-size", type=int, default=None, help="patch-FID crop side (default: half the upscaled side)")
    parser.add_argument("--num-patches", type=int, default=4, help="patch-FID crops per image (default 4)")
    parser.add_argument("--feature-extractor", choices=FEATURE_EXTRACTORS, default="inception",
                        help="FID features: 'inception' (default; eval extra) or 'tiny-random' (offline tests only)")
    parser.add_argument("--metrics-only", action="store_true", help="do not generate; score the images already in OUTPUT/images")
    parser.add_argument("--device", default=None, help="torch device (default: this process's accelerator, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _check_args(args) -> List[str]:
    methods = parse_method_list(args.methods)
    for name in ("steps", "size", "batch_size", "num_patches"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    if args.patch_size is not None and args.patch_size < 1:
        raise ValueError(f"--patch-size must be >= 1, got {args.patch_size}.")
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8 (the VAE factor), got {args.size}.")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    if not args.no_fid and args.reference_dir is None:
        raise ValueError("FID needs the real images: pass --reference-dir (the folder prepare_*.py wrote) or --no-fid.")
    if args.reference_dir is not None and not Path(args.reference_dir).expanduser().is_dir():
        raise FileNotFoundError(f"--reference-dir not found: {args.reference_dir!r}.")
    return methods


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def image_path(output_dir: Path, method: str, row: CaptionRow) -> Path:
    return output_dir / "images" / method / f"{row.id}.png"


def save_png(tensor: torch.Tensor, path: Path) -> None:
    """Save a ``3 x H x W`` tensor in [0, 1] as an 8-bit PNG, atomically (never a half-written file)."""
    array = (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    atomic_save_image(Image.fromarray(array, "RGB"), path, format="PNG")


def load_pipeline(args, methods: Sequence[str], device: torch.device):
    """``StableDiffusionUPLiFTPipeline`` from ``--model`` (float32, no safety checker) with the upscaler when needed."""
    from uplift_diffusers.cli import from_hub, import_text_to_image_pipeline, load_upscaler

    pipeline_class = import_text_to_image_pipeline()
    upscaler = None
    if "uplift" in methods:
        source = args.upscaler
        if source is not None and Path(source).expanduser().is_file():
            spec = SimpleNamespace(original_checkpoint=source, original_config=args.upscaler_config, upscaler=None)
        else:
            spec = SimpleNamespace(original_checkpoint=None, original_config=None, upscaler=source)
        upscaler = load_upscaler(spec, None).eval()
    pipe = from_hub(
        f"the Stable Diffusion model {args.model!r}",
        "--model DIR (a diffusers Stable Diffusion folder)",
        lambda: pipeline_class.from_pretrained(args.model, upscaler=upscaler, safety_checker=None, requires_safety_checker=False),
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_batch(pipe, rows: Sequence[CaptionRow], indices: Sequence[int], methods: Sequence[str], args) -> Dict[str, torch.Tensor]:
    """All requested rows for a batch of captions from one denoising run: ``{method: B x 3 x H x W in [0, 1]}``."""
    final = {}

    def keep_latents(pipeline, step, timestep, tensors):
        final["latents"] = tensors["latents"]  # after the last step: the latents the base image is decoded from
        return tensors

    factor = args.upscale_factor if "uplift" in methods else 1
    output = pipe(
        [row.caption for row in rows],
        height=args.size,
        width=args.size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=[torch.Generator().manual_seed(args.seed + index) for index in indices],
        upscale_factor=factor,
        color_correction=True,
        return_base_images=factor > 1,
        output_type="pt",
        callback_on_step_end=keep_latents,
        callback_on_step_end_tensor_inputs=["latents"],
    )
    base = (output.base_images if factor > 1 else output.images).float()
    images = {}
    if "uplift" in methods:
        images["uplift"] = output.images.float()
    if "base512" in methods:
        images["base512"] = base
    num_steps = int(math.log2(args.upscale_factor))
    for mode in LATENT_BASELINES:
        if mode in methods:
            unscaled = final["latents"] / pipe.vae.config.scaling_factor
            upscaled = LatentInterpolationUpscaler(mode)(unscaled, base, num_steps=num_steps).sample
            images[mode] = decode_and_correct(pipe.vae, upscaled, base)
    return images


def generate(args, rows: Sequence[CaptionRow], methods: Sequence[str], state, device) -> Dict[str, int]:
    """Generate the missing images of this process's shard; returns counts (this process)."""
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    local = shard(list(enumerate(rows)), state)
    todo = [(i, row) for i, row in local if not all(image_path(output_dir, m, row).is_file() for m in methods)]
    counts = {"generated": 0, "skipped": len(local) - len(todo), "files_written": 0}
    if not todo:
        return counts
    pipe = load_pipeline(args, methods, device)
    batches = [todo[i : i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
    for batch in tqdm(batches, desc="generating", disable=args.quiet or not state.is_main_process):
        images = generate_batch(pipe, [row for _, row in batch], [i for i, _ in batch], methods, args)
        for position, (_, row) in enumerate(batch):
            for method in methods:
                path = image_path(output_dir, method, row)
                if not path.is_file():
                    save_png(images[method][position], path)
                    counts["files_written"] += 1
        counts["generated"] += len(batch)
    return counts


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def load_reference(path: Path, size: int) -> torch.Tensor:
    """Reference image as ``1 x 3 x size x size`` (:func:`~evaluation.reference_images.square_crop_resize`)."""
    if not path.is_file():
        raise FileNotFoundError(f"reference image not found: {str(path)!r}; check --reference-dir and the caption set's file_name.")
    with Image.open(path) as handle:
        return pil_to_tensor(square_crop_resize(handle, size))


def load_generated(path: Path, size: int) -> torch.Tensor:
    if not path.is_file():
        raise FileNotFoundError(f"generated image missing: {str(path)!r}; run without --metrics-only to generate it.")
    with Image.open(path) as handle:
        image = handle.convert("RGB")
    if image.size != (size, size):
        raise ValueError(f"generated image {path} is {image.size}, expected {size} x {size}; it comes from other settings.")
    return pil_to_tensor(image)


def score(args, rows: Sequence[CaptionRow], methods: Sequence[str], state, device, feature_extractor=None, clip_scorer=None) -> Dict[str, Dict]:
    """FID / patch-FID / CLIP of every method over all captions (all processes)."""
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    local = shard(list(enumerate(rows)), state)
    extractor = feature_extractor if feature_extractor is not None else args.feature_extractor
    compute_fid = not args.no_fid
    if compute_fid and len(rows) < 2:
        raise ValueError(f"FID needs at least 2 images, the caption set gives {len(rows)}; add captions or pass --no-fid.")
    clip = None
    if not args.no_clip:
        clip = clip_scorer if clip_scorer is not None else build_clip_scorer(args.clip_model, device)
    reference_dir = Path(args.reference_dir).expanduser() if compute_fid else None
    results: Dict[str, Dict] = {}
    for method in methods:
        size = args.size if method == "base512" else args.size * args.upscale_factor
        patch = min(args.patch_size or (args.size * args.upscale_factor) // 2, size)
        fid = build_fid(extractor, device) if compute_fid else None
        patch_fid = build_patch_fid(extractor, device, patch, args.num_patches, args.seed + state.process_index) if compute_fid else None
        if clip is not None:
            clip.reset()
        batches = [local[i : i + args.batch_size] for i in range(0, len(local), args.batch_size)]
        for batch in tqdm(batches, desc=f"scoring {method}", disable=args.quiet or not state.is_main_process):
            generated = torch.cat([load_generated(image_path(output_dir, method, row), size) for _, row in batch]).to(device)
            if compute_fid:
                for _, row in batch:
                    if not row.file_name:
                        raise ValueError(f"caption {row.id!r} has no file_name (reference image); FID needs one per caption, or pass --no-fid.")
                real = torch.cat([load_reference(reference_dir / row.file_name, size) for _, row in batch]).to(device)
                fid.update(real, real=True)
                fid.update(generated, real=False)
                patch_fid.update(generated, real)
            if clip is not None:
                clip.update(generated, [row.caption for _, row in batch])
        entry = {"count": len(rows), "size": size}
        if compute_fid:
            entry.update(fid=fid.compute(), patch_fid=patch_fid.compute(), patch_size=patch)
        if clip is not None:
            entry["clip"] = clip.compute()
        results[method] = entry
    return results


def evaluate_text_to_image(args, feature_extractor=None, clip_scorer=None) -> Dict:
    """Generate (resumably) and score; returns the results dict (also written to OUTPUT/results.json).

    ``feature_extractor`` (an ``nn.Module``) overrides ``--feature-extractor``; ``clip_scorer`` (a
    :class:`~evaluation.metrics.CLIPScorer`) overrides ``--clip-model``.
    """
    methods = _check_args(args)
    rows = read_caption_set(args.prompts)
    if args.limit is not None:
        rows = rows[: args.limit]
    state = process_state()
    device = torch.device(args.device) if args.device else state.device
    counts = {"generated": 0, "skipped": 0, "files_written": 0}
    if not args.metrics_only:
        counts = generate(args, rows, methods, state, device)
    state.wait_for_everyone()
    totals = {key: sum(gather_list([value], state)) for key, value in counts.items()}
    metrics = score(args, rows, methods, state, device, feature_extractor, clip_scorer)
    settings = {
        "prompts": str(args.prompts),
        "reference_dir": args.reference_dir,
        "model": args.model,
        "upscaler": args.upscaler,
        "methods": list(methods),
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "size": args.size,
        "upscale_factor": args.upscale_factor,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "dtype": "float32",
        "fid": not args.no_fid,
        "num_patches": None if args.no_fid else args.num_patches,
        "clip_model": None if args.no_clip else (type(clip_scorer).__name__ if clip_scorer is not None else args.clip_model),
        "feature_extractor": type(feature_extractor).__name__ if feature_extractor is not None else args.feature_extractor,
        "num_processes": state.num_processes,
    }
    result = {
        "task": "text_to_image",
        "dataset": args.dataset_name or Path(args.prompts).expanduser().resolve().parent.name,
        "settings": settings,
        "count": len(rows),
        "generation": totals,
        "methods": metrics,
    }
    top_level_metrics(result, ("fid", "patch_fid", "clip"))
    if state.is_main_process:
        write_report(result, args.output_dir)
    state.wait_for_everyone()
    return result


def main(argv: Optional[Sequence[str]] = None, feature_extractor=None, clip_scorer=None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    from uplift_diffusers.cli import CLIError

    args = build_parser().parse_args(argv)
    try:
        result = evaluate_text_to_image(args, feature_extractor=feature_extractor, clip_scorer=clip_scorer)
    except (ValueError, FileNotFoundError, CLIError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if process_state().is_main_process:
        generation = result["generation"]
        print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
        print(
            f"{result['count']} captions: {generation['generated']} generated, {generation['skipped']} already done; "
            f"results in {Path(args.output_dir) / 'results.json'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
