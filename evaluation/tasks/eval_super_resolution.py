"""Super-resolution evaluation (the paper's Table 4): PSNR, SSIM, FID and patch-FID.
Commands, rows, metrics and resuming: ``docs/evaluation.md``."""
from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from accelerate.utils import gather_object
from PIL import Image

from evaluation.arguments import load_upscaler, load_vae
from evaluation.metrics.metric_setup import build_fid, build_patch_fid, fid_results, metrics_record
from evaluation.sharding import process_state, shard
from evaluation.smoke import prepare_smoke_dir, save_smoke_models, write_smoke_images
from evaluation.tasks import common
from evaluation.tasks.latent_baseline import LATENT_BASELINES, LatentInterpolationUpscaler, decode_and_correct
from uplift_diffusers.constants import DEFAULT_BACK_PROJECTION_STEPS, ENSEMBLE_SIZES
from uplift_diffusers.image_processor import list_images, load_hr_lr
from uplift_diffusers.utils.atomic_files import atomic_write
from evaluation.sr_protocol import SRBatch, SRPairs, bicubic_upscale, psnr

PIXEL_METHODS = ("bicubic", "vae")
UPLIFT_KEYWORD = "uplift"
KEYWORDS = PIXEL_METHODS + LATENT_BASELINES + (UPLIFT_KEYWORD,)
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class MethodSpec:
    """One row: its name in the results, its kind and (for ``model``) where the upscaler comes from."""

    name: str
    kind: str  # "bicubic" | "vae" | "bilinear" | "nearest" | "model"
    source: Optional[str] = None  # model path / Hub id; None with kind "model" = the authors' model
    back_projection: int = 0  # rounds of back-projection onto the LR image (0: the paper's output)
    ensemble: int = 1  # model rows: flipped / rotated copies averaged (the pipeline's `ensemble`)


@dataclass(frozen=True)
class SRItem:
    """One evaluation image: a key, its file, and the prepared LR file when ``--data`` has hr/ + lr/."""

    key: str
    hr_path: Path
    lr_path: Optional[Path] = None


def parse_methods(values: Sequence[str]) -> List[MethodSpec]:
    """``["bicubic,bilinear", "uplift=/models/x"]`` -> MethodSpecs (order kept, names unique)."""
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    if not items:
        raise ValueError("--upscaler is empty; pass e.g. --upscaler bilinear,uplift=/path/to/model.")
    parsed: List[Tuple[Optional[str], str]] = []
    for item in items:
        name, sep, spec = item.partition("=")
        if sep and _NAME_PATTERN.match(name) and spec:
            parsed.append((name, spec))
        else:
            parsed.append((None, item))
    model_count = sum(1 for _, spec in parsed if spec not in KEYWORDS or spec == UPLIFT_KEYWORD)
    methods: List[MethodSpec] = []
    for name, spec in parsed:
        if spec in PIXEL_METHODS + LATENT_BASELINES:
            methods.append(MethodSpec(name or spec, spec))
            continue
        source = None if spec == UPLIFT_KEYWORD else spec
        default_name = UPLIFT_KEYWORD if model_count == 1 or source is None else f"uplift:{Path(spec).name}"
        methods.append(MethodSpec(name or default_name, "model", source))
    names = [method.name for method in methods]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"--upscaler gives the row names {duplicates} more than once; name rows with NAME=SPEC.")
    return methods


