"""Text-to-image evaluation (the paper's Tables 2-3): FID, patch-FID and CLIP score.
Commands, rows and metrics: ``docs/evaluation.md``.

The paper's SDXL reference rows are generated natively at ``--sdxl-size`` with the same seeds
and the paper's fixed step counts: ``sdxl`` (50 steps, guidance 5.0, the pipeline's default)
and ``lcm-lora-sdxl`` (``--lcm-lora`` fused, ``LCMScheduler``, 4 steps, guidance 1.0: the
LCM-LoRA model card asks for 1.0-2.0, and diffusers disables guidance at <= 1; needs ``peft``).
A row smaller than ``--patch-size`` uses patches of its own size.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from accelerate.utils import gather_object
from PIL import Image

from evaluation.arguments import load_upscaler, loading
from evaluation.data.caption_sets import CaptionRow, read_caption_set, write_caption_set
from evaluation.data.reference_images import square_crop_resize
from evaluation.metrics.metric_setup import add_clip_arguments, build_clip_scorer, build_fid, build_patch_fid, fid_results, metrics_record
from evaluation.sharding import process_state, shard
from evaluation.smoke import prepare_smoke_dir, save_smoke_models, write_smoke_images
from evaluation.tasks import common
from evaluation.tasks.latent_baseline import LATENT_BASELINES, LatentInterpolationUpscaler, decode_and_correct
from uplift_diffusers.constants import SD15_MODEL_ID
from uplift_diffusers.image_processor import pil_to_tensor
from uplift_diffusers.utils.atomic_files import atomic_save_image

#: The SD1.5 rows: one generation per caption, upscaled (or not) in latent space. The default.
SD15_METHODS = ("uplift", "bilinear", "nearest", "base512")


@dataclass(frozen=True)
class NativeRow:
    """A reference row of the paper generated natively at SDXL's size: its fixed steps and guidance,
    and whether ``--lcm-lora`` is fused into the model and sampled with ``LCMScheduler``."""

    steps: int
    guidance_scale: float
    lcm_lora: bool


#: The paper's SDXL reference rows (the module docstring gives the settings' sources): SDXL base
#: and the LCM-LoRA for SDXL.
SDXL_MODEL_ID = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_LCM_LORA_ID = "latent-consistency/lcm-lora-sdxl"
NATIVE_ROWS = {
    "sdxl": NativeRow(steps=50, guidance_scale=5.0, lcm_lora=False),
    "lcm-lora-sdxl": NativeRow(steps=4, guidance_scale=1.0, lcm_lora=True),
}
SDXL_NATIVE_SIZE = 1024
METHODS = SD15_METHODS + tuple(NATIVE_ROWS)


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
    parser = argparse.ArgumentParser(description="Evaluate SD1.5 + latent upscaling (FID, patch-FID, CLIP): the paper's Tables 2-3.")
    parser.add_argument("--prompts", default=None, help="caption set (.jsonl) from evaluation.data.prepare_coco or evaluation.data.prepare_relaion")
    parser.add_argument("--reference-dir", default=None, help="folder of the reference images named by file_name (needed for FID)")
    parser.add_argument("--model", default=SD15_MODEL_ID, help=f"Stable Diffusion folder or Hub id (default {SD15_MODEL_ID})")
    parser.add_argument("--upscaler", default=None,
                        help="UPLiFT model folder / Hub id / official .safetensors|.pth (default: the authors' SD1.5 model)")
    parser.add_argument("--methods", default=",".join(SD15_METHODS),
                        help=f"rows to produce, a subset of {','.join(METHODS)} (default {','.join(SD15_METHODS)})")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (the paper: 25 or 40)")
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--size", type=int, default=512, help="base image side (default 512)")
    parser.add_argument("--upscale-factor", type=int, default=2, choices=(2, 4, 8), help="latent upscaling factor (default 2)")
    parser.add_argument("--sdxl-model", default=SDXL_MODEL_ID, help=f"SDXL folder or Hub id of the sdxl rows (default {SDXL_MODEL_ID})")
    parser.add_argument("--lcm-lora", default=SDXL_LCM_LORA_ID, help=f"LCM-LoRA folder or Hub id of lcm-lora-sdxl (default {SDXL_LCM_LORA_ID})")
    parser.add_argument("--sdxl-size", type=int, default=SDXL_NATIVE_SIZE,
                        help=f"image side of the sdxl rows: the model's native size (default {SDXL_NATIVE_SIZE})")
    common.add_common_arguments(parser)
    add_clip_arguments(parser)
    parser.add_argument("--metrics-only", action="store_true", help="do not generate; score the images already in OUTPUT/images")
    return parser


def _check_args(args) -> List[str]:
    common.check_required(args, ("--prompts", "--output-dir"), {"steps": 1, "size": 1})
    methods = parse_method_list(args.methods)
    if args.size % 8:
        raise ValueError(f"--size must be a multiple of 8 (the VAE factor), got {args.size}.")
    if any(m in NATIVE_ROWS for m in methods) and (args.sdxl_size < 8 or args.sdxl_size % 8):
        raise ValueError(f"--sdxl-size must be a positive multiple of 8 (the VAE factor), got {args.sdxl_size}.")
    if not args.metrics_only and any(NATIVE_ROWS[m].lcm_lora for m in methods if m in NATIVE_ROWS) and importlib.util.find_spec("peft") is None:
        raise ValueError("the lcm-lora-sdxl row loads a LoRA, which needs the peft package: pip install peft (in the eval extra).")
    if not args.no_fid and args.reference_dir is None:
        raise ValueError("FID needs the real images: pass --reference-dir (the folder evaluation.data.prepare_* wrote) or --no-fid.")
    if args.reference_dir is not None and not Path(args.reference_dir).expanduser().is_dir():
        raise FileNotFoundError(f"--reference-dir not found: {args.reference_dir!r}.")
    return methods


def image_path(output_dir: Path, method: str, row: CaptionRow) -> Path:
    return output_dir / "images" / method / f"{row.id}.png"


def check_baseline_images(args, methods: Sequence[str], state) -> None:
    """Never mix baseline images of both colour-correction settings: ``images/<row>/color_correction.json``
    records the setting of the bilinear / nearest images."""
    for method in [m for m in methods if m in LATENT_BASELINES]:
        folder = Path(args.output_dir) / "images" / method
        settings = {"color_correction": common.color_correction(method, args.color_correct_baselines)}
        write = state.is_main_process and not args.metrics_only
        common.check_settings_record(folder, "color_correction.json", settings, f"{method} images", "*.png", write)
    state.wait_for_everyone()


def method_size(args, method: str) -> int:
    """Image side of a row: the base size, the upscaled size, or SDXL's native size."""
    if method in NATIVE_ROWS:
        return args.sdxl_size
    return args.size if method == "base512" else args.size * args.upscale_factor


