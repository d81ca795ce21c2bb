"""Tests of the training code in training/: objective, data, latent cache, checkpoints and the
`python -m training.train_uplift` script (config handling and one-line errors, a real tiny run on
TAEF2, exact resume, SIGTERM / Ctrl-C exit statuses and the resume command, cumulative time, the
logged lr, validation, EMA, the ``--smoke-test`` mode). Multi-process runs: test_distributed_training.py.

CI-sized: the tiny config (training/configs/tiny.yaml) at 64 px on six BSDS500 photos shrunk
to 96 x 64 in ``tmp_path``; every run is a few optimiser steps.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from training import train_uplift
from training.checkpointing import checkpoint_dirs, find_checkpoint
from training.data import ImageFolderDataset, collate_skipping_failures
from training.latent_cache import LatentCache, vae_identity
from training.objective import image_pyramid, multi_depth_loss
from training.train_uplift import build_config, encode_levels, main, parse_args, train

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = REPO_ROOT / "training" / "configs" / "tiny.yaml"


# ---------------------------------------------------------------------------- helpers
def _shrink_bsds(shared_path, folder: Path, count: int, offset: int = 0) -> Path:
    """``count`` BSDS500 training photos resized to 96 x 64 (or 64 x 96) into ``folder``."""
    source = sorted(shared_path("data", "bsds500", "train").glob("*.jpg"))[offset : offset + count]
    assert len(source) == count
    folder.mkdir(parents=True, exist_ok=True)
    for path in source:
        with Image.open(path) as image:
            image = image.convert("RGB")
            size = (96, 64) if image.width >= image.height else (64, 96)
            image.resize(size, Image.BICUBIC).save(folder / f"{path.stem}.png")
    return folder


@pytest.fixture
def images(shared_path, tmp_path) -> Path:
    return _shrink_bsds(shared_path, tmp_path / "images", 6)


def tiny_config(taef2_dir: Path, images: Path, output: Path, max_steps: int, *sets: str, extra=()) -> dict:
    argv = [
        "--config", str(TINY), "--vae", str(taef2_dir), "--train-data", str(images),
        "--output-dir", str(output), "--max-steps", str(max_steps), *extra,
    ]
    if sets:
        argv += ["--set", *sets]
    return build_config(parse_args(argv))


def read_log(output: Path) -> list:
    return [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def training_process(command, output: Path, env: dict, timeout: float = 240):
    """Start a training command in the repository root, wait until it has logged its first step
    in ``output``, yield the ``Popen`` (pipes for stdout / stderr); killed if still alive at exit."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log_path = output / "train_log.jsonl"
        deadline = time.time() + timeout
        while not (log_path.is_file() and log_path.read_text().strip()):
            assert process.poll() is None, process.communicate()
            assert time.time() < deadline, f"no training step logged within {timeout} s"
            time.sleep(0.2)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# ---------------------------------------------------------------------------- 1. a real tiny run
def test_tiny_run_decreases_loss_and_saves_a_loadable_model(taef2_dir, images, tmp_path, capsys):
    from uplift_diffusers import UPLiFTLatentUpscaler

    # unreadable and too-small files in the training folder are skipped, never crash the run,
    # and the run says so when it starts
    (images / "garbage.jpg").write_bytes(b"this is not a JPEG")
    Image.new("RGB", (40, 40), (128, 64, 32)).save(images / "small.png")
    output = tmp_path / "run"
    config = tiny_config(taef2_dir, images, output, 18, "optimization.lr=0.003", "optimization.lat_aug=0",
                         "checkpointing.every_steps=0")
    result = train(config)
    assert {k: result[k] for k in ("step", "stopped", "validation")} == {"step": 18, "stopped": False, "validation": {}}
    printed = capsys.readouterr().out
    assert (
        "training data: 6 images usable (6 items per epoch, crop=random_resized at 64 px); "
        "skipped 2: 1 shorter side < 64 px, 1 unreadable\n"
    ) in printed
    listed = (output / "skipped_images.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in listed] == [
        ["shorter side < 64 px", str(images / "small.png")], ["unreadable", str(images / "garbage.jpg")]]

    log = read_log(output)
    assert [r["step"] for r in log] == list(range(1, 19))
    for record in log:
        assert {"step", "loss", "lr", "loss_depth1", "loss_depth2", "epoch"} <= set(record)
        assert record["lr"] == pytest.approx(0.003)  # constant schedule, the --set value
        assert record["loss"] == pytest.approx(record["loss_depth1"] + record["loss_depth2"], rel=1e-5)
    first = np.mean([r["loss"] for r in log[:3]])
    last = np.mean([r["loss"] for r in log[-3:]])
    assert last < 0.9 * first, (first, last)

    model_dir = output / "model"
    model = UPLiFTLatentUpscaler.from_pretrained(model_dir)
    assert model.config.latent_channels == 32  # taken from the VAE
    assert list(model.config.encoder_channels) == [8, 8, 16, 16, 16]  # tiny.yaml
    assert model.config.trained_upscale_factors == [2, 4]  # depths [1, 2]
    assert result["checksums"] == [pytest.approx(train_uplift.parameter_checksum(model), rel=1e-12)]
    card = (model_dir / "README.md").read_text()
    assert "Optimiser steps: 18" in card
    assert "(6 items, 2 images skipped)" in card
    assert "## Training configuration" in card and "lr: 0.003" in card and "depths:" in card
    # a final checkpoint is written even with periodic checkpoints off
    assert [p.name for p in checkpoint_dirs(output)] == ["checkpoint-18"]


# ---------------------------------------------------------------------------- 2. objective
class NearestStub(torch.nn.Module):
    """Each step is a nearest 2x upsampling of the previous one; records its inputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, latents, image, num_steps=1, output_intermediate=False):
        self.calls.append({"latents": latents.clone(), "image": image, "num_steps": num_steps})
        steps, z = [], latents
        for _ in range(num_steps):
            z = z.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
            steps.append(z)
        return SimpleNamespace(intermediate=steps)


def _toy_levels():
    """L2 = [[1, 2], [3, 4]]; L1 = nearest2x(L2) + 0.5; L0 = nearest2x(L1) - 1."""
    l2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])[None, None]
    l1 = torch.kron(l2, torch.ones(2, 2)) + 0.5
    l0 = torch.kron(l1, torch.ones(2, 2)) - 1.0
    images = [torch.full((1, 3, 8 * s, 8 * s), float(s)) for s in (8, 4, 2)]
    return [l0, l1, l2], images


def test_multi_depth_loss_matches_hand_computation():
    latents, images = _toy_levels()
    stub = NearestStub()
    losses = multi_depth_loss(stub, latents, images, [1, 2], lat_aug=0.0)
    # depth 1: nearest(L1) - L0 = 1 everywhere -> 1.
    # depth 2: step 1 nearest(L2) - L1 = -0.5 -> 0.25; step 2 nearest^2(L2) - L0 = 0.5 -> 0.25.
    assert losses["loss_depth1"].item() == pytest.approx(1.0)
    assert losses["loss_depth2"].item() == pytest.approx(0.5)
    assert losses["loss"].item() == pytest.approx(1.5)
    assert not losses["loss_depth1"].requires_grad
    assert [c["num_steps"] for c in stub.calls] == [1, 2]
    assert stub.calls[0]["image"] is images[1] and stub.calls[1]["image"] is images[2]
    assert torch.equal(stub.calls[0]["latents"], latents[1])


class ConstantDecoderVAE(torch.nn.Module):
    """A stand-in VAE whose decode maps each latent pixel to an 8 x 8 block of value 2 z - 1,
    replicated over RGB (so decoded pixels in [0, 1] equal z)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.config = SimpleNamespace(latent_channels=1)

    def encode(self, x):  # pragma: no cover - only decode is used by the pixel loss
        raise NotImplementedError

    def decode(self, z):
        up = torch.kron(z, torch.ones(8, 8)).repeat(1, 3, 1, 1)
        return SimpleNamespace(sample=2 * up - 1)


