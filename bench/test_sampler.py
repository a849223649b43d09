"""End-to-end sampling, side by side on one model and one seed: the cache-aware sampler (impl
"fused" = sampling method "cached") against the reference step-by-step sampler (impl "reference" =
reference.sample_cached). Rate: generated tokens per second. extra_info adds the network calls, the
sequence evaluations (NFE summed over the batch; equal for the two samplers in distribution) and
the share of the time spent outside the network, measured by replaying the run's network calls
alone.

CPU (issue 6): a small random model -- 2 layers, D = 128, V + 1 = 50,258 output rows -- with B = 4,
L = 256, n = 1,024, in two variants: the RADD network (radd_fast.model.RADD; needs the attention
op) and the attention-free radd_fast.testing.MixerLM (same head, so the same sampling work).
CUDA: the `small` preset, B = 16, L = 1,024, n = 1,024 and 4,096, both samplers under bf16
autocast. Each configuration is timed once (a run takes seconds to minutes) after a small warm-up
run. With --benchmark-disable (the smoke run of `make test`) the shapes shrink (L = 32, n = 32).
"""

from __future__ import annotations

import contextlib
import functools
import time

import pytest
import torch

from radd_fast.model import RADD, preset
from radd_fast.sampling import _hidden_rows, sample
from radd_fast.testing import MixerLM

V = 50257  # output layer of V + 1 = 50,258 rows, as GPT-2's vocabulary plus the mask


class Counted:
    """The sampler protocol of a model, counting its network calls, their batch sizes and the rows
    asked for (the sampler asks for the revealed rows only: RADD's last block then works on those)."""

    def __init__(self, model):
        self.model, self.sizes, self.rows = model, [], []
        self.hidden_rows = _hidden_rows(model)

    def hidden(self, x, rows=None):
        self.sizes.append(x.shape[0])
        self.rows.append(None if rows is None else rows.numel())
        return self.model.hidden(x) if rows is None else self.hidden_rows(x, rows)

    def __getattr__(self, name):
        return getattr(self.model, name)


@functools.lru_cache(maxsize=2)
def build(name: str, device: torch.device, length: int):
    """The model of a case, built once per process: the CUDA cases share `small` (162 M parameters,
    seconds to build, within gpu_check's 45 s sampler stage). Sampling leaves it unchanged."""
    torch.manual_seed(0)
    if name == "mixer":
        return MixerLM(V, 128, length, n_layers=2, seed=0, device=device).eval()
    cfg = preset("small", vocab_size=V) if name == "small" else preset("small", vocab_size=V, hidden_size=128,
                                                                         n_heads=4, n_blocks=2, max_length=length)
    model = RADD(cfg).to(device).eval()
    with torch.no_grad():  # the output layer is zero at initialisation: give it a spread of logits
        model.output_layer.linear.weight.normal_(0.0, 2.0 / cfg.hidden_size**0.5)
    return model


def replay_network(model: Counted, sizes: list[int], rows: list, length: int, device: torch.device,
                   autocast) -> float:
    """Seconds that the network calls of a run take alone: the calls (same batch sizes and row
    counts, in order) replayed, every k-th one for runs of more than 256 calls, scaled by k. A run's
    batch sizes only shrink, one sequence at a time, so the sampled calls stand for their
    neighbours. (The CUDA n = 4,096 run makes ~950 calls: a third of them are replayed, to fit
    gpu_check's time.)"""
    k = max(1, len(sizes) // 256)
    picked = list(zip(sizes, rows))[::k]
    x = torch.randint(0, V, (max(sizes, default=1), length), device=device)
    index = torch.arange(max(sizes, default=1) * length, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad(), autocast():
        for s, r in picked:
            model.model.hidden(x[:s]) if r is None else model.hidden_rows(x[:s], index[:r])
    sync()
    return (time.perf_counter() - t0) * len(sizes) / max(len(picked), 1)


def run_case(bench, device, impl, model_name, B, L, n):
    smoke = bench.benchmark.disabled
    if smoke:
        L, n = 32, 32
    model = Counted(build(model_name, device, L))
    method = "cached" if impl == "fused" else "reference"
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda"
                else contextlib.nullcontext)
    with autocast():
        sample(model, 2, min(L, 16), 4, seed=1, method=method)  # warm-up: allocator, tables, kernels
    nfe = []

    def fn():
        model.sizes.clear()
        model.rows.clear()
        with autocast():
            x, e = sample(model, B, L, n, seed=0, method=method)
        nfe[:] = [e]
        return x

    bench(fn, group=f"sample {model_name} B={B} L={L} n={n} {device.type}", impl=impl, device=device,
          dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, shape=(B, L), per_s={"tokens": B * L},
          warmup=0, rounds=1, method=method, steps=n, model=model_name, threads=torch.get_num_threads())
    info = bench.benchmark.extra_info
    sizes = list(model.sizes)
    info.update(network_calls=len(sizes), sequence_evaluations=sum(sizes),
                nfe_mean=round(nfe[0].double().mean().item(), 1))
    stats = getattr(bench.benchmark, "stats", None)
    # The time-outside-the-network target is the new sampler's; replaying the reference's calls
    # would double its (long) run for a figure nobody asked for.
    if impl == "fused" and stats is not None and stats.stats.mean:
        t_net = replay_network(model, sizes, list(model.rows), L, device, autocast)
        info["network_s"] = round(t_net, 3)
        info["outside_network_pct"] = round(100 * max(0.0, 1 - t_net / stats.stats.mean), 1)
    assert sum(sizes) == nfe[0].sum().item()  # one network evaluation per sequence per event


@pytest.mark.parametrize("model_name", ["mixer", "radd"])
def test_sampler_cpu(bench, impl, model_name):
    run_case(bench, torch.device("cpu"), impl, model_name, B=4, L=256, n=1024)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
@pytest.mark.parametrize("steps", [4096, 1024])
def test_sampler_cuda_small(bench, impl, steps):
    run_case(bench, torch.device("cuda"), impl, "small", B=16, L=1024, n=steps)
