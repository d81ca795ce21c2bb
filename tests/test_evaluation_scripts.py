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
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
from uplift_diffusers.image_processor import list_images, pil_to_tensor
from uplift_diffusers.utils import sr_protocol
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
    with pytest.raises(ValueError, match="num_steps"):
        LatentInterpolationUpscaler("nearest")(latents, num_steps=0)
    with pytest.raises(ValueError, match="floating-point"):
        LatentInterpolationUpscaler("nearest")(latents.long())


def test_sr_protocol_uses_the_project_psnr():
    assert sr_protocol.psnr is metrics_psnr  # one PSNR: the evaluation's metrics and the training's validation


def _bicubic_psnr(files, hr_size: int, lr_size: int) -> float:
    """Mean PSNR of PIL bicubic 4x on the protocol's pairs, computed image by image (the reference)."""
    values = []
    for path in files:
        hr, lr = sr_protocol.load_hr_lr(path, hr_size, lr_size)
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
    hr = torch.cat([pil_to_tensor(sr_protocol.load_hr_lr(f, 32, 8)[0]) for f in files])
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
        hr, lr = sr_protocol.load_hr_lr(pair["source"], 64, 16)
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
# reLAION selection and download (local HTTP server)
# --------------------------------------------------------------------------------------------
class _ImageServer:
    """Serves /img/<name>.<w>x<h> as a JPEG of that size; /img/dead is a 404. Records the raw paths."""

    def __init__(self):
        self.paths = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(handler):
                with self.lock:
                    self.paths.append(handler.path)
                name = urllib.parse.urlsplit(handler.path).path.rsplit("/", 1)[-1]
                if name == "dead":
                    handler.send_response(404)
                    handler.send_header("Content-Length", "0")
                    handler.end_headers()
                    return
                width, height = (int(v) for v in name.split(".")[-1].split("x"))
                buffer = io.BytesIO()
                Image.new("RGB", (width, height), (width % 256, height % 256, 7)).save(buffer, format="JPEG")
                body = buffer.getvalue()
                handler.send_response(200)
                handler.send_header("Content-Type", "image/jpeg")
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    def url(self, name: str, query: str = "") -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/img/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def image_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = _ImageServer()
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
    thread.join(timeout=5)


def test_prepare_relaion_selects_downloads_and_replaces_dead_links(tmp_path, image_server):
    rows = [("URL", "TEXT", "WIDTH", "HEIGHT")]
    for index in range(8):
        rows.append((image_server.url(f"a{index}.48x40", "sig=abc&w=9"), f"photo {index}", "48", "40"))
    rows.append((image_server.url("small.20x40"), "too small", "20", "40"))  # filtered by the metadata
    rows.append((image_server.url("liar.30x30"), "lying size", "64", "64"))  # metadata says large, image is small
    rows.append((image_server.url("dead"), "dead link", "64", "64"))
    rows.append((rows[1][0], "duplicate url", "48", "40"))
    rows.append(("ftp://example.org/x.jpg", "not http", "64", "64"))
    metadata = tmp_path / "part-0.csv"
    metadata.write_text("\n".join(",".join(row) for row in rows) + "\n")

    out = tmp_path / "relaion"
    argv = ["--metadata", str(tmp_path), "--output-dir", str(out), "--num", "5", "--min-size", "32", "--oversample", "1.0",
            "--reference-size", "32", "--workers", "2", "--timeout", "5", "--retries", "0", "--backoff", "0", "--quiet"]
    assert prepare_relaion.main(argv) == 0
    selection = json.loads((out / "selection.json").read_text())
    assert selection["metadata_counts"] == {"rows": 13, "eligible": 11, "too_small_or_unknown_size": 1, "bad_url_or_caption": 1}
    # candidates = the 10 smallest keys among the 10 distinct eligible URLs, in key order
    eligible = sorted({row[0] for row in rows[1:] if row[0].startswith("http") and "small" not in row[0]},
                      key=lambda url: prepare_relaion.sampling_key(url, 0))
    assert selection["candidates"] == len(eligible) == 10
    chosen = read_caption_set(out / "captions.jsonl")
    good = [url for url in eligible if "dead" not in url and "liar" not in url]
    assert [row.extra["url"] for row in chosen] == good[:5]
    reasons = {item["url"]: item["reason"] for item in selection["rejected"]}
    for url in eligible[: eligible.index(good[4])]:
        if url not in good:
            assert ("404" in reasons[url]) if "dead" in url else ("30 x 30" in reasons[url])
    for row in chosen:
        with Image.open(out / "images" / row.file_name) as image:
            assert image.size == (32, 32)
    # URLs were requested exactly as in the metadata (no added w= parameter)
    assert all("w=1" not in path for path in image_server.paths)
    assert any(path.endswith("?sig=abc&w=9") for path in image_server.paths)
    # rerun: same selection, nothing downloaded again
    requests = len(image_server.paths)
    assert prepare_relaion.main(argv) == 0
    assert [row.id for row in read_caption_set(out / "captions.jsonl")] == [row.id for row in chosen]
    assert Counter(path.rsplit("/", 1)[-1].split("?")[0] for path in image_server.paths[requests:]) == Counter({"dead": 1})


