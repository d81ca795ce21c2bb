"""Results files of the evaluation scripts and the markdown tables in the paper's layout.

Every script writes ``results.json`` and ``results.md`` (its table) into its output directory.
``results.json`` holds ``task`` (``text_to_image`` | ``super_resolution`` | ``latency``),
``dataset`` (the column label), ``settings`` (the run's flags and, under ``metrics``, each
metric's exact definition and library versions), ``count`` and ``methods`` (one entry per table
row; with a single row its metrics are repeated at the top level). Latency results hold
``stages`` (mean seconds per batch of every stage) and ``methods`` (seconds per batch of each row).
Non-finite numbers are written as the strings ``"inf"`` / ``"nan"``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from evaluation.arguments import read_json_file
from uplift_diffusers.utils.atomic_files import atomic_write_text

TASKS = ("text_to_image", "super_resolution", "latency")

METHOD_LABELS = {
    "base512": "SD1.5 base resolution (no upscaling)",
    "bicubic": "Bicubic (pixel space)",
    "vae": "VAE reconstruction (ceiling)",
    "nearest": "Nearest latent upsampling",
    "bilinear": "Bilinear latent upsampling",
    "uplift": "UPLiFT",
    "sdxl": "SDXL",  # the paper's reference rows (Tables 2-3), generated natively at 1024
    "lcm-lora-sdxl": "LCM-LoRA SDXL",
}
# Row order of the tables: native references and baselines first, then the upscalers, then anything else by name.
_ROW_ORDER = ("sdxl", "lcm-lora-sdxl", "base512", "bicubic", "vae", "nearest", "bilinear", "uplift")

LATENCY_STAGES = (
    ("unet", "UNet (all steps, CFG)"),
    ("vae_decode_base", "VAE decode (base)"),
    ("uplift", "UPLiFT"),
    ("vae_decode_upscaled", "VAE decode (upscaled)"),
    ("color_correction", "Colour correction"),
)


def _json_safe(value):
    """inf / nan are not valid JSON: they are written as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(result: Mapping, output_dir, name: str = "results") -> Tuple[Path, Path]:
    """Write ``<output_dir>/<name>.json`` and ``<output_dir>/<name>.md`` (the table of ``result``'s task), atomically."""
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / f"{name}.json", output_dir / f"{name}.md"
    atomic_write_text(json_path, json.dumps(_json_safe(result), indent=2, sort_keys=False) + "\n")
    atomic_write_text(md_path, table_for(result["task"], [result]) + "\n")
    return json_path, md_path


def load_result(path) -> Dict:
    """Read a ``results.json`` written by one of the evaluation scripts (checks ``task`` and ``methods``)."""
    path = Path(path)
    result = read_json_file(path, "results", "pass the results.json an evaluation script wrote.")
    if not isinstance(result, dict) or result.get("task") not in TASKS:
        raise ValueError(f"results file {str(path)!r} has no 'task' in {TASKS}; pass a results.json of an evaluation script.")
    key = "stages" if result["task"] == "latency" else "methods"
    if not isinstance(result.get(key), dict):
        raise ValueError(f"results file {str(path)!r} ({result['task']}) has no '{key}' mapping.")
    return result


