"""Peak memory of the fused loss and of the sampler grows linearly in the number of rows, never with
rows x V: measured on the CPU at two sizes (torch's allocator events, radd_fast.testing.peak_memory).
The naive computation is measured alongside, so the tests show they can tell the difference."""

import torch

import radd_fast
from radd_fast import functional as RF
from radd_fast.sampling import sample
from radd_fast.testing import MixerLM, peak_memory

V, D = 20_000, 64
MB = 1e6


def loss_inputs(N, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g).requires_grad_()
    W = (torch.randn(V + 1, D, generator=g) * 0.05).requires_grad_()
    b = torch.zeros(V + 1).requires_grad_()
    t = torch.randint(0, V, (N,), generator=g)
    w = (torch.rand(N, generator=g) < 0.5).float()
    return h, W, b, t, w


def naive_loss(h, W, b, t, w):
    logp = torch.log_softmax(h @ W[:V].T + b[:V], dim=-1)
    return -(logp.gather(1, t[:, None]).squeeze(1) * w).sum()


def loss_peak(N, fn):
    h, W, b, t, w = loss_inputs(N)

    def run():
        fn(h, W, b, t, w).backward()

    def clear():
        for p in (h, W, b):
            p.grad = None

    return peak_memory(run, clear, torch.device("cpu"))["peak_MB"] * MB


def test_loss_memory_is_linear_in_rows():
    n1, n2 = 1024, 4096
    row_x_v = (n2 - n1) * V * 4  # bytes one fp32 (rows x V) tensor grows by between the two sizes
    fused = [loss_peak(n, lambda *a: radd_fast.linear_dce_loss(*a, num_classes=V, impl="fused")) for n in (n1, n2)]
    naive = [loss_peak(n, naive_loss) for n in (n1, n2)]
    # the naive code grows by at least one rows x V tensor (the test's sensitivity) ...
    assert naive[1] - naive[0] > row_x_v
    # ... the fused op by far less than one: what grows is O(rows x D) plus gradients of W (fixed)
    assert fused[1] - fused[0] < 0.05 * row_x_v, (fused, row_x_v)
    assert fused[1] < 0.1 * n2 * V * 4
    assert fused[1] < naive[1] / 10


def test_sample_rows_memory_is_linear_in_rows():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(V + 1, D, generator=g) * 0.1

    def peak(N):
        h = torch.randn(N, D, generator=g)
        return peak_memory(lambda: RF.sample_rows(h, W, top_p=0.9, seed=3, impl="fused"), lambda: None,
                           torch.device("cpu"))["peak_MB"] * MB

    n1, n2 = 512, 4096
    p1, p2 = peak(n1), peak(n2)
    assert p2 - p1 < 0.05 * (n2 - n1) * V * 4, (p1, p2)
    assert p2 < 0.1 * n2 * V * 4


def test_sampler_loop_memory_is_linear_in_rows():
    # The whole cached loop on an attention-free model: B x L rows, V = 20,000.
    model = MixerLM(V, hidden_size=32, max_length=64, seed=2).eval()

    def peak(B):
        return peak_memory(lambda: sample(model, B, 64, 16, seed=5), lambda: None, torch.device("cpu"))["peak_MB"] * MB

    b1, b2 = 4, 32
    rows = (b2 - b1) * 64
    p1, p2 = peak(b1), peak(b2)
    assert p2 - p1 < 0.1 * rows * V * 4, (p1, p2)
