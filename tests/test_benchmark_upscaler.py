"""evaluation/benchmarks/benchmark_upscaler.py measures what it claims: the interleaved rounds of the
paired ratios, the Local Attender's memory bound, the encoder savings, and every row kind of a tiny
end-to-end run (official-size model at 64 px, no compile). How it summarises (ratios, targets,
tables) is its own bookkeeping, not tested here."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.benchmarks import benchmark_upscaler as bench
from tiny_models import make_kl_vae, make_upscaler

SCRIPT = Path(bench.__file__)


def run_worker(task):
    proc = subprocess.run([sys.executable, "-m", "evaluation.benchmarks.benchmark_upscaler", "--worker", json.dumps(task)], capture_output=True, text=True, timeout=600, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow  # a worker process with the attender at 128 channels: 6 s (measured)
def test_attender_memory_bound_measured_after_the_timings():
    """The in-place Local Attender stays within inputs + one output; the naive broadcast
    formulation (n x output) does not."""
    pytest.importorskip("psutil")
    task = dict(kind="attender_memory", mode="eager", side=None, device="cpu", threads=1, repeats=1, warmup=0, channels=128, size=64)
    rows = {r["variant"].split(" ")[0]: r for r in run_worker(task)}
    assert set(rows) == {"LocalAttender.forward(guide,", "attend(weights,", "naive"}
    output_mib = 128 * 128 * 128 * 4 / 2**20
    for name in ("LocalAttender.forward(guide,", "attend(weights,"):
        assert rows[name]["within_bound"] and rows[name]["peak_extra_mib"] <= rows[name]["bound_mib"]
        assert rows[name]["output_mib"] == output_mib
    naive = rows["naive"]
    assert not naive["within_bound"] and naive["peak_extra_mib"] > 10 * output_mib  # 17 x output
    assert all(len(r["times_s"]) == 1 and r["median_s"] > 0 for r in rows.values())


@pytest.mark.slow  # a worker process with the official-size encoder: 6.5-8 s each (measured)
@pytest.mark.parametrize("mode, phases", [("eager", True), ("fast", False)])
def test_encoder_worker_counts_the_savings(mode, phases):
    """The encoder rows run fast inference's encoder pass (float32 in eager mode, where the
    strided last group uses phases; bf16 in fast mode, where it does not) and count FLOPs:
    the savings of 1 step (stride 4) exceed those of 2 steps (stride 2)."""
    pytest.importorskip("psutil")
    task = dict(kind="encoder", mode=mode, side=64, device="cpu", threads=1, repeats=1, warmup=0, dtype="bf16", compile=False)
    rows = {r["stride"]: r for r in run_worker(task)}
    assert sorted(rows) == [1, 2, 4] and [rows[s]["phases"] for s in (1, 2, 4)] == [False, phases, phases]
    assert rows[1]["tflops"] > rows[2]["tflops"] > rows[4]["tflops"] > 0.5 * rows[1]["tflops"]
    assert all(r["median_s"] > 0 and r["peak_extra_mib"] >= 0 for r in rows.values())


def test_paired_worker_interleaves_the_step_and_the_vae(monkeypatch):
    """Round after round, one fast 2x step at each side and the fast VAE decode at twice that side,
    in turn (a slow spell of a shared machine hits both times of a ratio alike); each time is filed
    under the call that ran. Tiny models stand in for the official-size ones."""
    ran, clock = [], iter(range(1, 100))

    def recording(kind, build):
        def build_and_record(model, side, *args):
            call = build(model, side, *args)
            return lambda: (ran.append(f"{kind}_{side}"), call())

        return build_and_record

    def fake_time_call(call, device):
        call()
        wall = float(next(clock))
        return wall, wall / 10

    monkeypatch.setattr(bench, "uplift_call", recording("uplift", bench.uplift_call))
    monkeypatch.setattr(bench, "vae_call", recording("vae", bench.vae_call))
    monkeypatch.setattr(bench, "time_call", fake_time_call)
    monkeypatch.setattr(bench, "make_upscaler", lambda device: make_upscaler(4, noise_scale=1.0))
    monkeypatch.setattr(bench, "make_vae", lambda task: make_kl_vae().to(dtype=torch.bfloat16, memory_format=torch.channels_last))
    task = dict(kind="paired", mode="fast", side=None, sides=[128, 64], device="cpu", threads=1, repeats=2, warmup=1, dtype="bf16", compile=False)
    ((paired, memory_call),) = bench.run_paired(task)
    one_round = ["uplift_64", "vae_128", "uplift_128", "vae_256"]
    assert ran == one_round * 3  # the warm-up, then 2 timed rounds
    assert paired["sides"] == [64, 128] and paired["compiled"] is False and memory_call is None
    assert paired["times_s"] == {"uplift_64": [1.0, 5.0], "vae_128": [2.0, 6.0], "uplift_128": [3.0, 7.0], "vae_256": [4.0, 8.0]}
    assert paired["cpu_times_s"] == {"uplift_64": [0.1, 0.5], "vae_128": [0.2, 0.6], "uplift_128": [0.3, 0.7], "vae_256": [0.4, 0.8]}


@pytest.mark.slow  # six worker processes with the official-size models: 31 s (measured)
def test_end_to_end_tiny_run_measures_every_row(tmp_path):
    """--smoke-test: official-size model at 64 px, eager and bf16 fast (no compile), SD1.5-size VAE decode at
    128 px, the cross-attention contrast: every row kind is measured (a time and a peak memory, no
    error), the VAE decodes at the size the 2x step outputs, and nothing is compiled."""
    pytest.importorskip("matplotlib")  # the run also draws its plot
    pytest.importorskip("psutil")
    result = bench.main(["--smoke-test", "--output", str(tmp_path / "bench.json")])  # the shortest run of every row kind
    rows = result["results"]
    kinds = sorted((r["kind"], r["mode"]) for r in rows)
    assert kinds == [("cross_attention", "eager"), ("cross_attention", "fast"), ("uplift", "eager"), ("uplift", "fast"), ("vae", "eager"), ("vae", "fast")]
    for r in rows:
        assert "error" not in r, r
        assert r["median_s"] > 0 and r["peak_extra_mib"] >= 0
    assert all(r["side"] == 128 for r in rows if r["kind"] == "vae")
    assert all(r["side"] == 64 and r["steps"] == 1 and r["compiled"] is False for r in rows if r["kind"] == "uplift")


def test_from_json_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--from-json file not found.*nothing.json"):
        bench.main(["--from-json", str(tmp_path / "nothing.json"), "--output", str(tmp_path / "out.json")])
