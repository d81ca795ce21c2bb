"""evaluation/benchmarks/benchmark_upscaler.py: the ratios, the targets, the memory measurement and a
tiny end-to-end run (official-size model at 64 px, no compile)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.benchmarks import benchmark_upscaler as bench

SCRIPT = Path(bench.__file__)


def row(kind, mode, side, median, steps=None, cpu=None):
    out = dict(kind=kind, mode=mode, side=side, median_s=median, median_cpu_s=cpu or median)
    if steps is not None:
        out["steps"] = steps
    return out


def test_ratios_and_targets_from_rows():
    rows = [
        row("uplift", "eager", 256, 10.0, steps=1),
        row("uplift", "fast", 256, 2.0, steps=1),
        row("uplift", "eager", 512, 40.0, steps=1),
        row("uplift", "fast", 512, 10.0, steps=1),
        row("vae", "fast", 512, 5.0),
        row("vae", "eager", 512, 20.0),
        row("vae", "fast", 1024, 15.0),
        row("uplift", "fast", 512, 0.0204, steps=2),
        dict(kind="vae", mode="fast", side=2048, error="killed"),  # failed rows are ignored
    ]
    ratios = bench.ratios(rows)
    assert ratios == {
        "fast_speedup_2x_step_256px": 5.0,
        "fast_speedup_2x_step_512px": 4.0,
        "fast_time_512_over_256": 5.0,
        "eager_2x_step_256px_over_vae_decode_512px": 0.5,
        "fast_2x_step_256px_over_vae_decode_512px": 0.4,
        "fast_2x_step_256px_over_eager_fp32_vae_decode_512px": 0.1,
        "fast_2x_step_512px_over_vae_decode_1024px": 0.667,
        "fast_4x_at_512px_ms": 20.4,
    }
    targets = bench.check_targets(ratios)
    assert targets["fast_speedup_2x_step_256px"] == {"target": ">= 2.5", "measured": 5.0, "met": True}
    assert targets["fast_time_512_over_256"]["met"] is False  # 5.0 > 4.4
    assert targets["eager_2x_step_256px_over_vae_decode_512px"]["met"] is True  # 0.5 <= 0.5
    assert targets["fast_2x_step_512px_over_vae_decode_1024px"]["met"] is False
    assert "fast_4x_at_512px_ms" not in targets  # a GPU target
    assert bench.check_targets(ratios, gpu=True)["fast_4x_at_512px_ms"] == {"target": "<= 25.0", "measured": 20.4, "met": True}


def test_paired_ratios_are_medians_of_per_round_ratios():
    """The interleaved measurement gives the 512/256 and step/VAE ratios as medians of
    per-round ratios, which replace the ratios of separate medians (kept as unpaired)."""
    rows = [
        row("uplift", "fast", 256, 2.0, steps=1),
        row("uplift", "fast", 512, 10.0, steps=1),
        row("vae", "fast", 512, 3.0),
        dict(
            kind="paired", sides=[256, 512],
            # a slow spell in round 2 slows everything in it alike: per-round ratios stay put
            times_s={"uplift_256": [1.0, 2.0, 1.1], "vae_512": [2.5, 5.0, 2.0], "uplift_512": [4.0, 8.0, 5.5], "vae_1024": [10.0, 20.0, 10.0]},
            cpu_times_s={"uplift_256": [2.0, 2.0, 2.0], "vae_512": [4.0, 4.0, 4.0], "uplift_512": [8.0, 8.0, 8.0], "vae_1024": [16.0, 16.0, 16.0]},
        ),
    ]
    ratios = bench.ratios(rows)
    assert ratios["fast_time_512_over_256"] == 4.0  # median of 4.0, 4.0, 5.0
    assert ratios["fast_2x_step_256px_over_vae_decode_512px"] == 0.4  # median of 0.4, 0.4, 0.55
    assert ratios["fast_2x_step_512px_over_vae_decode_1024px"] == 0.4  # median of 0.4, 0.4, 0.55
    assert bench.ratios(rows, paired=False)["fast_time_512_over_256"] == 5.0  # 10 / 2 from the separate rows
    assert bench.ratios(rows, paired=False)["fast_2x_step_256px_over_vae_decode_512px"] == 0.667
    cpu = bench.ratios(rows, key="median_cpu_s")
    assert cpu["fast_time_512_over_256"] == 4.0 and cpu["fast_2x_step_256px_over_vae_decode_512px"] == 0.5
    assert bench.paired_ratios([row("vae", "fast", 512, 3.0)]) == {}
    result = dict(
        meta=dict(device="cpu: test", threads=2, torch="x", fast_mode="bf16", memory="m"),
        results=[dict(r, peak_extra_mib=1.0) for r in rows],
        targets=bench.check_targets(ratios),
        ratios_from_cpu_time=cpu,
        ratios_unpaired=bench.ratios(rows, paired=False),
        paired=sorted(bench.paired_ratios(rows)),
    )
    table = bench.markdown(result)
    assert "| fast time(512 px) / time(256 px) (interleaved) | <= 4.4 | 4.0 | yes | 4.0 |" in table
    assert "3 rounds" in table and "fast_time_512_over_256 5.0" in table  # the unpaired value, for comparison


def run_worker(task):
    proc = subprocess.run([sys.executable, "-m", "evaluation.benchmarks.benchmark_upscaler", "--worker", json.dumps(task)], capture_output=True, text=True, timeout=600, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


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


def test_paired_worker_interleaves_the_step_and_the_vae():
    """The interleaved worker times one fast 2x step and the VAE decode at twice the side in
    every round (official-size model at 64 px, bf16, no compile)."""
    task = dict(kind="paired", mode="fast", side=None, sides=[64], device="cpu", threads=1, repeats=2, warmup=0, dtype="bf16", compile=False)
    (paired,) = run_worker(task)
    assert paired["sides"] == [64] and paired["compiled"] is False
    assert set(paired["times_s"]) == set(paired["cpu_times_s"]) == {"uplift_64", "vae_128"}
    assert all(len(t) == 2 and min(t) > 0 for t in paired["times_s"].values())
    ratio = bench.paired_ratios([dict(paired, kind="paired")])["fast_2x_step_64px_over_vae_decode_128px"]
    assert 0 < ratio < 10


def test_end_to_end_tiny_run_writes_json_and_plot(tmp_path):
    """Official-size model at 64 px, eager and bf16 fast (no compile), SD1.5-size VAE decode
    at 128 px, the cross-attention contrast; every row has a time and a peak memory."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("psutil")
    out = tmp_path / "bench.json"
    result = bench.main([
        "--sides", "64", "--steps", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
        "--no-compile", "--skip", "encoder", "attender_memory", "--output", str(out),
    ])
    assert out.exists() and out.with_suffix(".png").stat().st_size > 10_000
    saved = json.loads(out.read_text())
    assert saved["ratios"] == result["ratios"]
    kinds = sorted((r["kind"], r["mode"]) for r in saved["results"])
    assert kinds == [("cross_attention", "eager"), ("cross_attention", "fast"), ("uplift", "eager"), ("uplift", "fast"), ("vae", "eager"), ("vae", "fast")]
    for r in saved["results"]:
        assert "error" not in r, r
        assert r["median_s"] > 0 and r["peak_extra_mib"] >= 0
    vae = [r for r in saved["results"] if r["kind"] == "vae"]
    assert all(r["side"] == 128 and r["upscaler_side"] == 64 and r["compile"] is False for r in vae)
    assert saved["meta"]["fast_mode"].startswith("bf16, channels_last, no compile")
    assert saved["meta"]["command"].startswith("python -m evaluation.benchmarks.benchmark_upscaler --sides 64")
    table = out.with_suffix(".md").read_text()
    assert "| fast time(512 px) / time(256 px) |" not in table  # only 64 px measured: no such ratio
    assert "| 64 | 64 | " in table and "peak extra memory" in table
    # the tables and the plot again from the saved rows, without measuring
    again = tmp_path / "again.json"
    redone = bench.main(["--from-json", str(out), "--output", str(again)])
    assert redone["ratios"] == saved["ratios"] and redone["results"] == saved["results"]
    assert again.with_suffix(".md").read_text() == table and again.with_suffix(".png").exists()


def test_from_json_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--from-json file not found.*nothing.json"):
        bench.main(["--from-json", str(tmp_path / "nothing.json"), "--output", str(tmp_path / "out.json")])
