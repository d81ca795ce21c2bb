"""The fused Triton Local Attender: checked against the PyTorch formulation with Triton's
interpreter on the CPU (``TRITON_INTERPRET=1``), and on the GPU itself when there is one."""
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from uplift_diffusers.models.local_attender import (
    TRITON_INSTALLED,
    AutoLocalAttenderProcessor,
    FusedLocalAttenderProcessor,
    LocalAttender,
    LocalAttenderProcessor,
    attend,
)

REPO = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not TRITON_INSTALLED, reason="Triton is not installed (pip install triton, or the dev extra)")

# every neighbourhood and scale, batches, odd sizes, strided / channels_last inputs, an
# explicit asymmetric neighbourhood, more offsets than a power of two, half precision
CHECK_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from uplift_diffusers.models.local_attender import FusedLocalAttenderProcessor, LocalAttender, attend
    from uplift_diffusers.models.triton_local_attender import fused_local_attention

    torch.manual_seed(0)
    results = []

    def check(name, neighborhood, scale, batch=2, channels=6, size=(5, 7), dtype=torch.float32, layout=None):
        att = LocalAttender(24, neighborhood).eval()
        h, w = size
        guide = torch.randn(batch, 24, h * scale, w * scale)
        value = torch.randn(batch, channels, h, w)
        if layout == "channels_last":
            guide, value = guide.to(memory_format=torch.channels_last), value.to(memory_format=torch.channels_last)
        elif layout == "strided":
            value = torch.randn(batch, channels, 2 * h, w)[:, :, ::2]
        with torch.no_grad():
            reference = attend(att.attention(guide), value, att.offsets, att.padding, scale)
            fused = fused_local_attention(att.logits(guide).to(dtype), value.to(dtype), att.offsets, scale)
            att.set_processor(FusedLocalAttenderProcessor())
            forward = att(guide, value)
        results.append(dict(
            name=name, dtype=str(fused.dtype), shape=list(fused.shape), contiguous=fused.is_contiguous(),
            max_err=(fused.double() - reference.double()).abs().max().item(),
            forward_err=(forward.double() - reference.double()).abs().max().item(),
        ))

    for n in (5, 9, 13, 17, 25):
        for scale in (1, 2, 3):
            check(f"n{n}_s{scale}", n, scale)
    check("channels_last", 17, 2, layout="channels_last")
    check("strided_value", 17, 2, layout="strided")
    check("batch3_1x1", 17, 2, batch=3, size=(1, 1))
    check("explicit_offsets", [(0, 0), (1, -3), (-2, 1)], 2)
    check("many_offsets", [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)], 2)
    check("bfloat16", 17, 2, dtype=torch.bfloat16)
    check("wide_value", 9, 2, channels=40, size=(3, 4))
    try:
        fused_local_attention(torch.zeros(1, 17, 10, 10), torch.zeros(1, 4, 4, 4), LocalAttender(24).offsets, 2)
        results.append(dict(name="bad_shape", raised=False))
    except ValueError as error:
        results.append(dict(name="bad_shape", raised=True, message=str(error)))
    print("RESULT " + json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def interpreted():
    """Every kernel check of CHECK_SCRIPT, run once in a TRITON_INTERPRET=1 interpreter (about 10 s:
    the tests that read it are marked slow)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CHECK_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return {r["name"]: r for r in json.loads(line[len("RESULT "):])}


@pytest.mark.slow
@needs_triton
def test_interpreted_kernel_matches_pytorch_for_every_neighbourhood_and_scale(interpreted):
    for n in (5, 9, 13, 17, 25):
        for scale in (1, 2, 3):
            row = interpreted[f"n{n}_s{scale}"]
            assert row["shape"] == [2, 6, 5 * scale, 7 * scale] and row["contiguous"]
            assert row["max_err"] < 1e-5 and row["forward_err"] < 1e-5, row


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("case", ["channels_last", "strided_value", "batch3_1x1", "explicit_offsets", "many_offsets", "wide_value"])
def test_interpreted_kernel_layouts_and_neighbourhoods(interpreted, case):
    row = interpreted[case]
    assert row["dtype"] == "torch.float32"
    assert row["max_err"] < 1e-5 and row["forward_err"] < 1e-5, row


@pytest.mark.slow
@needs_triton
def test_interpreted_kernel_in_bfloat16(interpreted):
    row = interpreted["bfloat16"]
    assert row["dtype"] == "torch.bfloat16"
    assert row["max_err"] < 3e-2  # inputs and output rounded to bf16, float32 inside


@pytest.mark.slow
@needs_triton
def test_interpreted_kernel_rejects_a_mismatched_logits_shape(interpreted):
    row = interpreted["bad_shape"]
    assert row["raised"] and "logits" in row["message"] and "(1, 17, 8, 8)" in row["message"]


@pytest.mark.slow  # a new interpreter importing the library: 5.9 s (measured)
def test_cpu_tensors_use_pytorch_and_never_load_the_kernel():
    script = textwrap.dedent(
        """
        import sys, torch
        from uplift_diffusers.models.local_attender import LocalAttender
        att = LocalAttender(24).eval()
        with torch.no_grad():
            att(torch.randn(1, 24, 8, 8), torch.randn(1, 4, 4, 4))
        print("uplift_diffusers.models.triton_local_attender" in sys.modules, att.processor.use_fused(att, torch.zeros(1), torch.zeros(1)))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False"]


def test_automatic_choice_needs_cuda_inference_and_no_tracing(monkeypatch):
    att = LocalAttender(24)
    auto = att.processor
    assert isinstance(auto, AutoLocalAttenderProcessor)

    class FakeCuda:
        is_cuda, requires_grad = True, False

    monkeypatch.setattr("uplift_diffusers.models.local_attender.TRITON_INSTALLED", True)
    cuda = FakeCuda()
    with torch.no_grad():
        assert auto.use_fused(att, cuda, cuda)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        assert not auto.use_fused(att, cuda, cuda)  # torch.compile fuses the PyTorch form itself
        monkeypatch.undo()
    monkeypatch.setattr("uplift_diffusers.models.local_attender.TRITON_INSTALLED", True)
    assert not auto.use_fused(att, cuda, cuda)  # gradients wanted (parameters require grad)
    monkeypatch.setattr("uplift_diffusers.models.local_attender.TRITON_INSTALLED", False)
    with torch.no_grad():
        assert not auto.use_fused(att, cuda, cuda)


def test_processor_is_swappable():
    att = LocalAttender(24)
    assert isinstance(att.processor, AutoLocalAttenderProcessor)
    guide, value = torch.randn(1, 24, 8, 8), torch.randn(1, 4, 4, 4)
    reference = att(guide, value)
    att.set_processor(LocalAttenderProcessor())
    assert isinstance(att.processor, LocalAttenderProcessor) and torch.equal(att(guide, value), reference)
    calls = []
    att.set_processor(lambda attender, guide, value, scale: calls.append(scale) or value.repeat_interleave(scale, -1).repeat_interleave(scale, -2))
    out = att(torch.randn(1, 24, 9, 9), torch.randn(1, 4, 3, 3))
    assert calls == [3] and out.shape == (1, 4, 9, 9)
    with pytest.raises(ValueError, match="processor"):
        att.set_processor("pytorch")


def test_kernel_failure_warns_once_and_falls_back(monkeypatch):
    import types

    fake = types.ModuleType("uplift_diffusers.models.triton_local_attender")

    def broken(*args, **kwargs):
        raise RuntimeError("no CUDA driver")

    fake.fused_local_attention = broken
    monkeypatch.setitem(sys.modules, "uplift_diffusers.models.triton_local_attender", fake)
    monkeypatch.setattr(AutoLocalAttenderProcessor, "use_fused", lambda self, a, g, v: not self.kernel_failed)
    torch.manual_seed(0)
    att = LocalAttender(24).eval()
    guide, value = torch.randn(1, 24, 8, 8), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        reference = attend(att.attention(guide), value, att.offsets, att.padding, 2)
        with pytest.warns(RuntimeWarning, match="fused Triton Local Attender failed.*no CUDA driver"):
            out = att(guide, value)
    assert torch.equal(out, reference) and att.processor.kernel_failed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: PyTorch from then on
        with torch.no_grad():
            assert torch.equal(att(guide, value), reference)
    att.set_processor(FusedLocalAttenderProcessor())  # forced: the error is raised, not hidden
    with pytest.raises(RuntimeError, match="no CUDA driver"), torch.no_grad():
        att(guide, value)


@pytest.mark.skipif(not torch.cuda.is_available() or not TRITON_INSTALLED, reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_matches_pytorch_and_allocates_only_the_output(dtype):
    from uplift_diffusers.models.triton_local_attender import fused_local_attention

    torch.manual_seed(0)
    att = LocalAttender(512).cuda().eval()
    guide = torch.randn(1, 512, 256, 256, device="cuda", dtype=dtype)
    value = torch.randn(1, 512, 128, 128, device="cuda", dtype=dtype)
    att.to(dtype)
    with torch.no_grad():
        reference = attend(att.attention(guide).float(), value.float(), att.offsets, att.padding, 2)
        logits = att.logits(guide)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fused = fused_local_attention(logits, value, att.offsets, 2)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        auto = att(guide, value)  # chosen automatically on CUDA
    output_bytes = fused.numel() * fused.element_size()
    assert extra <= output_bytes + 2**20
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    assert (fused.float() - reference).abs().max().item() < tolerance
    assert torch.equal(auto, fused)
