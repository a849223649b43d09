"""bench/kernel_resources.py: the ptxas and SASS readings that CI's CUDA build step checks."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kernel_resources", ROOT / "bench" / "kernel_resources.py")
KR = importlib.util.module_from_spec(spec)
sys.modules["kernel_resources"] = KR  # its dataclass looks its module up there
spec.loader.exec_module(KR)

# Excerpt of real `nvcc -Xptxas=-v` output (CUDA 13.0), names kept mangled as ptxas prints them.
FWD = "_ZN9radd_fast9attention4cuda14fwd_mma_kernelI13__nv_bfloat16Li64ELi2ELi1EEEvNS1_4RowsIT_EES6_S6_PS5_PfNS1_10MaskParamsElf"
FMA = "_ZN9radd_fast9attention4cuda14bwd_fma_kernelIfLi64EEEvNS1_4RowsIT_EES5_S5_S5_PKfS7_PS4_S8_PfNS1_10MaskParamsElff"
PTXAS = f"""\
ptxas info    : 28 bytes gmem
ptxas info    : Compiling entry function '{FWD}' for 'sm_90a'
ptxas info    : Function properties for {FWD}
    {{stack}} bytes stack frame, {{st}} bytes spill stores, {{ld}} bytes spill loads
ptxas info    : Used 228 registers, used 1 barriers
ptxas info    : Compile time = 300.0 ms
ptxas info    : Compiling entry function '{FMA}' for 'sm_80'
ptxas info    : Function properties for {FMA}
    8 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 8 bytes cumulative stack size
"""


def test_ptxas_entries_are_parsed_and_named():
    kernels = KR.parse_ptxas(PTXAS.format(stack=0, st=0, ld=0))
    assert [(k.arch, k.registers, k.spill_stores, k.spill_loads) for k in kernels] == [
        ("sm_90a", 228, 0, 0), ("sm_80", 96, 8, 12)]
    assert kernels[0].name == "fwd_mma_kernel<__nv_bfloat16, 64, 2, 1>"
    assert kernels[1].name == "bwd_fma_kernel<float, 64>"


def test_check_fails_only_on_a_guarded_spill(tmp_path, capsys):
    log = tmp_path / "build.log"
    log.write_text(PTXAS.format(stack=0, st=0, ld=0))
    assert KR.main([str(log), "--check"]) == 0  # the FMA kernel's spill is reported, not fatal
    assert "1 spill; guarded kernels: 0 spill, 0 known" in capsys.readouterr().out
    log.write_text(PTXAS.format(stack=16, st=32, ld=48))
    assert KR.main([str(log), "--check"]) == 1
    captured = capsys.readouterr()
    assert "fwd_mma_kernel<__nv_bfloat16, 64, 2, 1> <- guarded kernel spills" in captured.out
    assert "FAIL: 1 guarded" in captured.err


def test_known_spills_pass_up_to_their_size(monkeypatch):
    k = KR.parse_ptxas(PTXAS.format(stack=16, st=32, ld=48))[0]
    monkeypatch.setitem(KR.KNOWN_SPILLS, ("sm_90a", k.name), (32, 48))
    assert KR.known(k)
    monkeypatch.setitem(KR.KNOWN_SPILLS, ("sm_90a", k.name), (32, 40))
    assert not KR.known(k)


def test_a_log_without_ptxas_output_is_an_error(tmp_path, capsys):
    log = tmp_path / "build.log"
    log.write_text("[radd_fast build] CUDA extension: on\n")
    assert KR.main([str(log), "--check"]) == 1
    assert "RADD_FAST_PTXAS_VERBOSE" in capsys.readouterr().err


def test_names_lose_namespaces_and_parameters_only():
    assert KR.short("void radd_fast::sample_rows::(anonymous namespace)::k<float>(int, float*)") == "k<float>"
    assert KR.short("void a::gemm_kernel<float, true, a::b::Epi<float> >(a::Args<float>, a::Epi<float>)") == \
        "gemm_kernel<float, true, Epi<float> >"


# Shape of `cuobjdump -sass` output: a loop (backward branch to 0x0030) around two HMMAs.
SASS = """
        code for sm_90a
                Function : _Z6kernelv
        .headerflags    @"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
        /*0020*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R4.64] ;  /* 0x0000000004027fae */
        /*0030*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;  /* 0x000000100c08723c */
        /*0040*/                   HMMA.16816.F32.BF16 R8, R12, R18, R8 ;  /* 0x000000120c08723c */
        /*0050*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R8 ; /* 0x0 */
        /*0060*/               @P0 BRA 0x30 ;                              /* 0x0000000000000947 */
        /*0070*/                   EXIT ;                                  /* 0x000000000000794d */
