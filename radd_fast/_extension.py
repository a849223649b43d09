"""Loading of the compiled extension ``radd_fast._C``, and the answers to "why is it not there?".

Importing radd_fast never fails because of the extension: a missing, stale or ABI-incompatible
build leaves ``AVAILABLE = False``, emits one warning, and every function falls back to the
pure-PyTorch reference path unless ``impl="fused"`` is asked for explicitly.
Set RADD_FAST_DISABLE_EXTENSION=1 to skip loading it on purpose (no warning then).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings

import torch

BUILD_HINT = (
    "build it against the installed torch with `pip install --no-build-isolation -e .` "
    "from the radd_fast source tree (see README.md)"
)

AVAILABLE: bool = False
LOAD_ERROR: str | None = None
BUILD_INFO: dict | None = None


def _base_version(v: str) -> str:
    return v.split("+", 1)[0]


def _read_build_info() -> dict | None:
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load() -> None:
    global AVAILABLE, LOAD_ERROR, BUILD_INFO
    BUILD_INFO = _read_build_info()
    if os.environ.get("RADD_FAST_DISABLE_EXTENSION", "0") == "1":
        LOAD_ERROR = "disabled by RADD_FAST_DISABLE_EXTENSION=1"
        return
    if BUILD_INFO is not None and _base_version(BUILD_INFO.get("torch_version", "")) != _base_version(
        torch.__version__
    ):
        # Loading a library built for another torch can crash the process: refuse before dlopen.
        LOAD_ERROR = (
            f"radd_fast._C was built for torch {BUILD_INFO.get('torch_version')}, "
            f"but torch {torch.__version__} is installed (C++ ABI mismatch)"
        )
    else:
        # Look only next to this file: the library must be the one _build_info.json describes.
        spec = importlib.machinery.PathFinder.find_spec("radd_fast._C", [os.path.dirname(__file__)])
        if spec is None:
            LOAD_ERROR = "radd_fast._C is not built"
        else:
            try:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules["radd_fast._C"] = module
                AVAILABLE = True
                return
            except (ImportError, OSError) as e:
                LOAD_ERROR = f"radd_fast._C failed to load ({e})"
    warnings.warn(
        f"radd_fast: compiled kernels unavailable: {LOAD_ERROR}. Using the pure-PyTorch reference "
        f"implementations; to get the fused kernels, {BUILD_HINT}.",
        RuntimeWarning,
        stacklevel=3,
    )


def op_names() -> list[str]:
    """Names of the radd_fast ops registered with the dispatcher (empty without the extension)."""
    return sorted(
        n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("radd_fast::")
    )


def has_kernel(op: str, device_type: str) -> bool:
    """True when op has a compiled kernel for device_type ("cpu", "cuda")."""
    if not AVAILABLE:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"radd_fast::{op}", device_type.upper())


def _unavailable_reason(op: str, device_type: str) -> str | None:
    if not AVAILABLE:
        return (f"radd_fast op '{op}' needs the compiled extension, which is unavailable: {LOAD_ERROR}. "
                f"To fix it, {BUILD_HINT}.")
    if device_type == "meta" or has_kernel(op, device_type):
        return None
    if device_type == "cuda":
        built = (BUILD_INFO or {}).get("with_cuda")
        return (f"radd_fast op '{op}' has no CUDA kernel in this build (built with CUDA: {built}). "
                "Rebuild with a CUDA build of torch and nvcc on PATH (or FORCE_CUDA=1, CUDA_HOME set).")
    return f"radd_fast op '{op}' has no kernel for device type '{device_type}'"


# Answers computed once at import: a dict lookup is all that torch.compile has to trace.
_REASONS: dict[tuple[str, str], str | None] = {}


def kernel_unavailable_reason(op: str, device_type: str) -> str | None:
    """None when `op` can run fused on `device_type`, else a sentence saying why not and what to do."""
    key = (op, device_type)
    if key in _REASONS:
        return _REASONS[key]
    return _unavailable_reason(op, device_type)


_load()
for _op in op_names():
    for _dev in ("cpu", "cuda", "meta"):
        _REASONS[(_op, _dev)] = _unavailable_reason(_op, _dev)
