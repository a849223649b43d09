import os
from pathlib import Path

import pytest
import torch

# The real benchmark text and GPT-2's tokenizer files live in ../shared/data beside the checkout
# (never copied into the repository); RADD_FAST_DATA points elsewhere. Tests that need them fail,
# with this path in the message, when they are missing: they are never skipped.
SHARED = Path(os.environ.get("RADD_FAST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")

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


# Cases run by the randomised and table-driven tests, reported at the end of the session.
CASE_COUNTS: dict[str, int] = {}


def count_case(kind: str) -> None:
    CASE_COUNTS[kind] = CASE_COUNTS.get(kind, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if CASE_COUNTS:
        terminalreporter.section("radd_fast: cases run")
        for kind, n in sorted(CASE_COUNTS.items()):
            terminalreporter.write_line(f"{kind:<28} {n:>6}")
