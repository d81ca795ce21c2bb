"""The embedded default: TAEF2 and the UPLiFT model trained for it, one pipeline folder in the
repository (examples/models/uplift-taef2-bsds500), usable with no network and no ../shared."""
import json

import numpy as np
import PIL.Image
import torch

from conftest import EXAMPLE_PIPELINE
from uplift_diffusers import TinyAutoencoder, UPLiFTLatentUpscaler, UPLiFTSuperResolutionPipeline

SAMPLES = EXAMPLE_PIPELINE.parents[1] / "images"


def test_the_folder_is_a_pipeline_with_its_licence():
    index = json.loads((EXAMPLE_PIPELINE / "model_index.json").read_text())
    assert index["_class_name"] == "UPLiFTSuperResolutionPipeline"
    assert index["vae"][1] == "TinyAutoencoder" and index["upscaler"][1] == "UPLiFTLatentUpscaler"
    licence = (EXAMPLE_PIPELINE / "vae" / "LICENSE").read_text()
    assert "MIT License" in licence and "madebyollin/taesd" in licence
    for sample in ("chelsea.png", "coffee.png"):
        assert (SAMPLES / sample).is_file()
    assert "CC0" in (SAMPLES / "README.md").read_text()


def test_pipeline_from_pretrained_upscales_a_sample_4x():
    pipe = UPLiFTSuperResolutionPipeline.from_pretrained(EXAMPLE_PIPELINE)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, TinyAutoencoder) and isinstance(pipe.upscaler, UPLiFTLatentUpscaler)
    assert pipe.upscaler.config.trained_upscale_factors == [2, 4, 8] and pipe.vae.config.latent_channels == 32
    photo = PIL.Image.open(SAMPLES / "coffee.png").convert("RGB").resize((64, 48), PIL.Image.Resampling.BICUBIC)
    out = pipe(photo, upscale_factor=4, generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (256, 192)
    # the result is the photo enlarged: close to it at the input's resolution
    small = np.asarray(out.resize(photo.size, PIL.Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(small - np.asarray(photo, dtype=np.float32)).mean() < 12


def test_embedded_taef2_equals_the_authors_weights(shared_path, taef2):
    from uplift_diffusers.loaders import load_vae

    original = load_vae(shared_path("models", "taef2"))
    for key, value in original.state_dict().items():
        assert torch.equal(taef2.state_dict()[key], value), key
