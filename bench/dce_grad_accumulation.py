"""Why the fused loss keeps an fp32 weight-gradient accumulator: the error of accumulating the
weight gradient in bf16 over row chunks, against torch's own bf16 error, on a CPU-sized proxy of
the λ-DCE output layer (N 32,768 active rows, V 4,096, D 128; float64 truth).

    python bench/dce_grad_accumulation.py        # ~1 minute on 2 cores; figures in bench/RESULTS.md

The loss's memory target (peak within 10 % of hidden + weight + grads) leaves ~36 MB of workspace
at N = 65,536, V = 50,257, D = 768 in bf16: not enough for a 154 MB fp32 accumulator, and chunks of
at most a few hundred rows, i.e. ~100 accumulations if the gradient were accumulated in bf16.
"""
import torch
import torch.nn.functional as F


def main() -> None:
    torch.manual_seed(0)
    N, V, D = 32768, 4096, 128
    h = torch.randn(N, D, dtype=torch.float64).bfloat16().double()  # bf16-representable inputs
    W = (torch.randn(V, D, dtype=torch.float64) * 0.05).bfloat16().double()
    t = torch.randint(0, V, (N,))
    w = 1.0 / (torch.rand(N, dtype=torch.float64) + 1e-3)  # λ-DCE-like row weights
    dl = torch.softmax(h @ W.T, -1)
    dl[torch.arange(N), t] -= 1
    dl *= w[:, None]
    truth = dl.T @ h

    def rel(a: torch.Tensor) -> float:
        return ((a.double() - truth).norm() / truth.norm()).item()

    hb = h.bfloat16().requires_grad_()
    Wb = W.bfloat16().requires_grad_()
    logp = F.linear(hb, Wb).log_softmax(-1)
    (-(logp.gather(1, t[:, None]).squeeze(1).float() * w.float()).sum()).backward()
    torch_err = rel(Wb.grad)
    print(f"torch's bf16 path (Linear, log_softmax, gather; autograd): weight-gradient error {torch_err:.2e}")
    dlb = dl.bfloat16().float()  # the logit gradients as a bf16 GEMM reads them
    for chunks in (1, 8, 26, 64, 128):
        acc = torch.zeros(V, D, dtype=torch.bfloat16)
        for rows in torch.arange(N).chunk(chunks):
            acc = (acc.float() + dlb[rows].T @ h[rows].float()).bfloat16()  # fp32 GEMM, bf16 running sum
        print(f"bf16 accumulation over {chunks:3d} chunks: error {rel(acc):.2e} = {rel(acc) / torch_err:.2f}x torch's")


if __name__ == "__main__":
    main()
