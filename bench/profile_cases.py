"""One realistic call of each CUDA kernel that measured below its target, for Nsight Compute
(bench/gpu_check.sh's profile stage): where the time of a slow kernel goes (tensor-pipe and memory
throughput, occupancy) is what the next change to it needs, and a GPU session is too short to find
it by trial.

    ncu --csv --section SpeedOfLight --section Occupancy -k regex:'gemm_kernel|device_kernel|softmax_rows|mma_kernel' \\
        python bench/profile_cases.py

Cases: the λ-DCE loss forward + backward (bf16, N 2,560 rows about half masked, D 768, V 50,257:
the kernels of bench/test_dce_loss.py on one partly filled chunk of 2,560 rows with the grouped
engine (CUTLASS kernels, "device_kernel"), or one full chunk of 1,280 and one partial chunk with
RADD_FAST_DCE_ENGINE=tiles) and masked attention forward + backward (bf16, B 4, L 1,024, 12 heads,
head_dim 64; again with 128-key backward blocks; on an sm_90 GPU with a 9.0a build also with the
wgmma kernels). Runs on the CPU too (tests/test_gpu_check.py runs a small version). `--only attention`
runs the default and the wgmma attention kernels alone (the stall profile of gpu_check.sh: why the
attention kernels keep their tensor cores busy under a third of the time).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

import radd_fast


def loss_case(device: str, N: int, D: int, V: int) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(N, D, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
    W = (torch.randn(V + 1, D, device=device, dtype=torch.bfloat16, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,), device=device, generator=g)
    w = (torch.rand(N, device=device, generator=g) < 0.5).float()
    radd_fast.linear_dce_loss(h, W, None, t, w, impl="fused").backward()


def attention_case(device: str, B: int, L: int, H: int, D: int) -> None:
    g = torch.Generator(device=device).manual_seed(1)
    q, k, v = (torch.randn(B, L, H, D, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
               for _ in range(3))
    radd_fast.masked_attention(q, k, v, impl="fused").sum().backward()


def wgmma_built(device: str) -> bool:
    from radd_fast import _extension

    arch = str((_extension.BUILD_INFO or {}).get("cuda_arch_list") or "")
    return device == "cuda" and torch.cuda.get_device_capability() == (9, 0) and "9.0a" in arch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a smoke test of this script)")
    ap.add_argument("--only", choices=("attention",), help="only these cases (gpu_check's stall profile)")
    args = ap.parse_args(argv)
    if args.small:
        if args.only is None:
            loss_case(args.device, 64, 32, 101)
        attention_case(args.device, 1, 70, 2, 64)
    else:
        if args.only is None:
            loss_case(args.device, 2560, 768, 50_257)  # grouped: one chunk, ~half active; tiles: 1,280 + partial
        attention_case(args.device, 4, 1024, 12, 64)
        if args.only is None:  # the stall profile takes the default and the wgmma kernels
            os.environ["RADD_FAST_ATTENTION_KEY_TILE"] = "128"  # the opt-in 128-key backward
            attention_case(args.device, 4, 1024, 12, 64)
            del os.environ["RADD_FAST_ATTENTION_KEY_TILE"]
        if wgmma_built(args.device):  # the sm_90a kernels, opt-in until measured
            os.environ["RADD_FAST_ATTENTION_FORWARD"] = os.environ["RADD_FAST_ATTENTION_BACKWARD"] = "wgmma"
            attention_case(args.device, 4, 1024, 12, 64)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print("profile cases done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
