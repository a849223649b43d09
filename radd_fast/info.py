"""`python -m radd_fast.info` / `radd-fast info`: what is installed, how it was built, which
kernels exist for which device, and which GPU (if any) is visible."""

from __future__ import annotations

import platform
import sys

import torch

from . import __version__, _extension


def report() -> str:
    lines = [
        f"radd_fast {__version__}",
        f"python    {sys.version.split()[0]} ({platform.machine()})",
        f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    if _extension.AVAILABLE:
        lines.append("extension radd_fast._C loaded")
    else:
        lines.append(f"extension unavailable: {_extension.LOAD_ERROR}")
    info = _extension.BUILD_INFO
    if info:
        mode = "CPU + CUDA" if info.get("with_cuda") else "CPU only"
        lines.append(
            f"build     {mode}; torch {info.get('torch_version')}, CPU ISA {info.get('cpu_isa')}, "
            f"commit {info.get('git_commit')}, {info.get('built_at')}"
        )
        if info.get("with_cuda"):
            lines.append(f"          nvcc {info.get('nvcc_version')}, archs {info.get('cuda_arch_list')}")
    else:
        lines.append("build     no build info (extension never built here)")
    lines.append(f"threads   {torch.get_num_threads()} intra-op")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"gpu {i}     {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
                         f"{p.multi_processor_count} SMs")
        from .functional import sdpa_backend

        name = {"cudnn": "cuDNN first", "torch": "torch's order"}
        try:
            dev = torch.cuda.current_device()
            order = (f"training {name[sdpa_backend('cuda', dev, True)]}, "
                     f"inference {name[sdpa_backend('cuda', dev, False)]}")
        except ValueError as e:
            order = f"invalid setting: {e}"
        lines.append(f"sdpa      unmasked attention under impl='auto': SDPA, {order} (RADD_FAST_SDPA_BACKEND)")
    else:
        lines.append("gpu       none visible")
    names = _extension.op_names()
    lines.append("ops       (kernel per device)")
    if not names:
        lines.append("          none registered: every function uses its reference implementation")
    w = max((len(n) for n in names), default=0)
    for n in names:
        cpu = "yes" if _extension.has_kernel(n, "cpu") else "no"
        cuda = "yes" if _extension.has_kernel(n, "cuda") else "no"
        lines.append(f"          radd_fast::{n:<{w}}  CPU {cpu:<3}  CUDA {cuda}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