def with_pipeline_options(methods: Sequence[MethodSpec], steps: int, ensemble: int = 1) -> List[MethodSpec]:
    """``methods`` with the pipeline's ``back_projection_steps`` and ``ensemble`` on the model rows."""
    return [replace(method, back_projection=steps, ensemble=ensemble) if method.kind == "model" else method for method in methods]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Evaluate latent super-resolution (PSNR, SSIM, FID, patch-FID): the paper's Table 4.",
    )
    parser.add_argument("--data", default=None, help="folder of images, or the output of evaluation.data.prepare_sr (hr/ and lr/)")
    parser.add_argument("--vae", default=None, help="Hub id, diffusers VAE folder or TAESD-family folder (encoder.pth + decoder.pth)")
    parser.add_argument(
        "--upscaler", action="append", default=None,
        help="row(s): a model folder / Hub id / official .safetensors|.pth file, 'uplift' (the authors' model), "
        "'bilinear', 'nearest', 'bicubic' or 'vae'; repeat or comma-separate; NAME=SPEC names a row",
    )
    parser.add_argument("--hr-size", type=int, default=1024, help="side of the HR centre crop (default 1024)")
    parser.add_argument("--lr-size", type=int, default=256, help="side of the LR input (default 256)")
    common.add_common_arguments(parser)
    parser.add_argument(
        "--back-projection-steps", type=int, default=DEFAULT_BACK_PROJECTION_STEPS, metavar="N",
        help=f"rounds of back-projection onto the LR image in the UPLiFT rows (default {DEFAULT_BACK_PROJECTION_STEPS}, "
        "the super-resolution pipeline's default; 0: the paper's output, to reproduce its tables)",
    )
    parser.add_argument("--ensemble", type=int, choices=ENSEMBLE_SIZES, default=1,
                        help="UPLiFT rows: average the upscales of that many flipped / rotated copies (the pipeline's "
                        "geometric self-ensemble; default 1: none, as in the paper)")
    return parser


