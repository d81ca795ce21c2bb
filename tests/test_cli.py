"""The `uplift-diffusers` command line, run in-process and offline."""
import functools
import json
import time

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import EXAMPLE_PIPELINE
from safetensors.torch import load_file

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.cli import EXIT_STATUSES, build_parser, main, parse_output_size, parse_scale, parse_size
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID

# No test may reach the network or a user's Hub cache: each runs on an empty, offline one.
pytestmark = pytest.mark.usefixtures("hub_cache")
EMBEDDED = "examples/models/uplift-taef2-bsds500"


@pytest.fixture
def upscaler_dir(tiny_dirs):
    """A 32-channel upscaler (TAEF2's and FLUX.2's latents)."""
    return tiny_dirs.upscaler(32, noise_scale=1.0)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (13, 21, 4), dtype=np.uint8), "RGBA").save(folder / "odd.png")
    PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "square.jpg")
    return folder


@pytest.fixture
def defaults_cached(hub_cache, sd15_cached, release_cached):
    """Both defaults in the (offline) Hub cache: the SD1.5 pipeline and the UPLiFT release (``tiny_upscaler``)."""
    return hub_cache


def error_lines(capsys):
    """The lines on stderr (no traceback among them)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def one_error_line(capsys):
    """The one error line of a failed command (progress bars aside)."""
    lines = [line for line in error_lines(capsys) if "error:" in line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("uplift-diffusers: error: "), lines[0]
    return lines[0]


def forbid_loading(monkeypatch):
    """Loading any model fails the test: the error must come before."""
    import uplift_diffusers.cli as cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("load_super_resolution", "load_text_to_image", "load_upscaler"):
        monkeypatch.setattr(cli, name, refuse)


def fails_fast(argv, capsys):
    """The one error line of ``argv``, which must fail (status 1) in under 2 s (no network waits)."""
    start = time.perf_counter()
    assert main(argv) == 1
    assert time.perf_counter() - start < 2
    return one_error_line(capsys)


def pixels(path):
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def upscaled_by(pipe, path, factor=2):
    """What the pipeline gives for the image at ``path`` with the command's default seed."""
    pipe.set_progress_bar_config(disable=True)
    with PIL.Image.open(path) as image:
        return np.asarray(pipe(image, upscale_factor=factor, generator=torch.Generator().manual_seed(0)).images[0])


def taef2_options(taef2_dir, upscaler_dir):
    return ["--vae", str(taef2_dir), "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"]


# ------------------------------------------------------------------------------- convert
def test_convert_mini_checkpoint(shared_path, tmp_path, capsys):
    mini = shared_path("fixtures", "uplift-reference", "sd15vae-mini")
    out = tmp_path / "converted"
    code = main(["convert", str(mini / "uplift_original.safetensors"), "--config", str(mini / "uplift_original.yaml"), "--output", str(out)])
    assert code == 0
    assert "saved" in capsys.readouterr().out
    model = UPLiFTLatentUpscaler.from_pretrained(out).eval()
    # the converted directory reproduces the authors' implementation on the fixture case
    cases = load_file(str(mini / "cases.safetensors"))
    with torch.no_grad():
        steps = model(cases["square.latents"], cases["square.image"], num_steps=2, output_intermediate=True).intermediate
    torch.testing.assert_close(steps[0], cases["square.iters2.step1"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steps[1], cases["square.iters2.step2"], atol=1e-4, rtol=1e-4)


def test_convert_round_trip_keeps_the_weights(tmp_path, tiny_upscaler):
    from tiny_models import save_original_file

    checkpoint = save_original_file(tiny_upscaler, tmp_path / "release.safetensors")
    assert main(["convert", str(checkpoint), "-o", str(tmp_path / "out")]) == 0
    model = UPLiFTLatentUpscaler.from_pretrained(tmp_path / "out")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_upscaler.state_dict().values()))


def test_convert_missing_checkpoint(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "out")]) == 2
    assert "CHECKPOINT" in (line := one_error_line(capsys)) and "no such file or folder" in line


