"""The `uplift-diffusers` command line, run in-process and offline."""
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from sd_components import build_sd_components, make_upscaler
from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.cli import _is_connection_error, build_parser, main, parse_size


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """No test may reach the network or a user's Hub cache."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache / "hub"))


@pytest.fixture
def upscaler_dir(tmp_path):
    folder = tmp_path / "upscaler32"
    make_upscaler(32, noise_scale=1.0).save_pretrained(folder)
    return folder


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
def test_upscale_with_taef2_directory(shared_path, tmp_path, upscaler_dir, inputs, capsys):
    taef2 = shared_path("models", "taef2")
    out = tmp_path / "out"
    code = main([
        "upscale", str(inputs / "odd.png"), str(inputs / "square.jpg"), "--output", str(out), "--scale", "2",
        "--vae", str(taef2), "--upscaler", str(upscaler_dir), "--device", "cpu", "--seed", "3",
    ])
    assert code == 0
    with PIL.Image.open(out / "odd_x2.png") as image:
        assert image.size == (42, 26) and image.mode == "RGB"
    with PIL.Image.open(out / "square_x2.png") as image:
        assert image.size == (32, 32)
    assert "odd_x2.png (42x26)" in capsys.readouterr().out  # one line per file (tqdm.write)


def test_upscale_directory_input_and_scale_4(shared_path, tmp_path, upscaler_dir, inputs):
    out = tmp_path / "out4"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "4", "--vae", str(shared_path("models", "taef2")),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["odd_x4.png", "square_x4.png"]
    with PIL.Image.open(out / "odd_x4.png") as image:
        assert image.size == (84, 52)


def test_upscale_channel_mismatch_is_one_line(shared_path, tmp_path, inputs, capsys):
    folder = tmp_path / "upscaler4"
    make_upscaler(4, noise_scale=1.0).save_pretrained(folder)
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", str(shared_path("models", "taef2")),
                 "--upscaler", str(folder), "--device", "cpu", "--quiet"])
    assert code == 2
    assert "latent_channels=4" in one_error_line(capsys)


def test_default_hub_upscaler_offline_gives_one_line(shared_path, tmp_path, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", str(shared_path("models", "taef2")),
                 "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot reach the Hugging Face Hub" in line and "--original-checkpoint" in line


def test_default_hub_vae_offline_gives_one_line(tmp_path, upscaler_dir, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--upscaler", str(upscaler_dir), "--device", "cpu"])
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot reach the Hugging Face Hub" in line and "--vae" in line


# ------------------------------------------------------------------------------- generate
def test_generate_with_local_model(tmp_path, capsys):
    from diffusers import StableDiffusionPipeline
    components = build_sd_components(tmp_path / "tokenizer", scheduler="ddim", with_upscaler=True)  # built offline
    upscaler = components.pop("upscaler")
    StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    upscaler.save_pretrained(tmp_path / "up")
    target = tmp_path / "gen" / "cat.png"
    code = main(["generate", "a cat", "--model", str(tmp_path / "sd"), "--upscaler", str(tmp_path / "up"), "--size", "64x48",
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


def test_unreadable_image_is_one_line(shared_path, tmp_path, upscaler_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--vae", str(shared_path("models", "taef2")),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 2
    assert "cannot read" in one_error_line(capsys)


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "upscale" in capsys.readouterr().out


def test_parse_size_and_parser_defaults():
    assert parse_size("512") == (512, 512)
    assert parse_size("768x512") == (768, 512)
    args = build_parser().parse_args(["generate", "x"])
    assert args.size == (512, 512) and args.scale == 2 and args.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    args = build_parser().parse_args(["upscale", "a.png", "-o", "o"])
    assert args.vae == "stable-diffusion-v1-5/stable-diffusion-v1-5" and args.upscaler is None and args.scale == 4


def test_connection_error_detection():
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert _is_connection_error(LocalEntryNotFoundError("not cached"))
    assert _is_connection_error(ConnectionError("refused"))
    wrapped = OSError("could not load the model")
    wrapped.__cause__ = ConnectionError("refused")
    assert _is_connection_error(wrapped)
    assert _is_connection_error(OSError("We couldn't connect to 'https://huggingface.co'"))
    assert not _is_connection_error(FileNotFoundError("local file missing"))
    assert not _is_connection_error(ValueError("bad shape"))
