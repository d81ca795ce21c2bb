"""Train an UPLiFT latent upscaler for any VAE, with accelerate. Run from the repository root:

    python -m training.train_uplift --config training/configs/sd15-vae.yaml \
        --train-data data/unsplash-lite/min-side-1024 --output-dir runs/sd15
    accelerate launch -m training.train_uplift --config ...        # several GPUs / nodes

The configuration is a YAML file with sections ``model``, ``data``, ``optimization``,
``checkpointing``, ``validation`` and ``logging`` (see training/configs/); command-line
flags override it. Writes ``OUTPUT/train_log.jsonl`` (one line per optimiser step),
``OUTPUT/checkpoints/checkpoint-{step}`` (resumable with ``--resume latest``), validation
samples and metrics, and finally ``OUTPUT/model`` in diffusers format with a model card.
Validation scores super-resolution with the protocol and scoring loop of the evaluation
(:mod:`uplift_diffusers.utils.sr_protocol`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
import yaml
from torch.utils.data import DataLoader

from training.checkpointing import find_checkpoint, load_checkpoint, save_checkpoint
from training.data import ImageFolderDataset, check_crop_options, collate_skipping_failures
from training.latent_cache import LatentCache, vae_identity
from training.objective import image_pyramid, multi_depth_loss
from uplift_diffusers.constants import SD15_MODEL_ID

DEFAULTS: Dict = {
    "vae": SD15_MODEL_ID,
    "output_dir": "runs/uplift",
    "model": {},
    "data": {
        "train_dirs": [],
        "resolution": 1024,
        "crop": "random_resized",
        "crops_per_image": None,
        "max_upscale_crop": 1.0,
        "cache_dir": None,
        "num_workers": 0,
    },
    "optimization": {
        "depths": [1, 2, 3, 4],
        "lat_aug": 1.0,
        "lat_aug_noisy_targets": False,
        "pixel_loss_weight": 0.0,
        "lr": 1e-3,
        "adam_betas": [0.9, 0.999],
        "weight_decay": 0.0,
        "batch_size": 1,
        "epochs": 5,
        "max_steps": None,
        "max_minutes": None,
        "gradient_accumulation_steps": 1,
        "max_grad_norm": 1.0,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "mixed_precision": "no",
        "ema_decay": None,
        "seed": 0,
    },
    "checkpointing": {"every_steps": 1000, "keep_last": 3},
    "validation": {"dir": None, "every_steps": 1000, "num_images": 8, "hr_size": 256, "lr_size": 64, "num_samples": 4},
    "logging": {"report_to": "none", "log_every": 1},
}


# ---------------------------------------------------------------------------- configuration
def merge(base: Dict, override: Dict, where: str = "") -> Dict:
    """Deep-merge ``override`` into a copy of ``base``; unknown keys are an error."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in out and where != "model":
            raise ValueError(f"unknown config key `{where + '.' if where else ''}{key}`; known: {sorted(out)}.")
        if isinstance(out.get(key), dict) and isinstance(value, dict) and key != "model":
            out[key] = merge(out[key], value, key)
        else:
            out[key] = value
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML configuration (sections: model, data, optimization, ...)")
    parser.add_argument("--vae", help="Hub id or diffusers directory (AutoencoderKL / AutoencoderTiny), or a directory with TAESD-family encoder.pth + decoder.pth")
    parser.add_argument("--train-data", nargs="+", help="folders of training images (recursive)")
    parser.add_argument("--validation-data", help="held-out folder for validation (4x super-resolution PSNR)")
    parser.add_argument("--output-dir")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--checkpointing-steps", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resume", help="'latest' or a checkpoint directory")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="any other override, value parsed as YAML")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> Dict:
    user: Dict = {}
    if args.config:
        path = Path(args.config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--config file not found: {str(path)!r}.")
        user = yaml.safe_load(path.read_text()) or {}
    config = merge(DEFAULTS, user)
    flags = {
        ("vae",): args.vae,
        ("output_dir",): args.output_dir,
        ("data", "train_dirs"): args.train_data,
        ("data", "resolution"): args.resolution,
        ("validation", "dir"): args.validation_data,
        ("optimization", "max_steps"): args.max_steps,
        ("optimization", "batch_size"): args.batch_size,
        ("checkpointing", "every_steps"): args.checkpointing_steps,
    }
    flags = {keys: value for keys, value in flags.items() if value is not None}  # flags not given
    for item in args.set:  # --set KEY=null sets null (e.g. optimization.max_grad_norm=null)
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}.")
        dotted, value = item.split("=", 1)
        flags[tuple(dotted.split("."))] = yaml.safe_load(value)
    for keys, value in flags.items():
        section = config
        for key in keys[:-1]:
            if not isinstance(section.get(key), dict):
                raise ValueError(f"unknown config key `{'.'.join(keys)}`; known sections: {sorted(config)}.")
            section = section[key]
        if len(keys) > 1 and keys[0] != "model" and keys[-1] not in section:
            raise ValueError(f"unknown config key `{'.'.join(keys)}`.")
        section[keys[-1]] = value
    if not config["data"]["train_dirs"]:
        raise ValueError("no training data: pass --train-data DIR [DIR ...] or set data.train_dirs in the config.")
    if isinstance(config["data"]["train_dirs"], str):
        config["data"]["train_dirs"] = [config["data"]["train_dirs"]]
    opt = config["optimization"]
    depths = opt["depths"]
    if not depths or any((not isinstance(d, int)) or d < 1 for d in depths):
        raise ValueError(f"optimization.depths must be a non-empty list of ints >= 1, got {depths!r}.")
    if config["data"]["resolution"] % (8 * 2 ** max(depths)):
        raise ValueError(
            f"data.resolution {config['data']['resolution']} must be divisible by 8 * 2^max(depths) = {8 * 2 ** max(depths)}."
        )
    if len(set(depths)) != len(depths):
        raise ValueError(f"optimization.depths {depths!r} repeats a depth; list each depth once.")
    data = config["data"]
    try:
        check_crop_options(data["crop"], True, data["crops_per_image"], data["max_upscale_crop"])
    except ValueError as error:
        raise ValueError(f"data: {error}") from None
    if not isinstance(opt["lat_aug_noisy_targets"], bool):
        raise ValueError(f"optimization.lat_aug_noisy_targets must be true or false, got {opt['lat_aug_noisy_targets']!r}.")
    if opt["mixed_precision"] is False:  # YAML reads an unquoted `no` as false
        opt["mixed_precision"] = "no"
    if opt["mixed_precision"] not in ("no", "fp16", "bf16", "fp8"):
        raise ValueError(f"optimization.mixed_precision must be no, fp16, bf16 or fp8, got {opt['mixed_precision']!r}.")
    clip = opt["max_grad_norm"]
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip <= 0):
        raise ValueError(f"optimization.max_grad_norm must be a number > 0, or null for no gradient clipping; got {clip!r}.")
    return config


