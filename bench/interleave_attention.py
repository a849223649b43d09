"""Interleaved min-of-N timings of the CPU cases of bench/test_attention.py: fused vs SDPA.

pytest-benchmark times one implementation after the other, so on a shared machine a burst of other
work can land on one side of a comparison. Here the two alternate, run after run, and the best time
of each is kept -- the closest estimate of the uncontended time.

    python bench/interleave_attention.py [REPS]      # default 7; prints one table
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch.nn.functional as F
import radd_fast  # noqa: E402
from radd_fast import reference as R  # noqa: E402
from test_attention import CPU_SHAPE, FLOP_FACTOR, masks  # noqa: E402

def make(kind, impl, pass_):
    B, L, H, D = CPU_SHAPE
    pad, order = masks(kind, B, L, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B, L, H, D, generator=gen) for _ in range(3))
    g = torch.randn(B, L, H, D, generator=gen)
    if impl == "sdpa":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v)); g = g.transpose(1, 2).contiguous()
        dense = R.attention_mask(B, L, pad, order)[:, None] if (pad is not None or order is not None) else None
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    else:
        fwd = lambda: radd_fast.masked_attention(q, k, v, pad, order, impl="fused")
    for t in (q, k, v): t.requires_grad_(pass_ != "fwd")
    if pass_ == "fwd":
        def fn():
            with torch.no_grad(): fwd()
    elif pass_ == "bwd":
        out = fwd()
        fn = lambda: torch.autograd.grad(out, (q, k, v), g, retain_graph=True)
    else:
        fn = lambda: torch.autograd.grad(fwd(), (q, k, v), g)
    return fn

B, L, H, D = CPU_SHAPE
reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, (B, L, heads, D) = {CPU_SHAPE}, best of {reps}")
cases = [("bidirectional", "fwd"), ("bidirectional", "bwd"), ("bidirectional", "fwd+bwd"), ("padded", "fwd"),
         ("padded", "fwd+bwd"), ("causal", "fwd"), ("causal", "fwd+bwd"), ("any-order", "fwd"), ("any-order", "fwd+bwd")]
print(f"{'case':<26} {'sdpa ms':>9} {'fused ms':>9} {'sdpa GF/s':>10} {'fused GF/s':>10} {'speed-up':>8}")
for kind, pass_ in cases:
    fns = {impl: make(kind, impl, pass_) for impl in ("sdpa", "fused")}
    for f in fns.values(): f()  # warm-up
    best = {impl: 1e9 for impl in fns}
    for _ in range(reps):
        for impl, f in fns.items():
            t = time.perf_counter(); f(); best[impl] = min(best[impl], time.perf_counter() - t)
    fl = 4 * B * L * L * D * H * FLOP_FACTOR[pass_]
    print(f"{kind + ' ' + pass_:<26} {best['sdpa']*1e3:>9.1f} {best['fused']*1e3:>9.1f} {fl/best['sdpa']/1e9:>10.1f} "
          f"{fl/best['fused']/1e9:>10.1f} {best['sdpa']/best['fused']:>7.2f}x", flush=True)
