"""What bench/gpu_check.sh relies on, checked where no GPU is: the sanitizer and profiler workloads
run (and the sanitizer's can fail), the summary digests their logs, the script parses, and argument
errors of the CUDA entry points come from host-compiled code."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radd_fast

ROOT = Path(__file__).resolve().parents[1]


def load_bench_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_sanitize_cases():
    return load_bench_script("sanitize_cases")


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_sanitize_cases_pass_on_the_cpu(capsys):
    S = load_sanitize_cases()
    assert S.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for op in ("attention", "loss", "rotary", "sampler", "schedule"):
        assert f"ok   {op}" in out
    assert "FAIL" not in out


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_sanitize_cases_report_a_wrong_result(monkeypatch, capsys):
    S = load_sanitize_cases()
    real = S.R.masked_attention
    monkeypatch.setattr(S.R, "masked_attention", lambda *a, **k: real(*a, **k) * 1.01)
    assert S.main(["--device", "cpu", "--only", "attention"]) == 1
    assert "FAIL attention" in capsys.readouterr().out


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_racecheck_selection_is_what_gpu_check_names(capsys):
    # The racecheck stage's --only / --skip, as bench/gpu_check.sh passes them: on the CPU (no fp16
    # and no wgmma cases) 12 cases, the 16 of its time budget on an H200 less the 4 wgmma ones.
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    only = re.search(r'sanitize_cases\.py --only "([^"]+)" \\\n\s*--skip "([^"]+)"', text)
    assert only, "gpu_check.sh's racecheck command changed shape"
    assert load_sanitize_cases().main(["--device", "cpu", "--only", only[1], "--skip", only[2]]) == 0
    names = re.findall(r"^ok   (.*): relative error", capsys.readouterr().out, re.M)
    assert len(names) == 12, names
    assert not any("chunk 1024" in n or "split" in n or "float32 D 32" in n for n in names)
    assert sum("k128" in n for n in names) == 2


def test_profile_train_runs_small_on_the_cpu(capsys):
    assert load_bench_script("profile_train").main(["--small", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"training step `tiny` B 2 x L 64, 2 steps: [\d.]+ ms of CPU operators", out), out
    assert re.search(r"^ +[\d.]+ % +[\d.]+ ms/step .* aten::mm$", out, re.M), out


def test_profile_train_without_cuda_asks_for_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        load_bench_script("profile_train").main([])
    assert e.value.code == 2 and "no CUDA device; pass --device cpu" in capsys.readouterr().err


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_profile_cases_run_small_on_the_cpu(capsys):
    assert load_bench_script("profile_cases").main(["--small", "--device", "cpu"]) == 0
    assert "profile cases done" in capsys.readouterr().out
    assert load_bench_script("profile_cases").main(["--small", "--device", "cpu", "--only", "attention"]) == 0
    assert "profile cases done" in capsys.readouterr().out


def test_summary_merges_benchmark_files(tmp_path):
    S = load_bench_script("summarize")
    one = {"machine_info": {"node": "x"}, "benchmarks": [{"group": "g", "name": "a"}]}
    (tmp_path / "a.json").write_text(json.dumps(one))
    (tmp_path / "b.json").write_text("")  # a stage cut short
    (tmp_path / "c.json").write_text(json.dumps({**one, "benchmarks": [{"group": "g", "name": "c"}]}))
    S.main(["summarize", "--merge", str(tmp_path / "m.json"), *(str(tmp_path / f"{n}.json") for n in "abcd")])
    merged = json.loads((tmp_path / "m.json").read_text())
    assert [b["name"] for b in merged["benchmarks"]] == ["a", "c"] and merged["machine_info"] == {"node": "x"}


def test_summary_digests_sanitizer_and_profile_logs(tmp_path, capsys):
    (tmp_path / "stages.tsv").write_text("memcheck\t0\t21s\nprofile\t0\t12s\n")
    (tmp_path / "memcheck.log").write_text("========= COMPUTE-SANITIZER\nok   attention a\nFAIL loss b: relative "
                                           "error inf\n========= ERROR SUMMARY: 0 errors\n")
    kernel = ("void radd_fast::dce::gpu::gemm_kernel<__nv_bfloat16, true, true, (anonymous namespace)::"
              "StoreLogits<float>>(radd_fast::dce::gpu::GemmArgs<__nv_bfloat16>, StoreLogits<float>)")
    head = '"ID","Kernel Name","Grid Size","Section Name","Metric Name","Metric Unit","Metric Value"'
    rows = [f'"0","{kernel}","(10, 393, 1)","SOL","Duration","us","812.35"',
            f'"0","{kernel}","(10, 393, 1)","SOL","Compute (SM) Throughput","%","45.1"',
            f'"0","{kernel}","(10, 393, 1)","Occupancy","Achieved Occupancy","%","22.9"']
    (tmp_path / "profile.log").write_text("==PROF== Connected\n" + "\n".join([head, *rows]) + "\n")
    (tmp_path / "errors.log").write_text(
        "case 0: calling cpu rotary: x ...\n  raised ValueError: y\ncase 1: calling cuda attention: head_dim 48 ...\n"
        "  CRASHED (signal 11); stderr tail:\n    Fatal Python error: Segmentation fault\n  cuda-gdb, case 1 alone:\n"
        "    #0  0x00007f in __cxa_throw () from /lib/libstdc++.so.6\n    #1  0x00007e in fwd_cuda ()\n"
        "case 2: calling cuda loss: z ...\n  DID NOT RAISE\ncases done: 1 did not raise\n"
        "error paths: 1 raised, 1 did not raise, 1 crashed: cuda attention: head_dim 48\n")
    (tmp_path / "train_profile.log").write_text(
        "USDT: noise\ntraining step `small` B 32 x L 1024, 3 steps: 80.00 ms of device kernels per step\n"
        "   21.0 %    16.800 ms/step    12.0 calls/step  flash_bwd_kernel\nprofile_train done\n")
    (tmp_path / "errors_variants.log").write_text(
        "variant system-g++ (CPU ISA avx512, CXX /usr/bin/g++): error paths: 4 raised, 0 did not raise, 0 crashed\n")
    (tmp_path / "wgmma.log").write_text("wgmma layout A registers, B MN-major      N  64: error 1.2e+00 FAIL\n"
                                        "wgmma layouts: 5 of 6 forms agree with the CPU emulation's model\n"
                                        "..F.\nFAILED tests/test_attention.py::test_cuda_wgmma_kernels[x] - "
                                        "AssertionError: dq\n===== 1 failed, 57 passed in 30.1s =====\n")
    assert load_bench_script("summarize").main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "memcheck  1 cases ok; ERROR SUMMARY: 0 errors" in out and "FAIL loss b" in out
    assert "gemm_kernel<__nv_bfloat16, true, true, StoreLogits<float>>" in out
    assert "time 812.35 us, SM % 45.1, occupancy % 22.9" in out
    assert "error paths: 1 raised, 1 did not raise, 1 crashed: cuda attention: head_dim 48" in out
    assert "case 1: calling cuda attention: head_dim 48 ...: CRASHED (signal 11)" in out
    assert "#0  0x00007f in __cxa_throw () from /lib/libstdc++.so.6" in out
    assert "case 2: calling cuda loss: z ...: DID NOT RAISE" in out
    assert "  variant system-g++ (CPU ISA avx512, CXX /usr/bin/g++): error paths: 4 raised" in out
    assert "training step `small` B 32 x L 1024, 3 steps: 80.00 ms of device kernels per step" in out
    assert "   21.0 %    16.800 ms/step    12.0 calls/step  flash_bwd_kernel" in out and "USDT" not in out
    assert "wgmma stage: 1 failed, 57 passed in 30.1s" in out
    assert "  FAILED tests/test_attention.py::test_cuda_wgmma_kernels[x]" in out
    assert "  wgmma layout A registers, B MN-major      N  64: error 1.2e+00 FAIL" in out
    assert "  wgmma layouts: 5 of 6 forms agree" in out


def test_summary_names_the_decisions_the_figures_make(tmp_path, capsys):
    # The defaults waiting on a GPU run: each rule's candidate row against the default's row.
    def row(group, impl, ms):
        return {"group": group, "extra_info": {"impl": impl, "baseline": "sdpa"}, "stats": {"mean": ms / 1e3}}

    bwd, loss = "attention bwd cuda bfloat16 bidirectional D=64", "linear_dce fwd+bwd cuda bfloat16 N=8192"
    benchmarks = [row(bwd, "sdpa", 0.50), row(bwd, "fused", 1.60), row(bwd, "auto", 0.40), row(bwd, "fused-k128", 1.00),
                  row(loss, "fused", 3.36), row(loss, "fused-split4", 3.40),
                  row("train step small cuda", "auto", 85.0), row("train step small cuda", "auto-torch-sdpa", 80.0)]
    (tmp_path / "bench.json").write_text(json.dumps({"benchmarks": benchmarks}))
    assert load_bench_script("summarize").main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"cuDNN first for differentiated SDPA on Hopper: {bwd}: auto 0.400 ms vs sdpa 0.500 ms (1.25x) -> keep" in out
    assert "cuDNN first, whole training step: train step small cuda: auto 85.000 ms vs auto-torch-sdpa 80.000 ms " \
           "(0.94x) -> set RADD_FAST_SDPA_BACKEND=auto back to torch's order" in out
    assert f"128-key mma.sync tiles: {bwd}: fused-k128 1.000 ms vs fused 1.600 ms (1.60x) -> make" in out
    assert f"grad_h split in 4 class slices: {loss}: fused-split4 3.400 ms vs fused 3.360 ms (0.99x) -> within noise" in out
    assert "wgmma kernels: attention bwd cuda bfloat16 bidirectional D=64: fused-wgmma or fused not measured" in out
    assert f"vector dQ reductions: {bwd}: fused 1.600 ms vs 1.515 ms with scalar atomics (fe5768b) -> revert" in out


def test_summary_digests_the_stall_profile(tmp_path, capsys):
    # `ncu --csv --page raw`: metric names, then units, then one row per launch (numbers may carry
    # thousands separators); the digest names each launch's largest stall reasons.
    names = ["ID", "Kernel Name", "smsp__average_warp_latency_per_inst_issued.ratio",
             "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
             "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
             "smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio",
             "smsp__warps_eligible.avg.per_cycle_active"]
    units = ["", "", "cycle", "", "", "", "warp"]
    launch = ["0", "void radd_fast::attention::cuda::fwd_mma_kernel<__nv_bfloat16, 64, 2, 1>(Rows)", "1,234.5",
              "0.5", "3.25", "1.75", "0.4"]
    text = "==PROF== Connected\n" + "\n".join(",".join(f'"{v}"' for v in row) for row in (names, units, launch))
    (tmp_path / "stalls.log").write_text(text + "\n")
    assert load_bench_script("summarize").main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stalls   1 launches, 3 stall reasons collected" in out
    assert "fwd_mma_kernel<__nv_bfloat16, 64, 2, 1>: cycles per issue 1.23e+03, eligible warps 0.4" in out
    assert "stalls: long_scoreboard 3.25, math_pipe_throttle 1.75, barrier 0.50" in out


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_error_paths_raise_on_the_cpu(capfd):
    assert load_bench_script("error_paths").main([]) == 0
    out = capfd.readouterr().out
    assert re.search(r"error paths: [1-9]\d* raised, 0 did not raise, 0 crashed", out), out
    assert "case 0: calling torch cpu mm" in out and "case 1: calling cpu rotary" in out


def test_summary_of_an_error_stage_cut_short(tmp_path, capsys):
    (tmp_path / "errors.log").write_text("case 0: calling cpu rotary: qkv of rank 3 ...\n")
    load_bench_script("summarize").main(["summarize", str(tmp_path)])
    assert "error paths: cut short during 'cpu rotary: qkv of rank 3'" in capsys.readouterr().out


@pytest.mark.parametrize("last, shown", [
    ("===== 8 skipped, 310 deselected in 1.50s =====", "wgmma stage: 8 skipped, 310 deselected in 1.50s"),
    ("===== 310 deselected in 1.20s =====", "wgmma stage: 310 deselected in 1.20s"),
    ("..F", "wgmma stage: no pytest summary (cut short?)"),
])
def test_summary_of_stages_that_ran_no_test(tmp_path, capsys, last, shown):
    # Off an sm_90 device every wgmma test is skipped: the summary says so rather than "cut short";
    # a benchmark stage whose cases were all skipped writes no JSON (the merge leaves it empty).
    (tmp_path / "wgmma.log").write_text(f"wgmma layouts: could not run\n{last}\n")
    (tmp_path / "bench_sampler.json").write_text("")
    assert load_bench_script("summarize").main(["summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert shown in out
    assert "bench_sampler.json: empty (no benchmark ran: stage cut short, or every case skipped)" in out


def test_error_paths_isolate_a_crash(monkeypatch, capfd):
    # A case that kills its process (here a null read) costs only its own verdict: the cases after
    # it run in a fresh child, and the verdict names the crash.
    E = load_bench_script("error_paths")
    script = Path(E.__file__).read_text().replace(
        '    yield "cpu attention:', '    import ctypes\n    yield "null read", lambda: ctypes.string_at(0)\n'
        '    yield "cpu attention:', 1)
    # A case that raises an unclear error type, and one that ends its process without a verdict.
    script = script.replace(
        '    yield "cpu loss:', '    yield "wrong error", lambda: getattr(object(), "x")\n'
        '    yield "silent exit", lambda: os._exit(1)\n    yield "cpu loss:', 1)
    copy = ROOT / "bench" / "_error_paths_crash_test.py"  # beside the original: same repository root
    copy.write_text(script)
    try:
        E2 = load_bench_script("_error_paths_crash_test")
        assert E2.main([]) == 1
    finally:
        copy.unlink()
    out = capfd.readouterr().out
    assert "case 2: calling null read ...\n  CRASHED (signal 11)" in out
    assert "case 4: calling wrong error ...\n  WRONG ERROR AttributeError" in out
    assert "case 5: calling silent exit ...\n  CRASHED (exit 1, no verdict)" in out
    assert "case 3: calling cpu attention" in out and "case 6: calling cpu loss" in out
    assert re.search(r"error paths: \d+ raised, 1 did not raise, 2 crashed: null read; silent exit", out), out


def test_gpu_check_scripts_parse():
    for script in ("gpu_check.sh", "error_variants.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "bench" / script)], check=True)


@pytest.mark.skipif(not radd_fast._extension.AVAILABLE, reason="needs the compiled extension")
def test_error_variants_build_and_run_the_cpu_cases():
    # One variant (about a minute on 2 cores): a CPU-only build in a temporary copy whose own
    # extension the error cases then run against.
    env = {**os.environ, "RADD_FAST_VARIANTS": "generic-isa", "CXX": os.environ.get("CXX", "c++")}
    p = subprocess.run(["bash", str(ROOT / "bench" / "error_variants.sh"), sys.executable], env=env,
                       capture_output=True, text=True, timeout=600)
    lines = [line for line in p.stdout.splitlines() if line.startswith("variant ")]
    assert len(lines) == 1 and "variant generic-isa (CPU ISA generic" in lines[0], p.stdout + p.stderr
    assert re.search(r"error paths: [1-9]\d* raised, 0 did not raise, 0 crashed", lines[0]), lines


def test_cuda_argument_errors_are_raised_by_host_compiled_code():
    # Every op registers its CUDA kernels from a cuda_api.cpp (host compiler), which checks the
    # arguments before calling into cuda.cu. On the H200 build of 2026-11-29 the head_dim-48 error,
    # then raised inside cuda.cu, killed its process (SIGSEGV; cause not established): argument
    # errors are kept out of nvcc-compiled code.
    for cu in sorted((ROOT / "csrc").glob("*/cuda.cu")):
        text = cu.read_text()
        assert "TORCH_LIBRARY_IMPL" not in text, cu
        assert not re.search(r"TORCH_CHECK_(VALUE|TYPE)|\bcheck_(args|dtype|dim|device_type|defined)\(", text), cu
        assert "TORCH_LIBRARY_IMPL(radd_fast, CUDA" in (cu.parent / "cuda_api.cpp").read_text(), cu


def test_stage_caps_fit_the_device_budget():
    # A device session has 15 minutes in all (start-up included), one command at most 10: the stage
    # caps must add up to what the header says, and leave room (start-up, summary) under a 585 s
    # command limit.
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    caps = {name: int(s) for name, s in re.findall(r"\bstage (\w+) (\d+) ", text)}
    assert {"build", "tests", "bench", "memcheck"} <= set(caps), caps
    header = re.search(r"stage caps add up to (\d+) s \(([^)]*\([^)]*\)[^)]*)\)", text)
    assert header, "budget line missing from the header"
    listed = {n: int(v) for n, v in re.findall(r"(\w+) (\d+)", header.group(2))}
    assert listed == caps, (listed, caps)
    assert sum(caps.values()) == int(header.group(1)) <= 565


def test_stages_borrow_what_earlier_stages_left(tmp_path):
    # gpu_check.sh's stage(): a stage's limit is its cap plus what the stages before it (and those
    # that did not run) left unused, at most its cap again, so the whole run stays within the caps'
    # sum and a stage that hangs cannot take what the stages after it may need.
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    defs = re.search(r"^status\(\).*?^lent\(\)[^\n]*\n", text, re.S | re.M)
    assert defs, "gpu_check.sh's stage() changed shape"
    script = f"""out={tmp_path}; : > "$out/stages.tsv"
{defs.group(0)}
stage quick 4 sleep 0.1              # leaves 3-4 s
stage long 2 sleep 3 || exit 9       # 2 s cap + 2 borrowed: runs; 1-3 s stay in the bank
unused 5                             # the bank now holds 6-8 s
echo "lent=$(lent 1)"
stage hang 1 sleep 9                 # 1 s cap + at most 1 s borrowed: cut at 2 s
echo "rc=$? bank=$bank"
"""
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = [line.split("\t") for line in (tmp_path / "stages.tsv").read_text().splitlines()]
    assert [r[:2] for r in rows] == [["quick", "0"], ["long", "0"], ["hang", "124"]], rows
    limits = [int(re.search(r"limit (\d+)s", r[2]).group(1)) for r in rows]
    assert limits == [4, 4, 2], limits
    assert "lent=1" in p.stdout, p.stdout
    bank = int(re.search(r"rc=124 bank=(\d+)", p.stdout).group(1))
    assert 5 <= bank <= 7, p.stdout  # the hang's cut left the rest of the bank standing
