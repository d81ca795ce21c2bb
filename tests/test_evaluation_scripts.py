"""End-to-end tests of the evaluation scripts on tiny data (offline, CPU, a few seconds each).

Real data: a few BSDS500 test photographs and the TAEF2 autoencoder (``shared_path``); tiny
random Stable Diffusion / CLIP / UPLiFT models (``tiny_dirs``, tests/tiny_models.py); the FID features
come from the test-only ``tiny-random`` extractor. Metric formulas are tested in
``test_metrics.py``; here the tests check the protocol: which images are compared, that the
rows are what they claim to be, resumability, the results layout and the tables.
"""
from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.benchmarks import benchmark_latency
from evaluation.data import prepare_coco, prepare_relaion, prepare_sr
from evaluation.reports import make_tables
from evaluation.tasks import eval_super_resolution, eval_text_to_image
from evaluation.data.caption_sets import read_caption_set
from evaluation.tasks.latent_baseline import LatentInterpolationUpscaler, decode_and_correct
from evaluation.metrics.image_metrics import psnr as metrics_psnr
from evaluation.reports.tables import write_report
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.image_processor import list_images, load_hr_lr, pil_to_tensor
from evaluation import sr_protocol
from uplift_diffusers.utils.color_correction import color_correct

CAPTIONS = ["a red cat", "a blue dog", "a tall tree", "the sea", "a small car", "two birds"]


