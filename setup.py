"""Build of record for radd_fast and its compiled extension ``radd_fast._C``.

The extension is built against the torch that is already installed, so install torch first and
build without isolation:

    pip install torch && pip install --no-build-isolation -e .

What gets built:
  * the C++ CPU kernels, always (-O3, OpenMP, AVX2/AVX-512 when the build machine has them);
  * the CUDA kernels when torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1.
    RADD_FAST_CPU_ONLY=1 skips them.

Environment knobs: TORCH_CUDA_ARCH_LIST (default "8.0;9.0a" when no GPU is visible), CUDA_HOME
(default: the toolkit nvcc belongs to, else /usr/local/cuda), MAX_JOBS (parallel compile jobs),
RADD_FAST_CPU_ISA (native | avx512 | avx2 | generic; default native = the best of these that the
build machine supports).
"""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = "radd_fast"


def log(msg: str) -> None:
    print(f"[radd_fast build] {msg}", flush=True)


def resolve_cuda_home() -> str | None:
    """The CUDA toolkit directory, or None when there is no nvcc.

    torch guesses CUDA_HOME as dirname(dirname(which nvcc)); when nvcc is a wrapper script (as in
    /usr/local/bin/nvcc -> /usr/local/cuda-13.0/bin/nvcc) that guess is /usr/local and linking fails
    on -lcudart. So: CUDA_HOME if set, else the toolkit that holds nvcc's headers, else /usr/local/cuda.
    """
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env:
        return env
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append(os.path.dirname(os.path.dirname(nvcc)))
    candidates.append("/usr/local/cuda")
    for c in candidates:
        if os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.exists(
            os.path.join(c, "include", "cuda_runtime.h")
        ):
            return c
    return None


def cpu_isa_flags() -> tuple[str, list[str]]:
    """Compiler flags for the CPU kernels' vector ISA.

    ATen's Vectorized<T> picks its width from CPU_CAPABILITY_* macros; without them it falls back to
    a generic scalar-array implementation. A source build targets the machine it is built on (like
    -march=native); RADD_FAST_CPU_ISA=generic gives a portable binary.
    """
    want = os.environ.get("RADD_FAST_CPU_ISA", "native").lower()
    if want not in ("native", "avx512", "avx2", "generic"):
        raise SystemExit(f"RADD_FAST_CPU_ISA must be native, avx512, avx2 or generic, got {want!r}")
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if want == "native":
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            want = "avx512"
        elif {"avx2", "fma"} <= flags:
            want = "avx2"
        else:
            want = "generic"
    if want == "avx512":
        return want, ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                      "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]
    if want == "avx2":
        return want, ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return want, ["-DCPU_CAPABILITY=DEFAULT"]


def nvcc_version(cuda_home: str) -> str:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
        m = re.search(r"release (\S+),", out)
        return m.group(1) if m else out.strip().splitlines()[-1]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def nvidia_wheel_includes() -> list[str]:
    """Include folders of the nvidia-* wheels that CUDA builds of torch depend on.

    ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE/cuSOLVER headers, which a bare toolkit may lack.
    """
    try:
        import nvidia  # type: ignore
    except ImportError:
        return []
    dirs = []
    for p in list(getattr(nvidia, "__path__", [])):
        dirs += sorted(glob.glob(os.path.join(p, "*", "include")))
    return dirs


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


