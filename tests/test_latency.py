"""Latency protocols of the benchmarks: the compile default of evaluation.benchmarks.benchmark_latency
and the interleaved rounds of evaluation.benchmarks.common."""
from __future__ import annotations

from evaluation.benchmarks import benchmark_latency, common


def test_compile_is_on_by_default_as_in_the_paper():
    parser = benchmark_latency.build_parser()
    required = ["text-to-image", "--output-dir", "x"]
    assert parser.parse_args(required).compile is True
    assert parser.parse_args(required + ["--no-compile"]).compile is False
    defaults = parser.parse_args(required)
    assert (defaults.upscale_factor, defaults.warmup, defaults.iters, defaults.dtype) == (2, 3, 10, "float32")


def test_rounds_alternate_and_each_time_goes_to_the_method_that_ran(monkeypatch):
    order, clock = [], iter([1.0, 2.0, 4.0, 2.0, 1.0, 3.0, 6.0, 2.0])  # uplift, bilinear per round (order below)

    def fake_time_call(fn, device):
        fn()
        wall = next(clock)
        return wall, 10 * wall if order[-1] == "uplift" else wall  # CPU times: UPLiFT 10x its wall time

    monkeypatch.setattr(common, "time_call", fake_time_call)
    calls = {"uplift": lambda: order.append("uplift"), "bilinear": lambda: order.append("bilinear")}
    wall, cpu = common.interleaved(calls, 4, 2, "cpu")
    # 2 untimed rounds, then the timed rounds with the order reversed every other round
    assert order == ["uplift", "bilinear"] * 2 + ["uplift", "bilinear", "bilinear", "uplift"] * 2
    assert wall == {"uplift": [1.0, 2.0, 1.0, 2.0], "bilinear": [2.0, 4.0, 3.0, 6.0]}
    assert cpu == {"uplift": [10.0, 20.0, 10.0, 20.0], "bilinear": [2.0, 4.0, 3.0, 6.0]}
