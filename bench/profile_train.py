"""Where a training step's device time goes: torch.profiler over two steps (after two warm-up
steps) of the training-step benchmark (bench/test_train_step.py: the `small` model, bf16 autocast,
batch 32 x 1,024, the lambda-DCE loss, fused AdamW, impl="auto"), kernels grouped by name, the
largest first, each with its share of the profiled device time (bench/gpu_check.sh's profile
stage). Issue 5's target (500k tokens/s on an H200) needs to know which of attention, the matmuls,
the loss, the optimizer and the elementwise work to take on next.

    python bench/profile_train.py [--small] [--device cpu]

--small: the `tiny` model on 2 x 64 tokens (a smoke test; tests/test_gpu_check.py runs it on the CPU,
where the table lists CPU operators by self time instead of kernels).
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import torch

from radd_fast import losses
from radd_fast.model import RADD, preset


def kernel_times(prof, cuda: bool) -> dict[str, list[float]]:
    """name -> [calls, microseconds]: device kernels on CUDA, operators' self time on the CPU."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        else:
            us = e.self_cpu_time_total
        out[e.name][0] += 1
        out[e.name][1] += us
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="default: cuda (cpu must be asked for)")
    ap.add_argument("--small", action="store_true", help="the tiny model on 2 x 64 tokens (a smoke test)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    if args.device is None and not torch.cuda.is_available():
        # gpu_check.sh's profile stage on a machine whose CUDA failed would otherwise spend minutes
        # profiling the `small` model on the CPU (461 s in a dry run) and learn nothing.
        ap.error("no CUDA device; pass --device cpu to profile on the CPU (--small: in seconds)")
    device = torch.device(args.device or "cuda")
    cuda = device.type == "cuda"
    name, batch, length = ("tiny", 2, 64) if args.small else ("small", 32, 1024)
    torch.manual_seed(0)
    model = RADD(preset(name), impl="auto").to(device)
    with torch.no_grad():  # the zero-initialised output layer would make every step alike
        model.output_layer.linear.weight.normal_(std=0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    x0 = torch.randint(0, model.vocab_size, (batch, length), device=device)
    g = torch.Generator(device=device)

    def step():
        g.manual_seed(1)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = losses.lambda_dce(model, x0, generator=g, impl="auto")
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator, kernels, cuBLAS heuristics
        step()
    steps = 2
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    times = kernel_times(prof, cuda)
    total = sum(t for _, t in times.values()) or 1.0
    what = "device kernels" if cuda else "CPU operators (self time)"
    print(f"training step `{name}` B {batch} x L {length}, {steps} steps: {total / 1e3 / steps:.2f} ms of {what} per step")
    for kname, (calls, us) in sorted(times.items(), key=lambda kv: -kv[1][1])[: args.top]:
        print(f"  {100 * us / total:5.1f} %  {us / 1e3 / steps:8.3f} ms/step  {calls / steps:6.1f} calls/step  {kname[:110]}")
    print("profile_train done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
