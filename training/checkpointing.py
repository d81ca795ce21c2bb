"""Atomic training checkpoints with accelerate.

``save_checkpoint`` writes ``accelerator.save_state`` plus ``training_state.json`` into a
hidden temporary directory and renames it to ``checkpoints/checkpoint-{step}`` only when
complete, so a partial directory is never taken for a checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Union

STATE_FILE = "training_state.json"


def checkpoint_dirs(output_dir: Union[str, Path]) -> list:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first."""
    found = [path for path in Path(output_dir).glob("checkpoints/checkpoint-*") if (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name.removeprefix("checkpoint-")))


def find_checkpoint(output_dir: Union[str, Path], resume: str) -> Optional[Path]:
    """``resume`` = "latest" (None when there is none yet) or a checkpoint directory path."""
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume!r} is not a complete checkpoint directory (no {STATE_FILE}); pass 'latest' or a checkpoint-N directory.")
    return path


def save_checkpoint(accelerator, output_dir: Union[str, Path], step: int, state: Dict, keep_last: Optional[int] = None) -> None:
    """Save model/optimiser/scheduler/RNG state and ``state`` (JSON) atomically; prune old ones."""
    root = Path(output_dir) / "checkpoints"
    tmp = root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial one of an interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # creates the folders
    accelerator.wait_for_everyone()  # every process's files (its random state) are in `tmp` before the rename
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}))
        final = root / f"checkpoint-{step}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output_dir)[:-keep_last] if keep_last else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: Union[str, Path]) -> Dict:
    """Restore what ``save_checkpoint`` saved; returns its JSON state."""
    accelerator.load_state(str(path))
    return json.loads((Path(path) / STATE_FILE).read_text())