def test_prepare_relaion_parquet_column_spellings(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"url": ["http://a/1", "http://a/2"], "caption": ["one", "two"], "width": [2048, 100], "height": [1024, 4000]})
    pq.write_table(table, tmp_path / "part.parquet")
    rows = list(prepare_relaion.read_metadata(tmp_path / "part.parquet"))
    assert rows[0] == {"url": "http://a/1", "caption": "one", "width": 2048, "height": 1024}
    selected, stats = prepare_relaion.select_candidates(rows, 5, 0, 1024)
    assert [c.url for c in selected] == ["http://a/1"] and stats["eligible"] == 1


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
    from uplift_diffusers.loaders.vae import load_vae

    vae = load_vae(str(taef2_dir))
    assert result["methods"]["bilinear"]["psnr"] == pytest.approx(_baseline_psnr(vae, files, color_correction=True), abs=1e-4)
    # the autoencoder's own reconstruction bounds the latent rows
    assert result["methods"]["vae"]["psnr"] > max(result["methods"][m]["psnr"] for m in ("bilinear", "nearest", "uplift"))

    table = (out / "results.md").read_text()
    assert "| Method | test PSNR | test SSIM | test FID | test patch-FID |" in table
    assert "| UPLiFT |" in table and "| Bicubic (pixel space) |" in table

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
    assert benchmark_latency.main(["--output-dir", str(out), "--tiny-random-models"] + TINY_LATENCY) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["task"] == "latency" and result["random_weights"] is True and "tiny" in result["note"]
    stages = result["stages"]
    assert set(stages) == {"unet", "vae_decode_base", "uplift", "bilinear", "nearest", "vae_decode_upscaled", "color_correction"}
    assert all(value > 0 for value in stages.values())
    tail = stages["vae_decode_upscaled"] + stages["color_correction"]
    assert result["methods"]["base512"] == pytest.approx(stages["unet"] + stages["vae_decode_base"])
    assert result["methods"]["uplift"] == pytest.approx(result["methods"]["base512"] + stages["uplift"] + tail)


def test_benchmark_latency_falls_back_to_random_weights_offline(tmp_path, monkeypatch, capsys):
    from uplift_diffusers.loaders.hub import HubUnavailableError

    def offline(*args, **kwargs):
        raise HubUnavailableError("cannot reach the Hugging Face Hub")

    monkeypatch.setattr(benchmark_latency, "pretrained_models", offline)
    built = []  # the real-size models are asked for; the test builds the tiny ones instead
    original = benchmark_latency.random_models
    monkeypatch.setattr(benchmark_latency, "random_models", lambda *a: built.append(a) or original(a[0], a[1], True, a[3]))
    out = tmp_path / "latency"
    assert benchmark_latency.main(["--output-dir", str(out)] + TINY_LATENCY) == 0
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
    assert lines[4] == "| SD1.5 base resolution (no upscaling) | 21.00 | 41.00 | 31.00 | 2.100 | 31.00 | 61.00 | 31.00 | - |"
    assert lines[5] == "| Bilinear latent upsampling | 22.00 | 42.00 | 32.00 | 2.500 | 32.00 | 62.00 | 32.00 | - |"
    assert lines[6] == "| UPLiFT | 20.00 | 40.00 | 30.00 | 2.551 | 30.00 | 60.00 | 30.00 | - |"
    text = "\n".join(lines)
    assert "Table 4: super-resolution (256 -> 1024)" in text
    assert "Text-to-image latency breakdown (seconds per batch" in text
    assert "| Method | FacesHQ PSNR | FacesHQ SSIM | FacesHQ FID | FacesHQ patch-FID |" in text
    assert "| Bicubic (pixel space) | 28.00 | 0.7000 | - | - |" in text and "| UPLiFT | 30.12 | 0.8123 | 5.50 | 6.25 |" in text
    assert "| Stage | coco batch 4, 25 steps |" in text and "| UPLiFT | 0.0500 |" in text and "| Total: UPLiFT | 2.5510 |" in text
    # two results with the same label for one table are refused
    assert make_tables.main([paths[0], paths[0]]) == 2


# --------------------------------------------------------------------------------------------
# Metric protocol of the scripts (issue #15 part 3): the paper's metrics by default, clean-fid /
# open_clip selectable, latent baselines colour-corrected only on request, all recorded
# --------------------------------------------------------------------------------------------
def _baseline_psnr(vae, files, color_correction: bool) -> float:
    """Mean PSNR of the bilinear latent baseline (64 <- 16): encode LR, interpolate the latents
    (align_corners=False), decode, and colour-correct against LR when ``color_correction``."""
    from uplift_diffusers.loaders.vae import decode_latents, encode_latents

    psnrs = []
    for path in files:
        hr, lr = sr_protocol.load_hr_lr(path, 64, 16)
        lr_t, hr_t = pil_to_tensor(lr), pil_to_tensor(hr)
        with torch.no_grad():
            latents = F.interpolate(encode_latents(vae, lr_t * 2 - 1), scale_factor=4, mode="bilinear", align_corners=False)
            image = (decode_latents(vae, latents) / 2 + 0.5).clamp(0, 1)
            image = color_correct(image, lr_t) if color_correction else image
        psnrs.append(float(metrics_psnr(image, hr_t)))
    return float(np.mean(psnrs))


