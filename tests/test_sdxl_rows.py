"""The paper's SDXL reference rows of eval_text_to_image.py (``sdxl``, ``lcm-lora-sdxl``).

Tiny SDXL components (``tiny_dirs``, tests/tiny_models.py): a UNet with SDXL's ``text_time``
conditioning, two CLIP text encoders (the second with a projection), character tokenizers,
SDXL base's default Euler scheduler; and a random peft LoRA saved the way the Hub's LCM-LoRA is.
The tiny model's native size (64 px) plays SDXL's 1024.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.tasks import eval_text_to_image
from evaluation.data.caption_sets import CaptionRow, write_caption_set
from tiny_models import SDXL_TINY_NATIVE_SIZE

CAPTIONS = ["a red cube.", "two dogs", "a house!"]  # <= 14 characters: the tiny tokenizers hold 16 tokens


@pytest.fixture
def caption_set(tmp_path):
    references = tmp_path / "refs"
    references.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for index, caption in enumerate(CAPTIONS):
        name = f"ref{index}.png"
        Image.fromarray(rng.integers(0, 256, (40 + index, 50, 3), dtype=np.uint8)).save(references / name)
        rows.append(CaptionRow(id=f"c{index}", caption=caption, file_name=name))
    path = tmp_path / "captions.jsonl"
    write_caption_set(rows, path)
    return path, references


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Every StableDiffusionXLPipeline call: its scheduler class, requested / run steps, guidance, size, UNet calls, LoRAs."""
    from diffusers import StableDiffusionXLPipeline

    calls = []
    original = StableDiffusionXLPipeline.__call__

    def spy(self, *args, **kwargs):
        unet_calls = []
        hook = self.unet.register_forward_hook(lambda *a: unet_calls.append(1))
        try:
            output = original(self, *args, **kwargs)
        finally:
            hook.remove()
        calls.append({
            "scheduler": type(self.scheduler).__name__, "steps": kwargs["num_inference_steps"], "timesteps": len(self.scheduler.timesteps),
            "unet_calls": len(unet_calls), "guidance_scale": kwargs["guidance_scale"], "cfg": self.do_classifier_free_guidance,
            "size": (kwargs.get("height"), kwargs.get("width")), "adapters": self.get_list_adapters().get("unet", []),
        })
        return output

    monkeypatch.setattr(StableDiffusionXLPipeline, "__call__", spy)
    return calls


