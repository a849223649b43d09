"""Do C++ argument errors reach Python on this machine? One bad call per kind of code that raises
(torch's own ATen, each of our CPU kernels, each CUDA entry point), each announced before it runs.

    python -X faulthandler bench/error_paths.py [--cpu]    (--cpu: only the CPU cases)

runs the cases in a child process; when a case kills the child (a crash inside C++), the rest run
in a fresh child, so every case gets its own verdict, and (with RADD_FAST_ERRORS_GDB=1, where
cuda-gdb exists) the first crashing case is rerun alone under cuda-gdb for the top of its native
backtrace. bench/gpu_check.sh's `errors` stage runs it.

Why: on the H200 (2026-11-29 and -30) the first C++ error of a process killed it with SIGSEGV, in a
CPU op as in a CUDA entry point, while other errors raised from the same files reached Python in
the test run. torch's own ATen error first tells whether the machine or our build is at fault.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys


def with_env(name: str, value: str, call):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return call()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def cases(cuda: bool):
    import torch

    import radd_fast

    ops = torch.ops.radd_fast
    yield "torch cpu mm: (2, 3) @ (2, 3)", lambda: torch.mm(torch.randn(2, 3), torch.randn(2, 3))
    yield "cpu rotary: qkv of rank 3", lambda: ops.rotary(torch.randn(2, 5, 3), *radd_fast.rotary_tables(5, 8), False)
    qc = torch.randn(1, 4, 2, 8)
    yield "cpu attention: order of shape (1, 3)", lambda: ops.masked_attention_fwd(
        qc, qc, qc, None, torch.zeros(1, 3, dtype=torch.long), False, 1.0)
    hc, Wc = torch.randn(3, 8), torch.randn(11, 8)
    # The target range is checked row by row on the CPU (csrc/dce_loss/cpu.cpp).
    yield "cpu loss: target 10 of 10 classes", lambda: ops.linear_dce_loss(
        hc, Wc, None, torch.full((3,), 10, dtype=torch.long), torch.ones(3), 10)
    if not cuda:
        return
    q = torch.randn(1, 4, 2, 48, device="cuda")
    yield "cuda attention: head_dim 48", lambda: ops.masked_attention_fwd(q, q, q, None, None, False, 1.0)
    qb = torch.randn(1, 4, 2, 64, device="cuda", dtype=torch.bfloat16)
    yield "cuda attention: RADD_FAST_ATTENTION_QUERY_TILE=96", lambda: with_env(
        "RADD_FAST_ATTENTION_QUERY_TILE", "96", lambda: ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0))
    yield "cuda attention: RADD_FAST_ATTENTION_FORWARD=tma", lambda: with_env(
        "RADD_FAST_ATTENTION_FORWARD", "tma", lambda: ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0))
    ob, lb = ops.masked_attention_fwd(qb, qb, qb, None, None, False, 1.0)
    yield "cuda attention: RADD_FAST_ATTENTION_KEY_TILE=256", lambda: with_env(
        "RADD_FAST_ATTENTION_KEY_TILE", "256",
        lambda: ops.masked_attention_bwd(qb, qb, qb, qb, ob, lb, None, None, None, False, 1.0))
    yield "cuda attention: RADD_FAST_ATTENTION_BACKWARD=tma", lambda: with_env(
        "RADD_FAST_ATTENTION_BACKWARD", "tma",
        lambda: ops.masked_attention_bwd(qb, qb, qb, qb, ob, lb, None, None, None, False, 1.0))
    h, W = torch.randn(3, 8, device="cuda"), torch.randn(11, 8, device="cuda")
    t = torch.zeros(3, dtype=torch.long, device="cuda")
    yield "cuda loss: row_weight of shape (2,)", lambda: ops.linear_dce_loss(h, W, None, t, torch.ones(2, device="cuda"), 10)
    yield "cuda loss: RADD_FAST_DCE_ENGINE=grouped with float32", lambda: with_env(
        "RADD_FAST_DCE_ENGINE", "grouped", lambda: ops.linear_dce_loss(h, W, None, t, torch.ones(3, device="cuda"), 10))
    x = torch.randn(1, 3, 3, 2, 8, device="cuda")
    yield "cuda rotary: tables on the CPU", lambda: ops.rotary(x, *radd_fast.rotary_tables(3, 8), False)
    yield "cuda sample_rows: top_p 2", lambda: ops.sample_rows(h, W, None, 10, 1.0, 0, 2.0, False, 0, 0)


def run_cases(start: int, only: int | None, cpu_only: bool) -> int:
    """Runs cases start.. (or just `only`) in this process; exit 1 if one did not raise one of the
    clear error types (a case that raises another exception counts as one that did not)."""
    import torch

    from radd_fast import _extension

    if not _extension.AVAILABLE:  # the cases would test nothing of ours
        print(f"set-up: the compiled kernels did not load: {_extension.LOAD_ERROR}", flush=True)
        return 2
    bad = 0
    for i, (name, call) in enumerate(cases(torch.cuda.is_available() and not cpu_only)):
        if i < start or (only is not None and i != only):
            continue
        print(f"case {i}: calling {name} ...", flush=True)
        try:
            call()
        except (ValueError, TypeError, RuntimeError, IndexError) as e:
            print(f"  raised {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        except Exception as e:  # an error, but not a clear one of these types
            bad += 1
            print(f"  WRONG ERROR {type(e).__name__}: {str(e).splitlines()[0][:160]}", flush=True)
        else:
            bad += 1
            print("  DID NOT RAISE", flush=True)
    print(f"cases done: {'all raised' if not bad else f'{bad} did not raise'}", flush=True)
    return 1 if bad else 0


def child_env() -> dict[str, str]:
    """The environment of a child run: the repository first on the path (an in-place build)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def gdb_backtrace(case: int, flags: list[str]) -> None:
    """The top of the native backtrace of one crashing case, run alone under cuda-gdb."""
    gdb = shutil.which("cuda-gdb")
    if gdb is None:
        print("  (no cuda-gdb for a backtrace)")
        return
    cmd = [gdb, "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, __file__, "--only", str(case), *flags]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=child_env())
        text = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    keep = [line for line in text.splitlines() if line.startswith(("#", "Thread", "Program received"))]
    print(f"  cuda-gdb, case {case} alone:")
    for line in keep[:30]:
        print(f"    {line[:300]}")


def supervise(flags: list[str]) -> int:
    start, raised, not_raised, crashed, names = 0, 0, 0, [], {}
    while True:
        p = subprocess.run([sys.executable, "-X", "faulthandler", __file__, "--from", str(start), *flags],
                           capture_output=True, text=True, timeout=120, env=child_env())
        sys.stdout.write(p.stdout)
        sys.stdout.flush()
        last = None
        for line in p.stdout.splitlines():
            m = re.match(r"case (\d+): calling (.*) \.\.\.$", line)
            if m:
                last = int(m.group(1))
                names[last] = m.group(2)
            raised += line.startswith("  raised ")
            not_raised += "DID NOT RAISE" in line or "WRONG ERROR" in line
        if "cases done" in p.stdout:
            break
        if last is None:  # died before its first case: import or set-up
            print(p.stderr[-3000:])
            crashed.append(f"set-up (exit {p.returncode})")
            break
        # The child ended inside case `last`: killed by a signal, or exited without a verdict.
        rc = p.returncode
        how = f"signal {-rc}" if rc < 0 else f"signal {rc - 128}" if rc > 128 else f"exit {rc}, no verdict"
        print(f"  CRASHED ({how}); stderr tail:", flush=True)
        for line in [x for x in p.stderr.strip().splitlines() if not x.startswith("Extension modules")][-12:]:
            print(f"    {line}")
        if not crashed and os.environ.get("RADD_FAST_ERRORS_GDB") == "1":
            gdb_backtrace(last, flags)
        crashed.append(names[last])
        start = last + 1
    verdict = f"{raised} raised, {not_raised} did not raise, {len(crashed)} crashed"
    if crashed:
        verdict += ": " + "; ".join(crashed)
    print(f"error paths: {verdict}")
    return 0 if not crashed and not not_raised else 1


def main(argv: list[str]) -> int:
    flags = ["--cpu"] if "--cpu" in argv else []
    if "--from" in argv or "--only" in argv:
        flag = "--from" if "--from" in argv else "--only"
        k = int(argv[argv.index(flag) + 1])
        return run_cases(k if flag == "--from" else 0, k if flag == "--only" else None, bool(flags))
    return supervise(flags)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