"""


def test_sass_summary_counts_the_longest_loop():
    functions = KR.parse_sass(SASS)
    (name, instructions), = functions.items()
    assert len(instructions) == 8
    s = KR.sass_summary(instructions)
    assert s == {"total": 8, "loop": 4, "loop_tensor": 2, "loop_cp_async": 0, "loop_reductions": 1}


# Two cubins of one wgmma forward kernel, in the shape of `cuobjdump -sass` output of the CUDA 13.0
# build: the sm_80 one is a trap, the sm_90a one issues S and P V, waits for S (0x1), takes
# exponentials (two here), then waits for P V (0x0) -- or, as ptxas once scheduled it, waits for
# both before the exponentials.
WGMMA_NAME = "_ZN9radd_fast9attention4cuda16fwd_wgmma_kernelI13__nv_bfloat16Li64ELi1EEEvNS1_4RowsIT_EES6_S6_PS5_PfNS1_10MaskParamsElf"


def wgmma_sass(overlapped: bool) -> str:
    body = ["WARPGROUP.ARRIVE", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24, gsb0",
            "HGMMA.64x64x16.F32.BF16 R88, R4, gdesc[UR12], R88, gsb0", "WARPGROUP.DEPBAR.LE gsb0, 0x1"]
    ex2 = ["MUFU.EX2 R10, R10", "MUFU.EX2 R11, R11"]
    body += (ex2 + ["WARPGROUP.DEPBAR.LE gsb0, 0x0"]) if overlapped else (["WARPGROUP.DEPBAR.LE gsb0, 0x0"] + ex2)
    lines = "\n".join(f"        /*{16 * i:04x}*/                   {t} ;  /* 0x0 */" for i, t in enumerate(body + ["EXIT"]))
    trap = "        /*0000*/                   BPT.TRAP 0x1 ;  /* 0x0 */"
    return (f"\nFatbin elf code:\n================\narch = sm_80\n\n\tcode for sm_80\n\t\tFunction : {WGMMA_NAME}\n{trap}\n"
            f"\nFatbin elf code:\n================\narch = sm_90a\n\n\tcode for sm_90a\n\t\tFunction : {WGMMA_NAME}\n{lines}\n")


@pytest.mark.parametrize("overlapped", [True, False])
def test_overlap_check_reads_the_sm90a_cubin(overlapped):
    functions = KR.parse_sass(KR.arch_sections(wgmma_sass(overlapped))["sm_90a"])
    (name, instructions), = functions.items()
    assert name == "fwd_wgmma_kernel<__nv_bfloat16, 64, 1>"
    assert KR.softmax_overlap(instructions) == (2 if overlapped else 0)
    assert KR.parse_sass(KR.arch_sections(wgmma_sass(overlapped))["sm_80"])[name] != instructions


def test_overlap_check_wants_every_exponential_of_a_step(capsys):
    functions = KR.parse_sass(KR.arch_sections(wgmma_sass(True))["sm_90a"])
    assert KR.check_overlap(functions) == 1  # 2 exponentials, a 64-key step has 32 per thread
    assert "FAIL fwd_wgmma_kernel<__nv_bfloat16, 64, 1>: 2 exponentials while P V runs (needs 32)" in capsys.readouterr().out
    assert KR.check_overlap({}) == 1