def _argv(tiny_dirs, prompts, references, out, *extra):
    return ["--prompts", str(prompts), "--reference-dir", str(references), "--output-dir", str(out), "--model", str(tiny_dirs.sd_pipeline()),
            "--sdxl-model", str(tiny_dirs.sdxl_pipeline()), "--lcm-lora", str(tiny_dirs.sdxl_lora()),
            "--sdxl-size", str(SDXL_TINY_NATIVE_SIZE), "--size", "32", "--steps", "2", "--batch-size", "2", "--seed", "3",
            "--clip-model", str(tiny_dirs.clip()), "--feature-extractor", "tiny-random", "--patch-size", "16", "--quiet", *extra]


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.mark.slow  # a tiny SDXL pipeline saved and run, about 2 s
def test_sdxl_rows_native_size_steps_scheduler_and_names(tmp_path, tiny_dirs, caption_set, pipeline_calls):
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    prompts, references = caption_set
    out = tmp_path / "t2i"
    argv = _argv(tiny_dirs, prompts, references, out, "--methods", "base512,sdxl,lcm-lora-sdxl")
    assert eval_text_to_image.main(argv) == 0
    result = json.loads((out / "results.json").read_text())
    assert list(result["methods"]) == ["base512", "sdxl", "lcm-lora-sdxl"]
    assert result["generation"] == {"generated": 3, "skipped": 0, "files_written": 9}
    native = SDXL_TINY_NATIVE_SIZE
    for method, size in (("base512", 32), ("sdxl", native), ("lcm-lora-sdxl", native)):
        values = result["methods"][method]
        assert values["size"] == size and {"fid", "patch_fid", "clip"} <= set(values)
        for index in range(3):
            with Image.open(out / "images" / method / f"c{index}.png") as image:
                assert image.size == (size, size)

    # what ran: SDXL with its default scheduler, 50 steps with CFG, then the LoRA'd model with
    # LCMScheduler, 4 steps, no CFG; both at the native size, whatever --steps says (2)
    sdxl_calls = [c for c in pipeline_calls if not c["adapters"]]
    lcm_calls = [c for c in pipeline_calls if c["adapters"]]
    assert len(sdxl_calls) == len(lcm_calls) == 2  # 3 captions in batches of 2
    for call in sdxl_calls:
        assert call["scheduler"] == "EulerDiscreteScheduler" and call["steps"] == call["timesteps"] == call["unet_calls"] == 50
        assert call["guidance_scale"] == 5.0 and call["cfg"] and call["size"] == (native, native)
    for call in lcm_calls:
        assert call["scheduler"] == "LCMScheduler" and call["steps"] == call["timesteps"] == call["unet_calls"] == 4
        assert call["guidance_scale"] == 1.0 and not call["cfg"] and call["size"] == (native, native)
    rows = result["settings"]["native_rows"]
    assert rows["sdxl"]["steps"] == 50 and rows["lcm-lora-sdxl"]["steps"] == 4 and rows["lcm-lora-sdxl"]["scheduler"] == "LCMScheduler"
    assert rows["lcm-lora-sdxl"]["lora"] == str(tiny_dirs.sdxl_lora()) and rows["sdxl"]["lora"] is None
    assert result["settings"]["steps"] == 2  # the SD1.5 rows' setting, recorded apart

    # the rows are what they claim: caption 2 (alone in its batch) with seed 3 + 2
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_dirs.sdxl_pipeline()), add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)

    def call(steps, guidance):
        generator = torch.Generator().manual_seed(5)
        images = pipe(CAPTIONS[2], num_inference_steps=steps, guidance_scale=guidance, generator=generator, output_type="pt").images
        return (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)

    assert np.abs(_png(out / "images" / "sdxl" / "c2.png") - call(50, 5.0)).max() <= 1
    pipe.load_lora_weights(str(tiny_dirs.sdxl_lora()))
    pipe.fuse_lora()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    assert np.abs(_png(out / "images" / "lcm-lora-sdxl" / "c2.png") - call(4, 1.0)).max() <= 1

    # the tables name the rows as the paper does, references first
    table = (out / "results.md").read_text().splitlines()
    labels = [line.split("|")[1].strip() for line in table[4:]]
    assert labels == ["SDXL", "LCM-LoRA SDXL", "SD1.5 base resolution, 32 px (no upscaling)"]  # named by the base size used

    # resumable: nothing is generated again, no pipeline is even called
    calls_before = len(pipeline_calls)
    assert eval_text_to_image.main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["generation"] == {"generated": 0, "skipped": 3, "files_written": 0}
    assert len(pipeline_calls) == calls_before and again["methods"] == result["methods"]


def test_sdxl_rows_refuse_a_non_native_size_and_bad_values(tmp_path, tiny_dirs, caption_set, capsys):
    prompts, references = caption_set
    out = tmp_path / "t2i"
    argv = _argv(tiny_dirs, prompts, references, out, "--methods", "sdxl", "--no-fid", "--no-clip")
    argv[argv.index("--sdxl-size") + 1] = "128"
    assert eval_text_to_image.main(argv) == 2
    error = capsys.readouterr().err
    assert "--sdxl-size 128 is not the native size" in error and f"pass --sdxl-size {SDXL_TINY_NATIVE_SIZE}" in error
    assert not (out / "images" / "sdxl").exists()
    argv[argv.index("--sdxl-size") + 1] = "60"
    assert eval_text_to_image.main(argv) == 2
    assert "--sdxl-size must be a positive multiple of 8" in capsys.readouterr().err
    argv[argv.index("--methods") + 1] = "sdxl,lcm"
    assert eval_text_to_image.main(argv) == 2
    assert "--methods must be a comma-separated subset of uplift,bilinear,nearest,base512,sdxl,lcm-lora-sdxl" in capsys.readouterr().err
