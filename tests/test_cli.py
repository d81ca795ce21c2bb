"""The `uplift-diffusers` command line, run in-process and offline."""
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file

from uplift_diffusers import UPLiFTLatentUpscaler
from uplift_diffusers.cli import EXIT_STATUSES, build_parser, main, parse_output_size, parse_scale, parse_size
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID
from uplift_diffusers.loaders.hub import is_connection_error

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


def error_lines(capsys):
    """The lines on stderr (no traceback among them)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.strip()]


def one_error_line(capsys):
    lines = error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("uplift-diffusers: error: "), lines[0]
    return lines[0]


def no_partial_files(folder):
    """Nothing half-written: no temporary files of the atomic writes are left."""
    return not [p for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".convert-")]


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
        assert image.size == (42, 26) and image.mode == "RGBA"  # RGBA in, RGBA out
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
    assert "HF_HUB_OFFLINE is set and a model it needs is not in the local Hub cache" in line
    assert UPLIFT_SD15_REPO_ID in line and "--original-checkpoint" in line


def test_default_hub_vae_offline_gives_one_line(tmp_path, upscaler_dir, inputs, capsys):
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--upscaler", str(upscaler_dir), "--device", "cpu"])
    assert code == 2
    line = one_error_line(capsys)
    assert "not in the local Hub cache" in line and SD15_MODEL_ID in line and "--vae" in line


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
    import uplift_diffusers.loaders.hub as hub

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=None: False)
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
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.utils

    from uplift_diffusers.loaders.hub import hub_reachable

    asked = []

    class NoNetwork:
        def head(self, url, timeout=None):
            asked.append(timeout)
            raise ConnectionError(f"cannot resolve {url}")

    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: NoNetwork())
    assert hub_reachable() is False  # HF_HUB_OFFLINE=1 (the fixture): not even asked
    assert asked == []
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    assert hub_reachable(timeout=2.5) is False
    assert asked == [2.5]  # one request, a short time-out


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
    assert UPLIFT_SD15_REPO_ID in line and "not in the local Hub cache" in line and "--original-checkpoint" in line
    assert SD15_MODEL_ID not in line  # the cached VAE is not reported


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
    assert "not in the local Hub cache" in line and SD15_MODEL_ID in line and "--model" in line


# ------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "argv, match",
    [
        (["upscale", "a.png", "-o", "x", "--scale", "0.5"], "is not a scale"),
        (["upscale", "a.png", "-o", "x", "--scale", "nan"], "is not a scale"),
        (["upscale", "a.png", "-o", "x", "--size", "12x34x5"], "is not an output size"),
        (["upscale", "a.png", "-o", "x", "--size", "x"], "is not an output size"),
        (["upscale", "a.png", "-o", "x", "--scale", "2", "--size", "64x"], "not allowed with"),
        (["generate", "cat", "--scale", "0"], "is not a scale"),
        (["upscale", "a.png"], "--output"),
        (["generate", "cat", "--size", "500"], "multiples of 8"),
        (["generate", "cat", "--steps", "0"], "--steps must be >= 1"),
        (["upscale", "a.png", "-o", "x", "--original-config", "c.yaml"], "needs --original-checkpoint"),
        (["upscale", "a.png", "-o", "x", "--upscaler", "u", "--original-checkpoint", "c"], "not allowed with"),
        ([], "required"),
        (["upscale", "a.png", "-o", "x", "--upscaler", ""], "argument --upscaler: is empty: pass a folder, a file or a Hub id"),
        (["upscale", "a.png", "-o", "x", "--vae", " "], "argument --vae: is empty"),
        (["generate", "cat", "--model", ""], "argument --model: is empty"),
    ],
)
def test_argparse_errors(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_missing_input_is_one_line(tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "missing.png"), str(tmp_path / "gone"), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "INPUT not found" in line and "missing.png" in line and "gone" in line  # all of them at once


def test_unreadable_image_is_one_line(taef2_dir, tmp_path, upscaler_dir, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code = main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 1  # the input failed (a batch of one)
    line = one_error_line(capsys)
    assert "bad.png" in line and "cannot read it as an image" in line


def test_nan_image_file_is_one_line_naming_it(taef2_dir, tmp_path, upscaler_dir, capsys):
    """A 32-bit float TIFF holding NaN: the values are checked where the image enters."""
    values = np.full((8, 8), 100.0, dtype=np.float32)
    values[2, 3] = np.nan
    bad = tmp_path / "nan.tif"
    PIL.Image.fromarray(values, "F").save(bad)
    code = main(["upscale", str(bad), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 1
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
    assert args.vae == SD15_MODEL_ID and args.upscaler is None and args.scale is None and args.size is None
    assert not args.tiling
    assert build_parser().parse_args(["upscale", "a.png", "-o", "o", "--vae-tiling"]).tiling  # the old name
    assert build_parser().parse_args(["generate", "x", "--tiling", "--scale", "1.5"]).scale == 1.5
    assert parse_scale("3") == 3.0 and parse_scale("1.5") == 1.5 and parse_scale("1") == 1.0
    assert parse_output_size("1920x1080") == (1920, 1080)
    assert parse_output_size("1920x") == (1920, None) and parse_output_size("X1080") == (None, 1080)


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


# ------------------------------------------------------------------------------- issue #12: no tracebacks, nothing lost
def forbid_loading(monkeypatch):
    """Loading any model fails the test: the error must come before any work."""
    import uplift_diffusers.cli as cli

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(cli, "load_vae_arg", refuse)
    monkeypatch.setattr(cli, "load_upscaler", refuse)
    monkeypatch.setattr(cli, "import_text_to_image_pipeline", refuse)


def test_output_an_existing_file_is_refused_before_any_work(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(taken), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "--output" in line and "taken.txt" in line and "is an existing file" in line
    assert taken.read_text() == "keep me"
    assert main(["generate", "a cat", "-o", str(taken)]) == 2  # not an image name: a folder is meant
    assert "is an existing file" in one_error_line(capsys)


def test_output_under_a_file_is_refused(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    (tmp_path / "file").write_text("x")
    for argv in (
        ["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "file" / "sub")],
        ["generate", "a cat", "-o", str(tmp_path / "file" / "sub" / "cat.png")],
        ["convert", str(inputs / "odd.png"), "-o", str(tmp_path / "file" / "sub")],
    ):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert "--output" in line and "which is a file, not a folder" in line


def test_read_only_output_is_refused_before_any_work(tmp_path, inputs, monkeypatch, capsys):
    """A read-only location fails at once, before a model is loaded (so no computed image is lost).
    Tests run as root, whom permissions do not stop: the write check is made to fail as EROFS does."""
    import errno

    import uplift_diffusers.utils.atomic_files as atomic_files

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))

    forbid_loading(monkeypatch)
    monkeypatch.setattr(atomic_files, "_probe_write", read_only)
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "ro"), "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert "--output" in line and "cannot be written (Read-only file system)" in line
    assert main(["generate", "a cat", "-o", str(tmp_path / "ro" / "cat.png")]) == 2
    assert "cannot be written (Read-only file system)" in one_error_line(capsys)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path, inputs, monkeypatch, capsys):
    forbid_loading(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["upscale", str(inputs / "odd.png"), "-o", str(locked)]) == 2
        assert "cannot be written" in one_error_line(capsys)
    finally:
        locked.chmod(0o700)


def test_corrupt_upscaler_config_is_one_line(taef2_dir, tmp_path, tiny_dirs, inputs, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs.upscaler(32), broken)
    (broken / "config.json").write_text('{"_class_name": "UPLiFTLatentUpscaler", ')
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", str(taef2_dir),
                 "--upscaler", str(broken), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert "--upscaler" in line and "config.json" in line and "is not valid JSON" in line


@pytest.mark.parametrize("suffix, match", [(".pth", "is not a PyTorch checkpoint"), (".safetensors", "is not a readable .safetensors file")])
def test_convert_random_bytes_is_one_line(tmp_path, suffix, match, capsys):
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    assert main(["convert", str(junk), "-o", str(out)]) == 2
    line = one_error_line(capsys)
    assert "CHECKPOINT" in line and f"junk{suffix}" in line and match in line
    assert not (out / "config.json").exists() and no_partial_files(tmp_path)


class NotATensor:
    """A pickled object the safe loader refuses."""


def test_convert_refused_pickle_says_why_and_never_advises_weights_only_false(tmp_path, capsys):
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": NotATensor()}, pickled)
    assert main(["convert", str(pickled), "-o", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "was refused for safety" in line and "NotATensor" in line and ".safetensors" in line
    assert "weights_only" not in line


def test_convert_of_a_converted_file_says_it_is_already_converted(tmp_path, tiny_dirs, capsys):
    folder = tiny_dirs.upscaler(4)
    weights = next(folder.glob("*.safetensors"))
    assert main(["convert", str(weights), "-o", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "is already converted" in line and "nothing to convert" in line
    assert "from_pretrained" in line and f"--upscaler {folder}" in line
    assert "unexpected keys" not in line


def test_convert_writes_atomically_into_the_output(tmp_path, tiny_upscaler, capsys):
    from tiny_models import save_original_file

    checkpoint = save_original_file(tiny_upscaler, tmp_path / "release.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    assert main(["convert", str(checkpoint), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors", "notes.txt"]
    model = UPLiFTLatentUpscaler.from_pretrained(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tiny_upscaler.state_dict().values()))


@pytest.mark.parametrize("vae, match", [("./no-such-vae", "not found: no such file or folder (pass --vae DIR)"),
                                        ("FILE", "--vae must be a directory")])
def test_vae_errors_name_the_flag(tmp_path, upscaler_dir, inputs, vae, match, capsys):
    if vae == "FILE":
        vae = str(inputs / "odd.png")
    code = main(["upscale", str(inputs / "odd.png"), "-o", str(tmp_path / "o"), "--vae", vae,
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 2
    line = one_error_line(capsys)
    assert match in line and "path_or_id" not in line


def test_bad_file_in_a_batch_does_not_stop_it(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG truncated")
    (inputs / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "2", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 1
    lines = error_lines(capsys)
    assert len(lines) == 3, lines  # one per failure, then the count
    assert "broken.png" in lines[0] and "cannot read it as an image" in lines[0]
    assert "empty.jpg" in lines[1] and "cannot read it as an image" in lines[1]
    assert lines[2] == "uplift-diffusers: 2 of 4 inputs failed (listed above); 2 outputs written."
    assert sorted(p.name for p in out.iterdir()) == ["odd_x2.png", "square_x2.png"]  # the good ones, complete
    assert no_partial_files(out)


def test_interrupt_exits_130_and_keeps_what_was_written(taef2_dir, tmp_path, upscaler_dir, inputs, monkeypatch, capsys):
    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    original, calls = UPLiFTSuperResolutionPipeline.__call__, []

    def interrupted_on_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UPLiFTSuperResolutionPipeline, "__call__", interrupted_on_the_second)
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--scale", "2", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 130
    line = error_lines(capsys)[-1]
    assert line == "uplift-diffusers: interrupted; 1 output written completely, none partially."
    assert [p.name for p in out.iterdir()] == ["odd_x2.png"]
    with PIL.Image.open(out / "odd_x2.png") as image:
        image.load()  # complete
    assert no_partial_files(out)


def test_generate_reports_every_missing_model_at_once(tmp_path, monkeypatch, capsys):
    """Empty offline cache: the SD model AND the upscaler are named in one line, before loading anything."""
    import time

    forbid_loading(monkeypatch)
    start = time.perf_counter()
    assert main(["generate", "a cat", "-o", str(tmp_path / "cat.png")]) == 2
    assert time.perf_counter() - start < 2
    line = one_error_line(capsys)
    assert "HF_HUB_OFFLINE is set and 2 models it needs are not in the local Hub cache" in line
    assert SD15_MODEL_ID in line and "--model DIR" in line
    assert UPLIFT_SD15_REPO_ID in line and "--original-checkpoint" in line
    assert "HF_HOME" in line and "local paths" in line


def test_unreachable_hub_reports_every_missing_model_at_once(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub_constants

    import uplift_diffusers.loaders.hub as hub

    asked = []
    forbid_loading(monkeypatch)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=None: asked.append(timeout) or False)
    assert main(["upscale", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    line = one_error_line(capsys)
    assert line.startswith("uplift-diffusers: error: the Hugging Face Hub cannot be reached and 2 models")
    assert SD15_MODEL_ID in line and UPLIFT_SD15_REPO_ID in line
    assert asked == [hub.QUICK_TIMEOUT]  # one quick check for both


# ------------------------------------------------------------------------------- any size, tiling (issue #13)
def test_upscale_float_scale_and_sizes(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    common = ["--vae", str(taef2_dir), "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"]
    out = tmp_path / "out"
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--scale", "1.5", *common]) == 0
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--size", "50x", *common]) == 0
    assert main(["upscale", str(inputs / "odd.png"), "-o", str(out), "--size", "30x20", *common]) == 0
    sizes = {}
    for path in sorted(out.iterdir()):
        with PIL.Image.open(path) as image:
            sizes[path.name] = image.size
    # 21x13 input: round(1.5 x side); width 50 keeps the aspect ratio (13 x 50 / 21 = 30.95); exact
    assert sizes == {"odd_x1.5.png": (32, 20), "odd_50x.png": (50, 31), "odd_30x20.png": (30, 20)}


def test_upscale_back_projection_steps(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    """Default 5 rounds (the pipeline's); --back-projection-steps 0 gives the paper's output; the
    default's 4x-downsampled output is closer to the input; a bad value is one argparse line."""
    common = ["--vae", str(taef2_dir), "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet", "--scale", "4"]
    source = inputs / "square.jpg"
    outputs = {}
    for name, extra in (("default", []), ("paper", ["--back-projection-steps", "0"])):
        assert main(["upscale", str(source), "-o", str(tmp_path / name), *common, *extra]) == 0
        with PIL.Image.open(tmp_path / name / "square_x4.png") as image:
            outputs[name] = np.asarray(image.convert("RGB").resize((16, 16), PIL.Image.BILINEAR), dtype=np.float64)
    with PIL.Image.open(source) as image:
        original = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert np.abs(outputs["default"] - original).mean() < 0.5 * np.abs(outputs["paper"] - original).mean()
    capsys.readouterr()
    assert main(["upscale", str(source), "-o", str(tmp_path / "x"), "--back-projection-steps", "two"]) == 2
    assert "'two' is not a number of steps: use an integer >= 0" in capsys.readouterr().err
    assert main(["generate", "cat", "--back-projection-steps", "-3"]) == 2
    assert "'-3' is not a number of steps" in capsys.readouterr().err
    # --ensemble: 1, 2, 4 or 8 flipped / rotated copies averaged
    assert main(["upscale", str(source), "-o", str(tmp_path / "ensemble"), *common, "--ensemble", "2"]) == 0
    with PIL.Image.open(tmp_path / "ensemble" / "square_x4.png") as image:
        assert image.size == (64, 64)
    assert main(["upscale", str(source), "-o", str(tmp_path / "x"), "--ensemble", "3"]) == 2
    assert "argument --ensemble: invalid choice: 3" in capsys.readouterr().err


def test_size_smaller_than_an_input_fails_that_input_naming_the_flag(taef2_dir, tmp_path, upscaler_dir, inputs, capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(inputs), "-o", str(out), "--size", "18x", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 1  # odd.png is 21 wide: it cannot shrink; square.jpg (16) goes on
    lines = error_lines(capsys)
    assert "odd.png" in lines[0] and "--size width" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["square_18x.png"]


def test_tiling_flag_turns_on_the_pipeline_tiling(taef2_dir, tmp_path, upscaler_dir, inputs, monkeypatch):
    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    if not hasattr(UPLiFTSuperResolutionPipeline, "enable_tiling"):
        pytest.skip("the pipelines' enable_tiling (issue #13.3) is not there yet")
    turned_on = []
    monkeypatch.setattr(UPLiFTSuperResolutionPipeline, "enable_tiling", lambda self, *a, **k: turned_on.append(True))
    for flag in ("--tiling", "--vae-tiling"):
        assert main(["upscale", str(inputs / "square.jpg"), "-o", str(tmp_path / "o"), "--scale", "2", flag,
                     "--vae", str(taef2_dir), "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"]) == 0
    assert turned_on == [True, True]


def test_generate_float_scale_and_tiling(tiny_dirs, tmp_path, monkeypatch, capsys):
    from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline

    seen = {}
    original = StableDiffusionUPLiFTPipeline.__call__

    def recording(self, *args, **kwargs):
        seen["upscale_factor"] = kwargs["upscale_factor"]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionUPLiFTPipeline, "__call__", recording)
    target = tmp_path / "cat.png"
    code = main(["generate", "a cat", "--model", str(tiny_dirs.sd_pipeline()), "--upscaler", str(tiny_dirs.upscaler(4)),
                 "--size", "64", "--scale", "1.5", "--steps", "2", "-o", str(target), "--device", "cpu", "--quiet", "--tiling"])
    assert code == 0, capsys.readouterr().err
    assert seen["upscale_factor"] == 1.5
    with PIL.Image.open(target) as image:
        assert image.size == (96, 96)


# ------------------------------------------------------------------------------- warnings, progress, start-up
def test_package_warnings_are_one_stderr_line_each(taef2_dir, tmp_path, upscaler_dir, inputs, monkeypatch, capsys):
    """A warning of the library (e.g. a factor beyond the model's training) is shown on stderr,
    whatever diffusers' verbosity, as one `uplift-diffusers: warning:` line, once per warning."""
    import logging

    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    original = UPLiFTSuperResolutionPipeline.__call__
    logger = logging.getLogger("uplift_diffusers.models.modeling_uplift")
    warned = []

    def warning_once(self, *args, **kwargs):
        if not warned:
            warned.append(True)
            logger.warning("upscale factor 4 is beyond the trained factors [2]:\n expect grid artefacts.")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(UPLiFTSuperResolutionPipeline, "__call__", warning_once)
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--scale", "2", "--vae", str(taef2_dir),
                 "--upscaler", str(upscaler_dir), "--device", "cpu", "--quiet"])
    assert code == 0
    lines = error_lines(capsys)
    assert lines == ["uplift-diffusers: warning: upscale factor 4 is beyond the trained factors [2]: expect grid artefacts."]
    assert not logging.getLogger("uplift_diffusers").handlers  # removed after the command


