"""On-disk cache of VAE latents (safetensors), so later epochs skip the VAE.

An entry is addressed by the SHA-256 of its full key (image identity, crop, scale and VAE
identity) and stores that key in its metadata: a read whose stored key differs from the one
asked for is a miss, so a changed key never returns a stale latent.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from uplift_diffusers.utils.atomic_files import atomic_write


def vae_identity(vae: torch.nn.Module) -> str:
    """A short hash of a VAE's class, config and weights."""
    digest = hashlib.sha256(type(vae).__name__.encode())
    digest.update(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """``get(key)`` / ``put(key, latents)`` / ``get_or_compute(key, fn)`` on a directory."""

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.safetensors"

    def get(self, key: str) -> Optional[torch.Tensor]:
        try:
            with safe_open(str(self._path(key)), framework="pt") as handle:
                if (handle.metadata() or {}).get("key") == key:
                    return handle.get_tensor("latents")
        except Exception:  # a missing or corrupt entry is a miss; the next put rewrites it
            pass
        return None

    def put(self, key: str, latents: torch.Tensor) -> None:
        tensors = {"latents": latents.detach().cpu().contiguous()}
        atomic_write(self._path(key), lambda temporary: save_file(tensors, str(temporary), metadata={"key": key}))

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        latents = compute()
        self.put(key, latents)
        return latents
