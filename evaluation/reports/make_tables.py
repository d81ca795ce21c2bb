"""Collect ``results.json`` files of the evaluation scripts into the paper's tables (Tables 2-4 and
the text-to-image latency breakdown), one column group per file, in the order given.

Several results of one task with the same ``--dataset-name`` are separate runs: each gets its
own column group, labelled by its folder, and a note says so.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from evaluation.arguments import attempt
from evaluation.reports.tables import TASKS, load_result, table_for
from uplift_diffusers.utils.atomic_files import atomic_write_text


def make_tables(paths: Sequence) -> str:
    """The markdown of every table for which ``paths`` hold results (tables separated by blank lines)."""
    if not paths:
        raise ValueError("no results files given; pass the results.json files of the evaluation scripts.")
    loaded = [(load_result(path), Path(path)) for path in paths]
    by_task: Dict[str, List[Dict]] = {}
    notes: List[str] = []
    for task in TASKS:
        of_task = [(result, path) for result, path in loaded if result["task"] == task]
        by_task[task], note = separate_runs([result for result, _ in of_task], [path for _, path in of_task], task)
        notes += note
    tables = [table_for(task, by_task[task], latencies=by_task["latency"]) for task in TASKS if by_task[task]]
    return "\n\n".join(tables + notes) + "\n"


def separate_runs(results: Sequence[Dict], paths: Sequence[Path], task: str):
    """``(results, notes)``: results sharing a dataset label relabelled ``LABEL (FOLDER)`` (or
    ``LABEL (run K)``), each keeping its original label as ``dataset_group``; one note per label."""
    labels = [r.get("dataset") for r in results]
    relabelled, notes = [], []
    for label in sorted({label for label in labels if labels.count(label) > 1}, key=str):
        members = [i for i, other in enumerate(labels) if other == label]
        folders = [paths[i].resolve().parent.name for i in members]
        names = folders if len(set(folders)) == len(folders) else [f"run {k}" for k in range(1, len(members) + 1)]
        for i, name in zip(members, names):
            relabelled.append((i, f"{label} ({name})"))
        listed = ", ".join(f"{label} ({name}) = {paths[i]}" for i, name in zip(members, names))
        notes.append(f"Note: {len(members)} {task} results have the dataset label {label!r}; they are shown as separate runs: "
                     f"{listed}. To merge them into one column, evaluate the data set in one run.")
    new = list(results)
    for i, name in relabelled:
        new[i] = dict(results[i], dataset=name, dataset_group=results[i].get("dataset"))
    return new, notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Make the paper's tables (markdown) from results.json files: text-to-image (Tables 2-3), "
        "super-resolution (Table 4) and the text-to-image latency breakdown."
    )
    parser.add_argument("results", nargs="+", help="results.json files written by the evaluation scripts")
    parser.add_argument("--output", default=None, help="also write the markdown to this file")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    markdown, status = attempt(lambda: make_tables(args.results))
    if status:
        return status
    if args.output:
        atomic_write_text(args.output, markdown)
    print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
