"""radd_fast: fast training, sampling and evaluation of masked (absorbing) discrete diffusion
language models, starting with RADD (Ou et al., ICLR 2025).

Public ops live in radd_fast.functional (re-exported here); radd_fast.reference holds their
pure-PyTorch oracles. The compiled kernels are optional at import time (radd_fast._extension).
"""

__version__ = "0.1.0"

from . import _extension, ops, reference  # noqa: E402  (ops registers fake kernels and autograd)
from .functional import linear_dce_loss, masked_attention, rotary, rotary_tables  # noqa: E402

__all__ = ["rotary", "rotary_tables", "masked_attention", "linear_dce_loss", "reference", "ops", "__version__"]
