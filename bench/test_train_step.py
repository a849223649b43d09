"""One training step (forward, backward, AdamW) of the RADD model with the lambda-DCE loss:
fused ops (impl="fused"), what `radd-fast train` runs by default (impl="auto": the fused ops, but on
CUDA torch's SDPA for the unmasked attention, radd_fast.functional.sdpa_is_faster; on the CPU the
same as "fused"), auto with the model's blocks under torch.compile ("auto+compile"), on CUDA auto with
torch's own SDPA backend order ("auto-torch-sdpa"; radd_fast.functional.sdpa_backend), and the
pure-PyTorch reference path (impl="reference"); same model, batch and masks. Rate: tokens/s
(sequence positions per second, masked or not)."""

import pytest
import torch

from radd_fast import losses
from radd_fast.model import RADD, preset

CASES = {
    # CPU: the demo's tiny byte-level model at its length, fp32, 2,048 tokens per step.
    "cpu": dict(preset="tiny", batch=4, length=512, dtype=None),
    # CUDA: the small (GPT-2-scale) model, bf16 autocast, a batch that fills an H200.
    "cuda": dict(preset="small", batch=32, length=1024, dtype=torch.bfloat16),
}


@pytest.mark.parametrize("impl", ["reference", "fused", "auto"])
def test_train_step(bench, device, impl):
    run_step(bench, device, impl)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_train_step_torch_sdpa_order(bench, monkeypatch):
    # auto with torch's own SDPA backend order (FlashAttention-2 first) instead of radd_fast's
    # (cuDNN first on Hopper): what that choice is worth in a training step, in the same group.
    monkeypatch.setenv("RADD_FAST_SDPA_BACKEND", "torch")
    run_step(bench, torch.device("cuda"), "auto", label="auto-torch-sdpa")


def test_train_step_compiled(bench, device):
    # What `radd-fast train --compile` runs: impl="auto" with every block under torch.compile, the
    # LayerNorm / GELU / residual work around the matmuls fused. Compiled in the warm-up call. (Until
    # 2026-11-30 this row compiled impl="fused", whose attention on CUDA is slower than the SDPA that
    # auto picks: 345k tokens/s against auto's 384k uncompiled on the H200.)
    run_step(bench, device, "auto", compile_blocks=True)


def run_step(bench, device, impl, compile_blocks=False, label=None):
    case = CASES[device.type]
    torch.manual_seed(0)
    model = RADD(preset(case["preset"]), impl=impl).to(device)
    if compile_blocks:
        model.compile_blocks()
    with torch.no_grad():  # the zero-initialised output layer would make every step alike
        model.output_layer.linear.weight.normal_(std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as radd_fast.train uses
    x0 = torch.randint(0, model.vocab_size, (case["batch"], case["length"]), device=device)
    g = torch.Generator(device=device)

    def step():
        g.manual_seed(1)  # the same masks every step, for both implementations
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=case["dtype"], enabled=case["dtype"] is not None):
            loss = losses.lambda_dce(model, x0, generator=g, impl=impl)
        loss.backward()
        opt.step()

    n_tokens = x0.numel()
    bench(step, group=f"train step {case['preset']} {device.type}", impl=label or impl + ("+compile" if compile_blocks else ""),
          device=device,
          dtype=case["dtype"] or torch.float32, shape=x0.shape, per_s={"tokens": n_tokens},
          params=model.num_parameters())
