"""Benchmark harness shared by every file in bench/.

Use the `bench` fixture instead of pytest-benchmark's `benchmark` directly:

    def test_x(bench, device, impl):
        bench(fn, group="rotary fwd", impl=impl, device=device, dtype=dtype, shape=shape,
              bytes=..., flops=...)

It synchronises CUDA inside the timed call, records impl/device/dtype/shape and the achieved rate
(GB/s from `bytes`, TFLOP/s from `flops`, "<name>/s" for each entry of `per_s`) in extra_info, and
the session ends with a table of each group's speed-up over its baseline entry -- the impl named
"reference" unless the group's calls pass another (`baseline="sdpa"`) -- and its peak memory (the
"peak_MB" extra, when given), so one run shows the comparison side by side. `rounds=N` times
exactly N calls (for calls of seconds to minutes).
CUDA cases are skipped (reported, with the reason) when no GPU is visible; select them alone with
`-m cuda`.
"""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                           pytest.mark.skipif(not CUDA, reason="no CUDA device visible")]),
]
IMPLS = ["reference", "fused"]

_RESULTS: list[dict] = []


def pytest_configure(config):
    # Group the pytest-benchmark table by our groups (unless the user chose another grouping).
    if getattr(config.option, "benchmark_group_by", None) == "group":
        pass
    elif hasattr(config.option, "benchmark_group_by"):
        config.option.benchmark_group_by = "group"


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


class Bench:
    def __init__(self, benchmark):
        self.benchmark = benchmark

    def __call__(self, fn, *, group: str, impl: str, device: torch.device, dtype=None, shape=None,
                 bytes: float | None = None, flops: float | None = None, warmup: int = 1,
                 baseline: str = "reference", per_s: dict[str, float] | None = None, rounds: int | None = None,
                 **extra):
        sync = _sync(device)
        for _ in range(warmup):  # first-call costs (allocator, lazy init, compilation) stay out
            fn()
        sync()

        def timed():
            out = fn()
            sync()
            return out

        b = self.benchmark
        b.group = group
        b.extra_info.update(impl=impl, device=str(device), dtype=str(dtype).replace("torch.", ""),
                            shape=str(tuple(shape)) if shape is not None else "", baseline=baseline, **extra)
        if device.type == "cuda":
            b.extra_info["gpu"] = torch.cuda.get_device_name(device)
        result = b.pedantic(timed, rounds=rounds, iterations=1) if rounds else b(timed)
        stats = getattr(b, "stats", None)
        mean = stats.stats.mean if stats is not None else None
        if mean:
            if bytes:
                b.extra_info["GB/s"] = round(bytes / mean / 1e9, 2)
            if flops:
                b.extra_info["TFLOP/s"] = round(flops / mean / 1e12, 3)
            rate = None
            for name, count in (per_s or {}).items():
                b.extra_info[f"{name}/s"] = round(count / mean, 1)
                rate = rate or f"{count / mean:,.0f} {name}/s"
            _RESULTS.append(dict(group=group, impl=impl, mean=mean, baseline=baseline, rate=rate,
                                 **{k: b.extra_info.get(k) for k in ("GB/s", "TFLOP/s", "peak_MB")}))
        return result


@pytest.fixture
def bench(benchmark):
    return Bench(benchmark)


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("radd_fast: speed-up over each group's baseline (the reference unless named)")
    groups: dict[str, list[dict]] = {}
    for r in _RESULTS:
        groups.setdefault(r["group"], []).append(r)
    w = max(len(g) for g in groups)
    tr.write_line(f"{'group':<{w}}  {'impl':<12} {'mean':>11} {'rate':>16} {'speed-up':>9} {'peak MB':>9} {'mem/base':>8}")
    for g, rows in groups.items():
        base = rows[0]["baseline"]
        ref = next((r for r in rows if r["impl"] == base), None)
        for r in rows:
            rate = f"{r['TFLOP/s']} TFLOP/s" if r.get("TFLOP/s") else f"{r['GB/s']} GB/s" if r.get("GB/s") else (
                r.get("rate") or "")
            sp = f"{ref['mean'] / r['mean']:.2f}x" if ref else "-"
            peak = f"{r['peak_MB']:.0f}" if r.get("peak_MB") is not None else ""
            mem = f"{r['peak_MB'] / ref['peak_MB']:.3f}" if peak and ref and ref.get("peak_MB") else ""
            tr.write_line(f"{g:<{w}}  {r['impl']:<12} {r['mean'] * 1e3:>9.3f}ms {rate:>16} {sp:>9} {peak:>9} {mem:>8}")
