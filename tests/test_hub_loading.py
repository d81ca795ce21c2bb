"""The authors' release from the Hub cache: ``UPLiFTLatentUpscaler.from_pretrained`` /
``from_single_file``, ``load_vae`` of a pipeline repository, and the text-to-image pipeline's
default upscaler, all offline from a local cache laid out as huggingface_hub lays it out (the
``hub_cache`` fixture of conftest.py), with tiny random models in the official layouts
(``release_cached``: ``tiny_upscaler`` as the release; ``sd15_cached``: the tiny SD pipeline as SD1.5)."""
import logging
import time

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from huggingface_hub.errors import LocalEntryNotFoundError

from tiny_models import make_upscaler, save_original_file
from uplift_diffusers import UPLiFTLatentUpscaler, load_vae
from uplift_diffusers.constants import SD15_MODEL_ID, SD15_VAE_SUBFOLDER, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME
from uplift_diffusers.loaders.single_file import convert_to_original_state_dict
from uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift import StableDiffusionUPLiFTPipeline

URL = f"https://huggingface.co/{UPLIFT_SD15_REPO_ID}/blob/main/{UPLIFT_SD15_WEIGHTS_NAME}"
PROMPT = "a red cat"


def config_of(model):
    """The model's config without diffusers' bookkeeping, sequences as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].to(sb[k].dtype), sb[k]) for k in sa)


# ------------------------------------------------------------------------------- from_pretrained
def test_from_pretrained_official_repo_offline(release_cached, tiny_upscaler):
    model = UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID)
    assert same_weights(model, tiny_upscaler) and not model.training
    assert config_of(model) == {**config_of(tiny_upscaler), "latent_space": "sd15"}  # read off the shapes; SD1.5's space
    latents, image = torch.randn(1, 4, 3, 5), torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        expected = tiny_upscaler(latents, image, generator=torch.Generator().manual_seed(1)).sample
        got = model(latents, image, generator=torch.Generator().manual_seed(1)).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    typed = UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, torch_dtype=torch.float64, device_map="cpu",
                                                 low_cpu_mem_usage=True)
    assert typed.dtype == torch.float64 and same_weights(tiny_upscaler, typed)
    assert UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_from_pretrained_revision_cache_dir_and_local_files_only(hub_cache, tmp_path, monkeypatch):
    """A second cache (cache_dir=) holding two commits: main, and one reachable only by its hash."""
    from conftest import HubCache

    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # local_files_only=True alone keeps it offline
    other = HubCache(tmp_path / "other-cache")
    main_model, pinned_model = make_upscaler(4, seed=1), make_upscaler(4, seed=2)
    other.add(UPLIFT_SD15_REPO_ID, {UPLIFT_SD15_WEIGHTS_NAME: save_original_file(main_model, tmp_path / "a.safetensors")})
    commit = "b" * 40
    other.add(UPLIFT_SD15_REPO_ID, {UPLIFT_SD15_WEIGHTS_NAME: save_original_file(pinned_model, tmp_path / "b.safetensors")},
              revision=None, commit=commit)
    kwargs = dict(cache_dir=str(other.root), local_files_only=True, token=False, force_download=False, proxies=None)
    assert same_weights(UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, **kwargs), main_model)
    assert same_weights(UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, revision=commit, **kwargs), pinned_model)
    with pytest.raises(LocalEntryNotFoundError, match="uplift_sd1.5vae"):  # the default cache is empty
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, local_files_only=True)


def test_from_pretrained_local_folders(release_cached, tiny_upscaler, tmp_path):
    # the snapshot folder is a local folder laid out as the Hub repository
    assert same_weights(UPLiFTLatentUpscaler.from_pretrained(release_cached), tiny_upscaler)
    nested = save_original_file(tiny_upscaler, tmp_path / "repo" / "sd15" / UPLIFT_SD15_WEIGHTS_NAME)
    assert same_weights(UPLiFTLatentUpscaler.from_pretrained(tmp_path / "repo", subfolder="sd15"), tiny_upscaler)
    renamed = nested.rename(nested.with_name("mine.safetensors"))
    assert same_weights(UPLiFTLatentUpscaler.from_pretrained(renamed.parent, weight_name="mine.safetensors"), tiny_upscaler)
    with pytest.raises(FileNotFoundError, match=r"neither a diffusers config.json nor the authors' single file 'uplift_sd1.5vae"):
        UPLiFTLatentUpscaler.from_pretrained(renamed.parent)
    with pytest.raises(ValueError, match="got the file .*; load it with UPLiFTLatentUpscaler.from_single_file"):
        UPLiFTLatentUpscaler.from_pretrained(renamed)
    with pytest.raises(FileNotFoundError, match="local path not found"):
        UPLiFTLatentUpscaler.from_pretrained(tmp_path / "missing")


def test_from_pretrained_diffusers_repo_unchanged(hub_cache, tiny_upscaler, tmp_path):
    """A repository with a diffusers config.json loads through diffusers, also from the cache."""
    tiny_upscaler.save_pretrained(tmp_path / "saved")
    hub_cache.add_folder("someone/uplift-diffusers", tmp_path / "saved")
    model = UPLiFTLatentUpscaler.from_pretrained("someone/uplift-diffusers", torch_dtype=torch.float64)
    assert model.dtype == torch.float64 and same_weights(tiny_upscaler, model)
    with pytest.raises(ValueError, match="`original_config` is for the authors' single file"):
        UPLiFTLatentUpscaler.from_pretrained("someone/uplift-diffusers", original_config={"uplift": {}})


def test_from_pretrained_refuses_options_that_do_not_apply(release_cached):
    with pytest.raises(ValueError, match=r"arguments \['variant'\] do not apply to the authors' single-file checkpoint"):
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, variant="fp16")
    with pytest.raises(ValueError, match="`device_map` must be one device"):
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, device_map={"": "cpu"})
    with pytest.raises(ValueError, match="`torch_dtype`=torch.float16 and `dtype`=torch.float32 disagree"):
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, torch_dtype=torch.float16, dtype=torch.float32)


def test_missing_from_the_cache_is_reported_at_once(hub_cache):
    start = time.perf_counter()
    with pytest.raises(LocalEntryNotFoundError, match=r"None of \['config.json', 'uplift_sd1.5vae.safetensors'\]"):
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID)
    with pytest.raises(LocalEntryNotFoundError, match="HF_HUB_OFFLINE"):
        load_vae(SD15_MODEL_ID)
    assert time.perf_counter() - start < 2  # no network time-outs


# ------------------------------------------------------------------------------- from_single_file
def test_from_single_file_sources(release_cached, tiny_upscaler, tmp_path):
    local = save_original_file(tiny_upscaler, tmp_path / "local.safetensors")
    commit = release_cached.name
    sources = [
        local,
        str(local),
        URL,
        URL.replace("https://huggingface.co/", "hf.co/"),
        f"https://huggingface.co/{UPLIFT_SD15_REPO_ID}/resolve/{commit}/{UPLIFT_SD15_WEIGHTS_NAME}",
        f"{UPLIFT_SD15_REPO_ID}/{UPLIFT_SD15_WEIGHTS_NAME}",
        dict(convert_to_original_state_dict(tiny_upscaler.state_dict())),
    ]
    for source in sources:
        model = UPLiFTLatentUpscaler.from_single_file(source)
        assert same_weights(model, tiny_upscaler), source
        assert config_of(model) == {**config_of(tiny_upscaler), "latent_space": "sd15"}, source
    model = UPLiFTLatentUpscaler.from_single_file(URL, torch_dtype=torch.float16, revision="main", local_files_only=True)
    assert model.dtype == torch.float16


def test_from_single_file_bad_sources(release_cached, tmp_path):
    with pytest.raises(ValueError, match="differs from the revision 'abc'"):
        UPLiFTLatentUpscaler.from_single_file(URL.replace("blob/main", "blob/abc"), revision="main")
    with pytest.raises(FileNotFoundError, match="`pretrained_model_link_or_path` file not found"):
        UPLiFTLatentUpscaler.from_single_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="is a folder; pass the checkpoint file inside it"):
        UPLiFTLatentUpscaler.from_single_file(tmp_path)
    with pytest.raises(ValueError, match="is not a Hugging Face Hub file URL"):
        UPLiFTLatentUpscaler.from_single_file("https://example.com/uplift.safetensors")
    with pytest.raises(ValueError, match="`config` or as `original_config`, not both"):
        UPLiFTLatentUpscaler.from_single_file(URL, config={}, original_config={})
    with pytest.raises(LocalEntryNotFoundError, match="other.safetensors"):
        UPLiFTLatentUpscaler.from_single_file(f"{UPLIFT_SD15_REPO_ID}/other.safetensors")


# ------------------------------------------------------------------------------- every kind of model string
def test_every_kind_of_upscaler_source(release_cached, tiny_upscaler, tiny_autoencoder, hub_cache, tmp_path):
    """The two loaders take every kind of source; the CLI's --upscaler goes to the right one:
    the release, single files, folders, pipelines, Hub ids, Hub files."""
    from uplift_diffusers import cli
    from uplift_diffusers.constants import UPSCALER_SUBFOLDER
    from uplift_diffusers.pipelines.pipeline_uplift_super_resolution import UPLiFTSuperResolutionPipeline

    tiny_upscaler.save_pretrained(tmp_path / "saved")
    hub_cache.add_folder("someone/uplift-diffusers", tmp_path / "saved")
    UPLiFTSuperResolutionPipeline(vae=tiny_autoencoder, upscaler=tiny_upscaler).save_pretrained(tmp_path / "pipeline")
    single_file = save_original_file(tiny_upscaler, tmp_path / "file.safetensors")
    loaded = [
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID),
        UPLiFTLatentUpscaler.from_pretrained(release_cached),  # a folder holding the single file
        UPLiFTLatentUpscaler.from_pretrained(tmp_path / "saved"),
        UPLiFTLatentUpscaler.from_pretrained(tmp_path / "pipeline", subfolder=UPSCALER_SUBFOLDER),
        UPLiFTLatentUpscaler.from_pretrained("someone/uplift-diffusers"),
        UPLiFTLatentUpscaler.from_single_file(URL),
        UPLiFTLatentUpscaler.from_single_file(f"{UPLIFT_SD15_REPO_ID}/{UPLIFT_SD15_WEIGHTS_NAME}"),
        UPLiFTLatentUpscaler.from_single_file(single_file),
    ]
    for source in (UPLIFT_SD15_REPO_ID, single_file, release_cached, tmp_path / "saved", tmp_path / "pipeline",
                   "someone/uplift-diffusers", URL, f"{UPLIFT_SD15_REPO_ID}/{UPLIFT_SD15_WEIGHTS_NAME}"):
        loaded.append(cli.load_upscaler(str(source), None, None))
    saved_by_diffusers = {2, 3, 4, 11, 12, 13}  # their config.json; the authors' single files are SD1.5's
    for index, model in enumerate(loaded):
        assert isinstance(model, UPLiFTLatentUpscaler) and same_weights(model, tiny_upscaler), index
        space = None if index in saved_by_diffusers else "sd15"
        assert config_of(model) == {**config_of(tiny_upscaler), "latent_space": space}, index
    assert UPLiFTLatentUpscaler.from_single_file(URL, torch_dtype=torch.float16).dtype == torch.float16
    assert UPLiFTLatentUpscaler.from_pretrained("someone/uplift-diffusers", torch_dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"arguments \['variant'\] do not apply to the authors' single-file checkpoint"):
        UPLiFTLatentUpscaler.from_pretrained(UPLIFT_SD15_REPO_ID, variant="fp16")
    with pytest.raises(FileNotFoundError, match="local path not found"):
        UPLiFTLatentUpscaler.from_pretrained(tmp_path / "missing")


# ------------------------------------------------------------------------------- load_vae
@pytest.mark.parametrize("root_config_recorded_absent", [False, True])
def test_load_vae_pipeline_repository_offline(sd15_cached, tiny_dirs, hub_cache, root_config_recorded_absent):
    """A local "not found" of the root config.json must not hide the cached vae/."""
    if root_config_recorded_absent:  # what an earlier online lookup leaves in the cache
        hub_cache.mark_absent(SD15_MODEL_ID, "config.json")
    vae = load_vae(SD15_MODEL_ID, dtype=torch.float64)
    expected = AutoencoderKL.from_pretrained(tiny_dirs.sd_pipeline(), subfolder=SD15_VAE_SUBFOLDER)
    assert type(vae) is AutoencoderKL and vae.dtype == torch.float64 and same_weights(expected, vae)
    assert same_weights(expected, load_vae(SD15_MODEL_ID, subfolder=SD15_VAE_SUBFOLDER, revision=sd15_cached.name))


# ------------------------------------------------------------------------------- the pipeline's default upscaler
def test_pipeline_loads_the_release_by_default(sd15_cached, release_cached, tiny_upscaler, caplog):
    caplog.set_level(logging.INFO, logger="uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift")
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID, torch_dtype=torch.float64)
    assert same_weights(tiny_upscaler, pipe.upscaler)
    assert pipe.upscaler.dtype == torch.float64 and pipe.unet.dtype == torch.float64
    lines = [r.getMessage() for r in caplog.records if r.name == "uplift_diffusers.pipelines.pipeline_stable_diffusion_uplift"]
    assert len(lines) == 1 and UPLIFT_SD15_REPO_ID in lines[0] and "upscaler=None" in lines[0]
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (1, 128, 128, 3)  # 64 px base, 2x by default


def test_pipeline_upscaler_none_is_plain_stable_diffusion(sd15_cached, tiny_dirs):
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID, upscaler=None)  # the release is not cached: not needed
    assert pipe.upscaler is None
    pipe.set_progress_bar_config(disable=True)
    plain = StableDiffusionPipeline.from_pretrained(tiny_dirs.sd_pipeline())
    plain.set_progress_bar_config(disable=True)
    expected = plain(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    ours = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    assert np.array_equal(ours, expected)  # upscale_factor defaults to 1 without an upscaler
    with pytest.raises(ValueError, match=r"`upscale_factor`=2 needs an upscaler, but this pipeline has none"):
        pipe(PROMPT, num_inference_steps=2, upscale_factor=2)


def test_pipeline_revision_is_not_applied_to_the_release(hub_cache, tiny_dirs, tiny_upscaler, tmp_path):
    sd_commit = "c" * 40
    hub_cache.add_folder(SD15_MODEL_ID, tiny_dirs.sd_pipeline(), revision=None, commit=sd_commit)  # reachable by its hash only
    hub_cache.add(UPLIFT_SD15_REPO_ID, {UPLIFT_SD15_WEIGHTS_NAME: save_original_file(tiny_upscaler, tmp_path / "main.safetensors")})
    pinned = make_upscaler(4, seed=5)
    uplift_commit = "d" * 40
    hub_cache.add(UPLIFT_SD15_REPO_ID, {UPLIFT_SD15_WEIGHTS_NAME: save_original_file(pinned, tmp_path / "d.safetensors")},
                  revision=None, commit=uplift_commit)
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID, revision=sd_commit)
    assert same_weights(tiny_upscaler, pipe.upscaler)  # the release's main, not the SD commit
    pipe = StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID, revision=sd_commit, upscaler_revision=uplift_commit)
    assert same_weights(pinned, pipe.upscaler)
    with pytest.raises(ValueError, match="`upscaler_revision`.* applies only to the default UPLiFT model, but `upscaler` was passed"):
        StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID, revision=sd_commit, upscaler=tiny_upscaler, upscaler_revision="x")


def test_pipeline_local_folders(tiny_dirs, release_cached, tiny_upscaler, tmp_path):
    # a local Stable Diffusion folder without upscaler/: the release from the cache
    assert same_weights(tiny_upscaler, StableDiffusionUPLiFTPipeline.from_pretrained(tiny_dirs.sd_pipeline()).upscaler)
    # a folder saved with its own upscaler: that one (not the release)
    own = make_upscaler(4, seed=7)
    StableDiffusionUPLiFTPipeline.from_pretrained(tiny_dirs.sd_pipeline(), upscaler=own).save_pretrained(tmp_path / "with")
    assert same_weights(own, StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path / "with").upscaler)
    with pytest.raises(ValueError, match="the pipeline has its own upscaler"):
        StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path / "with", upscaler_revision="x")
    # a folder saved without one reloads without one
    StableDiffusionUPLiFTPipeline.from_pretrained(tiny_dirs.sd_pipeline(), upscaler=None).save_pretrained(tmp_path / "without")
    assert StableDiffusionUPLiFTPipeline.from_pretrained(tmp_path / "without").upscaler is None


def test_pipeline_default_missing_offline_is_reported(sd15_cached):
    start = time.perf_counter()
    with pytest.raises(LocalEntryNotFoundError, match="uplift_sd1.5vae"):
        StableDiffusionUPLiFTPipeline.from_pretrained(SD15_MODEL_ID)
    assert time.perf_counter() - start < 5


def test_from_pipe(tiny_dirs, release_cached, tiny_upscaler):
    sd = StableDiffusionPipeline.from_pretrained(tiny_dirs.sd_pipeline())
    pipe = StableDiffusionUPLiFTPipeline.from_pipe(sd)
    assert pipe.unet is sd.unet and same_weights(tiny_upscaler, pipe.upscaler)
    assert StableDiffusionUPLiFTPipeline.from_pipe(sd, upscaler=None).upscaler is None
    # from a pipeline that has an upscaler (or deliberately none), that one is kept
    assert StableDiffusionUPLiFTPipeline.from_pipe(pipe).upscaler is pipe.upscaler
    assert StableDiffusionUPLiFTPipeline.from_pipe(StableDiffusionUPLiFTPipeline.from_pipe(sd, upscaler=None)).upscaler is None


# ------------------------------------------------------------------------------- every model checked at once (contract 8)
def test_hub_file_of_parses_hub_files_only():
    from uplift_diffusers.loaders.hub import hub_file_of

    assert hub_file_of(URL) == (UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME, "main")
    assert hub_file_of("https://hf.co/org/repo/resolve/v1.0/sub/w.pth") == ("org/repo", "sub/w.pth", "v1.0")
    assert hub_file_of("org/repo/w.safetensors") == ("org/repo", "w.safetensors", None)
    assert hub_file_of("org/repo") is None and hub_file_of("./a/b/c.pth") is None
    with pytest.raises(ValueError, match="`--x` 'https://example.com/w.pth' is not a Hugging Face Hub file URL"):
        hub_file_of("https://example.com/w.pth", "--x")


def test_a_hub_model_is_cached_when_any_of_its_files_is(release_cached, sd15_cached):
    from uplift_diffusers import cli

    cli.check_models([("--upscaler", UPLIFT_SD15_REPO_ID, ("config.json", UPLIFT_SD15_WEIGHTS_NAME)),
                      ("--vae", SD15_MODEL_ID, ("config.json", f"{SD15_VAE_SUBFOLDER}/config.json"))], "hint")  # vae/ counts
    with pytest.raises(cli.Failure, match=f"lacks --vae {SD15_MODEL_ID}, --model org/absent; hint$"):  # no root config.json
        cli.check_models([("--vae", SD15_MODEL_ID, ("config.json",)), ("--model", "org/absent", ("model_index.json",))], "hint")


@pytest.mark.parametrize("status, reachable", [(200, True), (302, True), (404, False), (502, False)])
def test_hub_reachable_needs_a_success(monkeypatch, status, reachable):
    """A proxy's or firewall's error page is no answer from the Hub."""
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.utils

    from uplift_diffusers.loaders.hub import hub_reachable

    class Session:
        def head(self, url, timeout=None):
            return type("Response", (), {"status_code": status})()

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Session())
    assert hub_reachable() is reachable


def test_loader_errors_name_the_callers_argument(tmp_path, tiny_dirs):
    import shutil

    from uplift_diffusers import cli

    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs.upscaler(4), broken)
    (broken / "config.json").write_text("{oops")
    with pytest.raises(cli.Failure, match=r"^--upscaler: its '.*broken/config.json' is not a valid JSON model config"):
        cli.load_upscaler(str(broken), None, None)
    (broken / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        UPLiFTLatentUpscaler.from_pretrained(str(broken))
    with pytest.raises(FileNotFoundError, match=r"^--vae: local path not found"):
        load_vae("./no/such/vae", argument="--vae")
    with pytest.raises(ValueError, match=r"^path_or_id must be a directory"):  # the function's own name by default
        load_vae(str(broken / "config.json"))


# ------------------------------------------------------------------------------- models named by a user (CLI)
def test_cli_checks_every_model_before_loading(sd15_cached, release_cached, tmp_path):
    """The check before loading: cached Hub models and local paths pass; the missing ones are
    named together, each with its flag; a string that is neither is a usage error."""
    from uplift_diffusers import cli

    cli.check_models([("--vae", SD15_MODEL_ID, cli.VAE_FILES), ("--upscaler", UPLIFT_SD15_REPO_ID, cli.UPSCALER_FILES),
                      ("--model", str(tmp_path), ("model_index.json",)), ("--upscaler", URL, cli.UPSCALER_FILES)], "hint")
    with pytest.raises(cli.Failure, match=r"^HF_HUB_OFFLINE is set and the local Hub cache lacks --vae org/absent-vae, "
                                          r"--upscaler org/repo/w.pth; pass local paths$"):
        cli.check_models([("--vae", "org/absent-vae", cli.VAE_FILES), ("--model", SD15_MODEL_ID, ("model_index.json",)),
                          ("--upscaler", "org/repo/w.pth", cli.UPSCALER_FILES)], "pass local paths")
    with pytest.raises(cli.UsageError, match=r"^--vae './no/such/vae': no such file or folder, and not a Hub id"):
        cli.check_models([("--vae", "./no/such/vae", cli.VAE_FILES)], "hint")
    with pytest.raises(cli.UsageError, match="^--upscaler 'https://example.com/w.pth' is not a Hugging Face Hub file URL"):
        cli.check_models([("--upscaler", "https://example.com/w.pth", cli.UPSCALER_FILES)], "hint")


def test_cli_loaders_name_the_callers_flags(release_cached, tiny_upscaler, tmp_path, tiny_dirs):
    from uplift_diffusers import cli

    assert same_weights(cli.load_upscaler(UPLIFT_SD15_REPO_ID, None, None), tiny_upscaler)  # the cached release, offline
    weights = next(tiny_dirs.upscaler(4).glob("*.safetensors"))
    with pytest.raises(cli.Failure, match=r"is already converted"):  # a file goes to from_single_file
        cli.load_upscaler(str(weights), None, None)
    with pytest.raises(cli.Failure, match=r"^--upscaler 'org/absent': .*HF_HUB_OFFLINE"):
        cli.load_upscaler("org/absent", None, None)
