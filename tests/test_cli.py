"""The `uplift-diffusers` command line, run in-process and offline."""
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.cli import build_parser, main, parse_size
from uplift_diffusers.loaders.hub import is_connection_error
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID

# No test may reach the network or a user's Hub cache: each runs on an empty, offline one.
pytestmark = pytest.mark.usefixtures("hub_cache")


@pytest.fixture
def upscaler_dir(tiny_dirs):
    """A 32-channel upscaler (TAEF2's latents)."""
    return tiny_dirs.upscaler(32, noise_scale=1.0)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    PIL.Image.fromarray(rng.integers(0, 255, (13, 21, 4), dtype=np.uint8), "RGBA").save(folder / "odd.png")
    PIL.Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / "square.jpg")
    return folder


def one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------- convert
def test_convert_mini_checkpoint(shared_path, tmp_path, capsys):
    mini = shared_path("fixtures", "uplift-reference", "sd15vae-mini")
    out = tmp_path / "converted"
    code = main(["convert", str(mini / "uplift_original.safetensors"), "--config", str(mini / "uplift_original.yaml"), "--output", str(out)])
    assert code == 0
    assert (out / "config.json").is_file()
    assert "saved" in capsys.readouterr().out
    model = UPLiFTLatentUpscaler.from_pretrained(out).eval()
    # the converted directory reproduces the authors' implementation on the fixture case
    cases = load_file(str(mini / "cases.safetensors"))
    with torch.no_grad():
        steps = model(cases["square.latents"], cases["square.image"], num_steps=2, output_intermediate=True).intermediate
    torch.testing.assert_close(steps[0], cases["square.iters2.step1"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steps[1], cases["square.iters2.step2"], atol=1e-4, rtol=1e-4)


def test_convert_missing_checkpoint(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.safetensors"), "--output", str(tmp_path / "out")]) == 2
    assert "not found" in one_error_line(capsys)


# ------------------------------------------------------------------------------- upscale
def test_upscale_with_taef2_directory(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    out = tmp_path / "out"
    code = main([
        "upscale", str(inputs / "odd.png"), str(inputs / "square.jpg"), "--output", str(out), "--scale", "2",
        "--vae", str(taef2_dir), "--upscaler", str(upscaler_dir), "--device", "cpu", "--seed", "3",
    ])
    assert code == 0
    with PIL.Image.open(out / "odd_x2.png") as image:
        assert image.size == (42, 26) and image.mode == "RGB"
    with PIL.Image.open(out / "square_x2.png") as image:
        assert image.size == (32, 32)
    assert "odd_x2.png (42x26)" in capsys.readouterr().out  # one line per file (tqdm.write)


def test_upscale_directory_input_and_scale_4(taef2_dir, tmp_path, upscaler_dir, inputs):
    out = tmp_path / "out4"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "4", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd_x4.png", "square_x4.png"]
    with PIL.Image.open(out / "odd_x4.png") as image:
        assert image.size == (84, 52)


def test_upscale_channel_mismatch_is_one_line(taef2_dir, tiny_dirs, tmp_path, inputs, capsys):
    folder = tiny_dirs.upscaler(4)
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(folder), "--device", "cpu", "--quiet"])
    assert code == 2
    assert "latent_channels=4" in one_error_line(capsys)


def test_default_hub_upscaler_offline_gives_one_line(taef2_dir, tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot reach the Hugging Face Hub" in line and "--original-checkpoint" in line


def test_default_hub_vae_offline_gives_one_line(tmp_path, upscaler_dir, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--upscaler", str(upscaler_dir), "--device", "cpu"])
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot reach the Hugging Face Hub" in line and "--vae" in line


# ------------------------------------------------------------------------------- every default from the Hub cache
@pytest.fixture
def defaults_cached(hub_cache, sd15_cached, release_cached):
    """Both defaults in the (offline) Hub cache: the SD1.5 pipeline and the UPLiFT release (``tiny_upscaler``)."""
    return hub_cache


def test_upscale_defaults_run_offline_from_the_cache(defaults_cached, tiny_dirs, tiny_upscaler, tmp_path, inputs):
    """`upscale photo --scale 2` with no model flags: the SD1.5 VAE and the release from the cache."""
    from diffusers import AutoencoderKL

    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "square.jpg"), "--scale", "2", "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    with PIL.Image.open(out / "square_x2.png") as saved:
        got = np.asarray(saved.convert("RGB"))
    # the same as the pipeline on the same two models, same seed
    vae = AutoencoderKL.from_pretrained(tiny_dirs.sd_pipeline(), subfolder="vae")
    pipe = UPLiFTSuperResolutionPipeline(vae=vae, upscaler=tiny_upscaler)
    pipe.set_progress_bar_config(disable=True)
    with PIL.Image.open(inputs / "square.jpg") as image:
        expected = pipe(image, upscale_factor=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert got.shape == (32, 32, 3)
    assert np.array_equal(got, np.asarray(expected))


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


def test_unreachable_hub_means_cache_only(defaults_cached, tmp_path, inputs, monkeypatch, capsys):
    """Network off without HF_HUB_OFFLINE: one check, then the cache only (no retries per missing file)."""
    import huggingface_hub.constants as hub_constants

    import uplift_diffusers.cli as cli

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(cli, "hub_reachable", lambda: False)
    offline_while_loading = []
    load_upscaler = cli.load_upscaler

    def recording_load_upscaler(args, dtype):
        offline_while_loading.append(hub_constants.HF_HUB_OFFLINE)
        return load_upscaler(args, dtype)

    monkeypatch.setattr(cli, "load_upscaler", recording_load_upscaler)
    assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--scale", "2", "--device", "cpu"]) == 0
    assert "cannot be reached; using the local cache only" in capsys.readouterr().err
    assert offline_while_loading == [True]
    assert hub_constants.HF_HUB_OFFLINE is False  # restored after the command
    assert (tmp_path / "o" / "square_x2.png").is_file()


def test_hub_reachable_is_false_without_an_answer(monkeypatch):
    import huggingface_hub.utils

    import uplift_diffusers.cli as cli

    class NoNetwork:
        def head(self, url, timeout=None):
            raise ConnectionError(f"cannot resolve {url}")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: NoNetwork())
    assert cli.hub_reachable() is False


def test_generate_defaults_run_offline_from_the_cache(defaults_cached, tmp_path, capsys):
    target = tmp_path / "cat.png"
    code = main(["generate", "a cat", "--size", "64", "--steps", "2", "-o", str(target), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with PIL.Image.open(target) as image:
        assert image.size == (128, 128)


def test_generate_scale_1_needs_no_upscaler(sd15_cached, tmp_path, capsys):  # the release is not cached
    target = tmp_path / "cat.png"
    code = main(["generate", "a cat", "--size", "64", "--scale", "1", "--steps", "2", "-o", str(target), "--device", "cpu", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with PIL.Image.open(target) as image:
        assert image.size == (64, 64)


def test_release_missing_from_the_cache_is_one_line(sd15_cached, tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert UPLIFT_SD15_REPO_ID in line and "not in the local cache" in line and "--original-checkpoint" in line


# ------------------------------------------------------------------------------- generate
def test_generate_with_local_model(tiny_dirs, tmp_path, capsys):
    target = tmp_path / "gen" / "cat.png"
    code = main(["generate", "a cat", "--model", str(tiny_dirs.sd_pipeline()), "--upscaler", str(tiny_dirs.upscaler(4)), "--size", "64x48",
                 "--scale", "2", "--steps", "2", "--output", str(target), "--device", "cpu", "--save-base", "--quiet"])
    assert code == 0, capsys.readouterr().err
    with PIL.Image.open(target) as image:
        assert image.size == (128, 96)
    with PIL.Image.open(tmp_path / "gen" / "cat_base.png") as image:
        assert image.size == (64, 48)


def test_generate_default_model_offline(tmp_path, upscaler_dir, capsys):
    # a 32-channel upscaler does not matter: loading the default model fails first
    code = main(["generate", "a cat", "--upscaler", str(upscaler_dir), "--output", str(tmp_path / "x.png"), "--device", "cpu"])
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot reach the Hugging Face Hub" in line and "--model" in line


# ------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "argv, match",
    [
        (["upscale", "a.png", "-o", "x", "--scale", "3"], "invalid choice"),
        (["upscale", "a.png"], "--output"),
        (["generate", "cat", "--size", "500"], "multiples of 8"),
        (["generate", "cat", "--steps", "0"], "--steps must be >= 1"),
        (["upscale", "a.png", "-o", "x", "--original-config", "c.yaml"], "needs --original-checkpoint"),
        (["upscale", "a.png", "-o", "x", "--upscaler", "u", "--original-checkpoint", "c"], "not allowed with"),
        ([], "required"),
    ],
)
def test_argparse_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_missing_input_is_one_line(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "not found" in one_error_line(capsys)


def test_unreadable_image_is_one_line(taef2_dir, tmp_path, upscaler_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 2
    assert "cannot read" in one_error_line(capsys)


def test_nan_image_file_is_one_line_naming_it(taef2_dir, tmp_path, upscaler_dir, capsys):
    """A 32-bit float TIFF holding NaN: the values are checked where the image enters."""
    values = np.full((8, 8), 100.0, dtype=np.float32)
    values[2, 3] = np.nan
    bad = tmp_path / "nan.tif"
    PIL.Image.fromarray(values, "F").save(bad)
    code = main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert "nan.tif" in line and "NaN" in line
    assert not (tmp_path / "o" / "nan_x4.png").exists()


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "upscale" in capsys.readouterr().out


def test_parse_size_and_parser_defaults():
    assert parse_size("512") == (512, 512)
    assert parse_size("768x512") == (768, 512)
    args = build_parser().parse_args(["generate", "x"])
    assert args.size == (512, 512) and args.scale == 2 and args.model == SD15_MODEL_ID
    args = build_parser().parse_args(["upscale", "a.png", "-o", "o"])
    assert args.vae == SD15_MODEL_ID and args.upscaler is None and args.scale == 4


def test_connection_error_detection():
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert is_connection_error(LocalEntryNotFoundError("not cached"))
    assert is_connection_error(ConnectionError("refused"))
    wrapped = OSError("could not load the model")
    wrapped.__cause__ = ConnectionError("refused")
    assert is_connection_error(wrapped)
    assert is_connection_error(OSError("We couldn't connect to 'https://huggingface.co'"))
    assert not is_connection_error(FileNotFoundError("local file missing"))
    assert not is_connection_error(ValueError("bad shape"))
