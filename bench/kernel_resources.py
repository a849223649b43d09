"""Registers, spills and SASS instruction counts of the CUDA kernels, read off the build on any machine.

Without a GPU these are the only performance facts about the CUDA code that can be checked: a
spilling tensor-core kernel moves its accumulators through local memory on every tile, and the
instruction mix of a kernel's main loop shows how much of its issue bandwidth goes to the tensor
cores.

    RADD_FAST_PTXAS_VERBOSE=1 .ci/cuda_build.sh          # writes build/cuda_build.log
    python bench/kernel_resources.py build/cuda_build.log [--check]
    python bench/kernel_resources.py --sass radd_fast/_C*.so [--match fwd_mma] [--cuobjdump PATH]

    python bench/kernel_resources.py --sass radd_fast/_C*.so --check-overlap

--check prints only the spilling kernels and exits 1 when a guarded one (mma.sync / wgmma
attention in bf16 / fp16, the loss's GEMM tiles) spills. --check-overlap exits 1 when an sm_90a
wgmma forward waits for its P V product before the softmax of the next key step (ptxas moved that
wait once: fwd_wgmma.cuh). --sass needs cuobjdump (CUDA toolkit, or `pip install nvidia-cuda-cuobjdump`); its "loop"
columns describe the kernel's longest backward branch, normally the main loop over tiles.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Kernels whose spills are a defect: the tensor-core attention kernels and the loss's tiled GEMMs,
# whose accumulators would go through local memory on every tile. The fp32 / fp64 FMA attention
# kernels (exact-precision fallbacks) and the small elementwise kernels are reported only.
GUARDED = re.compile(r"(mma_kernel<(__nv_bfloat16|__half)|wgmma_kernel|gemm)")

# Spills of guarded kernels that predate this check, at most these (stores, loads) bytes. sm_80:
# the loss's bf16 GEMM tiles under the 128-register cap of two 256-thread blocks per SM (5 of the
# logits kernel's 28 spill instructions sit in its main loop); sm_90a builds the same code without
# any. Whether one block per SM without spills is faster on an A100 has not been measured.
KNOWN_SPILLS = {
    ("sm_80", "gemm_kernel<__nv_bfloat16, true, true, StoreLogits<float> >"): (40, 72),
    ("sm_80", "gemm_kernel<__nv_bfloat16, true, false, StorePartial<float> >"): (4, 4),
}

ENTRY = re.compile(r"Compiling entry function '(?P<name>\S+)' for '(?P<arch>\w+)'")
SPILL = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads")
REGS = re.compile(r"Used (?P<regs>\d+) registers")


@dataclass
class Kernel:
    arch: str
    name: str
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


def demangle(names: list[str]) -> list[str]:
    """C++ names of mangled symbols (c++filt from binutils; the mangled names where it is missing)."""
    tool = shutil.which("c++filt")
    if not tool or not names:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    demangled = out.splitlines()
    return demangled if len(demangled) == len(names) else names


def short(name: str) -> str:
    """The kernel's template name without namespaces or parameter list."""
    name = name.replace("(anonymous namespace)::", "").removeprefix("void ")
    depth = 0
    for i, ch in enumerate(name):  # the parameter list: the first '(' outside template brackets
        depth += {"<": 1, ">": -1}.get(ch, 0)
        if ch == "(" and depth == 0:
            name = name[:i]
            break
    return re.sub(r"\b[A-Za-z_]\w*::", "", name)


def parse_ptxas(text: str) -> list[Kernel]:
    """Kernels of `ptxas -v` output, in order; each entry's lines follow its 'Compiling entry' line."""
    kernels: list[Kernel] = []
    for line in text.splitlines():
        if m := ENTRY.search(line):
            kernels.append(Kernel(m["arch"], m["name"]))
        elif kernels and (m := SPILL.search(line)):
            kernels[-1].spill_stores, kernels[-1].spill_loads = int(m["st"]), int(m["ld"])
        elif kernels and (m := REGS.search(line)):
            kernels[-1].registers = int(m["regs"])
    for k, name in zip(kernels, demangle([k.name for k in kernels])):
        k.name = short(name)
    return kernels


