"""evaluation/benchmarks/benchmark_upscaler.py measures what it claims: the interleaved rounds of the
paired ratios, and every row kind of a tiny end-to-end run (official-size model at 64 px, no
compile). How it summarises (ratios, targets, tables) is its own bookkeeping, not tested here."""
import argparse

import pytest
import torch

from evaluation.benchmarks import benchmark_upscaler as bench
from evaluation.benchmarks import common
from tiny_models import make_kl_vae, make_upscaler


def test_paired_measurement_interleaves_the_step_and_the_vae(monkeypatch):
    """Round after round, one fast 2x step at each side and the fast VAE decode at twice that side,
    in turn (a slow spell of a shared machine hits both times of a ratio alike; the order is
    reversed every other round); each time is filed under the call that ran. Tiny models stand in
    for the official-size ones."""
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
    monkeypatch.setattr(common, "time_call", fake_time_call)
    monkeypatch.setattr(bench, "make_upscaler", lambda device: make_upscaler(4, noise_scale=1.0))
    monkeypatch.setattr(bench, "make_vae", lambda device, dtype: make_kl_vae().to(dtype=dtype, memory_format=torch.channels_last))
    args = argparse.Namespace(device="cpu", repeats=2, warmup=1, dtype="bf16", no_compile=True, compile_mode=None)
    paired = bench.run_paired(args, [128, 64])
    one_round = ["uplift_64", "vae_128", "uplift_128", "vae_256"]
    assert ran == one_round * 2 + one_round[::-1]  # the warm-up, then 2 timed rounds
    assert paired["sides"] == [64, 128] and paired["compiled"] is False
    assert paired["times_s"] == {"uplift_64": [1.0, 8.0], "vae_128": [2.0, 7.0], "uplift_128": [3.0, 6.0], "vae_256": [4.0, 5.0]}
    assert paired["cpu_times_s"] == {"uplift_64": [0.1, 0.8], "vae_128": [0.2, 0.7], "uplift_128": [0.3, 0.6], "vae_256": [0.4, 0.5]}


@pytest.mark.slow  # the official-size models at 64 px, eager and fast: ~30 s
def test_end_to_end_tiny_run_measures_every_row(tmp_path):
    """--smoke-test: official-size model at 64 px, eager and bf16 fast (no compile), SD1.5-size VAE decode at
    128 px, the cross-attention contrast: every row kind is measured (a time and a peak memory, no
    error), the VAE decodes at the size the 2x step outputs, and nothing is compiled; --from-json
    redoes the same tables from the saved rows."""
    pytest.importorskip("psutil")
    result = bench.main(["--smoke-test", "--output", str(tmp_path / "bench.json")])
    rows = [r for r in result["results"] if r["kind"] != "paired"]
    kinds = sorted((r["kind"], r["mode"]) for r in rows)
    assert kinds == [("cross_attention", "eager"), ("cross_attention", "fast"), ("uplift", "eager"), ("uplift", "fast"), ("vae", "eager"), ("vae", "fast")]
    for r in rows:
        assert r["median_s"] > 0 and r["peak_extra_mib"] >= 0
    assert all(r["side"] == 128 for r in rows if r["kind"] == "vae")
    assert all(r["side"] == 64 and r["steps"] == 1 and r["compiled"] is False for r in rows if r["kind"] == "uplift")
    table = (tmp_path / "bench.md").read_text()
    bench.main(["--from-json", str(tmp_path / "bench.json"), "--output", str(tmp_path / "again.json")])
    assert (tmp_path / "again.md").read_text() == table


def test_from_json_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--from-json file not found.*nothing.json"):
        bench.main(["--from-json", str(tmp_path / "nothing.json"), "--output", str(tmp_path / "out.json")])
