r"""Train an UPLiFT latent upscaler for any VAE, with accelerate (docs/training.md is the user guide):

    python -m training.train_uplift --config training/configs/sd15-vae.yaml \
        --train-data data/unsplash-lite/min-side-1024 --output-dir runs/sd15
    python -m training.train_uplift --smoke-test      # tiny random VAE + model, no download, seconds
    torchrun --nproc_per_node N -m training.train_uplift --config ...   # N processes, GPUs or CPUs

The YAML recipe (training/configs/, :mod:`training.config`) is overridden by the flags and by
``--set SECTION.KEY=VALUE``; every value is checked before anything is written. Writes
``OUTPUT/train_log.jsonl``, ``OUTPUT/checkpoints/checkpoint-{step}`` (``--resume latest``),
validation PSNR and samples, and ``OUTPUT/model`` in diffusers format with a model card.

Exit status: 0 finished; 2 bad arguments / configuration / launch (one line, nothing written);
143 stopped by SIGTERM, 130 stopped by Ctrl-C (SIGINT): both after saving a checkpoint and
printing the command that resumes the run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from training.checkpointing import find_checkpoint, load_checkpoint, save_checkpoint
from training.config import TrainingConfig, ValidationConfig, load_config, parse_override, read_recipe
from training.data import ImageFolderDataset, collate_skipping_failures
from training.distributed import LaunchMismatchError, init_process_group_state, use_cpu_backend
from training.latent_cache import LatentCache, vae_identity
from training.objective import image_pyramid, multi_depth_loss

MODULE = "training.train_uplift"

#: ``--smoke-test``: the recipe beneath the given one (see its comments)
SMOKE_TEST = Path(__file__).parent / "configs" / "smoke-test.yaml"


@dataclass
class ScriptArguments:
    """The command line (``transformers.HfArgumentParser`` makes the flags, in ``--a_b`` and ``--a-b`` spelling)."""

    config: Optional[str] = field(default=None, metadata={"help": "YAML recipe (training/configs/)"})
    vae: Optional[str] = field(default=None, metadata={"help": "Hub id or folder of a diffusers VAE, or a TAESD-family folder"})
    train_data: Optional[List[str]] = field(default=None, metadata={"help": "folders of training images (recursive)"})
    validation_data: Optional[str] = field(default=None, metadata={"help": "held-out folder for validation (4x super-resolution PSNR)"})
    output_dir: Optional[str] = None
    max_steps: Optional[int] = None
    stop_at_step: Optional[int] = field(default=None, metadata={"metavar": "N", "help": "end this run at step N; the LR schedule still spans max_steps"})
    checkpointing_steps: Optional[int] = None
    resolution: Optional[int] = None
    batch_size: Optional[int] = None
    init_from: Optional[str] = field(default=None, metadata={"metavar": "MODEL_DIR", "help": "fine-tune a saved UPLiFTLatentUpscaler of the same architecture"})
    resume: Optional[str] = field(default=None, metadata={"help": "'latest' (the newest checkpoint, if any) or a checkpoint directory"})
    require_resume: bool = field(default=False, metadata={"help": "resume from --resume (default: latest); no checkpoint is an error"})
    smoke_test: bool = field(default=False, metadata={"help": "check an installation in seconds: tiny random VAE and model, generated images"})
    set: List[str] = field(default_factory=list, metadata={"metavar": "SECTION.KEY=VALUE", "help": "any other override, value parsed as YAML"})


#: the flags that override one config key each
FLAG_KEYS = {
    "vae": "vae", "output_dir": "output_dir", "init_from": "init_from", "train_data": "data.train_dirs",
    "validation_data": "validation.dir", "max_steps": "optimization.max_steps", "stop_at_step": "optimization.stop_at_step",
    "batch_size": "optimization.batch_size", "checkpointing_steps": "checkpointing.every_steps", "resolution": "data.resolution",
}


def parse_args(argv: Optional[List[str]] = None) -> ScriptArguments:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ScriptArguments, prog=f"python -m {MODULE}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return ScriptArguments(**vars(parser.parse_args(argv)))  # argparse's own parse: an unknown flag is exit status 2


def build_config(args: ScriptArguments) -> TrainingConfig:
    """The recipe of ``--config`` (or none), under the flags and ``--set`` overrides (the smoke
    test's values beneath both), checked."""
    raw = read_recipe(args.config) if args.config else {}
    overrides = {key: getattr(args, name) for name, key in FLAG_KEYS.items() if getattr(args, name) is not None}
    overrides.update(parse_override(item) for item in args.set)
    if args.smoke_test:
        smoke = read_recipe(SMOKE_TEST)
        for key, value in raw.items():  # the recipe over the smoke test's values
            smoke[key] = {**smoke[key], **value} if isinstance(value, dict) and key in smoke else value
        raw = smoke
        folder = Path(overrides.get("output_dir", raw["output_dir"])).expanduser() / "smoke-test"
        if args.vae is None:
            overrides["vae"] = str(folder / "vae")
        if not overrides.get("data.train_dirs", raw["data"].get("train_dirs")):
            overrides["data.train_dirs"] = [str(folder / "images")]
            if "dir" not in raw["validation"]:  # validation on the generated images
                overrides.setdefault("validation.dir", str(folder / "images"))
    return load_config(raw, overrides)


def prepare_smoke_test(config: TrainingConfig) -> None:
    """Write the smoke test's random VAE and generated images where ``config`` expects them (if absent)."""
    from PIL import Image

    from uplift_diffusers.utils.testing_utils import make_kl_vae

    smoke = Path(config.output_dir).expanduser() / "smoke-test"
    vae_dir = smoke / "vae"
    if Path(config.vae) == vae_dir and not (vae_dir / "config.json").is_file():
        torch.manual_seed(0)
        make_kl_vae().save_pretrained(vae_dir)
    images = smoke / "images"
    if str(images) in config.data.train_dirs and not images.is_dir():
        images.mkdir(parents=True)
        generator = torch.Generator().manual_seed(0)
        shape = (config.data.resolution, config.data.resolution, 3)
        for index in range(6):  # noise: the smoke test checks the machinery, not the model
            pixels = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(images / f"smoke-{index}.png")


def resume_command(argv: List[str]) -> str:
    """The command line that resumes this run: the same arguments with ``--resume latest``, under
    the same kind of launcher (on several nodes ``...`` stands for the rendezvous flags)."""
    kept, items = [], iter(argv)
    for item in items:
        if item == "--resume":
            next(items, None)
        elif not (item.startswith("--resume=") or item in ("--require-resume", "--require_resume")):
            kept.append(item)
    world = int(os.environ.get("WORLD_SIZE") or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    launcher = [sys.executable, "-m"]
    if world > 1:
        nodes = ["--nnodes", str(world // local)] if local != world else []
        launcher = ["torchrun", *nodes, "--nproc_per_node", str(local), *(["..."] if nodes else []), "-m"]
    return shlex.join([*launcher, MODULE, *kept, "--resume", "latest"])


def trained_upscale_factors(depths) -> List[int]:
    """The factors a run with these depths trains: depth d trains 2**d, and its multi-step loss
    every step 2**1 ... 2**d on the way."""
    return [2**k for k in range(1, max(depths) + 1)]


def epoch_order(num_items: int, seed: int, epoch: int, rank: int, world: int) -> List[int]:
    """This process's share of a seeded permutation of the dataset for one epoch, padded so that
    every process has the same number of batches: the processes step together."""
    sampler = DistributedSampler(range(num_items), num_replicas=world, rank=rank, seed=seed * 100_003)
    sampler.set_epoch(epoch)
    return list(sampler)


def any_process(accelerator, *values: float) -> List[float]:
    """The maximum of each value over all processes (the processes agree on stopping)."""
    if accelerator.num_processes == 1:
        return list(values)
    gathered = accelerator.gather(torch.tensor([list(values)], dtype=torch.float64, device=accelerator.device))
    return gathered.max(dim=0).values.tolist()


def parameter_checksum(model) -> float:
    """A float64 fingerprint of the weights: every weight times its place on a fixed ramp, summed."""
    values = torch.cat([parameter.detach().double().flatten().cpu() for parameter in model.parameters()])
    return float(values @ torch.linspace(1.0, 2.0, values.numel(), dtype=torch.float64))


def encode_levels(vae, pyramid: List[torch.Tensor], keys: List[str], cache: Optional[LatentCache], vae_id: str, autocast) -> List[torch.Tensor]:
    """Unscaled VAE latents of every pyramid level, from the cache when possible. The VAE runs under
    ``autocast``, in the run's mixed precision, which is part of ``vae_id``: cached latents never mix."""
    from uplift_diffusers.loaders.vae import encode_latents

    def encode(images):
        with torch.no_grad(), autocast():
            return encode_latents(vae, images.contiguous(memory_format=torch.channels_last) * 2 - 1).float()

    if cache is None:
        return [encode(images) for images in pyramid]
    levels = []
    for level, images in enumerate(pyramid):
        per_item = [
            cache.get_or_compute(f"{key}|level={level}|vae={vae_id}", lambda i=i, images=images: encode(images[i : i + 1])[0].cpu())
            for i, key in enumerate(keys)
        ]
        levels.append(torch.stack(per_item).to(images.device))
    return levels


def validate(upscaler, vae, val: ValidationConfig, output_dir: Path, step: int) -> Dict[str, float]:
    """Mean PSNR of super-resolution (``lr_size`` -> ``hr_size``, the library's ``load_hr_lr``) on
    the held-out folder: ``psnr`` of the paper's output, ``psnr_bp`` of the same output back-projected
    (the pipeline's default); saves a sheet of the first ``num_samples`` images (bicubic | UPLiFT | HR)."""
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils import make_image_grid
    from PIL import Image
    from torchmetrics.functional.image import peak_signal_noise_ratio

    from uplift_diffusers.image_processor import list_images, load_hr_lr, pil_to_tensor
    from uplift_diffusers.pipelines import UPLiFTSuperResolutionPipeline
    from uplift_diffusers.utils.color_correction import back_project

    files = list_images(val.dir)[: val.num_images]
    if not files:
        raise ValueError(f"validation.dir {val.dir!r} holds no images; pass a folder of held-out images (--validation-data).")
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=upscaler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    scores = {"psnr": 0.0, "psnr_bp": 0.0} if val.back_projection_steps else {"psnr": 0.0}  # means over the files
    tiles: List[Image.Image] = []
    upscaler.eval()
    with torch.no_grad():
        for path in files:
            hr_image, lr_image = load_hr_lr(path, val.hr_size, val.lr_size)
            hr, lr = pil_to_tensor(hr_image), pil_to_tensor(lr_image)
            output = pipe(lr, upscale_factor=val.hr_size // val.lr_size, generator=generator, output_type="pt",
                          back_projection_steps=0).images.float().cpu()
            outputs = {"psnr": output}
            if val.back_projection_steps:  # the same output, back-projected: no second model run
                outputs["psnr_bp"] = back_project(output, lr, val.back_projection_steps)
            for name, image in outputs.items():
                scores[name] += float(peak_signal_noise_ratio(image.clamp(0, 1), hr, data_range=(0.0, 1.0))) / len(files)
            if len(tiles) < 3 * val.num_samples:
                (sr,) = VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(output.clamp(0, 1)))
                tiles += [lr_image.resize(hr_image.size, Image.BICUBIC), sr, hr_image]
    upscaler.train()  # validation runs on the model being trained
    if tiles:
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
        make_image_grid(tiles, rows=len(tiles) // 3, cols=3).save(output_dir / "samples" / f"step-{step:07d}.png")
    return {**scores, "count": len(files)}


def write_model_card(model_dir: Path, config: TrainingConfig, step: int, metrics: Dict, seconds: float, skipped: int, num_items: int) -> None:
    scores = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()) or "not run"
    (model_dir / "README.md").write_text(f"""---
library_name: uplift-diffusers
tags: [uplift, super-resolution, latent-upscaler, diffusers]
---

# UPLiFT latent upscaler

Trained with `python -m {MODULE}` of uplift-diffusers.

- VAE: `{config.vae}`
- Training data: {', '.join(map(str, config.data.train_dirs))} ({num_items} items, {skipped} images skipped)
- Optimiser steps: {step} ({seconds / 60:.1f} min)
- Validation (4x super-resolution, {config.validation.dir}): {scores}

```python
from uplift_diffusers import UPLiFTLatentUpscaler
upscaler = UPLiFTLatentUpscaler.from_pretrained('PATH')
```

## Training configuration

```yaml
{yaml.safe_dump(asdict(config), sort_keys=False).rstrip()}
```
""")


def train(config: TrainingConfig, resume: Optional[str] = None, resume_hint: Optional[str] = None) -> Dict:
    """Run the training described by ``config`` (see :func:`build_config`); ``resume`` is
    "latest" or a checkpoint directory ("latest" with no checkpoint yet says so and starts from
    scratch). SIGTERM / SIGINT stop it after the current step with a checkpoint (the result has
    ``stopped: True`` and ``signal``) and print ``resume_hint`` (the command that resumes)."""
    received: List[int] = []  # SIGTERM / SIGINT, checked after every optimiser step (the old handlers come back below)
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _train(config, resume, received, resume_hint or "the same command with --resume latest")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(config: TrainingConfig, resume: Optional[str], received: List[int], resume_hint: str) -> Dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from uplift_diffusers import UPLiFTLatentUpscaler
    from uplift_diffusers.loaders import load_vae

    init_process_group_state()  # one group for torchrun / accelerate launch, or a clear error
    opt, data, ckpt, val, log = config.optimization, config.data, config.checkpointing, config.validation, config.logging
    output_dir = Path(config.output_dir).expanduser()
    report_to = log.report_to if log.report_to not in (None, "none") else None
    accelerator = Accelerator(
        cpu=use_cpu_backend(),
        mixed_precision=opt.mixed_precision,
        gradient_accumulation_steps=opt.gradient_accumulation_steps,
        log_with=report_to,
        project_dir=str(output_dir / "logs"),
    )
    set_seed(opt.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    if report_to:
        accelerator.init_trackers("uplift")

    vae = load_vae(config.vae).to(accelerator.device, memory_format=torch.channels_last).eval().requires_grad_(False)
    vae_id = f"{vae_identity(vae)}-{opt.mixed_precision}"
    factors = trained_upscale_factors(opt.depths)
    model = UPLiFTLatentUpscaler(latent_channels=vae.config.latent_channels, trained_upscale_factors=factors, **config.model)
    checkpoint_path = find_checkpoint(output_dir, resume) if resume else None
    if config.init_from is not None and checkpoint_path is None:  # a resumed run takes its weights from the checkpoint
        model.load_state_dict(UPLiFTLatentUpscaler.from_pretrained(config.init_from).state_dict())
        accelerator.print(f"initialised the weights from {config.init_from} (fresh optimiser and LR schedule)")
    ema = EMAModel(model.parameters(), decay=opt.ema_decay) if opt.ema_decay else None

    dataset = ImageFolderDataset(
        data.train_dirs, data.resolution, crops_per_image=data.crops_per_image,
        max_upscale_crop=data.max_upscale_crop, seed=opt.seed, crop=data.crop,
    )
    accelerator.print(f"training data: {dataset.describe()}")
    if accelerator.is_main_process and dataset.num_skipped:
        reasons = {f"shorter side < {data.resolution} px": dataset.too_small, "unreadable": dataset.unreadable}
        rows = [f"{reason}\t{path}\t{why}\n" for reason, files in reasons.items() for path, why in files.items()]
        (output_dir / "skipped_images.tsv").write_text("".join(rows))
        accelerator.print(f"  (every skipped file is listed in {output_dir / 'skipped_images.tsv'})")
    cache = LatentCache(data.cache_dir) if data.cache_dir else None
    batches_per_epoch = math.ceil(math.ceil(len(dataset) / accelerator.num_processes) / opt.batch_size)  # as epoch_order pads
    steps_per_epoch = max(1, batches_per_epoch // opt.gradient_accumulation_steps)
    max_steps = opt.max_steps or opt.epochs * steps_per_epoch

    optimizer = torch.optim.Adam(model.parameters(), lr=opt.lr, betas=tuple(opt.adam_betas), weight_decay=opt.weight_decay)
    # accelerate steps a prepared scheduler once per process at every optimiser step: count in those units
    scheduler = get_scheduler(
        opt.lr_scheduler, optimizer, num_warmup_steps=opt.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    step, epoch, position, elapsed_before = 0, 0, 0, 0.0
    if checkpoint_path is not None:
        state = load_checkpoint(accelerator, checkpoint_path)
        step, epoch, position, elapsed_before = (state[key] for key in ("step", "epoch", "position", "elapsed"))
        accelerator.print(f"resumed from {checkpoint_path} at step {step} (epoch {epoch}, batch {position})")
    elif resume:
        accelerator.print(f"--resume {resume}: no checkpoint in {output_dir / 'checkpoints'} yet; starting from scratch")

    last_metrics: Dict = {}
    started = time.time()

    def elapsed() -> float:  # training seconds, cumulative across resumes
        return elapsed_before + time.time() - started

    progress = tqdm(total=max_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    def checkpoint() -> None:
        save_checkpoint(accelerator, output_dir, step, {"epoch": epoch, "position": position, "elapsed": round(elapsed(), 2)},
                        keep_last=ckpt.keep_last)

    def run_validation() -> None:
        nonlocal last_metrics
        unwrapped = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(unwrapped.parameters())
            ema.copy_to(unwrapped.parameters())
        last_metrics = validate(unwrapped, vae, val, output_dir, step)
        if ema is not None:
            ema.restore(unwrapped.parameters())
        psnr_bp = f"{last_metrics['psnr_bp']:.4f}" if "psnr_bp" in last_metrics else ""
        with open(output_dir / "validation.csv", "a") as handle:
            if handle.tell() == 0:
                handle.write("step,psnr,count,psnr_bp\n")
            handle.write(f"{step},{last_metrics['psnr']:.4f},{last_metrics['count']},{psnr_bp}\n")
        accelerator.log({f"val/{k}": v for k, v in last_metrics.items()}, step=step)
        accelerator.print(f"step {step}: validation {last_metrics}")

    if accelerator.num_processes > 1 and step == 0:
        # the model and EMA were built from the same seed everywhere; from here on each process
        # draws its own noise (seed + process index; a resumed run restores each process's state)
        set_seed(opt.seed, device_specific=True)
    model.train()
    reported_failures = set()
    stop_signal = int(any_process(accelerator, max(received, default=0))[0])  # the processes agree on stopping
    # --stop-at-step ends this run early; the schedule above still spans max_steps
    end_step = min(max_steps, opt.stop_at_step or max_steps)
    while step < end_step and not stop_signal:
        order = epoch_order(len(dataset), opt.seed, epoch, accelerator.process_index, accelerator.num_processes)
        loader = DataLoader(
            torch.utils.data.Subset(dataset, order[position * opt.batch_size :]),
            batch_size=opt.batch_size, num_workers=data.num_workers, collate_fn=collate_skipping_failures,
            # its own generator: creating an iterator draws a seed, which from the global RNG
            # would shift the lat_aug noise of a resumed run away from the uninterrupted one
            generator=torch.Generator().manual_seed(opt.seed * 100_003 + epoch),
        )
        for batch in loader:
            position += 1
            for path, error in batch["failed"]:  # counted here too: workers count in their own copy
                dataset.unreadable.setdefault(path, error)
                if path not in reported_failures:
                    reported_failures.add(path)
                    print(f"skipped an image that no longer loads: {path} ({error})", flush=True)  # by the process that met it
            if any_process(accelerator, batch["pixel_values"] is None)[0]:
                continue  # no image left in a process's batch: every process skips it, so they keep stepping together
            images = batch["pixel_values"].to(accelerator.device)
            pyramid = image_pyramid(images, max(opt.depths))
            latents = encode_levels(vae, pyramid, batch["keys"], cache, vae_id, accelerator.autocast)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    losses = multi_depth_loss(
                        model, latents, pyramid, opt.depths, lat_aug=opt.lat_aug, vae=vae, pixel_weight=opt.pixel_loss_weight,
                        noisy_targets=opt.lat_aug_noisy_targets, pixel_back_projection=opt.pixel_loss_back_projection,
                    )
                accelerator.backward(losses["loss"])
                grad_norm = None
                if accelerator.sync_gradients and opt.max_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), opt.max_grad_norm)
                lr_used = optimizer.param_groups[0]["lr"]  # the scheduler steps after the optimiser
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            step += 1
            if ema is not None:
                ema.step(accelerator.unwrap_model(model).parameters())
            record = {"step": step, "epoch": epoch, "loss": float(accelerator.gather(losses["loss"].detach()[None]).mean())}
            record.update({k: float(v) for k, v in losses.items() if k != "loss"})
            record.update(lr=lr_used, grad_norm=None if grad_norm is None else float(grad_norm), time=round(elapsed(), 2))
            if accelerator.is_main_process:
                with open(output_dir / "train_log.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            if step % log.log_every == 0:
                accelerator.log({k: v for k, v in record.items() if isinstance(v, float)}, step=step)
            progress.update(1)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if ckpt.every_steps and step % ckpt.every_steps == 0:
                checkpoint()
            if accelerator.is_main_process and val.dir and val.every_steps and step % val.every_steps == 0:
                run_validation()
            out_of_time = bool(opt.max_minutes) and time.time() - started > 60 * opt.max_minutes
            stop_signal, out_of_time = (int(v) for v in any_process(accelerator, max(received, default=0), out_of_time))
            if out_of_time:
                accelerator.print(f"time budget of {opt.max_minutes} min reached at step {step}")
                max_steps = end_step = step
            if step >= end_step or stop_signal:
                break
        else:
            epoch, position = epoch + 1, 0
    progress.close()
    if end_step < max_steps and step >= end_step:
        accelerator.print(
            f"stopped at step {step} of {max_steps} (--stop-at-step); to continue, run the same command "
            "without --stop-at-step, with --resume latest"
        )

    if not ckpt.every_steps or step % ckpt.every_steps:  # unless this step's checkpoint is written
        checkpoint()
    if stop_signal:
        accelerator.print(f"stopped by signal {stop_signal} at step {step}; resume with: {resume_hint}")
        accelerator.end_training()
        return {"step": step, "stopped": True, "signal": stop_signal}
    if accelerator.is_main_process and val.dir and (not val.every_steps or step % val.every_steps):
        run_validation()
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(unwrapped.parameters())
    checksums = [parameter_checksum(unwrapped)]
    if accelerator.num_processes > 1:  # the replicas must hold the same weights
        checksums = accelerator.gather(torch.tensor(checksums, dtype=torch.float64, device=accelerator.device)).tolist()
        if len(set(checksums)) != 1:
            raise RuntimeError(f"the {accelerator.num_processes} processes ended with different weights (checksums {checksums}).")
        accelerator.print(f"the {accelerator.num_processes} processes hold the same weights: parameter checksums {checksums}")
    if accelerator.is_main_process:
        model_dir = output_dir / "model"
        unwrapped.save_pretrained(model_dir)
        write_model_card(model_dir, config, step, last_metrics, elapsed(), dataset.num_skipped, len(dataset))
        accelerator.print(
            f"saved {model_dir} after {step} steps; skipped images: {len(dataset.too_small)} too small, "
            f"{len(dataset.unreadable)} unreadable"
            + (f"; latent cache {cache.hits} hits / {cache.misses} misses" if cache else "")
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"step": step, "stopped": False, "validation": last_metrics, "checksums": checksums}


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit status (see the module docstring)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    resume = args.resume or ("latest" if args.require_resume else None)
    try:  # everything checked before anything is written
        config = build_config(args)
        checkpoint = find_checkpoint(config.output_dir, resume) if resume else None
        if checkpoint is None and args.require_resume:
            raise FileNotFoundError(
                f"--require-resume: no checkpoint to resume from in {str(Path(config.output_dir).expanduser() / 'checkpoints')!r}; "
                "check --output-dir, or drop --require-resume to start from scratch."
            )
        state = init_process_group_state()
    except (ValueError, FileNotFoundError, LaunchMismatchError) as error:
        if os.environ.get("RANK", "0") == "0":  # one line, not one per process
            print(f"error: {error}", file=sys.stderr)
        return 2
    if args.smoke_test:
        with state.main_process_first():  # the others find the files written
            prepare_smoke_test(config)
    result = train(config, resume=str(checkpoint) if checkpoint else resume, resume_hint=resume_command(argv))
    if result["stopped"]:
        return 128 + result["signal"]  # 143 = SIGTERM, 130 = SIGINT (Ctrl-C), as shells report them
    return 0


if __name__ == "__main__":
    sys.exit(main())