def test_trained_factors_warning_is_shown_once(taef2_dir, tmp_path, inputs, capsys):
    """The model's own warning (issue #12 image modes): trained for 2x, asked for 4x, two files."""
    import inspect

    from tiny_models import make_upscaler

    if "trained_upscale_factors" not in inspect.signature(UPLiFTLatentUpscaler.__init__).parameters:
        pytest.skip("`trained_upscale_factors` (issue #12 image modes) is not in the model config yet")
    folder = tmp_path / "trained-2x"
    make_upscaler(32, noise_scale=1.0, trained_upscale_factors=[2]).save_pretrained(folder)
    code = main(["upscale", str(inputs), "-o", str(tmp_path / "o"), "--scale", "4", "--vae", str(taef2_dir),
                 "--upscaler", str(folder), "--device", "cpu", "--quiet"])
    assert code == 0
    warnings = [line for line in error_lines(capsys) if "warning" in line]
    assert len(warnings) == 1 and "uplift-diffusers: warning:" in warnings[0] and "4" in warnings[0], warnings


def test_help_lists_the_exit_statuses(capsys):
    assert main(["upscale", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--scale FACTOR" in out and "--size WxH" in out and "--tiling, --vae-tiling" in out
    for code in EXIT_STATUSES:
        assert f"\n  {code:<4} " in out


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
