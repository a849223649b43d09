"""Small models that follow the sampler protocol of radd_fast.model.RADD without attention, for the
sampler's tests and benchmarks (the protocol: ``hidden(tokens) -> (B, L, H)``, ``logits(h)``,
``output_weight`` (V+1, H), ``output_bias`` (V+1,), ``vocab_size``, ``mask_id`` = V).

`MixerLM` mixes positions with a learned L x L matrix instead of attention, so every position's
output depends on every token of its sequence (what the cache-aware sampler must respect), and it
counts its network evaluations. `peak_memory` measures a call's peak memory (CUDA allocator, or
on the CPU torch's allocator events plus the process's resident-set high-water mark).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F


class MixerLM(nn.Module):
    """embedding -> n_layers x (x + tanh(M x) over positions; x + MLP(LN(x))) -> LayerNorm -> Linear(H, V+1).

    Random initialisation (a non-zero output layer, scaled by `logit_scale`) so that its
    conditionals are far from uniform and depend on the context. `calls` counts hidden() calls and
    `rows` the sequences they evaluated; `inputs` keeps each call's tokens when `record` is set.
    """

    def __init__(self, vocab_size: int, hidden_size: int, max_length: int, n_layers: int = 1, seed: int = 0,
                 logit_scale: float = 1.0, dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        V, H, L = vocab_size, hidden_size, max_length

        def param(*shape, scale):
            return nn.Parameter((torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype))

        self.V, self.max_length = V, L
        self.embedding = param(V + 1, H, scale=1.0)
        self.mix = nn.ParameterList(param(L, L, scale=2.0 / math.sqrt(L)) for _ in range(n_layers))
        self.mlp_in = nn.ParameterList(param(4 * H, H, scale=1.0 / math.sqrt(H)) for _ in range(n_layers))
        self.mlp_out = nn.ParameterList(param(H, 4 * H, scale=1.0 / math.sqrt(4 * H)) for _ in range(n_layers))
        self.weight = param(V + 1, H, scale=logit_scale / math.sqrt(H) * 3.0)
        self.bias = param(V + 1, scale=0.5)
        self.to(device)
        self.calls, self.rows, self.record, self.inputs = 0, 0, False, []

    # ---- the sampler protocol
    @property
    def vocab_size(self) -> int:
        return self.V

    @property
    def mask_id(self) -> int:
        return self.V

    @property
    def output_weight(self) -> torch.Tensor:
        return self.weight

    @property
    def output_bias(self) -> torch.Tensor:
        return self.bias

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += tokens.shape[0]
        if self.record:
            self.inputs.append(tokens.clone())
        L = tokens.shape[1]
        x = self.embedding[tokens]
        for mix, w1, w2 in zip(self.mix, self.mlp_in, self.mlp_out):
            x = x + torch.tanh(torch.einsum("ij,bjh->bih", mix[:L, :L], x))
            x = x + F.gelu(F.layer_norm(x, x.shape[-1:]) @ w1.T) @ w2.T
        return F.layer_norm(x, x.shape[-1:])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight[: self.V], self.bias[: self.V])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(self.hidden(tokens)), dim=-1)

    def reset_counters(self) -> None:
        self.calls, self.rows, self.inputs = 0, 0, []


# ---------------------------------------------------------------------------------------- peak memory
def _rss_kb() -> tuple[int, int]:
    s = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\s+(\d+)", s).group(1)), int(re.search(r"VmRSS:\s+(\d+)", s).group(1))


def peak_memory(fn, clear, device) -> dict:
    """Peak memory of fn() starting from clear() (no gradients held: they count in the peak)."""
    clear()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"peak_MB": round((torch.cuda.max_memory_allocated() - base) / 1e6, 1)}
    out = {}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "trace.json")
        prof.export_chrome_trace(path)
        events = json.load(open(path))["traceEvents"]
    mem = [e["args"] for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    # The reporter's running total does not start at 0 (it keeps what earlier profiled calls left
    # alive); the counter before the first event is that event's total minus its own bytes.
    base = mem[0]["Total Allocated"] - mem[0]["Bytes"] if mem else 0
    out["peak_MB"] = round(max([base] + [m["Total Allocated"] for m in mem]) / 1e6 - base / 1e6, 1)
    clear()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        _, rss0 = _rss_kb()
        fn()
        hwm, _ = _rss_kb()
        out["rss_peak_MB"] = round((hwm - rss0) / 1e3, 1)
    except OSError:
        pass
    return out