def test_convert_hub_checkpoint_not_cached_gives_an_offline_hint(tmp_path, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    line = fails_fast(["convert", "org/repo/uplift.safetensors", "-o", str(tmp_path / "out")], capsys)
    assert "HF_HUB_OFFLINE is set" in line and "org/repo/uplift.safetensors" in line and "hf download" in line


@pytest.mark.parametrize("suffix, match", [(".pth", "is not a PyTorch checkpoint"), (".safetensors", "is not a readable .safetensors file")])
def test_convert_random_bytes_is_one_line(tmp_path, suffix, match, capsys):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert main(["convert", str(junk), "-o", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert "CHECKPOINT" in line and f"junk{suffix}" in line and match in line
    assert not (tmp_path / "out" / "config.json").exists()


class NotATensor:
    """A pickled object the safe loader refuses."""


def test_convert_refused_pickle_says_why_and_never_advises_weights_only_false(tmp_path, capsys):
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": NotATensor()}, pickled)
    assert main(["convert", str(pickled), "-o", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert "was refused for safety" in line and "NotATensor" in line and "weights_only" not in line


def test_convert_of_a_converted_file_says_it_is_already_converted(tmp_path, tiny_dirs, capsys):
    weights = next(tiny_dirs.upscaler(4).glob("*.safetensors"))
    assert main(["convert", str(weights), "-o", str(tmp_path / "out")]) == 1
    line = one_error_line(capsys)
    assert "is already converted" in line and "unexpected keys" not in line


# ------------------------------------------------------------------------------- upscale
def test_upscale_with_taef2_directory(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(inputs / "odd.png"), str(inputs / "square.jpg"), "--output", str(out), "--scale", "2",
                 *taef2_options(taef2_dir, upscaler_dir), "--seed", "3"])
    assert code == 0
    with PIL.Image.open(out / "odd_x2.png") as image:
        assert image.size == (42, 26) and image.mode == "RGBA"  # RGBA in, RGBA out
    with PIL.Image.open(out / "square_x2.png") as image:
        assert image.size == (32, 32)
    assert "odd_x2.png (42x26)" in capsys.readouterr().out  # one line per file


def test_upscale_model_folder_is_the_pipeline_from_pretrained(tmp_path, inputs, capsys):
    """`--model FOLDER`: UPLiFTSuperResolutionPipeline.from_pretrained of that folder, same seed, same pixels."""
    from uplift_diffusers import UPLiFTSuperResolutionPipeline

    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(out), "--scale", "2", "--model", str(EXAMPLE_PIPELINE),
                 "--device", "cpu", "--quiet"]) == 0
    expected = upscaled_by(UPLiFTSuperResolutionPipeline.from_pretrained(EXAMPLE_PIPELINE), inputs / "square.jpg")
    assert np.array_equal(pixels(out / "square_x2.png"), expected)


def test_upscale_model_with_upscaler_replaced(tmp_path, inputs, upscaler_dir, taef2):
    """`--model` with `--upscaler`: the folder's VAE, the flag's upscaler."""
    from uplift_diffusers import UPLiFTSuperResolutionPipeline

    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(out), "--scale", "2", "--model", str(EXAMPLE_PIPELINE),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"]) == 0
    pipe = UPLiFTSuperResolutionPipeline(vae=taef2, upscaler=UPLiFTLatentUpscaler.from_pretrained(upscaler_dir))
    assert np.array_equal(pixels(out / "square_x2.png"), upscaled_by(pipe, inputs / "square.jpg"))


def test_upscale_directory_input_and_scale_4(taef2_dir, tmp_path, upscaler_dir, inputs):
    out = tmp_path / "out4"
    assert main(["upscale", str(inputs), "-o", str(out), "--scale", "4", *taef2_options(taef2_dir, upscaler_dir)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd_x4.png", "square_x4.png"]
    with PIL.Image.open(out / "odd_x4.png") as image:
        assert image.size == (84, 52)


def test_upscale_names_outputs_by_their_real_size(taef2_dir, tmp_path, upscaler_dir, inputs):
    common = taef2_options(taef2_dir, upscaler_dir)
    out = tmp_path / "out"
    PIL.Image.new("RGB", (30, 20), "red").save(inputs / "wide.png")
    assert main(["upscale", str(inputs / "wide.png"), "-o", str(out), "--size", "100x", *common]) == 0
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--scale", "1.5", *common]) == 0
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--size", "x26", *common]) == 0
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--size", "30x20", *common]) == 0
    sizes = {}
    for path in sorted(out.iterdir()):
        with PIL.Image.open(path) as image:
            sizes[path.name] = image.size
    # 30x20 to width 100: height round(20 x 100 / 30) = 67; 21x13: round(1.5 x side); height 26 -> width 42; exact
    assert sizes == {"wide_100x67.png": (100, 67), "odd_x1.5.png": (32, 20), "odd_42x26.png": (42, 26),
                     "odd_30x20.png": (30, 20)}


def test_size_smaller_than_an_input_is_refused_before_loading(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--size", "18x", "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "odd.png' is 21x13" in line and "--size width must be an int of at least the input's 21 pixels" in line
    assert list(out.iterdir()) == []


def test_default_models_offline_fail_fast_naming_the_embedded_model(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    line = fails_fast(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o")], capsys)
    assert line.startswith("uplift-diffusers: error: HF_HUB_OFFLINE is set and the local Hub cache lacks")
    assert f"--vae {SD15_MODEL_ID}" in line and f"--upscaler {UPLIFT_SD15_REPO_ID}" in line
    assert f"--model {EMBEDDED}" in line


def test_default_upscaler_alone_missing_is_named_alone(sd15_cached, tmp_path, inputs, capsys):
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 1
    line = one_error_line(capsys)
    assert UPLIFT_SD15_REPO_ID in line and SD15_MODEL_ID not in line  # the cached VAE is not reported


def test_unreachable_hub_fails_fast_and_restores_the_hub(tmp_path, inputs, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    import uplift_diffusers.loaders.hub as hub

    forbid_loading(monkeypatch)
    asked = []
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=None: asked.append(timeout) or False)
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o")]) == 1
    line = one_error_line(capsys)
    assert line.startswith("uplift-diffusers: error: the Hugging Face Hub cannot be reached and the local Hub cache lacks")
    assert SD15_MODEL_ID in line and UPLIFT_SD15_REPO_ID in line
    assert asked == [None]  # one quick check for both
    assert hub_constants.HF_HUB_OFFLINE is False  # restored after the command


def test_unreachable_hub_loads_from_the_cache_without_waiting(defaults_cached, tmp_path, inputs, monkeypatch):
    import os

    import huggingface_hub.constants as hub_constants

    import uplift_diffusers.cli as cli
    import uplift_diffusers.loaders.hub as hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=None: False)
    offline_while_loading = []
    load = cli.load_super_resolution

    def recording(*args):
        offline_while_loading.append((hub_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")))
        return load(*args)

    monkeypatch.setattr(cli, "load_super_resolution", recording)
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--scale", "2", "--device", "cpu"]) == 0
    assert offline_while_loading == [(True, "1")]
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ  # restored
    assert (tmp_path / "o" / "square_x2.png").is_file()


def test_upscale_defaults_run_offline_from_the_cache(defaults_cached, tiny_dirs, tiny_upscaler, tmp_path, inputs):
    """`upscale photo --scale 2` with no model flags: the SD1.5 VAE and the release from the cache."""
    from diffusers import AutoencoderKL

    from uplift_diffusers import UPLiFTSuperResolutionPipeline

    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "square.jpg"), "--scale", "2", "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    vae = AutoencoderKL.from_pretrained(tiny_dirs.sd_pipeline(), subfolder="vae")
    expected = upscaled_by(UPLiFTSuperResolutionPipeline(vae=vae, upscaler=tiny_upscaler), inputs / "square.jpg")
    got = pixels(out / "square_x2.png")
    assert got.shape == (32, 32, 3) and np.array_equal(got, expected)


@pytest.mark.slow  # a new interpreter importing the CLI and its models: 5.6 s (measured)
def test_upscale_defaults_offline_in_a_new_process(defaults_cached, tmp_path, inputs):
    """What a new user runs: a fresh process, HF_HUB_OFFLINE=1, the defaults in the cache."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(defaults_cached.root), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "uplift_diffusers.cli", "upscale", str(inputs / "odd.png"), "--scale", "2", "-o", str(out), "--quiet"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    with PIL.Image.open(out / "odd_x2.png") as image:
        assert image.size == (42, 26)


def test_upscale_channel_mismatch_is_one_line(taef2_dir, tiny_dirs, tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), *taef2_options(taef2_dir, tiny_dirs.upscaler(4))])
    assert code == 1
    assert "latent_channels=4" in one_error_line(capsys)


def test_corrupt_upscaler_config_is_one_line(taef2_dir, tmp_path, tiny_dirs, inputs, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs.upscaler(32), broken)
    (broken / "config.json").write_text('{"_class_name": "UPLiFTLatentUpscaler", ')
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), *taef2_options(taef2_dir, broken)]) == 1
    line = one_error_line(capsys)
    assert "--upscaler" in line and "config.json" in line and "is not a valid JSON model config" in line


@pytest.mark.parametrize("vae, code, match", [("./no-such-vae", 2, "--vae './no-such-vae': no such file or folder"),
                                              ("FILE", 1, "--vae must be a directory")])
def test_vae_errors_name_the_flag(tmp_path, upscaler_dir, inputs, vae, code, match, capsys):
    vae = str(inputs / "odd.png") if vae == "FILE" else vae
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", vae, "--upscaler", str(upscaler_dir),
                 "--device", "cpu", "--quiet"]) == code
    line = one_error_line(capsys)
    assert match in line and "path_or_id" not in line


def test_bad_files_in_a_batch_do_not_stop_it(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG truncated")
    values = np.full((8, 8), 100.0, dtype=np.float32)
    values[2, 3] = np.nan
    PIL.Image.fromarray(values, "F").save(inputs / "nan.tif")  # the values are checked where the image enters
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--scale", "2", *taef2_options(taef2_dir, upscaler_dir)]) == 1
    line = one_error_line(capsys)
    assert line.startswith("uplift-diffusers: error: 2 input(s) failed: ")
    assert "broken.png': cannot read it as an image" in line and "nan.tif'" in line and "NaN" in line
    assert sorted(p.name for p in out.iterdir()) == ["odd_x2.png", "square_x2.png"]  # the good ones, complete


def test_interrupt_exits_130_and_keeps_what_was_written(taef2_dir, tmp_path, upscaler_dir, inputs, monkeypatch, capsys):
    from uplift_diffusers import UPLiFTSuperResolutionPipeline

    original, calls = UPLiFTSuperResolutionPipeline.__call__, []

    def interrupted_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UPLiFTSuperResolutionPipeline, "__call__", interrupted_on_the_second)
    out = tmp_path / "out"
    assert main(["upscale", str(inputs), "-o", str(out), "--scale", "2", *taef2_options(taef2_dir, upscaler_dir)]) == 130
    assert error_lines(capsys)[-1] == "uplift-diffusers: interrupted; the outputs already written are complete"
    assert [p.name for p in out.iterdir()] == ["odd_x2.png"]


def test_upscale_back_projection_steps_and_ensemble(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    """Default 5 rounds (the pipeline's); --back-projection-steps 0 gives the paper's output; the
    default's 4x-downsampled output is closer to the input."""
    common = [*taef2_options(taef2_dir, upscaler_dir), "--scale", "4"]
    source = inputs / "square.jpg"
    outputs = {}
    for name, extra in (("default", []), ("paper", ["--back-projection-steps", "0"])):
        assert main(["upscale", str(source), "-o", str(tmp_path / name), *common, *extra]) == 0
        with PIL.Image.open(tmp_path / name / "square_x4.png") as image:
            outputs[name] = np.asarray(image.convert("RGB").resize((16, 16), PIL.Image.BILINEAR), dtype=np.float64)
    original = pixels(source).astype(np.float64)
    assert np.abs(outputs["default"] - original).mean() < 0.5 * np.abs(outputs["paper"] - original).mean()
    # --ensemble 2: the average of the upscales of the image and its flip
    assert main(["upscale", str(source), "-o", str(tmp_path / "ensemble"), *common, "--ensemble", "2"]) == 0
    ensemble = pixels(tmp_path / "ensemble" / "square_x4.png")
    assert ensemble.shape == (64, 64, 3) and not np.array_equal(ensemble, pixels(tmp_path / "default" / "square_x4.png"))


def test_tiling_flag_turns_on_the_pipeline_tiling(taef2_dir, tmp_path, upscaler_dir, inputs, monkeypatch):
    from uplift_diffusers import UPLiFTSuperResolutionPipeline

    turned_on = []
    monkeypatch.setattr(UPLiFTSuperResolutionPipeline, "enable_tiling", lambda self, *a, **k: turned_on.append(True))
    for flag in ("--tiling", "--vae-tiling"):
        assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--scale", "2", flag,
                     *taef2_options(taef2_dir, upscaler_dir)]) == 0
    assert turned_on == [True, True]


def test_progress_bar_is_the_pipelines_own(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--scale", "4", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "3/3" in err or "4/4" in err  # the pipeline's stages (encode, 2x steps, decode)
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "q"), "--scale", "4", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------- generate
def generate(model, tmp_path, *extra):
    return main(["generate", "a cat", "--model", str(model), "--steps", "2", "--device", "cpu", "--quiet",
                 "-o", str(tmp_path / "cat.png"), *extra])


def test_generate_sd_is_apply_uplift_on_the_pipeline(tiny_dirs, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from uplift_diffusers import apply_uplift

    upscaler = tiny_dirs.upscaler(4)
    assert generate(tiny_dirs.sd_pipeline(), tmp_path, "--upscaler", str(upscaler), "--size", "64x48") == 0, capsys.readouterr().err
    assert "cat.png (128x96)" in capsys.readouterr().out
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs.sd_pipeline())
    pipe.set_progress_bar_config(disable=True)
    apply_uplift(pipe, UPLiFTLatentUpscaler.from_pretrained(upscaler), upscale_factor=2)
    expected = pipe("a cat", width=64, height=48, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(tmp_path / "cat.png"), np.asarray(expected))


def test_generate_refine_is_hires_fix(tiny_dirs, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    from uplift_diffusers import hires_fix

    upscaler = tiny_dirs.upscaler(4)
    assert generate(tiny_dirs.sd_pipeline(), tmp_path, "--upscaler", str(upscaler), "--size", "64",
                    "--refine-strength", "0.5", "--refine-steps", "1") == 0, capsys.readouterr().err
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs.sd_pipeline())
    pipe.set_progress_bar_config(disable=True)
    expected = hires_fix(pipe, UPLiFTLatentUpscaler.from_pretrained(upscaler), upscale_factor=2, strength=0.5, refine_steps=1,
                         prompt="a cat", width=64, height=64, num_inference_steps=2, num_images_per_prompt=1,
                         generator=torch.Generator().manual_seed(0)).images[0]
    got = pixels(tmp_path / "cat.png")
    assert got.shape == (128, 128, 3) and np.array_equal(got, np.asarray(expected))


def test_generate_uses_the_folders_own_upscaler(tiny_dirs, tmp_path, capsys):
    """A StableDiffusionUPLiFTPipeline folder: its upscaler/ is used (the release is not cached)."""
    from diffusers import StableDiffusionPipeline

    from uplift_diffusers import StableDiffusionUPLiFTPipeline, apply_uplift

    upscaler = UPLiFTLatentUpscaler.from_pretrained(tiny_dirs.upscaler(4, noise_scale=1.0))
    folder = tmp_path / "sd-uplift"
    StableDiffusionUPLiFTPipeline.from_pretrained(tiny_dirs.sd_pipeline(), upscaler=upscaler).save_pretrained(folder)
    assert generate(folder, tmp_path, "--size", "64") == 0, capsys.readouterr().err
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs.sd_pipeline())
    pipe.set_progress_bar_config(disable=True)
    apply_uplift(pipe, upscaler, upscale_factor=2)
    expected = pipe("a cat", width=64, height=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(pixels(tmp_path / "cat.png"), np.asarray(expected))


def test_generate_float_scale_and_scale_1(tiny_dirs, tmp_path, capsys):
    assert generate(tiny_dirs.sd_pipeline(), tmp_path, "--upscaler", str(tiny_dirs.upscaler(4)), "--size", "64", "--scale", "1.5",
                    "--tiling") == 0, capsys.readouterr().err
    with PIL.Image.open(tmp_path / "cat.png") as image:
        assert image.size == (96, 96)
    assert generate(tiny_dirs.sd_pipeline(), tmp_path, "--size", "64", "--scale", "1") == 0  # no upscaler needed
    with PIL.Image.open(tmp_path / "cat.png") as image:
        assert image.size == (64, 64)


def test_generate_flux2_klein_folder(tmp_path, upscaler_dir, monkeypatch, capsys):
    """A saved FLUX.2 [klein] pipeline: its class read off model_index.json, UPLiFT on its VAE's latents."""
    from diffusers import Flux2KleinPipeline
    from tiny_models import FLUX2_TEXT_LAYERS, build_flux2_components

    folder = tmp_path / "klein"
    Flux2KleinPipeline(**build_flux2_components(klein=True)).save_pretrained(folder)
    # the tiny text encoder has 2 layers and 256 positions (the released one: 36 layers)
    call = functools.partialmethod(Flux2KleinPipeline.__call__, max_sequence_length=16, text_encoder_out_layers=FLUX2_TEXT_LAYERS)
    monkeypatch.setattr(Flux2KleinPipeline, "__call__", call)
    assert generate(folder, tmp_path, "--size", "32", "--upscaler", str(upscaler_dir)) == 0, capsys.readouterr().err
    with PIL.Image.open(tmp_path / "cat.png") as image:
        assert image.size == (64, 64)
    assert generate(folder, tmp_path, "--size", "32") == 2  # no default upscaler for FLUX.2 latents
    assert "Flux2KleinPipeline needs --upscaler" in one_error_line(capsys)


def test_generate_unsupported_pipeline_names_the_supported_ones(tmp_path, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    folder = tmp_path / "sdxl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert generate(folder, tmp_path) == 2
    line = one_error_line(capsys)
    assert "is a StableDiffusionXLPipeline; supported: StableDiffusionPipeline, StableDiffusionUPLiFTPipeline, " \
           "Flux2Pipeline, Flux2KleinPipeline" in line


def test_generate_defaults_run_offline_from_the_cache(defaults_cached, tmp_path, capsys):
    target = tmp_path / "cat.png"
    assert main(["generate", "a cat", "--size", "64", "--steps", "2", "-o", str(target), "--device", "cpu", "--quiet"]) == 0
    with PIL.Image.open(target) as image:
        assert image.size == (128, 128)


def test_generate_default_model_offline_fails_fast(tmp_path, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    line = fails_fast(["generate", "a cat", "--output", str(tmp_path / "x.png")], capsys)
    assert "local Hub cache lacks" in line and f"--model {SD15_MODEL_ID}" in line


def test_generate_refine_needs_a_power_of_two_before_loading(tmp_path, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    assert main(["generate", "a cat", "--scale", "3", "--refine-strength", "0.3", "-o", str(tmp_path / "x.png")]) == 2
    line = one_error_line(capsys)
    assert "--refine-strength needs" in line and "--scale 2, 4 or 8" in line and "got 3)" in line


# ------------------------------------------------------------------------------- arguments, outputs, help
@pytest.mark.parametrize(
    "argv, match",
    [
        (["upscale", "a.png", "-o", "x", "--scale", "0.5"], "is not a scale"),
        (["upscale", "a.png", "-o", "x", "--scale", "nan"], "is not a scale"),
        (["upscale", "a.png", "-o", "x", "--size", "12x34x5"], "is not an output size"),
        (["upscale", "a.png", "-o", "x", "--size", "x"], "is not an output size"),
        (["upscale", "a.png", "-o", "x", "--size", "0x5"], "is not an output size"),
        (["upscale", "a.png", "-o", "x", "--scale", "2", "--size", "64x"], "not allowed with"),
        (["upscale", "a.png", "-o", "x", "--back-projection-steps", "two"], "'two' is not an integer >= 0"),
        (["upscale", "a.png", "-o", "x", "--ensemble", "3"], "argument --ensemble: invalid choice: 3"),
        (["generate", "cat", "--scale", "0"], "is not a scale"),
        (["generate", "cat", "--size", "500"], "multiples of 8"),
        (["generate", "cat", "--steps", "0"], "'0' is not an integer >= 1"),
        (["generate", "cat", "--refine-strength", "1"], "in [0, 1) (got 1)"),
        (["generate", "cat", "--refine-strength", "0.3", "--back-projection-steps", "1"], "no --back-projection-steps (got 1)"),
        (["upscale", "a.png"], "--output"),
        ([], "required"),
    ],
)
def test_argparse_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_empty_model_flags_and_missing_inputs_are_usage_errors(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    assert main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--upscaler", ""]) == 2
    assert "argument --upscaler: is empty" in capsys.readouterr().err
    assert main(["upscale", str(tmp_path / "missing.png"), str(tmp_path / "gone"), "-o", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert "INPUT not found" in line and "missing.png" in line and "gone" in line  # all of them at once


def test_outputs_are_checked_before_loading(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(taken)]) == 2
    assert "--output" in (line := one_error_line(capsys)) and "taken.txt' is a file, not a folder" in line
    assert taken.read_text() == "keep me"
    for argv in (
        ["upscale", str(inputs / "odd.png"), "-o", str(taken / "sub")],
        ["generate", "a cat", "-o", str(taken / "sub" / "cat.png")],
        ["convert", str(inputs / "odd.png"), "-o", str(taken / "sub")],
    ):
        assert main(argv) == 2
        assert "taken.txt' is a file, not a folder" in one_error_line(capsys)
    (tmp_path / "o" / "odd_x4.png").mkdir(parents=True)
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o")]) == 2
    assert "odd_x4.png' is a folder" in one_error_line(capsys)


def test_read_only_output_is_refused_before_loading(tmp_path, inputs, monkeypatch, capsys):
    """Tests run as root, whom permissions do not stop: the write check is made to fail as EROFS does."""
    import errno

    import uplift_diffusers.utils.atomic_files as atomic_files

    def read_only(dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    forbid_loading(monkeypatch)
    monkeypatch.setattr(atomic_files.tempfile, "TemporaryFile", read_only)
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "ro")]) == 2
    assert "cannot be written (Read-only file system)" in one_error_line(capsys)
    assert main(["generate", "a cat", "-o", str(tmp_path / "ro" / "cat.png")]) == 2
    assert "cannot be written (Read-only file system)" in one_error_line(capsys)


def test_parsers_and_defaults():
    assert parse_size("512") == (512, 512) and parse_size("768x512") == (768, 512)
    assert parse_scale("3") == 3.0 and parse_scale("1.5") == 1.5 and parse_scale("1") == 1.0
    assert parse_output_size("1920x1080") == (1920, 1080)
    assert parse_output_size("1920x") == (1920, None) and parse_output_size("X1080") == (None, 1080)
    args = build_parser().parse_args(["generate", "x"])
    assert args.size is None and args.scale == 2 and args.model == SD15_MODEL_ID and args.refine_strength == 0
    args = build_parser().parse_args(["upscale", "a.png", "-o", "o"])
    assert (args.model, args.vae, args.upscaler, args.scale, args.size, args.tiling) == (None, None, None, 4, None, False)


def test_help_names_the_real_flags_and_the_exit_statuses(capsys):
    assert main(["--help"]) == 0
    assert "upscale" in capsys.readouterr().out
    assert main(["upscale", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--scale FACTOR" in out and "--size WxH" in out and "--model DIR|ID" in out and "--tiling, --vae-tiling" in out
    for code in EXIT_STATUSES:
        assert f"\n  {code:<4} " in out
    assert main(["convert", "--help"]) == 0
    assert "--config YAML" in capsys.readouterr().out
    assert main(["generate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--refine-strength S" in out and "--refine-steps N" in out and "Flux2KleinPipeline" in out


def test_cli_import_does_not_import_torch():
    """`--help` and argument errors answer at once: importing the CLI and building its parser
    imports neither torch nor diffusers (checked in a new interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import uplift_diffusers.cli as cli\n"
        "cli.build_parser()\n"
        "assert cli.main(['upscale', 'a.png']) == 2\n"  # an argument error (no --output)
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'PIL', 'numpy') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_an_upscaler_of_another_latent_space_is_refused_unless_asked(tmp_path, tiny_dirs, inputs, capsys):
    """The latent-space guard on the command line: one error line naming both spaces and the
    override; --ignore-latent-space runs anyway (a warning)."""
    from tiny_models import make_upscaler

    sdxl = tmp_path / "sdxl-upscaler"
    make_upscaler(4, latent_space="sdxl").save_pretrained(sdxl)
    argv = ["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "out"), "--vae", str(tiny_dirs.sd_pipeline()),
            "--upscaler", str(sdxl), "--scale", "2", "--quiet"]
    capsys.readouterr()  # the saving's progress bars
    assert main(argv) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "trained for the SDXL VAE" in error[0] and "is the Stable Diffusion 1.5 VAE" in error[0]
    assert "--ignore-latent-space" in error[0]
    assert main(argv + ["--ignore-latent-space"]) == 0
    assert PIL.Image.open(tmp_path / "out" / "odd_x2.png").size == (42, 26)
    assert generate(tiny_dirs.sd_pipeline(), tmp_path, "--upscaler", str(sdxl), "--size", "64") == 1  # generate names the flag too
    line = one_error_line(capsys)
    assert "trained for the SDXL VAE" in line and "--ignore-latent-space" in line and "check_latent_space" not in line