def make_extension():
    try:
        import torch
    except ImportError:
        raise SystemExit(
            "radd_fast compiles against the torch you already have, but torch is not importable here.\n"
            "Install torch first, then build without isolation:\n"
            "    pip install torch && pip install --no-build-isolation -e .\n"
            "(plain `pip install -e .` builds in an isolated environment that has no torch)"
        )

    cuda_home = resolve_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME once, at import time.
        os.environ["CUDA_HOME"] = cuda_home
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force = os.environ.get("FORCE_CUDA", "0") == "1"
    cpu_only = os.environ.get("RADD_FAST_CPU_ONLY", "0") == "1"
    if force and cpu_only:
        raise SystemExit("FORCE_CUDA=1 and RADD_FAST_CPU_ONLY=1 contradict each other")
    if force and torch.version.cuda is None:
        raise SystemExit(f"FORCE_CUDA=1, but torch {torch.__version__} is a CPU-only build: "
                         "install a CUDA build of torch to compile the CUDA kernels")
    if force and cuda_home is None:
        raise SystemExit("FORCE_CUDA=1, but no CUDA toolkit was found: set CUDA_HOME")
    with_cuda = not cpu_only and (force or (torch.version.cuda is not None and cuda_home is not None))

    isa, isa_flags = cpu_isa_flags()
    cxx_flags = ["-O3", "-fopenmp", "-fvisibility=hidden"] + isa_flags
    extra_link = ["-fopenmp"]
    define_macros = []
    include_dirs = [os.path.join(HERE, "csrc")]
    srcs = sources("csrc/**/*.cpp")
    # C++ unit tests are built by CMake only; cuda_*.cpp (each op's checked CUDA entry points and
    # other host code that launches CUDA kernels, compiled by the host compiler) only in a CUDA build.
    srcs = [s for s in srcs if not s.startswith(os.path.join("csrc", "tests"))
            and not os.path.basename(s).startswith("cuda_")]

    arch_list = None
    if with_cuda:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
        if not arch_list:
            # With no GPU visible torch's own arch detection crashes; pick the targets we tune for.
            arch_list = None if torch.cuda.is_available() else "8.0;9.0a"
            if arch_list:
                os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        srcs += sources("csrc/**/cuda_*.cpp") + [  # csrc/tests: standalone programs, not the extension
            s for s in sources("csrc/**/*.cu") if not s.startswith(os.path.join("csrc", "tests"))]
        include_dirs += nvidia_wheel_includes()
        define_macros.append(("RADD_FAST_WITH_CUDA", "1"))
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr",
                      "--expt-extended-lambda", "-Xptxas=-v" if os.environ.get("RADD_FAST_PTXAS_VERBOSE") else "",
                      "-Xcompiler=-fvisibility=hidden"]
        nvcc_flags = [f for f in nvcc_flags if f]
        ext = CUDAExtension(f"{PKG}._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
                            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                            extra_link_args=extra_link)
    else:
        ext = CppExtension(f"{PKG}._C", srcs, include_dirs=include_dirs, define_macros=define_macros,
                           extra_compile_args={"cxx": cxx_flags}, extra_link_args=extra_link)

    info = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_home": cuda_home if with_cuda else None,
        "nvcc_version": nvcc_version(cuda_home) if with_cuda else None,
        "cuda_arch_list": (arch_list or "auto (visible GPU)") if with_cuda else None,
        "cpu_isa": isa,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "python": sys.version.split()[0],
        "git_commit": git_commit(),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    log(f"torch {info['torch_version']} (CUDA {info['torch_cuda_version']}), python {info['python']}")
    if with_cuda:
        log(f"building CPU + CUDA kernels: nvcc {info['nvcc_version']} at {cuda_home}, "
            f"archs {info['cuda_arch_list']}, CPU ISA {isa}, MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}")
    else:
        why = ("RADD_FAST_CPU_ONLY=1" if cpu_only else
               "torch is a CPU-only build" if torch.version.cuda is None else "nvcc not found")
        log(f"building CPU kernels only ({why}); CPU ISA {isa}, MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}")
    # Installed next to the extension; radd_fast.info and the import-time ABI check read it.
    with open(os.path.join(HERE, PKG, "_build_info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return ext, BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None or _has_ninja_module())


def _has_ninja_module() -> bool:
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


# `setup.py --version`, egg_info and sdist need no compiler; everything else builds the extension.
_metadata_only = any(a in sys.argv for a in ("egg_info", "sdist", "--version", "--name", "dist_info"))
if _metadata_only:
    ext_modules, cmdclass = [], {}
else:
    _ext, _build = make_extension()
    ext_modules, cmdclass = [_ext], {"build_ext": _build}

setup(
    packages=find_packages(include=[PKG, f"{PKG}.*"]),
    package_data={PKG: ["_build_info.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