def known(k: Kernel) -> bool:
    """Whether k's spill is one of KNOWN_SPILLS and no larger."""
    limit = KNOWN_SPILLS.get((k.arch, k.name))
    return limit is not None and k.spill_stores <= limit[0] and k.spill_loads <= limit[1]


def report_ptxas(path: Path, check: bool) -> int:
    kernels = parse_ptxas(path.read_text(errors="replace"))
    if not kernels:
        print(f"{path}: no ptxas entries (build with RADD_FAST_PTXAS_VERBOSE=1)", file=sys.stderr)
        return 1
    bad = [k for k in kernels if k.spills and GUARDED.search(k.name) and not known(k)]
    spilling = [k for k in kernels if k.spills]
    n_known = sum(known(k) for k in spilling)
    print(f"{len(kernels)} kernel builds; {len(spilling)} spill; guarded kernels: {len(bad)} spill, {n_known} known")
    print(f"{'arch':8} {'regs':>4} {'spill st/ld':>11}  kernel")
    for k in sorted(spilling if check else kernels, key=lambda k: (k.arch, k.name)):
        mark = " <- guarded kernel spills" if k in bad else " (known, see KNOWN_SPILLS)" if known(k) else ""
        print(f"{k.arch:8} {k.registers:4d} {k.spill_stores:5d}/{k.spill_loads:<5d}  {k.name}{mark}")
    if check and bad:
        print(f"FAIL: {len(bad)} guarded kernel builds spill registers", file=sys.stderr)
        return 1
    return 0


INSTRUCTION = re.compile(r"/\*(?P<addr>[0-9a-f]{4,})\*/\s+(?P<text>[^;]*);")
BRANCH = re.compile(r"\bBRA\s+(?:\w+,\s*)?0x(?P<target>[0-9a-f]+)")