def test_eval_super_resolution_metric_protocol_and_baseline_colour_correction(tmp_path, shared_path, taef2_dir):
    from evaluation.metrics import metric_setup
    from uplift_diffusers.loaders.vae import load_vae

    bsds = shared_path("data", "bsds500", "test")
    common = ["--data", str(bsds), "--vae", str(taef2_dir), "--upscaler", "bicubic,bilinear", "--hr-size", "64", "--lr-size", "16",
              "--limit", "3", "--batch-size", "2", "--quiet"]
    # the defaults are the paper's protocol
    args = eval_super_resolution.build_parser().parse_args(common + ["--output-dir", str(tmp_path)])
    assert (args.fid_backend, args.feature_extractor, args.patch_size, args.num_patches) == ("torchmetrics", "inception", 512, 4)
    assert args.color_correct_baselines is False

    # default: the bilinear row is not colour-corrected; clean-fid gives FID and KID
    out = tmp_path / "plain"
    assert eval_super_resolution.main(common + ["--output-dir", str(out), "--fid-backend", "clean-fid",
                                                "--feature-extractor", "tiny-random", "--patch-size", "32"]) == 0
    result = json.loads((out / "results.json").read_text())
    vae = load_vae(str(taef2_dir))
    files = list_images(bsds)[:3]
    bilinear = result["methods"]["bilinear"]
    assert bilinear["color_correction"] is False and result["methods"]["bicubic"]["color_correction"] is False
    assert bilinear["psnr"] == pytest.approx(_baseline_psnr(vae, files, color_correction=False), abs=1e-4)
    assert bilinear["psnr"] != pytest.approx(_baseline_psnr(vae, files, color_correction=True), abs=1e-3)
    for values in result["methods"].values():
        assert {"fid", "kid", "patch_fid", "patch_kid"} <= set(values)
        assert all(math.isfinite(values[key]) for key in ("fid", "kid", "patch_fid", "patch_kid"))
    record = result["settings"]["metrics"]
    assert result["settings"]["color_correct_baselines"] is False
    assert (record["fid_backend"], record["feature_extractor"], record["clip_backend"]) == ("clean-fid", "tiny-random", None)
    assert set(record["definitions"]) == {"psnr", "ssim", "fid", "patch_fid", "kid", "patch_kid"}
    assert record["definitions"]["fid"] == metric_setup.DEFINITIONS["fid/clean-fid"]
    assert "4 random 32 x 32 crops" in record["definitions"]["patch_fid"]
    assert "StructuralSimilarityIndexMeasure(data_range=1.0)" in record["definitions"]["ssim"]
    assert record["library_versions"]["clean-fid"]

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


def test_eval_text_to_image_open_clip_backend_and_baseline_record(tmp_path, tiny_dirs):
    from evaluation.metrics.image_metrics import OpenCLIPScorer
    from tiny_models import save_tiny_open_clip

    prompts = _coco_prompts(tmp_path)
    rows = read_caption_set(prompts)
    open_clip_name = save_tiny_open_clip(tmp_path / "open-clip")
    out = tmp_path / "t2i"
    argv = ["--prompts", str(prompts), "--output-dir", str(out), "--model", str(tiny_dirs.sd_pipeline()), "--steps", "2", "--size", "64",
            "--batch-size", "2", "--seed", "5", "--methods", "bilinear,base512", "--no-fid", "--clip-backend", "open_clip",
            "--clip-model", open_clip_name, "--clip-pretrained", "none", "--quiet"]
    defaults = eval_text_to_image.build_parser().parse_args(["--prompts", "p", "--output-dir", "o"])
    assert (defaults.clip_backend, defaults.clip_model, defaults.fid_backend, defaults.patch_size) == ("transformers", None, "torchmetrics", 512)
    assert eval_text_to_image.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    record = result["settings"]["metrics"]
    assert (record["clip_backend"], record["clip_model"], record["clip_pretrained"]) == ("open_clip", open_clip_name, None)
    assert record["fid_backend"] is None and record["feature_extractor"] is None and set(record["definitions"]) == {"clip"}
    assert "open_clip" in record["definitions"]["clip"] and "not clamped" in record["definitions"]["clip"]
    assert result["methods"]["bilinear"]["color_correction"] is False and result["methods"]["base512"]["color_correction"] is False
    marker = out / "images" / "bilinear" / "color_correction.json"
    assert json.loads(marker.read_text()) == {"color_correction": False}
    # the CLIP score is the open_clip scorer's on the saved PNGs (the model's weights are in its folder)
    scorer = OpenCLIPScorer(model_name=open_clip_name, pretrained=None)
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
    # --clip-pretrained belongs to open_clip
    transformers_argv = [item for item in argv if item not in ("--clip-backend", "open_clip")]
    assert eval_text_to_image.main(transformers_argv) == 2