def _check_args(args) -> None:
    common.check_required(args, ("--data", "--upscaler", "--output-dir"), {"back_projection_steps": 0, "hr_size": 1, "lr_size": 1})
    if args.hr_size % args.lr_size or (args.hr_size // args.lr_size) not in (2, 4, 8):
        raise ValueError(
            f"--hr-size / --lr-size must be 2, 4 or 8, got {args.hr_size} / {args.lr_size}; e.g. --hr-size 1024 --lr-size 256."
        )
    if not args.no_fid and args.patch_size > args.hr_size:
        raise ValueError(
            f"--patch-size {args.patch_size} is larger than the --hr-size {args.hr_size} images (patch-FID crops must fit); "
            f"pass --patch-size {args.hr_size // 2} or less."
        )


def list_items(data, limit: Optional[int] = None) -> List[SRItem]:
    """The evaluation images of ``data``: hr/ + lr/ pairs (matched by relative path without suffix) or all images."""
    data = Path(data).expanduser()
    if not data.is_dir():
        raise FileNotFoundError(f"--data folder not found: {str(data)!r}; pass a folder of images or the output of evaluation.data.prepare_sr.")
    hr_dir, lr_dir = data / "hr", data / "lr"
    if hr_dir.is_dir() and lr_dir.is_dir():
        lr_files = {str(p.relative_to(lr_dir).with_suffix("")): p for p in list_images(lr_dir)}
        items = []
        for hr_path in list_images(hr_dir):
            key = str(hr_path.relative_to(hr_dir).with_suffix(""))
            if key not in lr_files:
                raise FileNotFoundError(f"--data {str(data)!r}: {hr_path} has no LR counterpart in {lr_dir}; rerun evaluation.data.prepare_sr.")
            items.append(SRItem(key, hr_path, lr_files.pop(key)))
        if lr_files:
            raise ValueError(f"--data {str(data)!r}: LR images without an HR counterpart: {sorted(lr_files)[:5]}; rerun evaluation.data.prepare_sr.")
    else:
        items = [SRItem(str(p.relative_to(data).with_suffix("")), p) for p in list_images(data)]
    if not items:
        raise ValueError(f"--data {str(data)!r} holds no images ({', '.join(sorted(('.png', '.jpg', '.jpeg', '.webp')))} ...).")
    return items[:limit] if limit is not None else items


def load_pair(item: SRItem, hr_size: int, lr_size: int) -> Tuple[Image.Image, Image.Image]:
    """(HR, LR) PIL images of ``item``; prepared pairs must already have the protocol's sizes."""
    if item.lr_path is None:
        return load_hr_lr(item.hr_path, hr_size, lr_size)
    with Image.open(item.hr_path) as handle:
        hr = handle.convert("RGB")
    with Image.open(item.lr_path) as handle:
        lr = handle.convert("RGB")
    for what, image, size in (("HR", hr, hr_size), ("LR", lr, lr_size)):
        if image.size != (size, size):
            path = item.hr_path if what == "HR" else item.lr_path
            raise ValueError(
                f"{what} image {path} is {image.size[0]} x {image.size[1]}, expected {size} x {size} "
                f"(--{what.lower()}-size); rerun evaluation.data.prepare_sr with these sizes or pass matching sizes."
            )
    return hr, lr


class SuperResolutionRunner:
    """Runs every method on a batch of (HR, LR) pairs; models are loaded once."""

    def __init__(self, methods: Sequence[MethodSpec], vae_spec: Optional[str], upscaler_config: Optional[str], factor: int,
                 device: torch.device, color_correct_baselines: bool = False):
        self.methods, self.color_correct_baselines, self.device = list(methods), color_correct_baselines, device
        self.factor, self.num_steps = factor, int(math.log2(factor))
        needs_vae = any(m.kind != "bicubic" for m in self.methods)
        if needs_vae and vae_spec is None:
            rows = [m.name for m in self.methods if m.kind != "bicubic"]
            raise ValueError(f"the rows {rows} need an autoencoder; pass --vae (Hub id, diffusers folder or TAESD-family folder).")
        self.vae = load_vae(vae_spec).to(device) if needs_vae else None
        self.pipelines: Dict[str, object] = {}
        for method in self.methods:
            if method.kind == "model":
                from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

                upscaler = load_upscaler(method.source, upscaler_config)
                pipe = UPLiFTSuperResolutionPipeline(vae=self.vae, upscaler=upscaler).to(device)
                pipe.set_progress_bar_config(disable=True)
                self.pipelines[method.name] = pipe

    def check_sizes(self, lr_size: int, hr_size: int) -> None:
        """Latent baselines need an LR side that the VAE encodes without padding (the pipeline pads)."""
        if self.vae is None:
            return
        from uplift_diffusers.hooks import vae_scale_factor

        factor = vae_scale_factor(self.vae)
        latent_rows = [m.name for m in self.methods if m.kind in LATENT_BASELINES]
        if latent_rows and lr_size % factor:
            raise ValueError(f"--lr-size {lr_size} is not a multiple of the VAE's factor {factor} needed by {latent_rows}.")
        if any(m.kind == "vae" for m in self.methods) and hr_size % factor:
            raise ValueError(f"--hr-size {hr_size} is not a multiple of the VAE's factor {factor} needed by the 'vae' row.")

    def color_correction(self, method: MethodSpec) -> bool:
        return common.color_correction(method.kind, self.color_correct_baselines)

    @torch.no_grad()
    def run(self, method: MethodSpec, batch: SRBatch, seed: int) -> torch.Tensor:
        """``B x 3 x H x W`` output in [0, 1] (float32, on the device) of ``method`` for the batch;
        the UPLiFT noise of image ``i`` is seeded ``seed + i`` (``i`` = its position in the whole list)."""
        from uplift_diffusers.loaders import encode_latents

        hr, lr = batch.hr, batch.lr
        if method.kind == "model":
            output = self.pipelines[method.name](
                lr, upscale_factor=self.factor, generator=common.generators(seed, batch.indices), color_correction=self.color_correction(method),
                output_type="pt", back_projection_steps=method.back_projection, ensemble=method.ensemble,
            )
            return output.images.to(self.device).float()
        if method.kind == "bicubic":
            size = (hr.shape[-1], hr.shape[-2])
            return torch.cat([bicubic_upscale(image, size) for image in batch.lr_images]).to(self.device)
        if method.kind == "vae":
            latents = encode_latents(self.vae, hr * 2 - 1)
            return decode_and_correct(self.vae, latents, hr, color_correction=self.color_correction(method))
        if method.kind in LATENT_BASELINES:
            latents = encode_latents(self.vae, lr * 2 - 1)
            upscaled = LatentInterpolationUpscaler(method.kind)(latents, lr, num_steps=self.num_steps).sample
            return decode_and_correct(self.vae, upscaled, lr, color_correction=self.color_correction(method))
        raise ValueError(f"unknown row kind {method.kind!r}")


#: Per-image results (PSNR, SSIM, FID features): ``OUTPUT/per_image/<row>/<image key>.pt``, each
#: written atomically as soon as its batch is scored, and ``settings.json``, everything those results
#: depend on (:func:`row_settings`): a rerun with other settings is refused, never mixed.
PER_IMAGE_DIR = "per_image"


def row_settings(args, method: MethodSpec, runner: "SuperResolutionRunner", feature_extractor=None) -> Dict:
    """What a row's per-image results depend on (not the batch size, the process count or --limit)."""
    model = method.kind == "model"
    settings = {
        "data": str(Path(args.data).expanduser().resolve()), "vae": args.vae if method.kind != "bicubic" else None,
        "kind": method.kind, "source": method.source, "upscaler_config": args.upscaler_config if model else None,
        "hr_size": args.hr_size, "lr_size": args.lr_size, "seed": args.seed if model else None,
        "color_correction": runner.color_correction(method), "back_projection": method.back_projection,
        "ensemble": method.ensemble, "fid": None,
    }
    if not args.no_fid:
        extractor = type(feature_extractor).__name__ if feature_extractor is not None else args.feature_extractor
        settings["fid"] = {"feature_extractor": extractor, "patch_size": args.patch_size,
                           "num_patches": args.num_patches, "patch_seed": args.seed}
    return settings


def score_batch(args, output: torch.Tensor, batch: SRBatch, fid, patch_fid) -> List[Dict]:
    from evaluation.metrics.image_metrics import ssim

    records = [{"psnr": p, "ssim": s} for p, s in zip(psnr(output, batch.hr).tolist(), ssim(output, batch.hr).tolist())]
    if fid is not None:
        real, fake = fid.features(batch.hr).cpu(), fid.features(output).cpu()
        patch_fake, patch_real = patch_fid.features(output, batch.hr, seeds=[args.seed + i for i in batch.indices])
        k = args.num_patches
        for i, record in enumerate(records):
            record.update(fid_real=real[i : i + 1], fid_fake=fake[i : i + 1],
                          patch_fake=patch_fake[i * k : (i + 1) * k].cpu(), patch_real=patch_real[i * k : (i + 1) * k].cpu())
    return records


def score_row(args, method: MethodSpec, runner: "SuperResolutionRunner", local, extractor, device, state):
    """One row over this process's shard ``local`` (``(index, item)`` pairs), the kept per-image
    results reused; returns ``(the row's results, images skipped in all processes)``."""
    from tqdm.auto import tqdm

    compute_fid = not args.no_fid
    fid = build_fid(extractor, device) if compute_fid else None
    patch_fid = build_patch_fid(extractor, device, args.patch_size, args.num_patches, args.seed) if compute_fid else None
    pixel: Dict[str, List[float]] = {"psnr": [], "ssim": []}

    def add(record: Dict) -> None:
        pixel["psnr"].append(float(record["psnr"]))
        pixel["ssim"].append(float(record["ssim"]))
        if compute_fid:
            fid.add_features(record["fid_real"].to(device), real=True)
            fid.add_features(record["fid_fake"].to(device), real=False)
            patch_fid.add_features(record["patch_fake"].to(device), record["patch_real"].to(device))

    folder = Path(args.output_dir) / PER_IMAGE_DIR / method.name
    pending = []
    for index, item in local:
        if (folder / f"{item.key}.pt").is_file():
            add(torch.load(folder / f"{item.key}.pt", map_location="cpu", weights_only=True))
        else:
            pending.append((index, item))
    pairs = SRPairs([item for _, item in pending], batch_size=args.batch_size, device=device,
                    load=lambda item: load_pair(item, args.hr_size, args.lr_size), indices=[index for index, _ in pending])
    by_index, seconds = dict(pending), 0.0
    for batch in tqdm(pairs, desc=f"super-resolution {method.name}", disable=args.quiet or not state.is_main_process):
        start = time.perf_counter()
        output = runner.run(method, batch, args.seed).to(device, torch.float32).clamp(0, 1)
        seconds += time.perf_counter() - start
        for index, record in zip(batch.indices, score_batch(args, output, batch, fid, patch_fid)):
            atomic_write(folder / f"{by_index[index].key}.pt", lambda temporary: torch.save(record, temporary))
            add(record)
    psnrs, ssims = gather_object(pixel["psnr"]), gather_object(pixel["ssim"])
    entry = {
        "psnr": float(sum(psnrs) / len(psnrs)), "ssim": float(sum(ssims) / len(ssims)), "count": len(psnrs),
        "kind": method.kind, "source": method.source, "color_correction": runner.color_correction(method),
        "back_projection": method.back_projection, "ensemble": method.ensemble,
        "seconds_per_image_process0": seconds / len(pending) if pending else None,
    }
    if compute_fid:
        entry.update(fid_results(fid, patch_fid))
    return entry, sum(gather_object([len(local) - len(pending)]))


def prepare_smoke_test(args, state) -> None:
    """``--smoke-test``: tiny random VAE and upscaler, 4 synthetic 64 px images, every kind of row, 64 -> 16 px."""
    inputs = prepare_smoke_dir(args, state, "super-resolution")
    if state.is_main_process:
        write_smoke_images(inputs / "images", count=4, size=64)
        save_smoke_models(inputs / "models", upscaler=True, vae=True)
    state.wait_for_everyone()
    args.data, args.vae = str(inputs / "images"), str(inputs / "models" / "vae")
    args.upscaler = ["bicubic,vae,bilinear,nearest", f"uplift={inputs / 'models' / 'upscaler'}"]
    args.hr_size, args.lr_size, args.limit, args.batch_size = 64, 16, None, 2
    args.feature_extractor, args.patch_size, args.num_patches = "tiny-random", 32, 2
    args.dataset_name = args.dataset_name or "smoke-test"


def evaluate_super_resolution(args, feature_extractor=None) -> Dict:
    """Run the evaluation of parsed ``args``; returns the results (also written to ``--output-dir``).
    ``feature_extractor`` (an ``nn.Module``) overrides ``--feature-extractor``."""
    state = process_state()
    if args.smoke_test:
        prepare_smoke_test(args, state)
    _check_args(args)
    methods = with_pipeline_options(parse_methods(args.upscaler), args.back_projection_steps, args.ensemble)
    device = torch.device(args.device) if args.device else state.device
    items = list_items(args.data, args.limit)
    compute_fid = not args.no_fid
    common.check_fid_count(args, len(items), "--data")
    runner = SuperResolutionRunner(methods, args.vae, args.upscaler_config, args.hr_size // args.lr_size, device, args.color_correct_baselines)
    runner.check_sizes(args.lr_size, args.hr_size)
    extractor = feature_extractor if feature_extractor is not None else args.feature_extractor
    # every process checks the recorded settings (an error stops them all); the main process then writes them
    for write in (False, True) if state.is_main_process else (False,):
        for method in methods:
            folder, what = Path(args.output_dir) / PER_IMAGE_DIR / method.name, f"per-image results of the row {method.name!r}"
            settings = row_settings(args, method, runner, feature_extractor)
            common.check_settings_record(folder, "settings.json", settings, what, "*.pt", write)
    state.wait_for_everyone()

    local = shard(list(enumerate(items)), state)
    results, skipped = {}, {}
    for method in methods:  # row by row: every process runs the rows in the same order (gathering is collective)
        results[method.name], skipped[method.name] = score_row(args, method, runner, local, extractor, device, state)

    settings = {
        "data": str(args.data), "vae": args.vae, "upscalers": [{"name": m.name, "kind": m.kind, "source": m.source} for m in methods],
        "hr_size": args.hr_size, "lr_size": args.lr_size, "fid": compute_fid,
        "patch_size": args.patch_size if compute_fid else None, "num_patches": args.num_patches if compute_fid else None,
        "back_projection_steps": args.back_projection_steps, "ensemble": args.ensemble,
        "metrics": metrics_record(args, fid=compute_fid, pixel=True, feature_extractor=feature_extractor),
        **common.common_settings(args, state),
    }
    result = {
        "task": "super_resolution", "dataset": args.dataset_name or Path(args.data).expanduser().resolve().name,
        "settings": settings, "count": len(items),
        "resumed": {"skipped": skipped, "per_image_dir": str(Path(args.output_dir) / PER_IMAGE_DIR)}, "methods": results,
    }
    return common.write_results(result, ("psnr", "ssim", "fid", "patch_fid"), args, state)


def _summary(result: Dict) -> str:
    skipped = {name: count for name, count in result["resumed"]["skipped"].items() if count}
    resumed = (
        f"resumed: skipped the images already scored in {result['resumed']['per_image_dir']} "
        f"({', '.join(f'{name}: {count}' for name, count in skipped.items())} of {result['count']})\n"
        if skipped else ""
    )
    return f"{resumed}{result['count']} images"


def main(argv: Optional[Sequence[str]] = None, feature_extractor=None) -> int:
    """Command-line entry point; returns the exit status (2 on a bad argument or missing input)."""
    evaluate = lambda args: evaluate_super_resolution(args, feature_extractor=feature_extractor)  # noqa: E731
    return common.run_main(build_parser(), argv, evaluate, _summary)


if __name__ == "__main__":
    raise SystemExit(main())
