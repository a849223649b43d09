"""The output layer + masked weighted cross-entropy of a GPT-2-scale RADD model, forward + backward:
fused kernel vs the naive PyTorch computation vs torch.compile of that naive code.

Shape: D = 768, C = 50,258 output rows (50,257 classes + the mask column), N = 8 x 1,024 rows
(CPU fp32, CUDA bf16) and N = 64 x 1,024 (CUDA bf16), half of the rows masked (weight != 0).

Rates are counted on the masked rows only (the work the loss needs): fwd + bwd = 3 matmuls of
2 * M * D * V flops (logits, grad hidden, grad weight), M = masked rows, V = 50,257; "rows/s" = M / time.

pytest-benchmark times the implementations one after another; on a shared machine whose load changes
meanwhile (the 2-core CI box), the ratio of two such runs can be off by 2x either way. The CPU kernel
spends ~95% of its time in MKL's GEMMs (torch.profiler), so its fair comparison with the naive code
is at equal threads, interleaved, e.g. alternate fn() calls of both with torch.set_num_threads(1).

Peak memory (extra_info["peak_MB"]): bytes allocated during one fwd + bwd beyond what existed before
(inputs and parameters excluded, gradients included).
  * CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the call.
  * CPU: torch's CPU allocator reports every allocation and free to the profiler
    (profile_memory=True); the peak of its running "Total Allocated" over the call is the allocator's
    high-water mark. Memory that bypasses torch's allocator (MKL's own GEMM buffers) is not in it, so
    extra_info["rss_peak_MB"] also records the process's resident-set high-water mark over the call
    (VmHWM after resetting it through /proc/self/clear_refs) minus the resident set before.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import radd_fast
from radd_fast.testing import peak_memory

D, V = 768, 50_257
CUDA = torch.cuda.is_available()
_cuda = [pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device visible")]
CASES = [
    pytest.param("cpu", 8 * 1024, torch.float32, id="cpu-fp32-N8192"),
    pytest.param("cuda", 8 * 1024, torch.bfloat16, id="cuda-bf16-N8192", marks=_cuda),
    pytest.param("cuda", 64 * 1024, torch.bfloat16, id="cuda-bf16-N65536", marks=_cuda),
]
IMPLS = ["reference", "compiled", "fused"]
# On CUDA, "fused" runs the engine the kernel picks (RADD_FAST_DCE_ENGINE=auto: torch's grouped GEMM
# for bf16 on compute capability 9.x / 10.x); "fused-tiles" forces our own tiled GEMM, and
# "fused-split4" the grouped engine with its hidden-gradient product in four class slices on side
# streams (RADD_FAST_DCE_GRAD_H_SPLIT=4, opt-in until measured), side by side.
CUDA_EXTRA = ["fused-tiles", "fused-split4"]
PARAMS = [pytest.param(*c.values, impl, id=f"{c.id}-{impl}", marks=c.marks)
          for c in CASES for impl in IMPLS + (CUDA_EXTRA if c.values[0] == "cuda" else [])]


def naive_loss(h, W, b, t, w):
    """What a straightforward implementation does: Linear over all rows (mask column included),
    log_softmax over the real classes, gather the targets, weighted sum."""
    logp = F.linear(h, W, b)[:, :V].log_softmax(-1)
    return -(logp.gather(1, t[:, None]).squeeze(1).float() * w).sum()


_compiled = None


def compiled_naive():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(naive_loss)
    return _compiled


def make(N, device, dtype, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(N, D, device=device, dtype=dtype, generator=g).requires_grad_()
    W = (torch.randn(V + 1, D, device=device, dtype=dtype, generator=g) * 0.02).requires_grad_()
    b = (torch.randn(V + 1, device=device, dtype=dtype, generator=g) * 0.02).requires_grad_()
    t = torch.randint(0, V, (N,), device=device, generator=g)
    u = torch.rand(N, device=device, generator=g)
    w = torch.where(torch.rand(N, device=device, generator=g) < 0.5, 1.0 / (u + 1e-3), torch.zeros_like(u))
    return h, W, b, t, w


@pytest.mark.parametrize("device, N, dtype, impl", PARAMS)
def test_linear_dce_loss_forward_backward(bench, monkeypatch, device, N, dtype, impl):
    device = torch.device(device)
    h, W, b, t, w = make(N, device, dtype)
    M = int((w != 0).sum())

    if impl.startswith("fused"):
        monkeypatch.setenv("RADD_FAST_DCE_ENGINE", "tiles" if impl == "fused-tiles" else "auto")
        monkeypatch.setenv("RADD_FAST_DCE_GRAD_H_SPLIT", "4" if impl == "fused-split4" else "1")
        loss_fn = lambda: radd_fast.linear_dce_loss(h, W, b, t, w, V, impl="fused")
    elif impl == "reference":
        loss_fn = lambda: naive_loss(h, W, b, t, w)
    else:
        c = compiled_naive()
        loss_fn = lambda: c(h, W, b, t, w)

    def step():
        loss_fn().backward()

    def clear():
        h.grad = W.grad = b.grad = None

    def fn():
        clear()
        step()

    fn()  # first call: compilation, lazy initialisation
    mem = peak_memory(step, clear, device)
    bench(fn, group=f"linear_dce fwd+bwd {device.type} {str(dtype).replace('torch.', '')} N={N}", impl=impl,
          device=device, dtype=dtype, shape=(N, D, V + 1), flops=3 * 2.0 * M * D * V, per_s={"rows": M},
          warmup=0, masked_rows=M, **mem)