# ---------------------------------------------------------------------------- training pieces
class StopRequest:
    """Turns SIGTERM / SIGINT into a flag checked after every optimiser step."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self) -> None:
        """Reinstall the handlers that were active before (after training, or when it fails)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def epoch_order(num_items: int, seed: int, epoch: int, rank: int, world: int) -> List[int]:
    """This process's share of a seeded permutation of the dataset for one epoch."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_items, generator=generator)[rank::world].tolist()


def encode_levels(vae, pyramid: List[torch.Tensor], keys: List[str], cache: Optional[LatentCache], vae_id: str, autocast) -> List[torch.Tensor]:
    """Unscaled VAE latents of every pyramid level (from the cache when possible).

    ``autocast`` is the accelerator's autocast context factory (the VAE runs in the mixed
    precision of the run; the precision is part of ``vae_id`` so cached latents never mix)."""
    from uplift_diffusers.loaders.vae import encode_latents

    def encode(images):
        with torch.no_grad(), autocast():
            return encode_latents(vae, images.contiguous(memory_format=torch.channels_last) * 2 - 1).float()

    levels = []
    for level, images in enumerate(pyramid):
        if cache is None:
            levels.append(encode(images))
            continue
        per_item = []
        for i, key in enumerate(keys):
            full_key = f"{key}|level={level}|vae={vae_id}"

            def compute(i=i, images=images):
                return encode(images[i : i + 1])[0].cpu()

            per_item.append(cache.get_or_compute(full_key, compute))
        levels.append(torch.stack(per_item).to(images.device))
    return levels


def validate(upscaler, vae, config: Dict, output_dir: Path, step: int) -> Dict[str, float]:
    """PSNR of super-resolution (``lr_size`` -> ``hr_size``) on the held-out folder, with the
    evaluation's protocol and scoring loop; saves a sheet of the first ``num_samples`` images
    (bicubic | UPLiFT | HR)."""
    from diffusers.image_processor import VaeImageProcessor
    from PIL import Image

    from uplift_diffusers.image_processor import list_images
    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline
    from uplift_diffusers.utils.sr_protocol import SRPairs, score_super_resolution

    val = config["validation"]
    files = list_images(val["dir"])[: val["num_images"]]
    if not files:
        raise ValueError(f"validation.dir {val['dir']!r} holds no images; pass a folder of held-out images (--validation-data).")
    factor = val["hr_size"] // val["lr_size"]
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    tiles = []

    def keep_sample(name, output, batch) -> None:
        if len(tiles) < val["num_samples"]:
            hr, sr = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(torch.cat([batch.hr, output]).cpu()))
            tiles.append([batch.lr_images[0].resize(hr.size, Image.BICUBIC), sr, hr])

    was_training = upscaler.training
    upscaler.eval()
    with torch.no_grad():
        scores = score_super_resolution(
            {"uplift": lambda batch: pipe(batch.lr, upscale_factor=factor, generator=generator, output_type="pt").images},
            SRPairs(files, val["hr_size"], val["lr_size"]),
            on_output=keep_sample,
        )["uplift"]
    upscaler.train(was_training)
    if tiles:
        samples_dir = output_dir / "samples"
        samples_dir.mkdir(parents=True, exist_ok=True)
        side = val["hr_size"]
        sheet = Image.new("RGB", (3 * side, len(tiles) * side))
        for row, images in enumerate(tiles):
            for col, image in enumerate(images):
                sheet.paste(image, (col * side, row * side))
        sheet.save(samples_dir / f"step-{step:07d}.png")
    return {"psnr": scores.mean("psnr"), "count": scores.count}


def write_model_card(model_dir: Path, config: Dict, step: int, metrics: Dict, seconds: float, skipped: int, num_items: int) -> None:
    lines = [
        "---",
        "library_name: uplift-diffusers",
        "tags: [uplift, super-resolution, latent-upscaler, diffusers]",
        "---",
        "",
        "# UPLiFT latent upscaler",
        "",
        "Trained with `python -m training.train_uplift` of uplift-diffusers.",
        "",
        f"- VAE: `{config['vae']}`",
        f"- Training data: {', '.join(map(str, config['data']['train_dirs']))} ({num_items} items, {skipped} images skipped)",
        f"- Optimiser steps: {step} ({seconds / 60:.1f} min)",
        f"- Validation (4x super-resolution, {config['validation'].get('dir')}): "
        + (", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()) if metrics else "not run"),
        "",
        "```python",
        "from uplift_diffusers import UPLiFTLatentUpscaler",
        "upscaler = UPLiFTLatentUpscaler.from_pretrained('PATH')",
        "```",
        "",
        "## Training configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    (model_dir / "README.md").write_text("\n".join(lines))


def train(config: Dict, resume: Optional[str] = None) -> Dict:
    """Run the training described by ``config`` (see :func:`build_config`); ``resume`` is
    "latest" or a checkpoint directory. SIGTERM / SIGINT stop it after the current step with a
    checkpoint; the previous signal handlers are restored when it returns or fails."""
    stopper = StopRequest()
    try:
        return _train(config, resume, stopper)
    finally:
        stopper.restore()


def _train(config: Dict, resume: Optional[str], stopper: StopRequest) -> Dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.loaders.vae import load_vae

    opt, data, ckpt, val, log = (config[k] for k in ("optimization", "data", "checkpointing", "validation", "logging"))
    output_dir = Path(config["output_dir"]).expanduser()
    report_to = log["report_to"] if log["report_to"] not in (None, "none") else None
    accelerator = Accelerator(
        mixed_precision=opt["mixed_precision"],
        gradient_accumulation_steps=opt["gradient_accumulation_steps"],
        log_with=report_to,
        project_dir=str(output_dir / "logs"),
    )
    set_seed(opt["seed"])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if report_to:
        accelerator.init_trackers("uplift")

    vae = load_vae(config["vae"]).to(accelerator.device, memory_format=torch.channels_last).eval().requires_grad_(False)
    vae_id = f"{vae_identity(vae)}-{opt['mixed_precision']}"
    model_config = dict(config["model"])
    vae_channels = vae.config.latent_channels
    model_config.setdefault("latent_channels", vae_channels)
    if model_config["latent_channels"] != vae_channels:
        raise ValueError(f"model.latent_channels={model_config['latent_channels']} but the VAE has {vae_channels} latent channels.")
    model = UPLiFTLatentUpscaler(**model_config)
    ema = None
    if opt["ema_decay"]:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=opt["ema_decay"])

    dataset = ImageFolderDataset(
        data["train_dirs"], data["resolution"], train=True, crops_per_image=data["crops_per_image"],
        max_upscale_crop=data["max_upscale_crop"], seed=opt["seed"], crop=data["crop"],
    )
    accelerator.print(f"training data: {dataset.describe()}")
    if accelerator.is_main_process and dataset.skipped.total:
        skipped_list = output_dir / "skipped_images.tsv"
        skipped_list.write_text("".join(f"{reason}\t{path}\t{detail}\n" for reason, path, detail in dataset.skipped.rows(data["resolution"])))
        accelerator.print(f"  (every skipped file is listed in {skipped_list})")
    cache = LatentCache(data["cache_dir"]) if data["cache_dir"] else None
    batches_per_epoch = math.ceil(len(range(accelerator.process_index, len(dataset), accelerator.num_processes)) / opt["batch_size"])
    steps_per_epoch = max(1, batches_per_epoch // opt["gradient_accumulation_steps"])
    max_steps = opt["max_steps"] or opt["epochs"] * steps_per_epoch

    optimizer = torch.optim.Adam(model.parameters(), lr=opt["lr"], betas=tuple(opt["adam_betas"]), weight_decay=opt["weight_decay"])
    scheduler = get_scheduler(opt["lr_scheduler"], optimizer, num_warmup_steps=opt["lr_warmup_steps"], num_training_steps=max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    step, epoch, position = 0, 0, 0
    if resume:
        path = find_checkpoint(output_dir, resume)
        if path is not None:
            state = load_checkpoint(accelerator, path)
            step, epoch, position = state["step"], state["epoch"], state["position"]
            accelerator.print(f"resumed from {path} at step {step} (epoch {epoch}, batch {position})")

    log_path = output_dir / "train_log.jsonl"
    val_csv = output_dir / "validation.csv"
    depths = list(opt["depths"])
    last_metrics: Dict = {}
    started = time.time()
    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    def checkpoint() -> None:
        save_checkpoint(accelerator, output_dir, step, {"epoch": epoch, "position": position}, keep_last=ckpt["keep_last"])

    def run_validation() -> None:
        nonlocal last_metrics
        if not val.get("dir") or not accelerator.is_main_process:
            return
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        last_metrics = validate(unwrapped, vae, config, output_dir, step)
        if ema is not None:
            ema.restore(unwrapped.parameters())
        new = not val_csv.exists()
        with open(val_csv, "a") as handle:
            if new:
                handle.write("step,psnr,count\n")
            handle.write(f"{step},{last_metrics['psnr']:.4f},{last_metrics['count']}\n")
        accelerator.log({f"val/{k}": v for k, v in last_metrics.items()}, step=step)
        accelerator.print(f"step {step}: validation {last_metrics}")

    model.train()
    interval_start, interval_steps = time.time(), 0
    reported_failures = set()
    while step < max_steps and stopper.signal is None:
        order = epoch_order(len(dataset), opt["seed"], epoch, accelerator.process_index, accelerator.num_processes)
        loader = DataLoader(
            torch.utils.data.Subset(dataset, order[position * opt["batch_size"] :]),
            batch_size=opt["batch_size"], shuffle=False, num_workers=data["num_workers"],
            collate_fn=collate_skipping_failures, drop_last=False,
            # its own generator: creating an iterator draws a seed, which from the global RNG
            # would shift the lat_aug noise of a resumed run away from the uninterrupted one
            generator=torch.Generator().manual_seed(opt["seed"] * 100_003 + epoch),
        )
        for batch in loader:
            position += 1
            for path, error in batch["failed"]:  # counted here too: workers count in their own copy
                dataset.skipped.add_unreadable(path, error)
                if path not in reported_failures:
                    reported_failures.add(path)
                    accelerator.print(f"skipped an image that no longer loads: {path} ({error})")
            if batch["pixel_values"] is None:
                continue
            images = batch["pixel_values"].to(accelerator.device)
            pyramid = image_pyramid(images, max(depths), multiple=8)
            latents = encode_levels(vae, pyramid, batch["keys"], cache, vae_id, accelerator.autocast)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    losses = multi_depth_loss(
                        model, latents, pyramid, depths, lat_aug=opt["lat_aug"], vae=vae, pixel_weight=opt["pixel_loss_weight"],
                        noisy_targets=opt["lat_aug_noisy_targets"],
                    )
                accelerator.backward(losses["loss"])
                grad_norm = None
                if accelerator.sync_gradients and opt["max_grad_norm"]:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            interval_steps += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            record = {
                "step": step,
                "epoch": epoch,
                "loss": float(accelerator.gather(losses["loss"].detach()[None]).mean()),
                **{k: float(v) for k, v in losses.items() if k != "loss"},
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "time": round(time.time() - started, 2),
            }
            if accelerator.is_main_process:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=step)
            rate = interval_steps / max(time.time() - interval_start, 1e-9)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}", its=f"{rate:.2f}")
            if ckpt["every_steps"] and step % ckpt["every_steps"] == 0:
                checkpoint()
            if val.get("dir") and val["every_steps"] and step % val["every_steps"] == 0:
                run_validation()
            if opt["max_minutes"] and time.time() - started > 60 * opt["max_minutes"]:
                accelerator.print(f"time budget of {opt['max_minutes']} min reached at step {step}")
                max_steps = step
            if step >= max_steps or stopper.signal is not None:
                break
        else:
            epoch, position = epoch + 1, 0
    progress.close()

    if stopper.signal is not None:
        checkpoint()
        accelerator.print(f"stopped by signal {stopper.signal} at step {step}; resume with --resume latest")
        accelerator.end_training()
        return {"step": step, "stopped": True}

    if not ckpt["every_steps"] or step % ckpt["every_steps"]:
        checkpoint()
    if val.get("dir") and (not val["every_steps"] or step % val["every_steps"]):
        run_validation()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.copy_to(unwrapped.parameters())
        model_dir = output_dir / "model"
        unwrapped.save_pretrained(model_dir)
        write_model_card(model_dir, config, step, last_metrics, time.time() - started, dataset.skipped.total, len(dataset))
        accelerator.print(
            f"saved {model_dir} after {step} steps; skipped images: {len(dataset.skipped.too_small)} too small, "
            f"{len(dataset.skipped.unreadable)} unreadable"
            + (f"; latent cache {cache.hits} hits / {cache.misses} misses" if cache else "")
        )
    accelerator.end_training()
    return {"step": step, "stopped": False, "validation": last_metrics}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
        if args.resume and args.resume != "latest":
            find_checkpoint(config["output_dir"], args.resume)  # fail early on a bad path
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train(config, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