def _png_array(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _to_uint8(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.int16)


# --------------------------------------------------------------------------------------------
# Shared data
# --------------------------------------------------------------------------------------------
def _write_coco(folder: Path, num_images: int = 6) -> Path:
    """A COCO-format captions file with 2-3 captions per image, and the JPEG images."""
    images_dir = folder / "val2014"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    rng = np.random.default_rng(0)
    for index in range(num_images):
        image_id = 100 + 7 * index
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (30 + index, 40, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": 40, "height": 30 + index})
        for k in range(2 + index % 2):
            annotations.append({"id": 1000 + 10 * index + k, "image_id": image_id, "caption": f" {CAPTIONS[index]}\n{'.' * k}"})
    path = folder / "captions_val2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def _coco_prompts(tmp_path: Path) -> Path:
    """A 3-caption set prepared from :func:`_write_coco` with 96 px reference images beside it."""
    captions = _write_coco(tmp_path)
    prompts = tmp_path / "coco" / "captions.jsonl"
    assert prepare_coco.main(["--captions", str(captions), "--num", "3", "--output", str(prompts),
                              "--images-dir", str(tmp_path / "val2014"), "--reference-size", "96"]) == 0
    return prompts


# --------------------------------------------------------------------------------------------
# Latent baseline
# --------------------------------------------------------------------------------------------
def test_latent_baseline_is_plain_interpolation():
    latents = torch.randn(2, 4, 5, 6)
    out = LatentInterpolationUpscaler("bilinear")(latents, None, num_steps=2)
    assert torch.equal(out.sample, F.interpolate(latents, size=(20, 24), mode="bilinear", align_corners=False))
    nearest = LatentInterpolationUpscaler("nearest")(latents, num_steps=1, return_dict=False)[0]
    assert torch.equal(nearest, latents.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(ValueError, match="mode"):
        LatentInterpolationUpscaler("bicubic")


def test_sr_protocol_uses_the_project_psnr():
    assert sr_protocol.psnr is metrics_psnr  # one PSNR: the scoring loop and the metrics


def _bicubic_psnr(files, hr_size: int, lr_size: int) -> float:
    """Mean PSNR of PIL bicubic 4x on the protocol's pairs, computed image by image (the reference)."""
    values = []
    for path in files:
        hr, lr = load_hr_lr(path, hr_size, lr_size)
        values.append(float(metrics_psnr(pil_to_tensor(lr.resize(hr.size, Image.BICUBIC)), pil_to_tensor(hr))))
    return float(np.mean(values))


def test_score_super_resolution_batches_metrics_and_outputs(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for index in range(5):
        files.append(tmp_path / f"{index}.png")
        Image.fromarray(rng.integers(0, 256, (40 + index, 36, 3), dtype=np.uint8)).save(files[-1])
    pairs = sr_protocol.SRPairs(files, 32, 8, batch_size=2, indices=[10, 11, 12, 13, 14])
    assert len(pairs) == 3
    seen = []

    def bicubic(batch):
        size = (batch.hr.shape[-1], batch.hr.shape[-2])
        return torch.cat([sr_protocol.bicubic_upscale(image, size) for image in batch.lr_images])

    scores = sr_protocol.score_super_resolution(
        {"bicubic": bicubic, "overshoot": lambda batch: batch.hr * 1.5},
        pairs, metrics={"psnr": sr_protocol.psnr, "mae": lambda p, t: (p - t).abs().mean(dim=(1, 2, 3))},
        on_output=lambda name, output, batch: seen.append((name, batch.indices, float(output.max()))),
    )
    # the bicubic row is the reference computed image by image; outputs are clamped to [0, 1] before scoring
    assert scores["bicubic"].count == 5 and scores["bicubic"].mean("psnr") == pytest.approx(_bicubic_psnr(files, 32, 8), abs=1e-5)
    assert scores["bicubic"].seconds > 0 and set(scores["bicubic"].values) == {"psnr", "mae"}
    assert [(name, indices) for name, indices, _ in seen] == [
        ("bicubic", [10, 11]), ("overshoot", [10, 11]), ("bicubic", [12, 13]), ("overshoot", [12, 13]),
        ("bicubic", [14]), ("overshoot", [14]),
    ]
    assert max(peak for *_, peak in seen) <= 1.0
    hr = torch.cat([pil_to_tensor(load_hr_lr(f, 32, 8)[0]) for f in files])
    assert scores["overshoot"].values["mae"] == pytest.approx(((hr * 1.5).clamp(0, 1) - hr).abs().mean(dim=(1, 2, 3)).tolist(), abs=1e-6)
    with pytest.raises(ValueError, match=r"method 'small' returned \(2, 3, 8, 8\) for the images \[10, 11\], expected \(2, 3, 32, 32\)"):
        sr_protocol.score_super_resolution({"small": lambda batch: batch.lr}, pairs)
    with pytest.raises(ValueError, match="smaller than the crop size 64"):
        sr_protocol.score_super_resolution({"bicubic": bicubic}, sr_protocol.SRPairs(files, 64, 16))


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------
def test_prepare_coco_is_seeded_one_caption_per_image(tmp_path):
    captions = _write_coco(tmp_path)
    coco = json.loads(captions.read_text())
    argv = ["--captions", str(captions), "--num", "4", "--seed", "3"]
    assert prepare_coco.main(argv + ["--output", str(tmp_path / "a.jsonl")]) == 0
    assert prepare_coco.main(argv + ["--output", str(tmp_path / "b.jsonl"), "--images-dir", str(tmp_path / "val2014"),
                                     "--reference-dir", str(tmp_path / "refs"), "--reference-size", "16"]) == 0
    assert prepare_coco.main(argv + ["--output", str(tmp_path / "a2.jsonl")]) == 0
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "a2.jsonl").read_bytes()
    rows = read_caption_set(tmp_path / "a.jsonl")
    # same seed -> same selection and captions; the reference export only renames the files
    exported = read_caption_set(tmp_path / "b.jsonl")
    assert [(r.id, r.caption) for r in rows] == [(r.id, r.caption) for r in exported]
    assert len(rows) == 4 and len({r.id for r in rows}) == 4
    by_image = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], set()).add(" ".join(annotation["caption"].split()))
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    for row in rows:
        image_id = int(row.id)
        assert row.caption in by_image[image_id] and row.file_name == names[image_id]
    # the selection is random.Random(seed).sample over the sorted captioned ids
    expected_ids = sorted(random.Random(3).sample(sorted(by_image), 4))
    assert [int(r.id) for r in rows] == expected_ids
    for row in exported:
        with Image.open(tmp_path / "refs" / row.file_name) as image:
            assert image.size == (16, 16) and row.file_name == f"{row.id}.png"
    assert prepare_coco.main(["--captions", str(captions), "--num", "7", "--output", str(tmp_path / "c.jsonl")]) == 2


def test_prepare_sr_pairs_follow_the_protocol(tmp_path, shared_path):
    bsds = shared_path("data", "bsds500", "test")
    out = tmp_path / "sr"
    argv = ["--inputs", str(bsds), "--output-dir", str(out), "--num", "3", "--hr-size", "64", "--lr-size", "16", "--seed", "1"]
    assert prepare_sr.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [p["name"] for p in manifest["pairs"]] == ["00000.png", "00001.png", "00002.png"]
    files = list_images(bsds)
    random.Random(1).shuffle(files)
    assert [p["source"] for p in manifest["pairs"]] == [str(f) for f in files[:3]]
    for pair in manifest["pairs"]:
        hr, lr = load_hr_lr(pair["source"], 64, 16)
        assert np.array_equal(_png_array(out / "hr" / pair["name"]), np.asarray(hr))
        assert np.array_equal(_png_array(out / "lr" / pair["name"]), np.asarray(lr))
    stamp = (out / "hr" / "00000.png").stat().st_mtime_ns
    assert prepare_sr.main(argv) == 0  # resumable: nothing rewritten
    assert (out / "hr" / "00000.png").stat().st_mtime_ns == stamp

    # the prepared pairs are read as they are: same bicubic PSNR as the protocol on the sources
    results = tmp_path / "bicubic"
    assert eval_super_resolution.main(["--data", str(out), "--upscaler", "bicubic", "--hr-size", "64", "--lr-size", "16",
                                       "--output-dir", str(results), "--no-fid", "--quiet"]) == 0
    result = json.loads((results / "results.json").read_text())
    assert result["psnr"] == pytest.approx(_bicubic_psnr([p["source"] for p in manifest["pairs"]], 64, 16), abs=1e-5)
    assert result["methods"]["bicubic"]["count"] == 3 and "fid" not in result and "fid" not in result["methods"]["bicubic"]
    # wrong sizes for prepared pairs are refused, not resized
    assert eval_super_resolution.main(["--data", str(out), "--upscaler", "bicubic", "--hr-size", "128", "--lr-size", "32",
                                       "--output-dir", str(results), "--no-fid", "--quiet"]) == 2


# --------------------------------------------------------------------------------------------
# reLAION selection from an img2dataset download
# --------------------------------------------------------------------------------------------
def _img2dataset_folder(folder: Path, samples) -> None:
    """What ``img2dataset --output_format files`` writes: ``<shard>/<key>.jpg`` beside ``<key>.json``."""
    for index, (url, caption, size, status) in enumerate(samples):
        shard = folder / f"{index // 4:05d}"
        shard.mkdir(parents=True, exist_ok=True)
        key = f"{index:09d}"
        (shard / f"{key}.json").write_text(json.dumps({"url": url, "caption": caption, "key": key, "status": status}))
        if size is not None:
            Image.new("RGB", size, (size[0] % 256, size[1] % 256, 7)).save(shard / f"{key}.jpg")


def test_prepare_relaion_selects_by_key_from_an_img2dataset_folder(tmp_path):
    samples = [(f"http://img.example/a{index}.jpg?sig=abc&w=9", f"photo\n{index}", (48, 40), "success") for index in range(8)]
    samples += [
        ("http://img.example/small.jpg", "too small", (30, 30), "success"),  # the metadata said large; the pixels are small
        ("http://img.example/a0.jpg?sig=abc&w=9", "duplicate url", (48, 40), "success"),
        ("ftp://example.org/x.jpg", "not http", (64, 64), "success"),
        ("http://img.example/empty.jpg", "  ", (64, 64), "success"),
    ]
    downloads = tmp_path / "downloads"
    _img2dataset_folder(downloads, samples)
    (downloads / "00000" / "000000003.jpg").write_bytes(b"not an image")
    out = tmp_path / "relaion"
    argv = ["--downloads", str(downloads), "--output-dir", str(out), "--num", "5", "--min-size", "32", "--reference-size", "32"]
    assert prepare_relaion.main(argv) == 0
    selection = json.loads((out / "selection.json").read_text())
    good = sorted({url for url, _, _, _ in samples[:8] if "a3." not in url}, key=lambda url: prepare_relaion.sampling_key(url, 0))
    assert selection["eligible"] == 7 and selection["selected"] == 5
    chosen = read_caption_set(out / "captions.jsonl")
    assert [row.extra["url"] for row in chosen] == good[:5]  # the smallest keys, the first of duplicate URLs
    assert [row.id for row in chosen] == [f"{prepare_relaion.sampling_key(url, 0):016x}" for url in good[:5]]
    assert all(row.caption.startswith("photo ") for row in chosen)  # whitespace collapsed
    reasons = sorted(item["reason"] for item in selection["rejected"])
    assert len(reasons) == 4 and "image is 30 x 30" in reasons and any("does not decode" in r for r in reasons)
    assert sum("no http(s) url or no caption" in r for r in reasons) == 2
    for row in chosen:
        with Image.open(out / "images" / row.file_name) as image:
            assert image.size == (32, 32)
    # another seed, another sample; too few eligible images: one line naming --num
    assert prepare_relaion.main(argv[:-2] + ["--seed", "1"]) == 0
    assert [row.id for row in read_caption_set(out / "captions.jsonl")] != [row.id for row in chosen]
    assert prepare_relaion.main(argv[:5] + ["8"]) == 2
    assert prepare_relaion.main(["--downloads", str(tmp_path / "absent"), "--output-dir", str(out)]) == 2


# --------------------------------------------------------------------------------------------
# Super-resolution evaluation
# --------------------------------------------------------------------------------------------
def test_eval_super_resolution_rows(tmp_path, shared_path, taef2_dir, tiny_dirs):
    bsds = shared_path("data", "bsds500", "test")
    out = tmp_path / "sr"
    argv = ["--data", str(bsds), "--vae", str(taef2_dir), "--upscaler", "bicubic,vae", "--upscaler", "bilinear,nearest",
            "--upscaler", str(tiny_dirs.upscaler(32, noise_scale=1.0)), "--hr-size", "64", "--lr-size", "16", "--limit", "3",
            "--batch-size", "2", "--output-dir", str(out), "--feature-extractor", "tiny-random", "--patch-size", "32",
            "--color-correct-baselines", "--quiet"]
    assert eval_super_resolution.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "super_resolution" and result["count"] == 3
    assert list(result["methods"]) == ["bicubic", "vae", "bilinear", "nearest", "uplift"]
    for values in result["methods"].values():
        assert {"psnr", "ssim", "fid", "patch_fid", "count"} <= set(values) and values["count"] == 3
        assert math.isfinite(values["fid"]) and values["fid"] >= 0 and 0 < values["ssim"] <= 1
    assert "psnr" not in result  # several methods: no top-level metrics
    assert result["settings"]["hr_size"] == 64 and result["settings"]["patch_size"] == 32

    files = list_images(bsds)[:3]
    assert result["methods"]["bicubic"]["psnr"] == pytest.approx(_bicubic_psnr(files, 64, 16), abs=1e-5)

    # the bilinear row: encode LR, interpolate the latents (align_corners=False), decode, colour-correct
    from uplift_diffusers.loaders import load_vae

    vae = load_vae(str(taef2_dir))
    assert result["methods"]["bilinear"]["psnr"] == pytest.approx(_baseline_psnr(vae, files, color_correction=True), abs=1e-4)
    # the autoencoder's own reconstruction bounds the latent rows (not the back-projected UPLiFT row,
    # whose low frequencies come from the LR image)
    assert result["methods"]["vae"]["psnr"] > max(result["methods"][m]["psnr"] for m in ("bilinear", "nearest"))

    table = (out / "results.md").read_text()
    assert "| Method | test PSNR | test SSIM | test FID | test patch-FID |" in table
    assert "| UPLiFT + back-projection (5) |" in table and "| Bicubic (pixel space) |" in table

    # one named model row: metrics also at the top level; FID skipped
    single = tmp_path / "single"
    assert eval_super_resolution.main(["--data", str(bsds), "--vae", str(taef2_dir), "--upscaler", f"mine={tiny_dirs.upscaler(32, noise_scale=1.0)}",
                                       "--hr-size", "64", "--lr-size", "16", "--limit", "2", "--no-fid", "--quiet",
                                       "--output-dir", str(single)]) == 0
    one = json.loads((single / "results.json").read_text())
    assert list(one["methods"]) == ["mine"] and one["psnr"] == one["methods"]["mine"]["psnr"] and "fid" not in one
    # bad arguments exit with status 2
    assert eval_super_resolution.main(["--data", str(bsds), "--upscaler", "bilinear", "--hr-size", "64", "--lr-size", "16",
                                       "--output-dir", str(single), "--quiet"]) == 2  # no --vae
    assert eval_super_resolution.main(["--data", str(bsds), "--upscaler", "bicubic", "--hr-size", "48", "--lr-size", "16",
                                       "--output-dir", str(single), "--quiet"]) == 2  # factor 3


# --------------------------------------------------------------------------------------------
# Text-to-image evaluation
# --------------------------------------------------------------------------------------------
def _t2i_argv(tmp_path, tiny_dirs, prompts, refs, out):
    return ["--prompts", str(prompts), "--reference-dir", str(refs), "--output-dir", str(out), "--model", str(tiny_dirs.sd_pipeline()),
            "--upscaler", str(tiny_dirs.upscaler(4, noise_scale=1.0)), "--steps", "2", "--size", "64", "--batch-size", "2", "--seed", "5",
            "--clip-model", str(tiny_dirs.clip()), "--feature-extractor", "tiny-random", "--patch-size", "32", "--quiet"]


def test_eval_text_to_image_rows_and_resume(tmp_path, tiny_dirs):
    from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline

    prompts = _coco_prompts(tmp_path)
    rows = read_caption_set(prompts)
    out = tmp_path / "t2i"
    argv = _t2i_argv(tmp_path, tiny_dirs, prompts, prompts.parent / "images", out)
    assert eval_text_to_image.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "text_to_image" and result["dataset"] == "coco" and result["count"] == 3
    assert result["generation"] == {"generated": 3, "skipped": 0, "files_written": 12}
    assert list(result["methods"]) == ["uplift", "bilinear", "nearest", "base512"]
    for method, values in result["methods"].items():
        assert {"fid", "patch_fid", "clip", "count", "size"} <= set(values)
        assert values["size"] == (64 if method == "base512" else 128) and -100 <= values["clip"] <= 100
        for row in rows:
            with Image.open(out / "images" / method / f"{row.id}.png") as image:
                assert image.size == (values["size"],) * 2

    # the rows are what they claim: the pipeline's UPLiFT output, its base image, and the
    # interpolated final latents decoded + colour-corrected against the base image.
    upscaler = UPLiFTLatentUpscaler.from_pretrained(str(tiny_dirs.upscaler(4, noise_scale=1.0))).eval()
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(str(tiny_dirs.sd_pipeline()), upscaler=upscaler, safety_checker=None,
                                                         requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    last = rows[2]  # batch size 2: the third caption was generated alone, with seed 5 + 2

    def call(**kwargs):
        return pipe(last.caption, height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(7), **kwargs)

    uplift = call(output_type="pt", return_base_images=True)
    latents = call(output_type="latent", upscale_factor=1).images
    with torch.no_grad():
        base = uplift.base_images.float()
        bilinear = decode_and_correct(pipe.vae, F.interpolate(latents / pipe.vae.config.scaling_factor, scale_factor=2,
                                                              mode="bilinear", align_corners=False), base,
                                      color_correction=False)
    for method, expected in (("uplift", uplift.images[0]), ("base512", base[0]), ("bilinear", bilinear[0])):
        saved = _png_array(out / "images" / method / f"{last.id}.png")
        assert np.abs(saved - _to_uint8(expected)).max() <= 1, method
    assert not np.array_equal(_png_array(out / "images" / "nearest" / f"{last.id}.png"),
                              _png_array(out / "images" / "bilinear" / f"{last.id}.png"))

    # resumable: a second run generates nothing and rewrites nothing ...
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert eval_text_to_image.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["generation"] == {"generated": 0, "skipped": 3, "files_written": 0}
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == stamps
    assert again["methods"] == result["methods"]
    # ... and after losing one image only that caption is redone (seeded per caption)
    lost = out / "images" / "nearest" / f"{rows[0].id}.png"
    before = lost.read_bytes()
    lost.unlink()
    assert eval_text_to_image.main(argv + ["--methods", "nearest,base512", "--no-fid", "--no-clip"]) == 0
    third = json.loads((out / "results.json").read_text())
    assert third["generation"] == {"generated": 1, "skipped": 2, "files_written": 1}
    redone = _png_array(lost)
    previous = np.asarray(Image.open(io.BytesIO(before)).convert("RGB")).astype(np.int16)
    # the same image up to float round-off (it was made in a batch of 2 before, alone now)
    assert np.abs(redone - previous).max() <= 1 and (redone != previous).mean() < 0.01
    assert "fid" not in third["methods"]["nearest"] and "clip" not in third["methods"]["nearest"]
    assert eval_text_to_image.main(argv + ["--methods", "uplift,bicubic"]) == 2


# --------------------------------------------------------------------------------------------
# Latency benchmark
# --------------------------------------------------------------------------------------------
TINY_LATENCY = ["--size", "64", "--steps", "2", "--warmup", "1", "--iters", "2", "--batch-size", "1", "--no-compile"]  # compiling is the default


def test_benchmark_latency_times_every_stage_of_a_generation(tmp_path):
    """Each stage of a generation is timed, and a method's time is the sum of the stages it runs."""
    out = tmp_path / "latency"
    assert benchmark_latency.main(["text-to-image", "--output-dir", str(out), "--smoke-test"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "latency" and result["random_weights"] is True and "tiny" in result["note"]
    assert result["settings"]["smoke_test"] is True and result["settings"]["size"] == 64 and result["settings"]["compile"] is False
    stages = result["stages"]
    assert set(stages) == {"unet", "vae_decode_base", "uplift", "bilinear", "nearest", "vae_decode_upscaled", "color_correction"}
    assert all(value > 0 for value in stages.values())
    tail = stages["vae_decode_upscaled"] + stages["color_correction"]
    assert result["methods"]["base512"] == pytest.approx(stages["unet"] + stages["vae_decode_base"])
    assert result["methods"]["uplift"] == pytest.approx(result["methods"]["base512"] + stages["uplift"] + tail)


def test_benchmark_latency_falls_back_to_random_weights_offline(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise FileNotFoundError("cannot load the Stable Diffusion model (offline and not cached)")

    monkeypatch.setattr(benchmark_latency, "pretrained_models", offline)
    built = []  # the real-size models are asked for; the test builds the tiny ones instead
    original = benchmark_latency.random_models
    monkeypatch.setattr(benchmark_latency, "random_models", lambda *a: built.append(a) or original(a[0], a[1], True, a[3]))
    out = tmp_path / "latency"
    assert benchmark_latency.main(["text-to-image", "--output-dir", str(out)] + TINY_LATENCY) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["random_weights"] is True and "weights unavailable" in result["note"]
    assert built and built[0][2] is False  # the real-size configuration was asked for
    assert "random weights" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------
def test_make_tables_layout(tmp_path):
    def t2i(name, fid):
        methods = {m: {"fid": fid + i, "patch_fid": 2 * fid + i, "clip": 30.0 + i, "count": 10} for i, m in enumerate(["uplift", "base512", "bilinear"])}
        return {"task": "text_to_image", "dataset": name, "settings": {"size": 512, "upscale_factor": 2, "steps": 25}, "count": 10, "methods": methods}

    sr = {"task": "super_resolution", "dataset": "FacesHQ", "settings": {"hr_size": 1024, "lr_size": 256}, "count": 5,
          "methods": {"uplift": {"psnr": 30.123, "ssim": 0.81234, "fid": 5.5, "patch_fid": 6.25}, "bicubic": {"psnr": 28.0, "ssim": 0.7}}}
    latency = {"task": "latency", "dataset": "coco", "settings": {"batch_size": 4, "steps": 25}, "random_weights": False,
               "stages": {"unet": 2.0, "vae_decode_base": 0.1, "uplift": 0.05, "vae_decode_upscaled": 0.4, "color_correction": 0.001},
               "methods": {"base512": 2.1, "bilinear": 2.5, "uplift": 2.551}}
    paths = []
    for index, result in enumerate([t2i("COCO", 20.0), t2i("reLAION", 30.0), sr, latency]):
        write_report(result, tmp_path / str(index))
        paths.append(str(tmp_path / str(index) / "results.json"))
    output = tmp_path / "tables.md"
    assert make_tables.main(paths + ["--output", str(output)]) == 0
    lines = output.read_text().splitlines()
    assert lines[0] == "Tables 2-3: text-to-image (base 512 px, latents upscaled 2x, 25 steps)"
    assert lines[2] == ("| Method | COCO FID | COCO patch-FID | COCO CLIP | COCO time (s/batch of 4) | reLAION FID | reLAION patch-FID "
                        "| reLAION CLIP | reLAION time (s) |")
    # rows: base resolution first, then the baselines, then UPLiFT
    assert lines[4] == "| SD1.5 base resolution, 512 px (no upscaling) | 21.00 | 41.00 | 31.00 | 2.100 | 31.00 | 61.00 | 31.00 | - |"
    assert lines[5] == "| Bilinear latent upsampling | 22.00 | 42.00 | 32.00 | 2.500 | 32.00 | 62.00 | 32.00 | - |"
    assert lines[6] == "| UPLiFT | 20.00 | 40.00 | 30.00 | 2.551 | 30.00 | 60.00 | 30.00 | - |"
    text = "\n".join(lines)
    assert "Table 4: super-resolution (256 -> 1024)" in text
    assert "Text-to-image latency breakdown (seconds per batch" in text
    assert "| Method | FacesHQ PSNR | FacesHQ SSIM | FacesHQ FID | FacesHQ patch-FID |" in text
    assert "| Bicubic (pixel space) | 28.00 | 0.7000 | - | - |" in text and "| UPLiFT | 30.12 | 0.8123 | 5.50 | 6.25 |" in text
    assert "| Stage | coco batch 4, 25 steps |" in text and "| UPLiFT | 0.0500 |" in text and "| Total: UPLiFT | 2.5510 |" in text
    with pytest.raises(ValueError, match="no results files"):
        make_tables.make_tables([])


def test_make_tables_shows_runs_with_one_label_separately_and_names_the_base_size(tmp_path, capsys):
    """Two results with the same dataset label are two column groups named by their folders, with
    a note saying how to merge them; the base row names the base size actually used."""
    def t2i(fid, size):
        methods = {"base512": {"fid": fid, "patch_fid": fid, "clip": 30.0}, "uplift": {"fid": fid + 1, "patch_fid": fid, "clip": 31.0}}
        return {"task": "text_to_image", "dataset": "COCO", "settings": {"size": size, "upscale_factor": 2, "steps": 25}, "methods": methods}

    latency = {"task": "latency", "dataset": "coco", "settings": {"batch_size": 4, "steps": 25}, "random_weights": False,
               "stages": {"unet": 2.0}, "methods": {"base512": 2.1, "uplift": 2.5}}
    paths = []
    for name, result in (("steps25", t2i(20.0, 768)), ("steps40", t2i(25.0, 768)), ("latency", latency)):
        write_report(result, tmp_path / name)
        paths.append(str(tmp_path / name / "results.json"))
    assert make_tables.main(paths) == 0
    out = capsys.readouterr().out
    assert "| Method | COCO (steps25) FID | COCO (steps25) patch-FID | COCO (steps25) CLIP | COCO (steps25) time (s/batch of 4) " \
           "| COCO (steps40) FID |" in out
    assert "| SD1.5 base resolution, 768 px (no upscaling) | 20.00 | 20.00 | 30.00 | 2.100 | 25.00 | 25.00 | 30.00 | 2.100 |" in out
    assert "Note: 2 text_to_image results have the dataset label 'COCO'; they are shown as separate runs" in out
    assert f"COCO (steps40) = {paths[1]}" in out and "To merge them into one column, evaluate the data set in one run." in out
    # the same folder name twice: numbered runs; the results themselves are not changed
    (tmp_path / "a").mkdir()
    write_report(t2i(20.0, 512), tmp_path / "a" / "run")
    write_report(t2i(21.0, 1024), tmp_path / "run")
    assert make_tables.main([str(tmp_path / "a" / "run" / "results.json"), str(tmp_path / "run" / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "| COCO (run 1) FID |" in out and "| COCO (run 2) FID |" in out
    assert "| SD1.5 base resolution, 512 / 1024 px (no upscaling) |" in out
    assert json.loads((tmp_path / "run" / "results.json").read_text())["dataset"] == "COCO"


# --------------------------------------------------------------------------------------------
# Metric protocol of the scripts: the paper's metrics by default, latent baselines colour-corrected only on request, all recorded
# --------------------------------------------------------------------------------------------
def _baseline_psnr(vae, files, color_correction: bool) -> float:
    """Mean PSNR of the bilinear latent baseline (64 <- 16): encode LR, interpolate the latents
    (align_corners=False), decode, and colour-correct against LR when ``color_correction``."""
    from uplift_diffusers.loaders import decode_latents, encode_latents

    psnrs = []
    for path in files:
        hr, lr = load_hr_lr(path, 64, 16)
        lr_t, hr_t = pil_to_tensor(lr), pil_to_tensor(hr)
        with torch.no_grad():
            latents = F.interpolate(encode_latents(vae, lr_t * 2 - 1), scale_factor=4, mode="bilinear", align_corners=False)
            image = (decode_latents(vae, latents) / 2 + 0.5).clamp(0, 1)
            image = color_correct(image, lr_t) if color_correction else image
        psnrs.append(float(metrics_psnr(image, hr_t)))
    return float(np.mean(psnrs))


def test_eval_super_resolution_metric_protocol_and_baseline_colour_correction(tmp_path, shared_path, taef2_dir):
    from evaluation.metrics import metric_setup
    from uplift_diffusers.loaders import load_vae

    bsds = shared_path("data", "bsds500", "test")
    common = ["--data", str(bsds), "--vae", str(taef2_dir), "--upscaler", "bicubic,bilinear", "--hr-size", "64", "--lr-size", "16",
              "--limit", "3", "--batch-size", "2", "--quiet"]
    # the defaults are the paper's protocol
    args = eval_super_resolution.build_parser().parse_args(common + ["--output-dir", str(tmp_path)])
    assert (args.feature_extractor, args.patch_size, args.num_patches) == ("inception", 512, 4)
    assert args.color_correct_baselines is False

    # default: the bilinear row is not colour-corrected
    out = tmp_path / "plain"
    assert eval_super_resolution.main(common + ["--output-dir", str(out),
                                                "--feature-extractor", "tiny-random", "--patch-size", "32"]) == 0
    result = json.loads((out / "results.json").read_text())
    vae = load_vae(str(taef2_dir))
    files = list_images(bsds)[:3]
    bilinear = result["methods"]["bilinear"]
    assert bilinear["color_correction"] is False and result["methods"]["bicubic"]["color_correction"] is False
    assert bilinear["psnr"] == pytest.approx(_baseline_psnr(vae, files, color_correction=False), abs=1e-4)
    assert bilinear["psnr"] != pytest.approx(_baseline_psnr(vae, files, color_correction=True), abs=1e-3)
    for values in result["methods"].values():
        assert {"fid", "patch_fid"} <= set(values)
        assert all(math.isfinite(values[key]) for key in ("fid", "patch_fid"))
    record = result["settings"]["metrics"]
    assert result["settings"]["color_correct_baselines"] is False
    assert (record["fid_backend"], record["feature_extractor"], record["clip_model"]) == ("torchmetrics", "tiny-random", None)
    assert set(record["definitions"]) == {"psnr", "ssim", "fid", "patch_fid"}
    assert record["definitions"]["fid"] == metric_setup.DEFINITIONS["fid"]
    assert "4 random 32 x 32 crops" in record["definitions"]["patch_fid"]
    assert "StructuralSimilarityIndexMeasure(data_range=1.0)" in record["definitions"]["ssim"]
    assert record["library_versions"]["torch-fidelity"]

    # --color-correct-baselines: corrected like UPLiFT, and said so; without FID nothing claims a feature extractor
    corrected = tmp_path / "corrected"
    assert eval_super_resolution.main(common + ["--output-dir", str(corrected), "--color-correct-baselines", "--no-fid"]) == 0
    result = json.loads((corrected / "results.json").read_text())
    assert result["methods"]["bilinear"]["color_correction"] is True and result["settings"]["color_correct_baselines"] is True
    assert result["methods"]["bilinear"]["psnr"] == pytest.approx(_baseline_psnr(vae, files, color_correction=True), abs=1e-4)
    record = result["settings"]["metrics"]
    assert record["fid_backend"] is None and record["feature_extractor"] is None and set(record["definitions"]) == {"psnr", "ssim"}
    assert "fid" not in result["methods"]["bilinear"]
    # the paper's 512 crops do not fit 64 px images: refused, not shrunk
    assert eval_super_resolution.main(common + ["--output-dir", str(corrected), "--feature-extractor", "tiny-random"]) == 2


def test_eval_text_to_image_clip_record_and_baseline_record(tmp_path, tiny_dirs):
    from evaluation.metrics.image_metrics import CLIPScorer
    from evaluation.metrics.image_metrics import CLIP_MODEL_ID

    prompts = _coco_prompts(tmp_path)
    rows = read_caption_set(prompts)
    clip_dir = str(tiny_dirs.clip())
    out = tmp_path / "t2i"
    argv = ["--prompts", str(prompts), "--output-dir", str(out), "--model", str(tiny_dirs.sd_pipeline()), "--steps", "2", "--size", "64",
            "--batch-size", "2", "--seed", "5", "--methods", "bilinear,base512", "--no-fid", "--clip-model", clip_dir, "--quiet"]
    defaults = eval_text_to_image.build_parser().parse_args(["--prompts", "p", "--output-dir", "o"])
    assert (defaults.clip_model, defaults.patch_size) == (CLIP_MODEL_ID, 512)
    assert eval_text_to_image.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    record = result["settings"]["metrics"]
    assert record["clip_model"] == clip_dir
    assert record["fid_backend"] is None and record["feature_extractor"] is None and set(record["definitions"]) == {"clip"}
    assert "clip-score" in record["definitions"]["clip"] and "not clamped" in record["definitions"]["clip"]
    assert result["methods"]["bilinear"]["color_correction"] is False and result["methods"]["base512"]["color_correction"] is False
    marker = out / "images" / "bilinear" / "color_correction.json"
    assert json.loads(marker.read_text()) == {"color_correction": False}
    # the CLIP score is the paper's scorer's on the saved PNGs
    scorer = CLIPScorer(model_id=clip_dir)
    for method in ("bilinear", "base512"):
        scorer.reset()
        size = result["methods"][method]["size"]
        images = torch.cat([eval_text_to_image.load_generated(out / "images" / method / f"{row.id}.png", size) for row in rows])
        scorer.update(images, [row.caption for row in rows])
        assert result["methods"][method]["clip"] == pytest.approx(scorer.compute(), abs=1e-4)
    # the saved baseline images were made without correction: a corrected rerun must not reuse them
    assert eval_text_to_image.main(argv + ["--color-correct-baselines"]) == 2
    assert eval_text_to_image.main(argv + ["--color-correct-baselines", "--metrics-only"]) == 2
    assert eval_text_to_image.main(argv + ["--metrics-only"]) == 0


# --------------------------------------------------------------------------------------------
# Smoke-test mode, resuming, several processes, offline, smaller defects
# --------------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_tiny_builders_have_one_definition_in_the_library():
    """tests/tiny_models.py re-exports the library's builders (the smoke-test mode uses them): one definition each."""
    import tiny_models

    from uplift_diffusers.utils import testing_utils

    public = [name for name, value in vars(testing_utils).items()
              if not name.startswith("_") and (name.isupper() or getattr(value, "__module__", None) == testing_utils.__name__)]
    assert "make_upscaler" in public and "build_flux2_components" in public
    for name in public:
        assert getattr(tiny_models, name) is getattr(testing_utils, name), name
    import evaluation.benchmarks.benchmark_latency as latency_module

    assert not any(name.startswith("_TINY") for name in vars(latency_module))  # no second copy of the tiny configs
    assert "--tiny-random-models" not in benchmark_latency.build_parser().format_help()


def _sr_smoke(out, *extra):
    return eval_super_resolution.main(["--smoke-test", "--quiet", "--output-dir", str(out), *extra])


def test_eval_super_resolution_smoke_test_runs_every_row_offline(tmp_path, hub_cache, capsys):
    """--smoke-test needs no argument and no download (empty offline Hub cache): tiny random
    models saved under OUTPUT/smoke-inputs, every kind of row, all metrics."""
    out = tmp_path / "sr"
    assert _sr_smoke(out) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["smoke_test"] is True and result["dataset"] == "smoke-test" and result["count"] == 4
    assert list(result["methods"]) == ["bicubic", "vae", "bilinear", "nearest", "uplift"]
    for values in result["methods"].values():
        assert values["count"] == 4 and math.isfinite(values["fid"]) and math.isfinite(values["patch_fid"]) and 0 < values["psnr"] < 100
    assert (out / "smoke-inputs" / "models" / "upscaler" / "config.json").is_file()
    assert "the numbers mean nothing" in capsys.readouterr().out
    # without --smoke-test the inputs are required, named in one line
    assert eval_super_resolution.main(["--output-dir", str(out)]) == 2
    assert "--data, --upscaler are required (or pass --smoke-test" in capsys.readouterr().err


def test_eval_super_resolution_resumes_per_image_and_refuses_other_settings(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sr"
    calls = []
    original = eval_super_resolution.SuperResolutionRunner.run

    def interrupted(self, method, batch, seed):  # the run stops (Ctrl-C) in its third batch
        calls.append(method.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, method, batch, seed)

    monkeypatch.setattr(eval_super_resolution.SuperResolutionRunner, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sr_smoke(out)
    kept = sorted(p.relative_to(out / "per_image").as_posix() for p in (out / "per_image").rglob("*.pt"))
    assert kept == ["bicubic/smoke_00.pt", "bicubic/smoke_01.pt", "bicubic/smoke_02.pt", "bicubic/smoke_03.pt"]  # two whole batches
    monkeypatch.setattr(eval_super_resolution.SuperResolutionRunner, "run", original)

    calls.clear()
    assert _sr_smoke(out) == 0  # resumes: the bicubic row is not run again
    first = json.loads((out / "results.json").read_text())
    assert first["resumed"]["skipped"] == {"bicubic": 4, "vae": 0, "bilinear": 0, "nearest": 0, "uplift": 0}
    printed = capsys.readouterr().out
    assert f"resumed: skipped the images already scored in {out / 'per_image'} (bicubic: 4 of 4)" in printed
    stamps = {p: p.stat().st_mtime_ns for p in (out / "per_image").rglob("*.pt")}
    assert len(stamps) == 20

    # an uninterrupted run in another folder gives the same numbers
    fresh = tmp_path / "fresh"
    assert _sr_smoke(fresh) == 0
    expected = json.loads((fresh / "results.json").read_text())["methods"]
    for name, values in expected.items():
        for key in ("psnr", "ssim", "fid", "patch_fid"):
            assert first["methods"][name][key] == pytest.approx(values[key], rel=1e-6, abs=1e-9), (name, key)

    # a rerun computes nothing and rewrites no per-image result; one lost result is redone alone
    calls.clear()
    monkeypatch.setattr(eval_super_resolution.SuperResolutionRunner, "run", interrupted)
    assert _sr_smoke(out) == 0
    assert calls == [] and {p: p.stat().st_mtime_ns for p in (out / "per_image").rglob("*.pt")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["resumed"]["skipped"] == {name: 4 for name in expected}
    for name in expected:
        assert again["methods"][name]["psnr"] == pytest.approx(first["methods"][name]["psnr"], rel=1e-9)
    (out / "per_image" / "uplift" / "smoke_02.pt").unlink()
    assert _sr_smoke(out) == 0
    assert calls == ["uplift"] and json.loads((out / "results.json").read_text())["resumed"]["skipped"]["uplift"] == 3
    monkeypatch.setattr(eval_super_resolution.SuperResolutionRunner, "run", original)

    # another setting that changes per-image results: refused, naming the row, the setting and the way out
    capsys.readouterr()
    assert _sr_smoke(out, "--color-correct-baselines") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "per-image results of the row 'bilinear' made with other settings" in error
    assert "color_correction: False -> True" in error and "another --output-dir" in error
    assert _sr_smoke(out, "--no-fid") == 2 and "fid: {" in capsys.readouterr().err
    # a different batch size, process count or --limit does not change per-image results: accepted
    assert _sr_smoke(out, "--batch-size", "3") == 0


def test_eval_super_resolution_back_projection(tmp_path, capsys):
    """The UPLiFT rows are the pipeline's default output (5 rounds of back-projection);
    --back-projection-steps 0 gives the paper's; rows record their rounds and the table names them."""
    runs = {}
    for name, extra in (("default", []), ("paper", ["--back-projection-steps", "0"])):
        out = tmp_path / name
        assert _sr_smoke(out, "--no-fid", *extra) == 0
        runs[name] = json.loads((out / "results.json").read_text())["methods"]
    assert [runs["default"][row]["back_projection"] for row in ("bicubic", "vae", "bilinear", "uplift")] == [0, 0, 0, 5]
    assert [runs["paper"][row]["back_projection"] for row in ("bicubic", "uplift")] == [0, 0]
    assert runs["default"]["uplift"]["psnr"] != pytest.approx(runs["paper"]["uplift"]["psnr"], abs=1e-3)
    assert runs["default"]["bicubic"]["psnr"] == runs["paper"]["bicubic"]["psnr"]
    table = (tmp_path / "default" / "results.md").read_text()
    assert "| UPLiFT + back-projection (5) |" in table and "| Bicubic (pixel space) |" in table
    assert eval_super_resolution.main(["--smoke-test", "--quiet", "--output-dir", str(tmp_path / "x"), "--back-projection-steps", "-1"]) == 2
    assert "--back-projection-steps must be >= 0" in capsys.readouterr().err
    # --ensemble N: the model rows average N flipped / rotated upscales, recorded and labelled
    assert _sr_smoke(tmp_path / "ensemble", "--no-fid", "--ensemble", "2") == 0
    methods = json.loads((tmp_path / "ensemble" / "results.json").read_text())["methods"]
    assert methods["uplift"]["ensemble"] == 2 and methods["bicubic"]["ensemble"] == 1
    assert methods["uplift"]["psnr"] != pytest.approx(runs["default"]["uplift"]["psnr"], abs=1e-4)
    assert "| UPLiFT + ensemble (2) + back-projection (5) |" in (tmp_path / "ensemble" / "results.md").read_text()


def test_eval_super_resolution_no_fid_records_no_feature_extractor(tmp_path):
    out = tmp_path / "sr"
    assert _sr_smoke(out, "--no-fid") == 0
    result = json.loads((out / "results.json").read_text())
    metrics = result["settings"]["metrics"]
    assert metrics["feature_extractor"] is None and metrics["fid_backend"] is None and "fid" not in metrics["definitions"]
    assert all("fid" not in values for values in result["methods"].values())
    record = torch.load(out / "per_image" / "uplift" / "smoke_00.pt", weights_only=True)
    assert set(record) == {"psnr", "ssim"}


def _torchrun(tmp_path, nproc, *argv, env=None):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a free port for the rendezvous (loopback)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
               "--master_port", str(port), *argv]
    return subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two processes of torchrun (gloo on loopback) plus a one-process run: 20-45 s (measured)
def test_eval_super_resolution_two_processes_equal_one(tmp_path):
    """torchrun --nproc_per_node 2 on a CPU-only machine forms ONE 2-process group: every process
    scores its shard, the metrics gathered over both equal a one-process run's, and the results
    are written once."""
    two = tmp_path / "two"
    run = _torchrun(tmp_path, 2, "-m", "evaluation.tasks.eval_super_resolution", "--smoke-test", "--quiet", "--output-dir", str(two))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("Table 4: super-resolution") == 1 and run.stdout.count("results in") == 1  # printed once
    result = json.loads((two / "results.json").read_text())
    assert result["settings"]["num_processes"] == 2
    one = tmp_path / "one"
    assert _sr_smoke(one) == 0
    single = json.loads((one / "results.json").read_text())
    assert single["settings"]["num_processes"] == 1
    for name, values in single["methods"].items():
        assert result["methods"][name]["count"] == values["count"] == 4
        for key in ("psnr", "ssim", "fid", "patch_fid"):
            assert result["methods"][name][key] == pytest.approx(values[key], rel=1e-5, abs=1e-7), (name, key)
    # each process wrote its own shard's per-image results, each once
    assert sorted(p.name for p in (two / "per_image" / "uplift").glob("*.pt")) == [f"smoke_0{i}.pt" for i in range(4)]
    assert not list(two.rglob("*.part"))


def test_a_launch_that_would_give_independent_runs_is_one_line_error(tmp_path, monkeypatch, capsys):
    """`accelerate launch --cpu --num_processes 2` starts one process: an error before any work."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    for name in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "sr"
    assert _sr_smoke(out) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: `accelerate launch --cpu --num_processes N` started ONE process") and error.count("\n") == 1
    assert not out.exists()  # nothing written


def test_eval_text_to_image_smoke_test_offline(tmp_path, hub_cache, capsys):
    out = tmp_path / "t2i"
    assert eval_text_to_image.main(["--smoke-test", "--quiet", "--output-dir", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["settings"]["smoke_test"] is True and result["count"] == 4
    assert result["generation"] == {"generated": 4, "skipped": 0, "files_written": 16}
    assert list(result["methods"]) == ["uplift", "bilinear", "nearest", "base512"]
    for method, values in result["methods"].items():
        assert values["size"] == (64 if method == "base512" else 128)
        assert math.isfinite(values["fid"]) and math.isfinite(values["patch_fid"]) and -100 <= values["clip"] <= 100
    assert "SD1.5 base resolution, 64 px (no upscaling)" in (out / "results.md").read_text()
    from diffusers.utils import logging as diffusers_logging

    assert diffusers_logging.is_progress_bar_enabled()  # --quiet silenced the loading bars during the run only
    assert eval_text_to_image.main(["--output-dir", str(out)]) == 2
    assert "--prompts is required (or pass --smoke-test" in capsys.readouterr().err


def test_sr_latency_smoke_test(tmp_path, hub_cache):
    output = tmp_path / "latency.json"
    assert benchmark_latency.main(["super-resolution", "--smoke-test", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["settings"]["smoke_test"] is True and result["settings"]["random_weights"] is True
    assert result["settings"]["lr_size"] == 64 and result["settings"]["output_size"] == 256 and result["settings"]["compile"] is False
    assert all(len(values["times_s"]) == 2 and min(values["times_s"]) > 0 for values in result["methods"].values())
    assert output.with_suffix(".md").is_file()


def test_any_size_study_smoke_test(tmp_path):
    """``any_size_study --smoke-test``: every method at 1.5x, 3x and 6x on two synthetic 96 px images."""
    from evaluation.benchmarks import any_size_study
    from uplift_diffusers.pipelines.upscale_decode import UPSCALE_METHODS

    output = tmp_path / "study.json"
    assert any_size_study.main(["--smoke-test", "--output", str(output)]) == 0
    result = json.loads(output.read_text())
    assert result["config"]["smoke_test"] is True and result["config"]["images"] == 2 and result["config"]["hr_size"] == 96
    assert len(result["rows"]) == 3 * (len(UPSCALE_METHODS) + 1)
    assert {row["factor"]: row["lr_size"] for row in result["rows"]} == {1.5: 64, 3.0: 32, 6.0: 16}
    assert all(row["images"] == 2 and math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1 for row in result["rows"])
    assert output.with_suffix(".md").is_file()


def test_offline_evaluation_names_the_missing_model_in_one_line(tmp_path, hub_cache, capsys):
    """Offline with an empty cache: one line naming the model that cannot be loaded and the flag
    that takes a local copy (no flag the script does not have), at once, no Hub time-outs."""
    import time

    prompts = tmp_path / "captions.jsonl"
    prompts.write_text('{"id": "a", "caption": "a cat", "file_name": "a.png"}\n')
    start = time.perf_counter()
    assert eval_text_to_image.main(["--prompts", str(prompts), "--output-dir", str(tmp_path / "t2i"), "--no-fid", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert time.perf_counter() - start < 10
    assert error.count("\n") == 1 and error.startswith("error: cannot load the upscaler") and "--original-checkpoint" not in error
    assert "UPLiFT-upsampler/uplift_sd1.5vae" in error and "--upscaler DIR|FILE" in error
    assert eval_text_to_image.main(["--prompts", str(prompts), "--output-dir", str(tmp_path / "t2i"), "--no-fid", "--quiet",
                                    "--methods", "base512"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in error and "--model DIR" in error
    assert eval_text_to_image.main(["--prompts", str(prompts), "--output-dir", str(tmp_path / "t2i"), "--no-fid", "--quiet",
                                    "--metrics-only", "--methods", "base512"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "openai/clip-vit-base-patch32" in error and "--clip-model DIR" in error
    images = tmp_path / "images"
    from evaluation.smoke import write_smoke_images

    write_smoke_images(images, 2, 64)
    sr = ["--data", str(images), "--output-dir", str(tmp_path / "sr"), "--no-fid", "--hr-size", "64", "--lr-size", "16", "--quiet"]
    assert eval_super_resolution.main(sr + ["--vae", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--upscaler", "uplift,bilinear"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "stable-diffusion-v1-5/stable-diffusion-v1-5" in error and "--vae DIR" in error


def test_prepare_coco_warns_about_enlarged_references_and_writes_numbers(tmp_path, capsys):
    captions = _write_coco(tmp_path)  # images 40 x 30..35
    out = tmp_path / "coco.jsonl"
    argv = ["--captions", str(captions), "--num", "3", "--images-dir", str(tmp_path / "val2014"), "--reference-dir", str(tmp_path / "refs")]
    assert prepare_coco.main(argv + ["--output", str(out), "--reference-size", "36"]) == 0
    err = capsys.readouterr().err
    assert "warning: 3 of 3 reference images have a shorter side below --reference-size 36 and were ENLARGED" in err
    rows = read_caption_set(out)
    assert all(row.extra["reference_enlarged"] is True for row in rows)
    assert all(isinstance(row.extra[key], int) for row in rows for key in ("width", "height", "coco_id"))
    assert prepare_coco.main(argv + ["--output", str(tmp_path / "small.jsonl"), "--reference-dir", str(tmp_path / "refs16"), "--reference-size", "16"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert not any(row.extra["reference_enlarged"] for row in read_caption_set(tmp_path / "small.jsonl"))
    # --skip-smaller samples only images at least that large (not the paper's protocol: said in the help)
    assert prepare_coco.main(["--captions", str(captions), "--num", "2", "--skip-smaller", "34", "--output", str(tmp_path / "big.jsonl")]) == 0
    assert all(min(r.extra["width"], r.extra["height"]) >= 34 for r in read_caption_set(tmp_path / "big.jsonl"))
    assert prepare_coco.main(["--captions", str(captions), "--num", "3", "--skip-smaller", "34", "--output", str(tmp_path / "x.jsonl")]) == 2
    assert "more than the 2 captioned images of at least 34 px" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module", ["benchmark_latency", "benchmark_upscaler", "benchmark_tiling_memory", "any_size_study"]
)
def test_benchmarks_refuse_several_processes(module, tmp_path, monkeypatch, capsys):
    """A benchmark times one process: under `torchrun --nproc_per_node 2` it stops before any work
    instead of running two copies that disturb each other and write the same files."""
    import importlib

    from evaluation.sharding import LaunchMismatchError

    monkeypatch.setenv("WORLD_SIZE", "2")
    script = importlib.import_module(f"evaluation.benchmarks.{module}")
    argv = ["--smoke-test", "--output", str(tmp_path / "out.json")]
    if module == "benchmark_latency":
        argv = ["text-to-image", "--smoke-test", "--output-dir", str(tmp_path / "out.json")]
    if module in ("benchmark_upscaler", "benchmark_tiling_memory"):
        with pytest.raises(LaunchMismatchError, match="times ONE process, but the launcher started 2"):
            script.main(argv)
    else:
        assert script.main(argv) == 2
        assert f"evaluation.benchmarks.{module} times ONE process, but the launcher started 2" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow  # TAEF2 on 2 images, twice: about 9 s (measured)
def test_comparison_figure_shows_the_pipelines_default_output(tmp_path, shared_path, taef2_dir, tiny_dirs, capsys):
    """evaluation.reports.comparison_figure: one row per image, four columns (bicubic | bilinear latent |
    UPLiFT | ground truth) of the zoomed centre crop; the UPLiFT column is the pipeline's default
    output (back-projected) unless --back-projection-steps 0. A bad --output is refused first."""
    from evaluation.reports import comparison_figure as make_comparison_figure

    common = ["--data", str(shared_path("data", "bsds500", "test")), "--vae", str(taef2_dir),
              "--upscaler", str(tiny_dirs.upscaler(32, noise_scale=1.0)), "--images", "2", "--hr-size", "64",
              "--lr-size", "16", "--crop", "32", "--zoom", "2"]
    sheets = {}
    for steps in ("5", "0"):
        output = tmp_path / f"figure-{steps}.png"
        assert make_comparison_figure.main([*common, "--output", str(output), "--back-projection-steps", steps]) == 0
        with Image.open(output) as image:
            sheets[steps] = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert sheets["5"].shape == (20 + 2 * 64, 4 * 64, 3)
    columns = {steps: [sheet[20:, c * 64 : (c + 1) * 64] for c in range(4)] for steps, sheet in sheets.items()}
    for column in (0, 1, 3):  # bicubic, bilinear latent and ground truth do not depend on it
        assert np.array_equal(columns["5"][column], columns["0"][column])
    assert not np.array_equal(columns["5"][2], columns["0"][2])
    assert "wrote" in capsys.readouterr().out
    for bad in (str(tmp_path) + "/", str(tmp_path / "figure.jpg")):
        with pytest.raises(SystemExit) as exit_status:
            make_comparison_figure.main([*common, "--output", bad])
        assert exit_status.value.code == 2 and "--output" in capsys.readouterr().err


def test_json_files_named_by_a_flag_fail_in_one_wording(tmp_path):
    """prepare_coco's --captions and make_tables' results files are read by one helper
    (evaluation.arguments.read_json_file): missing or unparsable files name the flag, the path and the fix."""
    from evaluation.reports.tables import load_result

    broken = tmp_path / "broken.json"
    broken.write_text("{oops", encoding="utf-8")
    absent = tmp_path / "absent.json"
    with pytest.raises(FileNotFoundError, match=r"^--captions file not found: '.*absent\.json'; pass annotations/captions_val2014\.json\.$"):
        prepare_coco.load_coco_captions(absent)
    with pytest.raises(ValueError, match=r"^--captions '.*broken\.json' is not valid JSON: Expecting property name"):
        prepare_coco.load_coco_captions(broken)
    with pytest.raises(FileNotFoundError, match=r"^results file not found: '.*absent\.json'; pass the results\.json an evaluation script wrote\.$"):
        load_result(absent)
    with pytest.raises(ValueError, match=r"^results '.*broken\.json' is not valid JSON"):
        load_result(broken)
    broken.write_text('{"images": [], "annotations": {}}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"must be a COCO captions file with 'images' and 'annotations' lists"):
        prepare_coco.load_coco_captions(broken)