def test_pixel_loss_term_matches_hand_computation_and_reaches_the_latents():
    vae = ConstantDecoderVAE()
    latents, images = _toy_levels()
    latents = [level / 10 for level in latents]          # decoded pixels = latents / 10
    target = torch.full_like(images[0], 0.2)
    reference = torch.full_like(images[1], 0.25)
    pyramid = [target, reference, images[2]]
    stub = NearestStub()
    losses = multi_depth_loss(stub, latents, pyramid, [1], vae=vae, pixel_weight=10.0)
    # decoded = nearest(L1)/10 in [0, 1]; colour correction shifts its mean to 0.25
    decoded = torch.kron(torch.kron(latents[1], torch.ones(2, 2)), torch.ones(8, 8)).repeat(1, 3, 1, 1)
    corrected = decoded - decoded.mean() + 0.25
    expected_pixels = ((corrected - 0.2) ** 2).mean()
    assert losses["pixel_depth1"].item() == pytest.approx(expected_pixels.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx(losses["loss_depth1"].item() + 10 * expected_pixels.item(), rel=1e-6)

    z = latents[1].clone().requires_grad_(True)
    multi_depth_loss(stub, [latents[0], z], pyramid, [1], vae=vae, pixel_weight=1.0)["loss"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pixel_weight"):
        multi_depth_loss(stub, latents, pyramid, [1], pixel_weight=1.0)


def test_stop_at_step_keeps_the_schedule_and_continues_exactly(taef2_dir, images, tmp_path, capsys):
    """--stop-at-step 2 of a 4-step cosine run: it ends at step 2 with a checkpoint and a model of
    step 2; the LR it used is the 4-step schedule's; --resume latest then finishes the same 4 steps
    with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    schedule = ("optimization.lr_scheduler=cosine", "optimization.lr=0.003")
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(tiny_config(taef2_dir, images, whole, 4, *schedule))
    config = tiny_config(taef2_dir, images, split, 4, *schedule, extra=["--stop-at-step", "2"])
    assert config.optimization.stop_at_step == 2
    result = train(config)
    assert result["step"] == 2 and (split / "checkpoints" / "checkpoint-2").is_dir() and (split / "model" / "config.json").is_file()
    assert "stopped at step 2 of 4 (--stop-at-step)" in capsys.readouterr().out
    lrs = lambda folder: [json.loads(line)["lr"] for line in (folder / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert lrs(split) == lrs(whole)[:2]
    config.optimization.stop_at_step = None
    assert train(config, resume="latest")["step"] == 4
    assert lrs(split) == lrs(whole)
    ours, theirs = load_file(split / "model" / "diffusion_pytorch_model.safetensors"), load_file(whole / "model" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)


def test_pixel_loss_with_back_projection_scores_the_pipelines_output():
    """``pixel_back_projection`` = N: the colour-corrected decode is back-projected N rounds onto
    the depth's input image (unclamped, so differentiable) before the MSE, as the SR pipeline does."""
    from uplift_diffusers.utils.color_correction import project_to

    vae = ConstantDecoderVAE()
    latents, images = _toy_levels()
    latents = [level / 10 for level in latents]
    generator = torch.Generator().manual_seed(3)
    target = torch.rand(images[0].shape, generator=generator)
    reference = torch.rand(images[1].shape, generator=generator)
    pyramid = [target, reference, images[2]]
    plain = multi_depth_loss(NearestStub(), latents, pyramid, [1], vae=vae, pixel_weight=1.0)
    projected = multi_depth_loss(NearestStub(), latents, pyramid, [1], vae=vae, pixel_weight=1.0, pixel_back_projection=3)
    decoded = torch.kron(torch.kron(latents[1], torch.ones(2, 2)), torch.ones(8, 8)).repeat(1, 3, 1, 1)
    corrected = decoded - decoded.mean(dim=(2, 3), keepdim=True) + reference.mean(dim=(2, 3), keepdim=True)
    expected = ((project_to(corrected, reference, 3) - target) ** 2).mean()
    assert projected["pixel_depth1"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert projected["pixel_depth1"].item() != pytest.approx(plain["pixel_depth1"].item(), rel=1e-3)
    z = latents[1].clone().requires_grad_(True)
    multi_depth_loss(NearestStub(), [latents[0], z], pyramid, [1], vae=vae, pixel_weight=1.0, pixel_back_projection=3)["loss"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_multi_depth_loss_with_latent_noise_from_a_seeded_generator():
    latents, images = _toy_levels()
    a = 0.3
    stub = NearestStub()
    losses = multi_depth_loss(stub, latents, images, [1, 2], lat_aug=a, generator=torch.Generator().manual_seed(7))
    reference = torch.Generator().manual_seed(7)
    n1 = torch.randn(latents[1].shape, generator=reference)  # drawn for depth 1 first
    n2 = torch.randn(latents[2].shape, generator=reference)
    torch.testing.assert_close(stub.calls[0]["latents"], latents[1] + a * n1)
    torch.testing.assert_close(stub.calls[1]["latents"], latents[2] + a * n2)
    # nearest upsampling repeats every value 4x, so each MSE is the mean over the coarse grid
    depth1 = ((1.0 + a * n1) ** 2).mean()
    depth2 = ((a * n2 - 0.5) ** 2).mean() + ((a * n2 + 0.5) ** 2).mean()
    assert losses["loss_depth1"].item() == pytest.approx(depth1.item(), rel=1e-6)
    assert losses["loss_depth2"].item() == pytest.approx(depth2.item(), rel=1e-6)
    assert losses["loss"].item() == pytest.approx((depth1 + depth2).item(), rel=1e-6)
    again = multi_depth_loss(NearestStub(), latents, images, [1, 2], lat_aug=a, generator=torch.Generator().manual_seed(7))
    assert again["loss"].item() == losses["loss"].item()


def test_noisy_targets_reproduce_the_official_in_place_noise():
    """The authors' loop noises the input latents in place (``feat_in += noise_aug``), and the
    same tensors are the targets of the deeper depths' intermediate steps: re-enacted here."""
    generator = torch.Generator().manual_seed(3)
    latents = [torch.randn(2, 4, 16 >> j, 16 >> j, generator=generator) for j in range(4)]
    images = [torch.rand(2, 3, 128 >> j, 128 >> j, generator=generator) for j in range(4)]
    a = 1.0
    feat_scales = {j: latents[j].clone() for j in range(4)}
    reference = torch.Generator().manual_seed(11)
    official, per_depth = 0.0, {}
    for depth in (1, 2, 3):
        feat_in = feat_scales[depth]
        feat_in += a * torch.randn(feat_in.shape, generator=reference)
        outputs = NearestStub()(feat_in, images[depth], num_steps=depth).intermediate
        per_depth[depth] = sum(F.mse_loss(out, feat_scales[depth - k]) for k, out in enumerate(outputs, start=1))
        official = official + per_depth[depth]
    ours = multi_depth_loss(NearestStub(), latents, images, [1, 2, 3], lat_aug=a,
                            generator=torch.Generator().manual_seed(11), noisy_targets=True)
    assert ours["loss"].item() == pytest.approx(official.item(), rel=1e-6)
    for depth in (1, 2, 3):
        assert ours[f"loss_depth{depth}"].item() == pytest.approx(per_depth[depth].item(), rel=1e-6)
    # clean targets (the default): the same inputs, only level 0 ... with the clean latents
    clean = multi_depth_loss(NearestStub(), latents, images, [1, 2, 3], lat_aug=a, generator=torch.Generator().manual_seed(11))
    assert clean["loss_depth1"].item() == pytest.approx(per_depth[1].item(), rel=1e-6)  # depth 1 targets only level 0
    assert clean["loss_depth2"].item() < per_depth[2].item()  # the noisy level-1 target adds ~a**2
    # without lat_aug the option changes nothing
    plain = [multi_depth_loss(NearestStub(), latents, images, [1, 2, 3], noisy_targets=flag)["loss"].item() for flag in (False, True)]
    assert plain[0] == plain[1]


def test_multi_depth_loss_rejects_bad_depths():
    latents, images = _toy_levels()
    with pytest.raises(ValueError, match="depths"):
        multi_depth_loss(NearestStub(), latents, images, [3])
    with pytest.raises(ValueError, match="depths"):
        multi_depth_loss(NearestStub(), latents, images, [])
    with pytest.raises(ValueError, match="repeats a depth"):
        multi_depth_loss(NearestStub(), latents, images, [1, 1])


def test_image_pyramid_is_antialiased_bilinear_per_level():
    images = torch.rand(2, 3, 64, 96)
    levels = image_pyramid(images, 2)
    assert [tuple(level.shape[-2:]) for level in levels] == [(64, 96), (32, 48), (16, 24)]
    assert torch.equal(levels[0], images)
    for j in (1, 2):
        expected = F.interpolate(images, size=(64 >> j, 96 >> j), mode="bilinear", antialias=True, align_corners=False)
        torch.testing.assert_close(levels[j], expected.clamp(0, 1), rtol=0, atol=1e-6)
    # antialiasing: not the same as plain bilinear sampling
    plain = F.interpolate(images, size=(16, 24), mode="bilinear", align_corners=False)
    assert (levels[2] - plain).abs().max() > 0.05


# ---------------------------------------------------------------------------- 3. exact resume
class SimulatedKill(Exception):
    pass


@pytest.mark.slow  # three training runs, about 3 s
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(taef2_dir, images, tmp_path, monkeypatch):
    # 6 images, batch 2: 3 batches per epoch; checkpoints every 2 steps (mid-epoch), 7 steps.
    # Both random sources of a step are on (lat_aug noise and the model's noise channels), and
    # validation runs at every checkpoint: none of it may shift the resumed run.
    sets = (
        "checkpointing.every_steps=2", "checkpointing.keep_last=2", "optimization.lat_aug=0.1",
        "model.noise_scale=0.5", f"validation.dir={images}", "validation.every_steps=2", "validation.num_images=2",
    )
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(tiny_config(taef2_dir, images, run_a, 7, *sets))
    log_a = {r["step"]: r["loss"] for r in read_log(run_a)}
    assert sorted(log_a) == list(range(1, 8))
    assert [p.name for p in checkpoint_dirs(run_a)] == ["checkpoint-6", "checkpoint-7"]  # keep_last pruned 2, 4

    # run B dies inside step 4 (its 4th loss call): no checkpoint is written after checkpoint-2
    real_loss = train_uplift.multi_depth_loss
    calls = {"n": 0}

    def dying_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise SimulatedKill()
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_uplift, "multi_depth_loss", dying_loss)
    with pytest.raises(SimulatedKill):
        train(tiny_config(taef2_dir, images, run_b, 7, *sets))
    monkeypatch.setattr(train_uplift, "multi_depth_loss", real_loss)
    assert [r["step"] for r in read_log(run_b)] == [1, 2, 3]
    assert [p.name for p in checkpoint_dirs(run_b)] == ["checkpoint-2"]

    # a partial temporary directory and an incomplete checkpoint are never taken for the latest
    partial = run_b / "checkpoints" / ".tmp-checkpoint-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half a file")
    incomplete = run_b / "checkpoints" / "checkpoint-6"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"no training_state.json")
    assert find_checkpoint(run_b, "latest") == run_b / "checkpoints" / "checkpoint-2"

    lines_before = len(read_log(run_b))
    result = train(tiny_config(taef2_dir, images, run_b, 7, *sets), resume="latest")
    assert result["step"] == 7
    resumed = read_log(run_b)[lines_before:]
    assert [r["step"] for r in resumed] == [3, 4, 5, 6, 7]
    for record in resumed:
        assert record["loss"] == pytest.approx(log_a[record["step"]], rel=1e-5, abs=0), record["step"]

    names = sorted(p.name for p in (run_b / "checkpoints").iterdir())
    assert names == ["checkpoint-6", "checkpoint-7"]  # the partial ones were replaced, old ones pruned
    for name, step in (("checkpoint-6", 6), ("checkpoint-7", 7)):
        state = json.loads((run_b / "checkpoints" / name / "training_state.json").read_text())
        assert state["step"] == step
    from safetensors.torch import load_file

    weights_a = load_file(run_a / "model" / "diffusion_pytorch_model.safetensors")
    weights_b = load_file(run_b / "model" / "diffusion_pytorch_model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=1e-5, atol=1e-6)


def test_find_checkpoint_rejects_an_incomplete_directory(tmp_path):
    assert find_checkpoint(tmp_path, "latest") is None
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(FileNotFoundError, match="training_state.json"):
        find_checkpoint(tmp_path, str(tmp_path / "checkpoint-3"))


def test_signal_handlers_are_restored_after_training(taef2_dir, images, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train(tiny_config(taef2_dir, images, tmp_path / "run", 1))
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---------------------------------------------------------------------------- 4. SIGTERM
@pytest.mark.slow  # a training run in a new interpreter, stopped by SIGTERM: 6.3 s (measured; 22 s at load 10)
def test_sigterm_saves_a_checkpoint_and_prints_the_resume_hint(taef2_dir, images, tmp_path):
    output = tmp_path / "run"
    command = [  # as documented: `python -m training.train_uplift` from the repository root
        sys.executable, "-m", "training.train_uplift", "--config", str(TINY), "--vae", str(taef2_dir), "--train-data", str(images),
        "--output-dir", str(output), "--max-steps", "100000", "--checkpointing-steps", "0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with training_process(command, output, env) as process:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]  # 128 + SIGTERM: a scheduler sees it did not finish
    last_step = read_log(output)[-1]["step"]
    hint = f"stopped by signal {int(signal.SIGTERM)} at step {last_step}; resume with: "
    assert hint in stdout
    printed = stdout.split(hint, 1)[1].splitlines()[0]
    assert shlex.split(printed) == command[:1] + command[1:] + ["--resume", "latest"]  # the full command
    assert [p.name for p in checkpoint_dirs(output)] == [f"checkpoint-{last_step}"]
    state = json.loads((output / "checkpoints" / f"checkpoint-{last_step}" / "training_state.json").read_text())
    assert state["step"] == last_step
    assert not list((output / "checkpoints").glob(".tmp-*"))
    assert not (output / "model").exists()  # a stopped run is not a finished one

    # the hint works: resuming continues at the next step
    result = train(tiny_config(taef2_dir, images, output, last_step + 2), resume="latest")
    assert result["step"] == last_step + 2
    assert [r["step"] for r in read_log(output)][-2:] == [last_step + 1, last_step + 2]


# ---------------------------------------------------------------------------- 5. latent cache
def test_latent_cache_hits_misses_and_corruption(tmp_path):
    cache = LatentCache(tmp_path / "cache")
    value = torch.randn(32, 4, 4)
    computed = []

    def compute(v=value):
        computed.append(1)
        return v

    first = cache.get_or_compute("image|box=(0, 0, 64, 64)|level=0|vae=abc", compute)
    again = cache.get_or_compute("image|box=(0, 0, 64, 64)|level=0|vae=abc", compute)
    assert torch.equal(first, value) and torch.equal(again, value)
    assert (cache.hits, cache.misses, len(computed)) == (1, 1, 1)
    for changed in ("image|box=(1, 0, 65, 64)|level=0|vae=abc", "image|box=(0, 0, 64, 64)|level=1|vae=abc",
                    "image|box=(0, 0, 64, 64)|level=0|vae=abd"):
        assert cache.get(changed) is None
        cache.get_or_compute(changed, lambda: torch.zeros(32, 4, 4))
    assert (cache.hits, cache.misses) == (1, 4)

    # an entry whose stored key differs (a hash collision) is a miss, not a stale latent
    key_a, key_b = "key-a", "key-b"
    cache.put(key_a, value)
    cache._path(key_b).parent.mkdir(parents=True, exist_ok=True)
    cache._path(key_b).write_bytes(cache._path(key_a).read_bytes())
    assert cache.get(key_b) is None

    # corrupted (garbage or truncated) entries are misses and are rewritten
    path = cache._path(key_a)
    good = path.read_bytes()
    for broken in (b"garbage" * 10, good[: len(good) // 2]):
        path.write_bytes(broken)
        assert cache.get(key_a) is None
        misses = cache.misses
        assert torch.equal(cache.get_or_compute(key_a, lambda: value), value)
        assert cache.misses == misses + 1
        assert torch.equal(cache.get(key_a), value)
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_latent_cache_writes_are_atomic(tmp_path, monkeypatch):
    import training.latent_cache as latent_cache

    cache = LatentCache(tmp_path / "cache")

    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(latent_cache, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        cache.put("key", torch.ones(2))
    assert not cache._path("key").exists()
    assert not list((tmp_path / "cache").rglob("*.part"))
    assert cache.get("key") is None


def test_encode_levels_uses_the_cache_and_vae_identity_tracks_weights(taef2_dir, images, tmp_path):
    from uplift_diffusers.loaders.vae import load_vae

    vae = load_vae(str(taef2_dir)).eval()
    same = load_vae(str(taef2_dir)).eval()
    assert vae_identity(vae) == vae_identity(same)
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-3
    assert vae_identity(vae) != vae_identity(same)

    dataset = ImageFolderDataset(images, 64, crops_per_image=2)
    items = [dataset[0], dataset[1]]  # two crops (different boxes) of one image
    assert items[0]["key"] != items[1]["key"]
    batch = collate_skipping_failures(items)
    pyramid = image_pyramid(batch["pixel_values"], 2)
    cache = LatentCache(tmp_path / "cache")
    vae_id = vae_identity(vae)
    plain = encode_levels(vae, pyramid, batch["keys"], None, vae_id, contextlib.nullcontext)
    first = encode_levels(vae, pyramid, batch["keys"], cache, vae_id, contextlib.nullcontext)
    assert (cache.hits, cache.misses) == (0, 6)  # 2 crops x 3 levels, each its own entry
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 6
    second = encode_levels(vae, pyramid, batch["keys"], cache, vae_id, contextlib.nullcontext)
    assert (cache.hits, cache.misses) == (6, 6)
    assert [tuple(level.shape) for level in second] == [(2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    for a, b, c in zip(plain, first, second):
        assert torch.equal(b, c)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    encode_levels(vae, pyramid, batch["keys"], cache, vae_identity(same), contextlib.nullcontext)
    assert (cache.hits, cache.misses) == (6, 12)  # another VAE: all misses


# ---------------------------------------------------------------------------- 6. data
def test_dataset_skips_unreadable_and_small_images(shared_path, tmp_path):
    folder = _shrink_bsds(shared_path, tmp_path / "data", 3)
    garbage = folder / "broken.jpg"
    garbage.write_bytes(b"\x00\x01garbage bytes")
    small = folder / "nested" / "small.png"
    small.parent.mkdir()
    Image.new("RGB", (80, 40)).save(small)
    dataset = ImageFolderDataset(folder, 64)
    assert len(dataset) == 3
    assert list(dataset.unreadable) == [str(garbage)]
    assert dataset.too_small == {str(small): "80 x 40 px"}
    assert dataset.num_skipped == 2
    for i in range(len(dataset)):
        assert dataset[i]["pixel_values"].shape == (3, 64, 64)

    # a file that breaks after indexing is skipped and counted at load time, and dropped by collate
    broken = dataset.files[1]
    broken.write_bytes(broken.read_bytes()[:100])
    item = dataset[1]
    assert item["pixel_values"] is None
    assert list(dataset.unreadable) == [str(garbage), str(broken)]
    assert dataset[1]["pixel_values"] is None and list(dataset.unreadable) == [str(garbage), str(broken)]  # counted once
    batch = collate_skipping_failures([dataset[0], item, dataset[2]])
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and len(batch["keys"]) == 2
    assert batch["failed"] == [(str(broken), item["error"])] and item["error"]
    assert collate_skipping_failures([item]) == {"pixel_values": None, "keys": [], "failed": [(str(broken), item["error"])]}
    assert dataset.describe() == ("3 images usable (3 items per epoch, crop=random_resized at 64 px); skipped 3: "
                                  "1 shorter side < 64 px, 2 unreadable")
    assert dataset.unreadable[str(broken)] == item["error"]


def test_center_crops_cut_the_middle_of_an_image_already_at_resolution(shared_path, tmp_path):
    folder = _shrink_bsds(shared_path, tmp_path / "data", 2)
    dataset = ImageFolderDataset(folder, 64, crop="center")
    assert len(dataset) == 2
    for i, path in enumerate(dataset.files):
        with Image.open(path) as image:
            width, height = image.size
            left, top = (width - 64) // 2, (height - 64) // 2
            expected = np.asarray(image.convert("RGB").crop((left, top, left + 64, top + 64)), dtype=np.float32) / 255
        params = dataset.crop_params(i)
        assert params["box"] == (left, top, left + 64, top + 64) and params["flip"] is False
        torch.testing.assert_close(dataset[i]["pixel_values"], torch.from_numpy(expected).permute(2, 0, 1))


def _noise_image(path: Path, size, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# landscape, portrait, odd sizes (rounding of the longer side and of the centre offset), square
CROP_SIZES = [(97, 64), (64, 131), (200, 150), (151, 300), (150, 150), (333, 65)]


def test_center_crops_are_the_official_torchvision_preprocessing(tmp_path):
    from torchvision import transforms

    folder = tmp_path / "data"
    folder.mkdir()
    for i, size in enumerate(CROP_SIZES):
        _noise_image(folder / f"{i}.png", size, i)
    official = transforms.Compose([  # mwalmer-umd/UPLiFT uplift/train_uplift.py, SD-VAE backbones
        transforms.Resize(64, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(64),
        transforms.ToTensor(),
    ])
    for dataset in (ImageFolderDataset(folder, 64, crop="center"), ImageFolderDataset(folder, 64, crop="center", crops_per_image=1)):
        assert dataset.crop == "center" and len(dataset) == len(CROP_SIZES)
        for i, path in enumerate(dataset.files):
            with Image.open(path) as image:
                expected = official(image.convert("RGB"))
                assert dataset.crop_params(i)["resize"] == transforms.functional.resize(image, 64).size
            assert torch.equal(dataset[i]["pixel_values"], expected), path.name


def test_random_crops_cut_the_resized_image_at_seeded_positions(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, size in enumerate(CROP_SIZES[:4]):
        _noise_image(folder / f"{i}.png", size, i)
    fixed = ImageFolderDataset(folder, 64, crop="random", crops_per_image=4, seed=3)
    again = ImageFolderDataset(folder, 64, crop="random", crops_per_image=4, seed=3)
    center = ImageFolderDataset(folder, 64, crop="center")
    assert len(fixed) == 16
    boxes = []
    for index in range(len(fixed)):
        params = fixed.crop_params(index)
        path = fixed.files[params["image_index"]]
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(params["resize"], Image.BILINEAR)
        left, top, right, bottom = params["box"]
        assert right - left == bottom - top == 64 and 0 <= left and right <= resized.width and bottom <= resized.height
        assert min(params["resize"]) == 64 and params["flip"] is False
        expected = torch.from_numpy(np.asarray(resized.crop(params["box"]), dtype=np.float32) / 255).permute(2, 0, 1)
        assert torch.equal(fixed[index]["pixel_values"], expected)
        assert again.crop_params(index) == params
        boxes.append(params["box"])
    assert len(set(boxes)) > 4  # positions vary along the longer side
    # cache keys tell the modes apart (same file and box, different pixels)
    keys = {ImageFolderDataset(folder, 64, crop=mode).crop_params(0)["key"] for mode in ("center", "random_resized")}
    assert center.crop_params(0)["key"] in keys and len(keys) == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop": "middle"}, "`crop` must be one of center, random, random_resized, got 'middle'"),
        ({"crop": "random", "max_upscale_crop": 0.5}, "applies to crop='random_resized' only"),
        ({"crop": "center", "crops_per_image": 2}, "would repeat the same crop"),
        ({"max_upscale_crop": 1.5}, r"`max_upscale_crop` must be a number in \(0, 1\]"),
        ({"crops_per_image": 0}, "`crops_per_image` must be an integer >= 1"),
    ],
)
def test_bad_crop_options_are_refused_at_the_door(kwargs, message):
    from training.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config({"data": {"train_dirs": "x", **kwargs}})


def test_fixed_crops_are_deterministic_across_instances(shared_path, tmp_path):
    folder = _shrink_bsds(shared_path, tmp_path / "data", 2)
    one = ImageFolderDataset(folder, 48, crops_per_image=3, seed=5)
    two = ImageFolderDataset(folder, 48, crops_per_image=3, seed=5)
    other = ImageFolderDataset(folder, 48, crops_per_image=3, seed=6)
    assert len(one) == 6
    boxes = [one.crop_params(i)["box"] for i in range(6)]
    assert boxes == [two.crop_params(i)["box"] for i in range(6)]
    assert len(set(boxes)) > 1
    assert boxes != [other.crop_params(i)["box"] for i in range(6)]
    for i in range(6):
        assert torch.equal(one[i]["pixel_values"], two[i]["pixel_values"])
        assert one[i]["key"] == two[i]["key"]


def test_empty_folder_is_a_value_error_naming_it(tmp_path):
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty-folder"):
        ImageFolderDataset(empty, 64)
    with pytest.raises(FileNotFoundError, match="missing-folder"):
        ImageFolderDataset(tmp_path / "missing-folder", 64)


# ---------------------------------------------------------------------------- 7. configuration
def test_config_overrides_and_errors(tmp_path, capsys):
    base = ["--config", str(TINY), "--train-data", str(tmp_path)]
    config = build_config(parse_args(base + ["--batch-size", "4", "--set", "optimization.lr=0.01", "model.refiner_blocks=2"]))
    # YAML 1.1 reads 1e-4 (no dot) as a string; --set takes it as the number users mean
    assert build_config(parse_args(base + ["--set", "optimization.lr=1e-4"])).optimization.lr == 1e-4
    assert config.optimization.lr == 0.01
    assert config.optimization.batch_size == 4
    assert config.model["refiner_blocks"] == 2
    assert config.data.train_dirs == [str(tmp_path)]
    assert config.optimization.depths == [1, 2]  # from tiny.yaml
    assert config.optimization.adam_betas == [0.9, 0.999]  # from the defaults

    bad = tmp_path / "bad.yaml"
    bad.write_text("optimization:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="optimization.learning_rate"):
        build_config(parse_args(["--config", str(bad), "--train-data", str(tmp_path)]))
    bad.write_text("optimisation:\n  lr: 0.1\n")
    with pytest.raises(ValueError, match="optimisation"):
        build_config(parse_args(["--config", str(bad), "--train-data", str(tmp_path)]))
    with pytest.raises(ValueError, match="optimization.nope"):
        build_config(parse_args(base + ["--set", "optimization.nope=1"]))
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        build_config(parse_args(base + ["--set", "lr=0.1"]))
    with pytest.raises(ValueError, match="divisible by 8 \\* 2\\^max\\(depths\\) = 32"):
        build_config(parse_args(base + ["--resolution", "48"]))
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_config(parse_args(["--config", str(tmp_path / "nope.yaml"), "--train-data", str(tmp_path)]))

    capsys.readouterr()
    assert main(["--config", str(TINY)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--train-data" in err[0]
    assert main(base + ["--resolution", "48"]) == 2
    assert "32" in capsys.readouterr().err


@pytest.mark.parametrize(
    "setting, message",
    [
        ("data.crop=middle", "data: `crop` must be one of center, random, random_resized"),
        ("data.max_upscale_crop=0.5", None),  # fine with the default random_resized crops
        ("optimization.max_grad_norm=0", "`optimization.max_grad_norm` must be a number > 0, or null for no gradient clipping, got 0"),
        ("optimization.lat_aug_noisy_targets=yes please", "`optimization.lat_aug_noisy_targets` must be true or false"),
        ("optimization.depths=[1, 1]", "repeats a depth"),
    ],
)
def test_config_validates_the_recipe_options(tmp_path, setting, message):
    argv = ["--config", str(TINY), "--train-data", str(tmp_path), "--set", setting]
    if message is None:
        build_config(parse_args(argv))
        return
    with pytest.raises(ValueError, match=message):
        build_config(parse_args(argv))
    with pytest.raises(ValueError, match="max_upscale_crop=0.5"):
        build_config(parse_args(argv[:-1] + ["data.crop=center", "data.max_upscale_crop=0.5"]))


def test_old_configs_keep_their_behaviour():
    """New options default to the behaviour the committed runs were made with."""
    for name in ("tiny.yaml", "taef2-bsds500.yaml"):
        config = build_config(parse_args(["--config", str(TINY.parent / name), "--train-data", "x"]))
        assert config.data.crop == "random_resized"
        assert config.optimization.lat_aug_noisy_targets is False
        assert config.optimization.max_grad_norm == 1.0


@pytest.mark.parametrize("recipe", sorted(TINY.parent.glob("*.yaml")), ids=lambda path: path.name)
def test_every_recipe_loads_with_the_values_it_writes(recipe):
    """Each committed recipe is a valid configuration whose every written value is the one used
    (``init_from`` is cleared: its folder is made by an earlier run)."""
    from training.config import load_config

    raw = yaml.safe_load(recipe.read_text())
    overrides = {"init_from": None}
    if not raw["data"].get("train_dirs"):
        overrides["data.train_dirs"] = ["x"]
    used = dataclasses.asdict(load_config(raw, overrides))
    for key, value in raw.items():
        if key in ("init_from",):
            continue
        if isinstance(value, dict) and key != "model":
            for name, setting in value.items():
                if (key, name) != ("data", "train_dirs") or setting:
                    assert used[key][name] == setting, (key, name)
        else:
            assert used[key] == value, key


def test_recipe_errors_name_the_key_and_the_fix(tmp_path):
    from training.config import load_config

    with pytest.raises(ValueError, match=r"unknown config key `data.resolutoin` \(did you mean `data.resolution`\?\); known keys of data: cache_dir,"):
        load_config({"data": {"resolutoin": 64, "train_dirs": ["x"]}})
    with pytest.raises(ValueError, match="config section `data` must be a mapping of keys to values, got 64"):
        load_config({"data": 64})
    with pytest.raises(ValueError, match=r"config key `validation.every_steps` must be null or an integer >= 0, got -1 \(int\)"):
        load_config({"data": {"train_dirs": "x"}}, {"validation.every_steps": -1})
    with pytest.raises(ValueError, match=r"config key `optimization.ema_decay` must be null or a number in \[0, 1\)"):
        load_config({"data": {"train_dirs": "x"}}, {"optimization.ema_decay": 1.0})
    config = load_config({"data": {"train_dirs": "x"}, "optimization": {"mixed_precision": False}})
    assert config.data.train_dirs == ["x"] and config.optimization.mixed_precision == "no"  # YAML's `no` and one folder
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    assert main(["--config", str(bad)]) == 2


def test_sd15_recipe_is_the_official_one(shared_path):
    """training/configs/sd15-vae.yaml against the official YAML and the facts of the authors'
    training loop (mwalmer-umd/UPLiFT uplift/train_uplift.py)."""
    import yaml

    from uplift_diffusers.constants import SD15_MODEL_ID

    config = build_config(parse_args(["--config", str(TINY.parent / "sd15-vae.yaml")]))
    official = yaml.safe_load(shared_path("fixtures", "uplift-reference", "uplift_sd1.5vae.yaml").read_text())
    train_cfg = official["train"]
    data, opt = config.data.__dict__, config.optimization.__dict__
    assert config.vae == official["backbone"]["diff_pipe_name"] == SD15_MODEL_ID
    assert config.model == {}  # UPLiFTLatentUpscaler defaults = the official architecture
    assert data["resolution"] == train_cfg["imsize"] == 1024
    assert data["crop"] == "center" and data["crops_per_image"] is None and data["max_upscale_crop"] == 1.0
    assert data["cache_dir"] is None and official["data"]["cache_dir"] is None
    assert data["num_workers"] == 4
    assert train_cfg["multi_step"] is True and train_cfg["only_deepest"] is False
    assert opt["depths"] == list(range(1, train_cfg["down_steps"] + 1)) == [1, 2, 3, 4]
    assert train_cfg["loss"] == "l2" and opt["pixel_loss_weight"] == 0.0
    assert opt["lat_aug"] == train_cfg["lat_aug"] == 1 and opt["lat_aug_noisy_targets"] is True
    assert opt["lr"] == train_cfg["lr"] and opt["batch_size"] == train_cfg["batch_size"] == 1
    assert opt["epochs"] == train_cfg["epochs"] == 5 and opt["max_steps"] is None and opt["max_minutes"] is None
    # torch.optim.Adam(params, lr) with its defaults, no scheduler, no clipping, no EMA, float32
    assert opt["adam_betas"] == [0.9, 0.999] and opt["weight_decay"] == 0.0
    assert opt["lr_scheduler"] == "constant" and opt["lr_warmup_steps"] == 0
    assert opt["gradient_accumulation_steps"] == 1
    assert opt["max_grad_norm"] is None and opt["ema_decay"] is None
    assert opt["mixed_precision"] == "no" and opt["seed"] == 0
    assert config.validation.dir is None and official["data"]["val_imgs"] is None


def test_a_run_with_the_sd15_recipe_options(taef2_dir, images, tmp_path, monkeypatch, capsys):
    """The options of sd15-vae.yaml on the tiny model: centre crops, no clipping, noisy targets,
    target latents encoded in float32 without autocast; an image that breaks mid-run is
    reported and counted, not silently dropped."""
    import uplift_diffusers.loaders.vae as vae_loading

    recipe = ("data.crop=center", "data.crops_per_image=null", "optimization.max_grad_norm=null",
              "optimization.lat_aug_noisy_targets=true", "optimization.mixed_precision=no", "checkpointing.every_steps=0")
    encodes, loss_kwargs = [], []
    real_encode, real_loss = vae_loading.encode_latents, train_uplift.multi_depth_loss

    def spy_encode(vae, images_minus1_1):
        encodes.append((images_minus1_1.dtype, torch.is_autocast_enabled("cpu")))
        return real_encode(vae, images_minus1_1)

    def spy_loss(*args, **kwargs):
        loss_kwargs.append(kwargs)
        return real_loss(*args, **kwargs)

    class BreakingDataset(train_uplift.ImageFolderDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.files[0].write_bytes(b"broken after indexing")  # e.g. a disk error

    monkeypatch.setattr(vae_loading, "encode_latents", spy_encode)
    monkeypatch.setattr(train_uplift, "multi_depth_loss", spy_loss)
    monkeypatch.setattr(train_uplift, "ImageFolderDataset", BreakingDataset)
    output = tmp_path / "run"
    config = tiny_config(taef2_dir, images, output, 6, *recipe, extra=["--batch-size", "1"])
    assert config.optimization.max_grad_norm is None  # `--set KEY=null` sets null
    assert config.optimization.mixed_precision == "no"  # YAML's unquoted `no` is false
    result = train(config)
    assert result["step"] == 6
    log = read_log(output)
    assert all(record["grad_norm"] is None for record in log)  # never clipped
    assert encodes and set(encodes) == {(torch.float32, False)}
    assert all(kwargs["noisy_targets"] is True for kwargs in loss_kwargs)
    printed = capsys.readouterr().out
    assert "training data: 6 images usable (6 items per epoch, crop=center at 64 px); skipped 0: " in printed
    broken = sorted(images.iterdir())[0]
    assert f"skipped an image that no longer loads: {broken}" in printed
    assert "skipped images: 0 too small, 1 unreadable" in printed
    assert "(6 items, 1 images skipped)" in (output / "model" / "README.md").read_text()


# ---------------------------------------------------------------------------- 8. validation, EMA, trackers
def test_validation_writes_psnr_and_samples(taef2_dir, images, shared_path, tmp_path):
    holdout = _shrink_bsds(shared_path, tmp_path / "holdout", 2, offset=10)
    output = tmp_path / "run"
    config = tiny_config(taef2_dir, images, output, 2, "validation.every_steps=2", extra=["--validation-data", str(holdout)])
    result = train(config)
    rows = (output / "validation.csv").read_text().splitlines()
    assert rows[0] == "step,psnr,count,psnr_bp" and len(rows) == 2
    step, psnr, count, psnr_bp = rows[1].split(",")
    assert (int(step), int(count)) == (2, 2)
    assert 5.0 < float(psnr) < 60.0
    assert result["validation"]["psnr"] == pytest.approx(float(psnr), abs=1e-4)
    # the same outputs back-projected onto the LR images (the pipeline's default): closer to HR
    assert result["validation"]["psnr_bp"] == pytest.approx(float(psnr_bp), abs=1e-4)
    assert float(psnr_bp) > float(psnr)
    sheet = output / "samples" / "step-0000002.png"
    with Image.open(sheet) as image:
        assert image.size == (3 * 64, 1 * 64)  # [bicubic, UPLiFT, HR] x num_samples=1
    assert "psnr" in (output / "model" / "README.md").read_text()


def test_ema_weights_are_saved_as_the_model(taef2_dir, images, tmp_path):
    from safetensors.torch import load_file

    from uplift_diffusers import UPLiFTLatentUpscaler

    output = tmp_path / "run"
    train(tiny_config(taef2_dir, images, output, 4, "optimization.ema_decay=0.9", "optimization.lr=0.003"))
    checkpoint = output / "checkpoints" / "checkpoint-4"
    ema_state = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)
    assert ema_state["optimization_step"] == 4
    model = UPLiFTLatentUpscaler.from_pretrained(output / "model")
    params = list(model.parameters())
    assert len(params) == len(ema_state["shadow_params"])
    for saved, shadow in zip(params, ema_state["shadow_params"]):
        torch.testing.assert_close(saved.detach(), shadow.float())
    raw = load_file(checkpoint / "model.safetensors")  # the trained (non-averaged) weights
    names = [name for name, _ in model.named_parameters()]
    assert any(not torch.allclose(raw[name], p.detach()) for name, p in zip(names, params))


def test_tensorboard_logging(taef2_dir, images, tmp_path):
    from accelerate.utils import is_tensorboard_available

    if not is_tensorboard_available():
        pytest.skip("tensorboard is not installed")
    output = tmp_path / "run"
    train(tiny_config(taef2_dir, images, output, 2, "logging.report_to=tensorboard"))
    assert list((output / "logs").rglob("events.out.tfevents.*"))


# ---------------------------------------------------------------------------- 9. exit status, resume, lr, config errors, smoke test
def _tiny_argv(taef2_dir, images, output, max_steps, *sets):
    argv = ["--config", str(TINY), "--vae", str(taef2_dir), "--train-data", str(images), "--output-dir", str(output),
            "--max-steps", str(max_steps)]
    return argv + (["--set", *sets] if sets else [])


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_with_its_exit_status_and_the_resumed_time_is_cumulative(taef2_dir, images, tmp_path, monkeypatch, capsys, signum, status):
    output = tmp_path / "run"
    argv = _tiny_argv(taef2_dir, images, output, 4, "checkpointing.every_steps=0")
    real_loss, calls = train_uplift.multi_depth_loss, {"n": 0}

    def loss_then_signal(*args, **kwargs):  # the signal arrives during step 2, as from a scheduler / Ctrl-C
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signum)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_uplift, "multi_depth_loss", loss_then_signal)
    assert main(argv) == status
    printed = capsys.readouterr().out
    assert f"stopped by signal {int(signum)} at step 2; resume with: " in printed
    command = shlex.split(printed.split("resume with: ", 1)[1].splitlines()[0])
    assert command == [sys.executable, "-m", "training.train_uplift", *argv, "--resume", "latest"]
    assert [p.name for p in checkpoint_dirs(output)] == ["checkpoint-2"]
    state_file = output / "checkpoints" / "checkpoint-2" / "training_state.json"
    state = json.loads(state_file.read_text())
    assert state["elapsed"] == pytest.approx(read_log(output)[-1]["time"], abs=0.5)
    assert not (output / "model").exists()

    # pretend the first segment took 50 minutes: the resumed log and the card count on from there
    state_file.write_text(json.dumps({**state, "elapsed": 3000.0}))
    monkeypatch.setattr(train_uplift, "multi_depth_loss", real_loss)
    assert main(command[3:]) == 0
    log = read_log(output)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert 3000 <= log[2]["time"] <= log[3]["time"] < 3000 + 120
    minutes = float(re.search(r"Optimiser steps: 4 \((\d+\.\d) min\)", (output / "model" / "README.md").read_text()).group(1))
    assert 50.0 <= minutes < 52.0


def test_resume_latest_without_a_checkpoint_says_so_and_require_resume_makes_it_an_error(taef2_dir, images, tmp_path, capsys):
    output = tmp_path / "run"
    assert main(_tiny_argv(taef2_dir, images, output, 4) + ["--require-resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --require-resume: no checkpoint to resume from in ")
    assert str(output / "checkpoints") in err[0]
    assert not output.exists()  # checked before anything is written

    result = train(tiny_config(taef2_dir, images, output, 1), resume="latest")
    assert result["step"] == 1
    assert f"--resume latest: no checkpoint in {output / 'checkpoints'} yet; starting from scratch" in capsys.readouterr().out
    # with a checkpoint present, --require-resume continues from it
    assert main(_tiny_argv(taef2_dir, images, output, 2) + ["--require-resume"]) == 0
    assert f"resumed from {output / 'checkpoints' / 'checkpoint-1'} at step 1" in capsys.readouterr().out
    assert [r["step"] for r in read_log(output)] == [1, 2]


def test_the_logged_lr_is_the_one_each_step_used(taef2_dir, images, tmp_path):
    output = tmp_path / "run"
    # linear warmup over 2 steps then linear decay to 0 at step 4: factors 0, 1/2, 1, 1/2 for steps 1..4
    train(tiny_config(taef2_dir, images, output, 4, "optimization.lr=0.002", "optimization.lr_scheduler=linear",
                      "optimization.lr_warmup_steps=2", "checkpointing.every_steps=0"))
    assert [r["lr"] for r in read_log(output)] == pytest.approx([0.0, 0.001, 0.002, 0.001])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "model.foo=1"], "error: unknown config key `model.foo`; known keys of model: bilinear_residual, decoder_blocks_after_upsample,"),
        (["--set", "optimisation.lr=0.01"], "error: unknown config key `optimisation` (did you mean `optimization`?); known sections: checkpointing, data,"),
        (["--set", "optimization.lr=-0.001"], "error: config key `optimization.lr` must be a number > 0, got -0.001 (float)."),
        (["--batch-size", "0"], "error: config key `optimization.batch_size` must be an integer >= 1, got 0 (int)."),
        (["--set", "optimization.lr=abc"], "error: config key `optimization.lr` must be a number > 0, got 'abc' (str)."),
        (["--set", "model.refiner_blocks=abc"], "error: config key `model.refiner_blocks` must be an integer, got 'abc' (str)."),
        (["--set", "model.refiner_blocks=0"], "error: config section `model`: `refiner_blocks` must be >= 1, got 0."),
        (["--set", "model.trained_upscale_factors=[2]"], "error: config key `model.trained_upscale_factors` cannot be set: it is set from optimization.depths."),
        (["--set", "model.latent_channels=4"], "error: config key `model.latent_channels` cannot be set: it is taken from the VAE."),
        (["--set", "optimization.lr_scheduler=cosinus"], "error: config key `optimization.lr_scheduler` must be one of linear, cosine,"),
        (["--set", "optimization.adam_betas=[0.9]"], "error: config key `optimization.adam_betas` must be a list of two numbers in [0, 1)"),
        (["--set", "validation.lr_size=48"], "error: validation.hr_size 256 must be a multiple of validation.lr_size 48."),
        (["--set", "optimization.pixel_loss_back_projection=-1"], "error: config key `optimization.pixel_loss_back_projection` must be an integer >= 0, got -1 (int)."),
        (["--set", "validation.back_projection_steps=2.5"], "error: config key `validation.back_projection_steps` must be an integer >= 0, got 2.5 (float)."),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_before_anything_is_written(tmp_path, capsys, argv, message):
    output = tmp_path / "run"
    base = ["--train-data", str(tmp_path), "--output-dir", str(output)]  # the defaults: nothing loaded before the check
    assert main(base + argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith(message), err[0]
    assert captured.out == ""
    assert not output.exists()


def test_help_keeps_the_line_continuation(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--config training/configs/sd15-vae.yaml \\\n        --train-data data/unsplash-lite/min-side-1024" in text
    assert "--smoke-test" in text and "--require-resume" in text
    assert "143 stopped by SIGTERM, 130 stopped by Ctrl-C" in text


def test_an_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--bogus", "1"])
    assert exit_info.value.code == 2
    assert "error: unrecognized arguments: --bogus 1" in capsys.readouterr().err
    # every flag in both spellings (HfArgumentParser)
    assert parse_args(["--train_data", "a", "b", "--stop-at-step", "3"]).train_data == ["a", "b"]


def test_trained_upscale_factors_follow_the_depths():
    assert train_uplift.trained_upscale_factors([1, 2]) == [2, 4]
    assert train_uplift.trained_upscale_factors([3]) == [2, 4, 8]  # a 3-step run trains every step on the way
    assert train_uplift.trained_upscale_factors([1, 2, 3, 4]) == [2, 4, 8, 16]


def test_epoch_shards_are_disjoint_equal_sized_and_cover_the_data():
    single = train_uplift.epoch_order(7, seed=0, epoch=3, rank=0, world=1)
    assert sorted(single) == list(range(7))
    assert single == torch.randperm(7, generator=torch.Generator().manual_seed(3)).tolist()  # unchanged for one process
    shards = [train_uplift.epoch_order(7, seed=0, epoch=3, rank=rank, world=2) for rank in (0, 1)]
    assert [len(shard) for shard in shards] == [4, 4]  # padded: the processes step together
    assert sorted(set(shards[0] + shards[1])) == list(range(7))
    assert len(set(shards[0]) & set(shards[1])) == 1  # only the one padding item repeats


def test_smoke_test_trains_tiny_random_components_without_downloads(tmp_path, monkeypatch, capsys):
    from uplift_diffusers import UPLiFTLatentUpscaler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "smoke"
    assert main(["--smoke-test", "--output-dir", str(output), "--max-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "training data: 6 images usable (6 items per epoch, crop=random_resized at 64 px)" in printed
    assert "step 2: validation {'psnr': " in printed  # the validation path runs too, on the generated images
    assert [r["step"] for r in read_log(output)] == [1, 2]
    assert sorted(p.name for p in (output / "smoke-test").iterdir()) == ["images", "vae"]
    model = UPLiFTLatentUpscaler.from_pretrained(output / "model")
    assert model.config.latent_channels == 4 and model.config.trained_upscale_factors == [2, 4]
    config = yaml.safe_load((output / "config.yaml").read_text())
    assert config["vae"] == str(output / "smoke-test" / "vae")
    assert config["data"]["resolution"] == 64 and config["optimization"]["depths"] == [1, 2]


def test_init_from_starts_from_saved_weights_and_checks_the_architecture(tmp_path, monkeypatch, capsys):
    """``--init-from MODEL_DIR`` fine-tunes a saved model (weights loaded, fresh optimiser); a folder
    of another architecture, or no model folder, is one error naming ``init_from`` before anything
    is written; a resumed run takes its weights from the checkpoint, not from init_from."""
    from uplift_diffusers import UPLiFTLatentUpscaler

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = tmp_path / "first"
    assert main(["--smoke-test", "--output-dir", str(first), "--max-steps", "1"]) == 0
    saved = UPLiFTLatentUpscaler.from_pretrained(first / "model").state_dict()
    vae = str(first / "smoke-test" / "vae")
    data = str(first / "smoke-test" / "images")

    def run(output: Path, *extra: str) -> int:
        return main(["--smoke-test", "--vae", vae, "--train-data", data, "--output-dir", str(output), *extra])

    # lr 1e-12: one Adam step moves each weight by about 1e-12, so the result is the saved model
    tuned = tmp_path / "tuned"
    assert run(tuned, "--max-steps", "1", "--init-from", str(first / "model"), "--set", "optimization.lr=1e-12") == 0
    assert f"initialised the weights from {first / 'model'}" in capsys.readouterr().out
    after = UPLiFTLatentUpscaler.from_pretrained(tuned / "model").state_dict()
    assert max((after[k] - saved[k]).abs().max().item() for k in saved) < 1e-6
    scratch = tmp_path / "scratch"
    assert run(scratch, "--max-steps", "1", "--set", "optimization.lr=1e-12", "optimization.seed=1") == 0
    fresh = UPLiFTLatentUpscaler.from_pretrained(scratch / "model").state_dict()
    assert max((fresh[k] - saved[k]).abs().max().item() for k in saved) > 1e-3  # without it: other weights

    # resuming ignores init_from: the checkpoint's weights are used
    assert run(tuned, "--max-steps", "2", "--init-from", str(first / "model"), "--resume", "latest") == 0
    assert "initialised the weights" not in capsys.readouterr().out

    for bad, message in (
        (["--init-from", str(tmp_path / "nowhere")], "config key `init_from`: cannot read"),
        (["--init-from", str(first / "model"), "--set", "model.decoder_channels=24"], "holds another architecture: decoder_channels=24 here"),
    ):
        output = tmp_path / "bad"
        assert run(output, *bad) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and message in error[0], error
        assert not output.exists()
