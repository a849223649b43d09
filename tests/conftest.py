import pytest
import torch

# Every fused-path test runs on the CPU here and on CUDA where a GPU is visible.
CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                           pytest.mark.skipif(not CUDA, reason="no CUDA device visible")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
