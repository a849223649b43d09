"""Likelihood evaluation throughput (bound mode, AO draws): fused ops vs the reference path, same
model, chunks and draws. Rate: evaluated tokens/s (chunks x length x draws per second)."""

import torch

from radd_fast.evaluate import bound_estimates
from radd_fast.model import RADD, preset

CASES = {
    "cpu": dict(preset="tiny", chunks=8, length=128, draws=4, batch=32, dtype=None),
    "cuda": dict(preset="small", chunks=16, length=1024, draws=4, batch=64, dtype=torch.bfloat16),
}


def test_eval_throughput(bench, device, impl):
    case = CASES[device.type]
    torch.manual_seed(0)
    model = RADD(preset(case["preset"]), impl=impl).to(device).eval()
    with torch.no_grad():
        model.output_layer.linear.weight.normal_(std=0.02)
    chunks = torch.randint(0, model.vocab_size, (case["chunks"], case["length"]), device=device)
    fn = lambda: bound_estimates(model, chunks, mc_samples=case["draws"], batch_size=case["batch"], impl=impl,
                                 seed=0, autocast_dtype=case["dtype"])
    bench(fn, group=f"eval {case['preset']} {device.type}", impl=impl, device=device,
          dtype=case["dtype"] or torch.float32, shape=chunks.shape,
          per_s={"tokens": chunks.numel() * case["draws"]})
