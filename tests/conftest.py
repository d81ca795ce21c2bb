"""Shared test fixtures.

Tests that read the project's shared material (reference fixtures, the TAEF2 weights,
BSDS500 photographs) look for it at ``../shared`` beside the checkout, or at the path in
the ``UPLIFT_SHARED_DIR`` environment variable, and skip with a clear reason when absent.
"""
import os
from pathlib import Path

import pytest
import torch

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