def save_png(tensor: torch.Tensor, path: Path) -> None:
    """A ``3 x H x W`` tensor in [0, 1] as an 8-bit PNG, written atomically (never a half-written file)."""
    array = (tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    atomic_save_image(Image.fromarray(array, "RGB"), path, format="PNG")


def load_pipeline(args, methods: Sequence[str], device: torch.device):
    """``StableDiffusionUPLiFTPipeline`` from ``--model``: float32, no safety checker."""
    from uplift_diffusers import StableDiffusionUPLiFTPipeline

    upscaler = load_upscaler(args.upscaler, args.upscaler_config) if "uplift" in methods else None
    pipe = loading(
        "the Stable Diffusion model", args.model, "--model DIR",
        lambda: StableDiffusionUPLiFTPipeline.from_pretrained(args.model, upscaler=upscaler, safety_checker=None, requires_safety_checker=False),
    )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_batch(pipe, rows: Sequence[CaptionRow], indices: Sequence[int], methods: Sequence[str], args) -> Dict[str, torch.Tensor]:
    """All requested SD1.5 rows for a batch of captions from one denoising run: ``{method: B x 3 x H x W in [0, 1]}``."""
    final = {}

    def keep_latents(_pipeline, _step, _timestep, tensors):
        final["latents"] = tensors["latents"]  # after the last step: the latents the base image is decoded from
        return tensors

    factor = args.upscale_factor if "uplift" in methods else 1
    output = pipe(
        [row.caption for row in rows], height=args.size, width=args.size, num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale, generator=common.generators(args.seed, indices), upscale_factor=factor,
        color_correction=True, return_base_images=factor > 1, output_type="pt",
        callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"],
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
            images[mode] = decode_and_correct(pipe.vae, upscaled, base, color_correction=common.color_correction(mode, args.color_correct_baselines))
    return images


def load_sdxl_pipeline(args, device: torch.device):
    """``StableDiffusionXLPipeline`` from ``--sdxl-model``: float32, its default scheduler, no watermark,
    at its native size (ValueError for another ``--sdxl-size``)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = loading(
        "the SDXL model", args.sdxl_model, "--sdxl-model DIR",
        lambda: StableDiffusionXLPipeline.from_pretrained(args.sdxl_model, add_watermarker=False),  # float32: the default
    )
    native = pipe.default_sample_size * pipe.vae_scale_factor
    if args.sdxl_size != native:
        raise ValueError(
            f"--sdxl-size {args.sdxl_size} is not the native size of --sdxl-model {args.sdxl_model!r} ({native} px); "
            f"the SDXL rows are generated natively: pass --sdxl-size {native}."
        )
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_lcm_lora(pipe, args) -> None:
    """Load ``--lcm-lora`` into ``pipe``'s UNet, fuse it and sample with ``LCMScheduler`` (the model card's recipe)."""
    from diffusers import LCMScheduler

    loading(
        "the LCM-LoRA", args.lcm_lora, "--lcm-lora DIR (a folder holding pytorch_lora_weights.safetensors)",
        lambda: pipe.load_lora_weights(args.lcm_lora),
    )
    pipe.fuse_lora()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def generate_native_batch(pipe, rows: Sequence[CaptionRow], indices: Sequence[int], row: NativeRow, args) -> torch.Tensor:
    """One SDXL row for a batch of captions: ``B x 3 x S x S`` in [0, 1], S = ``--sdxl-size``."""
    output = pipe([caption.caption for caption in rows], height=args.sdxl_size, width=args.sdxl_size, num_inference_steps=row.steps,
                  guidance_scale=row.guidance_scale, generator=common.generators(args.seed, indices), output_type="pt")
    return output.images.float()


def _missing(output_dir: Path, local, methods: Sequence[str]):
    """The (index, caption) pairs of ``local`` lacking an image of one of ``methods``."""
    return [(i, row) for i, row in local if not all(image_path(output_dir, m, row).is_file() for m in methods)]


def _generate_and_save(todo, methods: Sequence[str], make_images, args, state, output_dir: Path, desc: str) -> int:
    """Run ``make_images(batch) -> {method: images}`` over ``todo`` in batches; save the missing PNGs; returns files written."""
    from tqdm.auto import tqdm

    written = 0
    for batch in tqdm(common.batches(todo, args.batch_size), desc=desc, disable=args.quiet or not state.is_main_process):
        images = make_images(batch)
        for position, (_, row) in enumerate(batch):
            for method in methods:
                path = image_path(output_dir, method, row)
                if not path.is_file():
                    save_png(images[method][position], path)
                    written += 1
    return written


def generate(args, rows: Sequence[CaptionRow], methods: Sequence[str], state, device) -> Dict[str, int]:
    """Generate the missing images of this process's shard; returns counts (this process). Each SDXL
    row is its own run of one SDXL pipeline (``sdxl`` first: ``lcm-lora-sdxl`` then fuses the LoRA into it)."""
    output_dir = Path(args.output_dir)
    local = shard(list(enumerate(rows)), state)
    pending = _missing(output_dir, local, methods)
    counts = {"generated": len(pending), "skipped": len(local) - len(pending), "files_written": 0}
    sd15 = [m for m in methods if m in SD15_METHODS]
    todo = _missing(output_dir, local, sd15)
    if sd15 and todo:
        pipe = load_pipeline(args, sd15, device)

        def sd15_images(batch):
            return generate_batch(pipe, [row for _, row in batch], [i for i, _ in batch], sd15, args)

        counts["files_written"] += _generate_and_save(todo, sd15, sd15_images, args, state, output_dir, "generating SD1.5")
        del pipe
    sdxl = None
    for method in [m for m in NATIVE_ROWS if m in methods]:  # NATIVE_ROWS order: the LoRA comes last
        todo = _missing(output_dir, local, [method])
        if not todo:
            continue
        sdxl = sdxl if sdxl is not None else load_sdxl_pipeline(args, device)
        if NATIVE_ROWS[method].lcm_lora:
            add_lcm_lora(sdxl, args)

        def native_images(batch, method=method):
            return {method: generate_native_batch(sdxl, [row for _, row in batch], [i for i, _ in batch], NATIVE_ROWS[method], args)}

        counts["files_written"] += _generate_and_save(todo, [method], native_images, args, state, output_dir, f"generating {method}")
    return counts


def load_reference(path: Path, size: int) -> torch.Tensor:
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
    from tqdm.auto import tqdm

    output_dir = Path(args.output_dir)
    local = shard(list(enumerate(rows)), state)
    extractor = feature_extractor if feature_extractor is not None else args.feature_extractor
    compute_fid = not args.no_fid
    common.check_fid_count(args, len(rows), "the caption set")
    clip = None
    if not args.no_clip:
        clip = clip_scorer if clip_scorer is not None else build_clip_scorer(args.clip_model, device)
    reference_dir = Path(args.reference_dir).expanduser() if compute_fid else None
    results: Dict[str, Dict] = {}
    for method in methods:
        size = method_size(args, method)
        patch = min(args.patch_size, size)
        fid = build_fid(extractor, device) if compute_fid else None
        patch_fid = build_patch_fid(extractor, device, patch, args.num_patches, args.seed) if compute_fid else None
        if clip is not None:
            clip.reset()
        for batch in tqdm(common.batches(local, args.batch_size), desc=f"scoring {method}", disable=args.quiet or not state.is_main_process):
            generated = torch.cat([load_generated(image_path(output_dir, method, row), size) for _, row in batch]).to(device)
            if compute_fid:
                for _, row in batch:
                    if not row.file_name:
                        raise ValueError(f"caption {row.id!r} has no file_name (reference image); FID needs one per caption, or pass --no-fid.")
                real = torch.cat([load_reference(reference_dir / row.file_name, size) for _, row in batch]).to(device)
                fid.update(real, real=True)
                fid.update(generated, real=False)
                patch_fid.update(generated, real, seeds=[args.seed + index for index, _ in batch])
            if clip is not None:
                clip.update(generated, [row.caption for _, row in batch])
        entry = {"count": len(rows), "size": size, "color_correction": common.color_correction(method, args.color_correct_baselines)}
        if compute_fid:
            entry.update(fid_results(fid, patch_fid), patch_size=patch)
        if clip is not None:
            entry["clip"] = clip.compute()
        results[method] = entry
    return results


SMOKE_CAPTIONS = ("a red cat", "a blue dog", "a tall tree", "the sea")


def prepare_smoke_test(args, state) -> None:
    """``--smoke-test``: a tiny random Stable Diffusion model (64 px), upscaler and CLIP model, 4
    captions with synthetic reference images, the SD1.5 rows, 2 steps."""
    inputs = prepare_smoke_dir(args, state, "text-to-image")
    if state.is_main_process:
        references = write_smoke_images(inputs / "references", count=len(SMOKE_CAPTIONS), size=64)
        rows = [CaptionRow(f"{i:03d}", caption, path.name, {}) for i, (caption, path) in enumerate(zip(SMOKE_CAPTIONS, references))]
        write_caption_set(rows, inputs / "captions.jsonl")
        save_smoke_models(inputs / "models", upscaler=True, sd=True, clip=True)
    state.wait_for_everyone()
    models = inputs / "models"
    args.prompts, args.reference_dir = str(inputs / "captions.jsonl"), str(inputs / "references")
    args.model, args.upscaler, args.upscaler_config = str(models / "stable-diffusion"), str(models / "upscaler"), None
    args.clip_model = str(models / "clip")
    args.methods = ",".join(SD15_METHODS)
    args.size, args.steps, args.upscale_factor, args.batch_size, args.limit = 64, 2, 2, 2, None
    args.feature_extractor, args.patch_size, args.num_patches = "tiny-random", 32, 2
    args.dataset_name = args.dataset_name or "smoke-test"


def evaluate_text_to_image(args, feature_extractor=None, clip_scorer=None) -> Dict:
    """Generate (resumably) and score; returns the results (also written to ``--output-dir``).
    ``feature_extractor`` (an ``nn.Module``) overrides ``--feature-extractor``, ``clip_scorer`` ``--clip-model``."""
    state = process_state()
    if args.smoke_test:
        prepare_smoke_test(args, state)
    methods = _check_args(args)
    rows = read_caption_set(args.prompts)
    if args.limit is not None:
        rows = rows[: args.limit]
    device = torch.device(args.device) if args.device else state.device
    check_baseline_images(args, methods, state)
    counts = {"generated": 0, "skipped": 0, "files_written": 0}
    if not args.metrics_only:
        counts = generate(args, rows, methods, state, device)
    state.wait_for_everyone()
    totals = {key: sum(gather_object([value])) for key, value in counts.items()}
    metrics = score(args, rows, methods, state, device, feature_extractor, clip_scorer)
    settings = {
        "prompts": str(args.prompts), "reference_dir": args.reference_dir, "model": args.model, "upscaler": args.upscaler,
        "methods": list(methods), "steps": args.steps, "guidance_scale": args.guidance_scale, "size": args.size,
        "upscale_factor": args.upscale_factor,
        "native_rows": {
            method: {"model": args.sdxl_model, "lora": args.lcm_lora if NATIVE_ROWS[method].lcm_lora else None,
                     "scheduler": "LCMScheduler" if NATIVE_ROWS[method].lcm_lora else "the model's default",
                     "steps": NATIVE_ROWS[method].steps, "guidance_scale": NATIVE_ROWS[method].guidance_scale, "size": args.sdxl_size}
            for method in methods if method in NATIVE_ROWS
        },
        "dtype": "float32", "fid": not args.no_fid, "num_patches": None if args.no_fid else args.num_patches,
        "metrics": metrics_record(args, fid=not args.no_fid, clip=not args.no_clip, feature_extractor=feature_extractor, clip_scorer=clip_scorer),
        **common.common_settings(args, state),
    }
    dataset = args.dataset_name or Path(args.prompts).expanduser().resolve().parent.name
    result = {"task": "text_to_image", "dataset": dataset, "settings": settings, "count": len(rows), "generation": totals, "methods": metrics}
    return common.write_results(result, ("fid", "patch_fid", "clip"), args, state)


def _summary(result: Dict) -> str:
    generation = result["generation"]
    return f"{result['count']} captions: {generation['generated']} generated, {generation['skipped']} already done"


def main(argv: Optional[Sequence[str]] = None, feature_extractor=None, clip_scorer=None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    evaluate = lambda args: evaluate_text_to_image(args, feature_extractor=feature_extractor, clip_scorer=clip_scorer)  # noqa: E731
    return common.run_main(build_parser(), argv, evaluate, _summary)


if __name__ == "__main__":
    raise SystemExit(main())