def _number(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" / "nan" as written by write_report
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf"
    return f"{value:.{digits}f}"


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _ordered_methods(results: Iterable[Mapping]) -> List[str]:
    names: List[str] = []
    for result in results:
        for name in result.get("methods", {}):
            if name not in names:
                names.append(name)
    rank = {name: index for index, name in enumerate(_ROW_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _group(result: Mapping):
    """The dataset label a result was written with (``make_tables`` may relabel its column group)."""
    return result.get("dataset_group", result.get("dataset"))


def _base_label(sizes: Sequence) -> str:
    """The ``base512`` row (SD1.5 at its base size, not upscaled), named by the base size(s) actually used."""
    known = [str(size) for size in sizes]
    return f"SD1.5 base resolution, {' / '.join(known)} px (no upscaling)" if known else _label("base512")


def text_to_image_table(results: Sequence[Mapping], latencies: Sequence[Mapping] = ()) -> str:
    """Tables 2-3: per dataset FID, patch-FID, CLIP score and time (seconds per batch) of every method.

    ``latencies`` are latency results; the one whose ``dataset`` matches a column group's
    (case-insensitively) fills its time column (``methods[<row>]``, seconds per batch of its ``settings.batch_size``).
    """
    by_dataset = {str(_group(latency)).lower(): latency for latency in latencies}
    header = ["Method"]
    for result in results:
        name = result.get("dataset", "?")
        batch = by_dataset.get(str(_group(result)).lower(), {}).get("settings", {}).get("batch_size")
        time_header = f"{name} time (s/batch of {batch})" if batch else f"{name} time (s)"
        header += [f"{name} FID", f"{name} patch-FID", f"{name} CLIP", time_header]
    rows = []
    base_sizes = sorted({r.get("settings", {}).get("size") for r in results if "base512" in r.get("methods", {})} - {None})
    for method in _ordered_methods(results):
        row = [_base_label(base_sizes) if method == "base512" else _label(method)]
        for result in results:
            values = result["methods"].get(method, {})
            time = by_dataset.get(str(_group(result)).lower(), {}).get("methods", {}).get(method)
            row += [_number(values.get("fid"), 2), _number(values.get("patch_fid"), 2), _number(values.get("clip"), 2), _number(time, 3)]
        rows.append(row)
    setups = sorted(
        {(r.get("settings", {}).get("size"), r.get("settings", {}).get("upscale_factor"), r.get("settings", {}).get("steps")) for r in results},
        key=str,
    )
    what = "; ".join(f"base {size} px, latents upscaled {factor}x, {steps} steps" for size, factor, steps in setups)
    return _markdown(header, rows, f"Tables 2-3: text-to-image ({what})")


def super_resolution_table(results: Sequence[Mapping]) -> str:
    """Table 4: per dataset PSNR (dB), SSIM, FID and patch-FID of every method."""
    header = ["Method"]
    for result in results:
        name = result.get("dataset", "?")
        header += [f"{name} PSNR", f"{name} SSIM", f"{name} FID", f"{name} patch-FID"]
    rows = []
    for method in _ordered_methods(results):
        rounds = sorted({r["methods"].get(method, {}).get("back_projection") or 0 for r in results} - {0})
        copies = sorted({r["methods"].get(method, {}).get("ensemble") or 1 for r in results} - {1})
        row = [_label(method) + (f" + ensemble ({' / '.join(map(str, copies))})" if copies else "")
               + (f" + back-projection ({' / '.join(map(str, rounds))})" if rounds else "")]
        for result in results:
            values = result["methods"].get(method, {})
            row += [_number(values.get("psnr"), 2), _number(values.get("ssim"), 4), _number(values.get("fid"), 2), _number(values.get("patch_fid"), 2)]
        rows.append(row)
    sizes = sorted({(r.get("settings", {}).get("lr_size"), r.get("settings", {}).get("hr_size")) for r in results}, key=str)
    what = ", ".join(f"{lr} -> {hr}" for lr, hr in sizes)
    return _markdown(header, rows, f"Table 4: super-resolution ({what})")


def latency_table(results: Sequence[Mapping]) -> str:
    """The text-to-image latency breakdown: mean seconds per batch of every stage, one column per latency run."""
    header = ["Stage"]
    for result in results:
        settings = result.get("settings", {})
        note = " (random weights)" if result.get("random_weights") else ""
        header.append(f"{result.get('dataset', '?')} batch {settings.get('batch_size')}, {settings.get('steps')} steps{note}")
    rows = []
    for key, label in LATENCY_STAGES:
        rows.append([label] + [_number(result.get("stages", {}).get(key), 4) for result in results])
    for method in ("base512", "bilinear", "uplift"):
        rows.append([f"Total: {_label(method)}"] + [_number(result.get("methods", {}).get(method), 4) for result in results])
    return _markdown(header, rows, "Text-to-image latency breakdown (seconds per batch, mean of the timed iterations)")


def table_for(task: str, results: Sequence[Mapping], latencies: Sequence[Mapping] = ()) -> str:
    """The table of ``task`` (one of :data:`TASKS`) for ``results``; ``latencies`` fill the time
    columns of the text-to-image table."""
    if task == "text_to_image":
        return text_to_image_table(results, latencies)
    return super_resolution_table(results) if task == "super_resolution" else latency_table(results)
