"""Shared test fixtures: the tiny models, the shared material and an offline Hub cache.

Tiny models (all built by tests/tiny_models.py, the one definition of each):
``tiny_upscaler``, ``tiny_autoencoder``, ``tiny_sd_components`` in memory, fresh for each test
(``tiny_sd_components``: once per module); ``tiny_dirs`` saved once per session (read them,
never write into them); ``release_cached`` / ``sd15_cached`` put them in the ``hub_cache``.

Tests that read the project's shared material (reference fixtures, the TAEF2 weights,
BSDS500 photographs) look for it at ``../shared`` beside the checkout, or at the path in
the ``UPLIFT_SHARED_DIR`` environment variable, and skip with a clear reason when absent
(``shared_path``, ``taef2_dir``, ``taef2``).

Tests taking more than about 5 s are marked ``slow``: ``python -m pytest -q -m "not slow"`` is the
fast loop; the default run (CI's) runs everything.
"""
import os
from pathlib import Path

import pytest
import torch

from tiny_models import build_sd_components_with_upscaler, make_tiny_autoencoder, make_upscaler, save_original_file
from tiny_models import save_sd_pipeline, save_sdxl_pipeline, save_tiny_clip, save_unet_lora
from uplift_diffusers.constants import SD15_MODEL_ID, UPLIFT_SD15_REPO_ID, UPLIFT_SD15_WEIGHTS_NAME

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("UPLIFT_SHARED_DIR", REPO_ROOT.parent / "shared"))


def _shared_path(*parts: str) -> Path:
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared material not found at {path} (set UPLIFT_SHARED_DIR to the shared/ folder)")
    return path


@pytest.fixture
def shared_path():
    """``shared_path("models", "taef2")`` -> Path, or skip the test when it is absent."""
    return _shared_path


@pytest.fixture
def taef2_dir():
    """The real TAEF2 autoencoder's folder (``encoder.pth`` / ``decoder.pth``, 32 latent channels)."""
    return _shared_path("models", "taef2")


#: The embedded default: TAEF2 and the UPLiFT model trained for it, as one pipeline folder.
EXAMPLE_PIPELINE = REPO_ROOT / "examples" / "models" / "uplift-taef2-bsds500"


