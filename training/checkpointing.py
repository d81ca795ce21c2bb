"""Atomic training checkpoints with accelerate.

``save_checkpoint`` writes ``accelerator.save_state`` plus ``training_state.json`` into a
hidden temporary directory and renames it to ``checkpoints/checkpoint-{step}`` only when
complete, so a partial directory is never taken for a checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, Optional, Union

STATE_FILE = "training_state.json"
_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dirs(output_dir: Union[str, Path]) -> list:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def find_checkpoint(output_dir: Union[str, Path], resume: str) -> Optional[Path]:
    """``resume`` = "latest" (None when there is none yet) or a checkpoint directory path."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint directory (no {STATE_FILE}); pass 'latest' or a checkpoint-N directory.")
    return path


def save_checkpoint(accelerator, output_dir: Union[str, Path], step: int, state: Dict, keep_last: Optional[int] = None) -> Optional[Path]:
    """Save model/optimiser/scheduler/RNG state and ``state`` (JSON) atomically; prune old ones."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process's files (its random state) are in `tmp` before the rename
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return None
    with open(tmp / STATE_FILE, "w") as handle:
        json.dump({**state, "step": step}, handle)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in checkpoint_dirs(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Union[str, Path]) -> Dict:
    """Restore what ``save_checkpoint`` saved; returns its JSON state."""
    accelerator.load_state(str(path))
    with open(Path(path) / STATE_FILE) as handle:
        return json.load(handle)
