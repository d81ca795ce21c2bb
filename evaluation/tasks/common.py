"""What the two evaluation scripts (``eval_text_to_image``, ``eval_super_resolution``) share: their
common flags and checks, which rows are colour-corrected, the record that keeps results of other
settings apart, the results file and the command-line entry point."""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from evaluation.arguments import attempt, check_at_least
from evaluation.metrics.metric_setup import add_fid_arguments, check_metric_arguments
from evaluation.reports.tables import write_report
from evaluation.sharding import process_state
from evaluation.smoke import add_smoke_test_argument
from evaluation.tasks.latent_baseline import LATENT_BASELINES
from uplift_diffusers.utils.atomic_files import atomic_write_text


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of both scripts: outputs, sizes of the run, seed, FID, colour correction, device."""
    parser.add_argument("--upscaler-config", default=None, help="the authors' YAML for an authors' checkpoint file (default: read off the weights)")
    parser.add_argument("--output-dir", default=None, help="results.json, results.md and the saved images / per-image results go here")
    parser.add_argument("--dataset-name", default=None, help="column label in the tables (default: the input folder's name)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N inputs")
    parser.add_argument("--batch-size", type=int, default=4, help="inputs per pipeline call (per process)")
    parser.add_argument("--seed", type=int, default=0, help="input i uses seed + i (generation / UPLiFT noise, patch crops)")
    add_fid_arguments(parser)
    parser.add_argument("--color-correct-baselines", action="store_true",
                        help="colour-correct the bilinear / nearest rows like UPLiFT (default: not, as in the paper)")
    parser.add_argument("--device", default=None, help="torch device (default: this process's accelerator, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_smoke_test_argument(parser)


def check_required(args, flags: Sequence[str], minimums: Dict[str, float]) -> None:
    """ValueError naming every flag of ``flags`` (``"--data"``, ...) left unset, in one line; then
    the first flag below its least value (the script's ``minimums`` and the common flags')."""
    missing = [flag for flag in flags if not getattr(args, flag[2:].replace("-", "_"))]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ValueError(f"{', '.join(missing)} {verb} required (or pass --smoke-test to check the installation).")
    check_metric_arguments(args)
    check_at_least(args, {**minimums, "batch_size": 1, "limit": 1, "seed": 0})


def check_fid_count(args, count: int, source: str) -> None:
    """FID needs two images per set: ValueError when ``source`` (``"--data"``, ...) gives fewer."""
    if not args.no_fid and count < 2:
        raise ValueError(f"FID needs at least 2 images, {source} gives {count}; add images or pass --no-fid.")


def generators(seed: int, indices: Sequence[int]) -> List[torch.Generator]:
    """One generator per input, seeded ``--seed + i`` (i = the input's position in the whole list):
    an input's result does not depend on its batch, its process or a resumed run."""
    return [torch.Generator().manual_seed(seed + index) for index in indices]


def color_correction(kind: str, baselines: bool) -> bool:
    """Whether a row is colour-corrected: UPLiFT yes (the paper's), the latent baselines with
    ``--color-correct-baselines``, every other row (bicubic, VAE reconstruction, base and native
    generations) never."""
    return kind in ("uplift", "model") or (baselines and kind in LATENT_BASELINES)


def batches(items: Sequence, size: int) -> List[Sequence]:
    """``items`` in consecutive batches of ``size`` (the last one shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def common_settings(args, state) -> Dict:
    """The settings both scripts record in ``results.json``."""
    return {"seed": args.seed, "batch_size": args.batch_size, "limit": args.limit,
            "color_correct_baselines": args.color_correct_baselines, "num_processes": state.num_processes,
            "smoke_test": bool(args.smoke_test)}


def check_settings_record(folder: Path, record_name: str, settings: Dict, what: str, pattern: str, write: bool) -> None:
    """Never mix results made with different settings: ``folder/record_name`` records the
    ``settings`` its ``what`` (e.g. ``"per-image results of the row 'uplift'"``) were made with.

    ValueError, naming the differences, when the record holds other settings, or when the folder
    holds files matching ``pattern`` but no record; ``write``: record ``settings`` in a new folder.
    """
    record = folder / record_name
    if record.is_file():
        old = json.loads(record.read_text(encoding="utf-8"))
        if old != settings:
            changed = sorted(key for key in set(old) | set(settings) if old.get(key) != settings.get(key))
            details = "; ".join(f"{key}: {old.get(key)!r} -> {settings.get(key)!r}" for key in changed)
            raise ValueError(
                f"{folder} holds {what} made with other settings ({details}); they cannot be mixed with this run's: "
                "pass another --output-dir, or delete that folder to recompute them."
            )
        return
    if folder.is_dir() and any(folder.rglob(pattern)):
        raise ValueError(f"{folder} holds {what} without {record_name}; delete the folder or use another --output-dir.")
    if write:
        atomic_write_text(record, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def write_results(result: Dict, keys: Sequence[str], args, state) -> Dict:
    """Repeat a single row's metric ``keys`` at the top level, write ``results.json`` / ``results.md``
    (main process) and wait for every process."""
    if len(result["methods"]) == 1:
        (values,) = result["methods"].values()
        result.update({key: values[key] for key in keys if key in values})
    if state.is_main_process:
        write_report(result, args.output_dir)
    state.wait_for_everyone()
    return result


@contextmanager
def loading_bars(enabled: bool):
    """diffusers' and transformers' loading progress bars on or off inside the block (restored after)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = [(module, module.is_progress_bar_enabled()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in before:
        (module.enable_progress_bar if enabled else module.disable_progress_bar)()
    try:
        yield
    finally:
        for module, was in before:
            (module.enable_progress_bar if was else module.disable_progress_bar)()


def run_main(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], evaluate: Callable, summary: Callable[[Dict], str]) -> int:
    """A script's command line: parse ``argv``, run ``evaluate(args)``, print the table and
    ``summary(result)`` (main process); exit status 2 with one ``error:`` line on a bad argument
    or missing input."""
    args = parser.parse_args(argv)
    with loading_bars(not args.quiet):
        result, status = attempt(lambda: evaluate(args))
    if status:
        return status
    if process_state().is_main_process:
        print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
        smoke = " (--smoke-test: tiny random models, the numbers mean nothing)" if args.smoke_test else ""
        print(summary(result) + f"; results in {Path(args.output_dir) / 'results.json'}{smoke}")
    return 0