@pytest.fixture(scope="session")
def taef2():
    """The real TAEF2 autoencoder as a ``TinyAutoencoder`` (the copy embedded in the repository),
    loaded once per session: do not change it."""
    from uplift_diffusers.models.autoencoder_tiny import TinyAutoencoder

    return TinyAutoencoder.from_pretrained(EXAMPLE_PIPELINE / "vae").eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test models are tiny: one thread avoids OpenMP spin-waiting on a busy 2-core machine
    (measured: a tiny UNet call takes 3 s with 2 contended threads, 0.03 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------------------------------------
# A local Hugging Face Hub cache, laid out as huggingface_hub lays it out
# ---------------------------------------------------------------------------------------------
class HubCache:
    """Writes repositories into a Hub cache folder the way ``huggingface_hub`` does:
    ``models--<org>--<name>/blobs/<hash>`` holding the contents, ``snapshots/<commit>/<path>``
    symbolic links to them, ``refs/<branch>`` holding the commit, and ``.no_exist/<commit>/<path>``
    for files the Hub said the repository does not have."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def repo_folder(self, repo_id: str) -> Path:
        return self.root / f"models--{repo_id.replace('/', '--')}"

    def add(self, repo_id: str, files: dict, revision: str = "main", commit: str = None) -> Path:
        """Cache ``files`` (path in the repository -> bytes or a local file) as one commit of
        ``repo_id``, named by ``revision`` (a branch, or None for a commit reachable only by its
        hash); returns the snapshot folder."""
        import hashlib

        repo = self.repo_folder(repo_id)
        commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        for name, content in files.items():
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        if revision is not None:
            (repo / "refs").mkdir(parents=True, exist_ok=True)
            (repo / "refs" / revision).write_text(commit)
        return snapshot

    def add_folder(self, repo_id: str, folder, **kwargs) -> Path:
        """Cache every file below ``folder`` (e.g. a ``save_pretrained`` output) as ``repo_id``."""
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add(repo_id, files, **kwargs)

    def mark_absent(self, repo_id: str, name: str, revision: str = "main") -> None:
        """Record, as huggingface_hub does after a 404, that the repository has no file ``name``."""
        repo = self.repo_folder(repo_id)
        commit = (repo / "refs" / revision).read_text()
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


@pytest.fixture
def hub_cache(tmp_path_factory, monkeypatch):
    """An empty Hub cache in a temporary folder, offline (``HF_HUB_OFFLINE=1``): every Hub access
    of the test reads this cache and nothing else."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path_factory.mktemp("hf-home")
    cache = home / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # read at import time by huggingface_hub
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return HubCache(cache)


# ---------------------------------------------------------------------------------------------
# Tiny models (tests/tiny_models.py)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_upscaler():
    """A tiny 4-channel UPLiFT upscaler, seed 0, noise scale 1 as the official model (and what its
    single file implies: the config is read off the shapes)."""
    return make_upscaler(4, noise_scale=1.0)


@pytest.fixture
def tiny_autoencoder():
    """Our ``TinyAutoencoder`` with 4 latent channels and 8-channel blocks (factor 8)."""
    return make_tiny_autoencoder()


@pytest.fixture(scope="module")
def tiny_sd_components(tmp_path_factory):
    """Tiny random SD components (DDIM scheduler, 64 px images) plus a 4-channel upscaler
    (noise scale 0) recorded as trained for the SD1.5 latent space, built once per test module."""
    components = build_sd_components_with_upscaler(tmp_path_factory.mktemp("tokenizer"))
    components["upscaler"].register_to_config(latent_space="sd15")
    return components


class TinyModelDirs:
    """Tiny models saved once per session in a temporary folder, each the first time a test asks
    for it. Every test that asks gets the same folder: read it, never write into it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._saved = {}

    def _once(self, name: str, save) -> Path:
        if name not in self._saved:
            with torch.random.fork_rng(devices=[]):  # the builders reseed torch: the asking test's stream stays put
                self._saved[name] = Path(save(self.root / name))
        return self._saved[name]

    def sd_pipeline(self) -> Path:
        """A ``StableDiffusionPipeline`` (PNDM, no upscaler; its VAE in ``vae/``), seed 0."""
        return self._once("sd", save_sd_pipeline)

    def upscaler(self, latent_channels: int = 4, noise_scale: float = 0.0) -> Path:
        """A ``save_pretrained`` folder of ``make_upscaler(latent_channels, noise_scale)`` (seed 0)."""

        def save(folder):
            make_upscaler(latent_channels, noise_scale=noise_scale).save_pretrained(folder)
            return folder

        return self._once(f"upscaler{latent_channels}-noise{noise_scale:g}", save)

    def clip(self) -> Path:
        """A tiny transformers ``CLIPModel`` + ``CLIPProcessor`` folder."""
        return self._once("clip", save_tiny_clip)

    def sdxl_pipeline(self) -> Path:
        """A tiny ``StableDiffusionXLPipeline`` (native size ``SDXL_TINY_NATIVE_SIZE``)."""
        return self._once("sdxl", save_sdxl_pipeline)

    def sdxl_lora(self) -> Path:
        """A random LoRA for the tiny SDXL UNet, saved as the Hub's LCM-LoRA is."""
        return self._once("sdxl-lora", lambda folder: save_unet_lora(folder, self.sdxl_pipeline() / "unet"))


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """:class:`TinyModelDirs`: ``tiny_dirs.sd_pipeline()``, ``tiny_dirs.upscaler(32)``, ... (folders)."""
    return TinyModelDirs(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def release_cached(hub_cache, tiny_upscaler, tmp_path):
    """``tiny_upscaler`` cached as the authors' release ``UPLiFT-upsampler/uplift_sd1.5vae`` (main),
    saved as they save it (official keys, no config); returns the snapshot folder."""
    file = save_original_file(tiny_upscaler, tmp_path / "release" / UPLIFT_SD15_WEIGHTS_NAME)
    return hub_cache.add(UPLIFT_SD15_REPO_ID, {UPLIFT_SD15_WEIGHTS_NAME: file})


@pytest.fixture
def sd15_cached(hub_cache, tiny_dirs):
    """The tiny SD pipeline cached as SD1.5 (``SD15_MODEL_ID``, VAE in ``vae/``); returns the snapshot folder."""
    return hub_cache.add_folder(SD15_MODEL_ID, tiny_dirs.sd_pipeline())
