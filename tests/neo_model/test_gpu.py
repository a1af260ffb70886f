"""CUDA checks of the training path (compiled FlexAttention with block masks), and a CPU smoke run
of ``benchmarks/bench_model.py``.

The ``gpu`` tests skip cleanly without CUDA. On CUDA they check, in bf16 on the debug NEO:

* forward + backward with compiled FlexAttention equals the SDPA dense-mask path (logits, loss,
  every parameter's gradient), directly and against an fp32 reference;
* padding a packed row to a multiple of 128 (and one whole block more) leaves the real tokens'
  logits, the loss and the gradients unchanged.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import torch

import neo_model.attention as attention
from neo_model.attention import FLEX_BLOCK
from neo_model.synthetic_pack import tokenizer_or_chars
from tests.helpers import REPO as ROOT
from tests.neo_model.neo_inputs import make_pack, make_sample, model_inputs, random_images

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GRIDS = [[(8, 8)], [(6, 10)], [(5, 5), (3, 3)]]  # images crossing 128-token block edges


@pytest.fixture(scope="module")
def gpu_pack():
    """Three packed samples (four images), a length that is not a multiple of 128."""
    tok = tokenizer_or_chars()
    samples = [
        make_sample(
            tok,
            [
                ("user", "<image>\n" * len(grids) + "Describe the picture in a few words."),
                ("assistant", "A red tram crosses an old stone bridge over a brown river."),
            ],
            grids,
        )
        for grids in GRIDS
    ]
    images = random_images([g for grids in GRIDS for g in grids])
    return samples, images


@pytest.fixture(scope="module")
def cuda_models(debug_model):
    """The debug NEO on CUDA in bf16 and in fp32 (reference); copies, the fixture stays as is."""
    models = {}
    for dtype in (torch.bfloat16, torch.float32):
        model = copy.deepcopy(debug_model).to("cuda", dtype)
        model.language_model.tie_weights()
        models[dtype] = model.train()
    return models


def run(model, pack, images, backend):
    """Logits, loss and every gradient (fp32 copies) of one forward + backward."""
    weight = model.language_model.lm_head.weight
    pack = {k: v.to(weight.device) for k, v in pack.items()}
    model.zero_grad(set_to_none=True)
    out = model(
        *model_inputs(pack),
        cu_seqlens=pack["cu_seqlens"],
        pixel_values=[img.to(weight.device, weight.dtype) for img in images],
        labels=pack["labels"],
        backend=backend,
    )
    out.loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out.logits.detach().float(), out.loss.detach().float(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``|a - b| / |b|`` (Frobenius norms)."""
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.gpu
@requires_cuda
def test_compiled_flex_forward_backward_equals_sdpa_dense_mask(cuda_models, gpu_pack):
    samples, images = gpu_pack
    pack = make_pack(samples)
    assert pack["input_ids"].shape[1] % FLEX_BLOCK, "the row must need padding inside build_mask"
    model = cuda_models[torch.bfloat16]

    flex = run(model, pack, images, "flex")
    assert attention._compiled_flex is not None, "CUDA must use the compiled FlexAttention"
    sdpa = run(model, pack, images, "sdpa")
    ref = run(cuda_models[torch.float32], pack, images, "sdpa")

    # Direct: bf16 tolerances (bf16 vs fp32 alone moves logits ~1% and gradients up to ~3%).
    assert rel(flex[0], sdpa[0]) < 2e-2
    torch.testing.assert_close(flex[1], sdpa[1], rtol=5e-3, atol=0)
    assert flex[2].keys() == sdpa[2].keys() == ref[2].keys()
    assert len(flex[2]) == sum(1 for _ in model.parameters())  # every parameter got a gradient
    for name in flex[2]:
        assert rel(flex[2][name], sdpa[2][name]) < 8e-2, name
    # Against fp32: FlexAttention's error is of the size of the SDPA path's own bf16 error.
    assert rel(flex[0], ref[0]) <= 2 * rel(sdpa[0], ref[0]) + 5e-3
    for name in flex[2]:
        assert rel(flex[2][name], ref[2][name]) <= 2 * rel(sdpa[2][name], ref[2][name]) + 1e-2, name


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("extra_blocks", [0, 1])
def test_padding_to_a_block_multiple_keeps_real_token_outputs(cuda_models, gpu_pack, extra_blocks):
    samples, images = gpu_pack
    model = cuda_models[torch.bfloat16]
    real = make_pack(samples)
    n = real["input_ids"].shape[1]
    pad_to = -(-n // FLEX_BLOCK) * FLEX_BLOCK + extra_blocks * FLEX_BLOCK
    padded = make_pack(samples, pad_to=pad_to)  # padding: after cu_seqlens[-1], its own sample
    assert padded["input_ids"].shape[1] == pad_to > n

    logits, loss, grads = run(model, real, images, "flex")
    logits_pad, loss_pad, grads_pad = run(model, padded, images, "flex")
    assert logits_pad.shape[1] == pad_to
    assert rel(logits_pad[:, :n], logits) < 5e-3
    torch.testing.assert_close(loss_pad, loss, rtol=2e-3, atol=0)
    for name, grad in grads.items():
        assert rel(grads_pad[name], grad) < 2e-2, name


def test_bench_model_smoke_on_cpu():
    """The model benchmark runs end to end on CPU (debug preset) and prints its three tables."""
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_model.py"),
        *("--preset", "debug", "--device", "cpu", "--steps", "1", "--warmup", "0"),
        *("--seq-len", "256"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for title in ("(a) training step", "(b) attention only", "(c) generation"):
        assert title in out, out
    assert "FlexAttention has no backward" in out and "FORWARD ONLY" in out
    number = r"\s+[\d,.e+-]+"
    for row in ("sdpa, plain causal (baseline)", "sdpa, NEO mixed, packed"):
        assert re.search(re.escape(row) + number * 5, out), (row, out)
    for row in ("causal (baseline)", "NEO mixed, one sample", "NEO mixed, packed (training)"):
        assert re.search(re.escape(row) + number * 9, out), (row, out)
    assert re.search(r"goal: NEO mask >= 0\.9 x causal", out)
    batches = re.findall(r"^\s+(\d+)" + number * 6 + r"\s*$", out, flags=re.M)
    assert batches == ["1", "16"], out
