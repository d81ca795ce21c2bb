"""The example scripts: runnable as ``python examples/<name>.py`` from the repository root (``--help``
too), the command line's conventions (one ``<name>: error:`` line, exit 2 for a usage or input
error, 1 for a failure while running, a missing model offline named within 2 s), and each one's
job on tiny local models (offline)."""
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import make_unet

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(path.stem for path in (REPO_ROOT / "examples").glob("*.py"))


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(path, size=(24, 16)):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_help_runs_from_the_repository_root(name):
    result = subprocess.run([sys.executable, f"examples/{name}.py", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_missing_models_offline_are_one_line_within_two_seconds(tmp_path, hub_cache, capsys):
    """``hub_cache``: an empty cache, HF_HUB_OFFLINE=1."""
    image = photo(tmp_path / "photo.png", (64, 64))
    cases = {
        "text_to_image": ["a cat"],
        "controlnet_uplift": [image, "a cat"],
        "super_resolution": [image, "--model", "someone/vae", "--upscaler", "someone/uplift"],
        "flux2_klein_uplift": ["a cat"],
    }
    for name, argv in cases.items():
        start = time.perf_counter()
        assert example(name).main(argv) == 1, name
        elapsed = time.perf_counter() - start
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and error.startswith(f"{name}: error: HF_HUB_OFFLINE is set"), error
        assert elapsed < 2, (name, elapsed)


def test_super_resolution_defaults_to_the_embedded_model_and_names_files_by_size(tmp_path, monkeypatch, capsys):
    module = example("super_resolution")
    image = photo(tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    assert module.main([image, "--scale", "1.5", "--model", str(REPO_ROOT / module.EMBEDDED_MODEL)]) == 0
    written = tmp_path / module.DEFAULT_OUTPUT_DIR / "photo_36x24.png"
    assert Image.open(written).size == (36, 24)
    # the default output folders of the examples are ignored by git
    for path in (module.DEFAULT_OUTPUT_DIR / "photo.png", example("text_to_image").DEFAULT_OUTPUT):
        assert subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT).returncode == 0, path


def test_super_resolution_with_a_vae_and_an_upscaler(tmp_path, tiny_dirs, capsys):
    out = tmp_path / "sr"
    image = photo(tmp_path / "photo.png")
    argv = [image, "--model", str(tiny_dirs.sd_pipeline()), "--upscaler", str(tiny_dirs.upscaler(4)), "--output-dir", str(out)]
    assert example("super_resolution").main(argv + ["--scale", "2"]) == 0
    assert Image.open(out / "photo_48x32.png").size == (48, 32)


@pytest.mark.parametrize("scale", ["0.5", "nan", "inf"])
def test_bad_scales_are_usage_errors_before_any_model_loads(tmp_path, capsys, scale):
    missing = str(tmp_path / "no-such-model")
    for name, argv in (("super_resolution", [photo(tmp_path / "p.png"), "--model", missing]), ("text_to_image", ["a cat", "--model", missing])):
        with pytest.raises(SystemExit) as exit_status:
            example(name).main(argv + ["--scale", scale])
        assert exit_status.value.code == 2
        assert "--scale" in capsys.readouterr().err.splitlines()[-1]


def test_text_to_image_on_tiny_models(tmp_path, tiny_dirs, capsys):
    output = tmp_path / "t2i.png"
    argv = ["a cat", "--model", str(tiny_dirs.sd_pipeline()), "--upscaler", str(tiny_dirs.upscaler(4)), "--size", "32",
            "--scale", "3", "--steps", "1", "--output", str(output)]
    assert example("text_to_image").main(argv) == 0
    assert Image.open(output).size == (96, 96) and Image.open(output.with_name("t2i_base.png")).size == (32, 32)


def test_controlnet_on_tiny_models(tmp_path, tiny_dirs, capsys):
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ControlNetModel.from_unet(make_unet(), conditioning_embedding_out_channels=(4, 4, 4, 4)).save_pretrained(tmp_path / "controlnet")
    output = tmp_path / "out.png"
    argv = [photo(tmp_path / "photo.png", (48, 80)), "a red cat", "--model", str(tiny_dirs.sd_pipeline()), "--controlnet",
            str(tmp_path / "controlnet"), "--upscaler", str(tiny_dirs.upscaler()), "--size", "64", "--scale", "2", "--steps", "2",
            "--output", str(output)]
    assert example("controlnet_uplift").main(argv) == 0
    assert Image.open(output).size == (128, 128)
    edges = np.asarray(Image.open(tmp_path / "out_edges.png"))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) <= {0, 255}
    assert example("controlnet_uplift").main(argv[:-4] + ["--size", "60", "--output", str(output)]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("controlnet_uplift: error: --size must be a multiple of 8")


def test_flux2_klein_smoke_test(tmp_path, capsys):
    """CI runs the FLUX.2 [klein] example on tiny random components: the whole path, offline."""
    output = tmp_path / "cat.png"
    assert example("flux2_klein_uplift").main(["a red cat", "--smoke-test", "--output", str(output)]) == 0
    assert Image.open(output).size == (128, 128)
    assert example("flux2_klein_uplift").main(["a red cat", "--smoke-test", "--refine-strength", "0", "--output", str(output)]) == 0
    assert example("flux2_klein_uplift").main(["a red cat", "--smoke-test", "--refine-strength", "1.5"]) == 2