def opcode(text: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", text.strip()).split()[0]


def parse_sass(text: str, mangled: str = "") -> dict[str, list[tuple[int, str]]]:
    """Instructions (address, text) of each function of `cuobjdump -sass` output (only those whose
    mangled name contains `mangled`: the whole extension's SASS is ~140 MB)."""
    functions: dict[str, list[tuple[int, str]]] = {}
    parts = [p for p in re.split(r"\n\s*Function : ", text)[1:] if mangled in p.split("\n", 1)[0]]
    names = demangle([p.split("\n", 1)[0].strip() for p in parts])
    for name, part in zip(names, parts):
        functions[short(name)] = [(int(m["addr"], 16), m["text"].strip()) for m in INSTRUCTION.finditer(part)]
    return functions


def sass_summary(instructions: list[tuple[int, str]]) -> dict[str, int]:
    """Counts over the whole function and over its longest loop (backward branch)."""
    loops = [(int(m["target"], 16), addr) for addr, text in instructions
             if (m := BRANCH.search(text)) and int(m["target"], 16) <= addr]
    lo, hi = max(loops, key=lambda r: r[1] - r[0]) if loops else (1, 0)
    body = collections.Counter(opcode(t) for a, t in instructions if lo <= a <= hi)
    tensor = sum(n for op, n in body.items() if op.startswith(("HMMA", "HGMMA")))
    return {"total": len(instructions), "loop": sum(body.values()), "loop_tensor": tensor,
            "loop_cp_async": sum(n for op, n in body.items() if op.startswith("LDGSTS")),
            "loop_reductions": sum(n for op, n in body.items() if op.startswith(("RED", "ATOM")))}


WGMMA_FWD = re.compile(r"^fwd_wgmma_kernel<\w+, (?P<d>\d+), (?P<nk>\d+)>$")


def arch_sections(text: str) -> dict[str, str]:
    """`cuobjdump -sass` output split by the architecture of each embedded cubin (sm_80, sm_90a, ...)."""
    sections: dict[str, str] = {}
    parts = re.split(r"^arch = (sm_\w+)$", text, flags=re.M)
    for arch, body in zip(parts[1::2], parts[2::2]):
        sections[arch] = sections.get(arch, "") + body
    return sections


def softmax_overlap(instructions: list[tuple[int, str]]) -> int:
    """Exponentials (MUFU.EX2) between a `wgmma.wait_group 1` and the next `wait_group 0`, the most
    over the function's waits: the wgmma forward's softmax of one key step running while the tensor
    cores still work on P V of the previous one."""
    best, count = 0, None
    for _, text in instructions:
        op = opcode(text)
        if op.startswith("WARPGROUP.DEPBAR"):
            if text.rstrip().endswith("0x1"):
                count = 0
            else:
                best, count = max(best, count or 0), None
        elif count is not None and op.startswith("MUFU.EX2"):
            count += 1
    return best


def check_overlap(functions: dict[str, list[tuple[int, str]]]) -> int:
    """The wgmma forward kernels of an sm_90a build: each thread's exponentials of a key step (16
    rows x 64 keys per warp: 32 per thread, 64 with 128-key steps) all sit between the two waits."""
    kernels = {n: ins for n, ins in functions.items() if WGMMA_FWD.match(n)}
    if not kernels:
        print("no sm_90a wgmma forward kernels found", file=sys.stderr)
        return 1
    bad = 0
    for name in sorted(kernels):
        need, got = 32 * int(WGMMA_FWD.match(name)["nk"]), softmax_overlap(kernels[name])
        bad += got < need
        print(f"{'ok  ' if got >= need else 'FAIL'} {name}: {got} exponentials while P V runs (needs {need})")
    if bad:
        print(f"FAIL: {bad} wgmma forward kernels wait for P V before their softmax", file=sys.stderr)
    return 1 if bad else 0


def report_sass(binary: Path, match: str, cuobjdump: str, overlap: bool = False) -> int:
    tool = shutil.which(cuobjdump) or (cuobjdump if Path(cuobjdump).is_file() else None)
    if tool is None:
        print(f"cuobjdump not found ({cuobjdump}); pip install nvidia-cuda-cuobjdump", file=sys.stderr)
        return 1
    sass = subprocess.run([tool, "-sass", str(binary)], capture_output=True, text=True, check=True).stdout
    if overlap:
        return check_overlap(parse_sass(arch_sections(sass).get("sm_90a", ""), "fwd_wgmma_kernel"))
    functions = {n: ins for n, ins in parse_sass(sass).items() if match in n}
    if not functions:
        print(f"no function of {binary} matches {match!r}", file=sys.stderr)
        return 1
    print(f"{'total':>6} {'loop':>6} {'tensor':>6} {'cp.async':>8} {'red':>4}  kernel (SASS instructions)")
    for name in sorted(functions):
        s = sass_summary(functions[name])
        print(f"{s['total']:6d} {s['loop']:6d} {s['loop_tensor']:6d} {s['loop_cp_async']:8d} "
              f"{s['loop_reductions']:4d}  {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("log", nargs="?", type=Path, help="build log with ptxas -v output")
    p.add_argument("--check", action="store_true", help="list spilling kernels; exit 1 if a guarded one spills")
    p.add_argument("--sass", type=Path, metavar="BINARY", help="extension .so or object file to disassemble")
    p.add_argument("--match", default="", help="only functions whose name contains this (with --sass)")
    p.add_argument("--cuobjdump", default="cuobjdump", help="cuobjdump executable (with --sass)")
    p.add_argument("--check-overlap", action="store_true",
                   help="with --sass: exit 1 unless every sm_90a wgmma forward runs its softmax while P V runs")
    args = p.parse_args(argv)
    if (args.log is None) == (args.sass is None):
        p.error("give a build log or --sass BINARY")
    if args.sass is not None:
        return report_sass(args.sass, args.match, args.cuobjdump, args.check_overlap)
    return report_ptxas(args.log, args.check)


if __name__ == "__main__":
    sys.exit(main())
