"""Short table of a gpu_check.sh run: stage results, test counts, benchmark figures and speed-ups.

    python bench/summarize.py RESULTS_DIR
    python bench/summarize.py --merge OUT.json IN.json...   (one pytest-benchmark file of several)
"""

from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


PROFILE_METRICS = {"Duration": "time", "Compute (SM) Throughput": "SM %", "Memory Throughput": "memory %",
                   "Achieved Occupancy": "occupancy %", "Registers Per Thread": "registers"}


def print_profile(lines: list[str]) -> None:
    """One line per profiled kernel launch from `ncu --csv` output (other lines are skipped)."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    if len(rows) < 2:
        print("profile  no Nsight Compute rows (see profile.log)")
        return
    head = rows[0]
    col = {name: head.index(name) for name in ("ID", "Kernel Name", "Grid Size", "Metric Name", "Metric Unit",
                                               "Metric Value") if name in head}
    if len(col) < 6:
        print("profile  unexpected Nsight Compute CSV header (see profile.log)")
        return
    kernels: dict[str, dict[str, str]] = {}
    for r in rows[1:]:
        name = r[col["Kernel Name"]].replace("(anonymous namespace)::", "").split("(")[0].removeprefix("void ")
        name = re.sub(r"\w+::", "", name)  # namespaces
        k = kernels.setdefault(r[col["ID"]], {"name": name, "grid": r[col["Grid Size"]]})
        label = PROFILE_METRICS.get(r[col["Metric Name"]])
        if label:
            unit = r[col["Metric Unit"]]
            k[label] = r[col["Metric Value"]] + ("" if unit in ("%", "register/thread", "") else " " + unit)
    print(f"profile  {len(kernels)} kernel launches (Nsight Compute):")
    for kid, k in kernels.items():
        fields = ", ".join(f"{label} {k[label]}" for label in PROFILE_METRICS.values() if label in k)
        print(f"  {kid:>3} {k['name'][:64]:<64} grid {k['grid']}: {fields}")


STALL_METRIC = re.compile(r"smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio")
SCHEDULER_METRICS = {"smsp__average_warp_latency_per_inst_issued.ratio": "cycles per issue",
                     "smsp__issue_active.avg.pct_of_peak_sustained_active": "issue %",
                     "smsp__warps_active.avg.per_cycle_active": "active warps",
                     "smsp__warps_eligible.avg.per_cycle_active": "eligible warps"}


def print_stalls(lines: list[str]) -> None:
    """Per profiled launch, from `ncu --csv --page raw` (a header of metric names, a row of units,
    a row per launch): the scheduler's figures and the six largest stall reasons, in warps stalled
    per issued instruction (their sum is the cycles between two issues of a warp)."""
    rows = list(csv.reader(line for line in lines if line.startswith('"')))
    head = rows[0] if rows else []
    if "ID" not in head or "Kernel Name" not in head:
        print("stalls   no Nsight Compute rows (see stalls.log)")
        return
    id_col, name_col = head.index("ID"), head.index("Kernel Name")
    stalls = [(i, m.group(1)) for i, h in enumerate(head) if (m := STALL_METRIC.fullmatch(h))]
    sched = [(i, SCHEDULER_METRICS[h]) for i, h in enumerate(head) if h in SCHEDULER_METRICS]
    launches = [r for r in rows[1:] if len(r) == len(head) and r[id_col].strip().isdigit()]
    print(f"stalls   {len(launches)} launches, {len(stalls)} stall reasons collected (Nsight Compute):")

    def number(text: str) -> float:
        try:
            return float(text.replace(",", ""))
        except ValueError:
            return float("nan")

    for r in launches:
        name = re.sub(r"\w+::", "", r[name_col].split("(")[0].removeprefix("void "))
        figures = ", ".join(f"{label} {number(r[i]):.3g}" for i, label in sched)
        top = sorted(((number(r[i]), reason) for i, reason in stalls), reverse=True)[:6]
        print(f"  {r[id_col]:>3} {name[:60]}: {figures}")
        print("      stalls: " + (", ".join(f"{reason} {v:.2f}" for v, reason in top) or "none collected"))


# Defaults that wait on a GPU measurement (bench/RESULTS.md, "not yet run on a GPU"). Each rule
# compares a candidate row with the current default's row in every group matching its pattern;
# the verdict names the change to make. Within 3 % either way counts as noise: keep the default.
DECISIONS = [
    ("cuDNN first for differentiated SDPA on Hopper", r"attention bwd cuda bfloat16 bidirectional D=\d+$",
     "auto", "sdpa", "keep (functional.sdpa_backend)", "set RADD_FAST_SDPA_BACKEND=auto back to torch's order"),
    ("cuDNN first, whole training step", r"train step small cuda$", "auto", "auto-torch-sdpa",
     "keep", "set RADD_FAST_SDPA_BACKEND=auto back to torch's order"),
    ("128-key mma.sync tiles", r"attention (fwd|bwd) cuda bfloat16 bidirectional D=\d+$", "fused-k128", "fused",
     "make RADD_FAST_ATTENTION_KEY_TILE=auto pick 128 for this pass and head_dim (cuda_api.cpp)", "keep 64"),
    ("wgmma forward on 128-key steps", r"attention fwd cuda bfloat16 (bidirectional|causal) D=\d+$",
     "fused-wgmma-k128", "fused", "consider it for auto (cuda_api.cpp forward_kernel)", "keep mma.sync"),
    ("wgmma kernels", r"attention (fwd|bwd) cuda bfloat16 (bidirectional|causal) D=\d+$", "fused-wgmma", "fused",
     "consider wgmma for auto (cuda_api.cpp)", "keep mma.sync"),
    ("bulk dQ reductions (sm_90)", r"attention bwd cuda bfloat16 bidirectional D=64$", "fused-dq-bulk", "fused",
     "make RADD_FAST_ATTENTION_DQ=auto pick bulk on sm_90 at head_dim <= 64 (cuda_api.cpp bulk_dq)", "keep atomics"),
    ("bulk dQ reductions, 128-key blocks", r"attention bwd cuda bfloat16 bidirectional D=64$", "fused-k128-dq-bulk",
     "fused-k128", "pick bulk with 128-key blocks too (cuda_api.cpp bulk_dq)", "keep atomics there"),
    ("grad_h split in 4 class slices", r"linear_dce fwd\+bwd cuda bfloat16 N=\d+$", "fused-split4", "fused",
     "make RADD_FAST_DCE_GRAD_H_SPLIT default to 4", "keep 1"),
    ("compiled blocks in training", r"train step small cuda$", "auto+compile", "auto",
     "consider --compile by default on CUDA", "keep --compile opt-in"),
]
# The mma.sync backward's mean times at commit fe5768b (2026-11-30, H200), before its dQ additions
# became 16-byte vector reductions on sm_90: revert those (kernels.cuh, dq_atomic_add) if slower.
SCALAR_DQ_BWD_MS = {"attention bwd cuda bfloat16 bidirectional D=64": 1.515,
                    "attention bwd cuda bfloat16 bidirectional D=128": 2.307}


def print_decisions(groups: dict[str, list]) -> None:
    """One line per rule and matching group: candidate against default, and what to change."""

    def mean_ms(rows: list, impl: str):
        return next((r["stats"]["mean"] * 1e3 for r in rows if r["extra_info"].get("impl") == impl), None)

    print("decisions (rows of this run; within 3 % = noise, keep the default):")
    for what, pattern, cand, base, if_faster, if_not in DECISIONS:
        matched = [(g, rows) for g, rows in groups.items() if re.search(pattern, g)]
        for g, rows in matched:
            c, b = mean_ms(rows, cand), mean_ms(rows, base)
            if c is None or b is None:
                print(f"  {what}: {g}: {cand} or {base} not measured")
                continue
            verdict = if_faster if c < 0.97 * b else if_not if c > 1.03 * b else "within noise: keep the default"
            print(f"  {what}: {g}: {cand} {c:.3f} ms vs {base} {b:.3f} ms ({b / c:.2f}x) -> {verdict}")
        if not matched:
            print(f"  {what}: no group measured")
    for g, before in SCALAR_DQ_BWD_MS.items():
        now = mean_ms(groups.get(g, []), "fused")
        if now is not None:
            verdict = ("keep" if now < 0.97 * before else "revert to scalar atomics (kernels.cuh)" if now > 1.03 * before
                       else "within noise: keep")
            print(f"  vector dQ reductions: {g}: fused {now:.3f} ms vs {before:.3f} ms with scalar atomics "
                  f"(fe5768b) -> {verdict}")


def merge(target: Path, parts: list[Path]) -> None:
    """Concatenates the benchmarks of pytest-benchmark JSON files (missing or empty ones skipped: a
    stage cut short writes none) into `target`, which keeps the first file's machine and commit."""
    merged = None
    for part in parts:
        if part.exists() and part.stat().st_size:
            data = json.loads(part.read_text())
            if merged is None:
                merged = data
            else:
                merged["benchmarks"].extend(data["benchmarks"])
    target.write_text(json.dumps(merged) if merged is not None else "")


def main(argv: list[str]) -> int:
    if len(argv) > 2 and argv[1] == "--merge":
        merge(Path(argv[2]), [Path(a) for a in argv[3:]])
        return 0
    out = Path(argv[1] if len(argv) > 1 else "gpu_results")
    print("=" * 100)
    machine = out / "machine.txt"
    if machine.exists():
        print(" | ".join(machine.read_text().split("\n")[:3]))
    stages = out / "stages.tsv"
    if stages.exists():
        for line in stages.read_text().splitlines():
            name, rc, secs = line.split("\t")
            print(f"stage {name:<6} {'ok' if rc == '0' else 'FAILED (exit ' + rc + ')':<16} {secs}")
    junit = out / "tests.xml"
    if junit.exists():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        a = suite.attrib
        print(f"tests  {a.get('tests')} run, {a.get('failures')} failed, {a.get('errors')} errors, "
              f"{a.get('skipped')} skipped")
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                print(f"  FAIL {case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:150]}")
    errors = out / "errors.log"  # bench/error_paths.py
    if errors.exists():
        lines = errors.read_text(errors="replace").splitlines()
        verdict = next((line for line in lines if line.startswith("error paths:")), None)
        if verdict is None:  # the supervisor itself was cut short: the last call announced
            last = next((line for line in reversed(lines) if re.match(r"case \d+: calling ", line)), "no call announced")
            name = re.sub(r"^case \d+: calling | \.\.\.$", "", last)
            verdict = f"error paths: cut short during '{name}'"
        print(verdict)
        for i, line in enumerate(lines):
            if "DID NOT RAISE" in line or "WRONG ERROR" in line or "CRASHED" in line:
                print(f"  {lines[i - 1].strip()}: {line.strip()}")
        frames = [line.strip() for line in lines if line.strip().startswith("#")]
        for line in frames[:10]:  # the top of the first crash's native backtrace (cuda-gdb)
            print(f"    {line[:160]}")
    train = out / "train_profile.log"  # bench/profile_train.py: the step's largest kernels
    if train.exists():
        lines = [line for line in train.read_text(errors="replace").splitlines()
                 if line.startswith(("training step", "  "))]
        for line in lines[:13]:
            print(line[:150])
    variants = out / "errors_variants.log"  # bench/error_variants.sh, after a crash
    if variants.exists():
        for line in variants.read_text(errors="replace").splitlines():
            if line.startswith("variant "):
                print(f"  {line[:200]}")
    wgmma_log = out / "wgmma.log"  # the wgmma kernels' tests and benchmarks, in a process of their own
    if wgmma_log.exists():
        lines = wgmma_log.read_text(errors="replace").splitlines()
        # pytest's last line; "skipped" / "deselected" alone: no wgmma test ran (not an sm_90 device)
        tally = r"\d+ (passed|failed|errors?|skipped|deselected)\b|no tests ran"
        counts = next((line.strip("= ") for line in reversed(lines) if re.search(tally, line)),
                      "no pytest summary (cut short?)")
        print(f"wgmma stage: {counts}")
        for line in lines:
            if line.startswith(("FAILED", "ERROR", "wgmma layout")):
                print(f"  {line[:150]}")
    for tool in ("memcheck", "racecheck"):  # bench/sanitize_cases.py under compute-sanitizer
        log = out / f"{tool}.log"
        if log.exists():
            lines = log.read_text(errors="replace").splitlines()
            ok = sum(line.startswith("ok ") for line in lines)
            verdicts = [line.strip("= ").strip() for line in lines if "SUMMARY" in line]
            print(f"{tool:<9} {ok} cases ok; {'; '.join(verdicts) or 'no sanitizer summary (cut short?)'}")
            for line in lines:
                if line.startswith("FAIL"):
                    print(f"  {line[:150]}")
    profile = out / "profile.log"  # Nsight Compute CSV of bench/profile_cases.py
    if profile.exists():
        print_profile(profile.read_text(errors="replace").splitlines())
    stalls_log = out / "stalls.log"  # ncu --page raw of the attention kernels
    if stalls_log.exists():
        print_stalls(stalls_log.read_text(errors="replace").splitlines())
    groups: dict[str, list] = {}
    for name in ("bench.json", "bench_sampler.json", "bench_compile.json", "bench_wgmma.json"):  # stages of their own
        bj = out / name
        # Empty when no benchmark of the stage ran: cut short before pytest wrote the file, or every
        # case skipped (no CUDA device: pytest-benchmark then writes none).
        if bj.exists() and bj.stat().st_size:
            for b in json.loads(bj.read_text())["benchmarks"]:
                groups.setdefault(b["group"], []).append(b)
        elif bj.exists():
            print(f"{name}: empty (no benchmark ran: stage cut short, or every case skipped)")
    if groups:
        print(f"{'benchmark group':<44} {'impl':<16} {'mean ms':>9} {'rate':>16} {'vs base':>7} {'peak MB':>9}")
        for g, rows in groups.items():
            base = rows[0]["extra_info"].get("baseline", "reference")
            ref = next((r["stats"]["mean"] for r in rows if r["extra_info"].get("impl") == base), None)
            for r in rows:
                e, mean = r["extra_info"], r["stats"]["mean"]
                per_s = next((f"{v:,.0f} {k}" for k, v in e.items() if k.endswith("/s") and k not in ("GB/s", "TFLOP/s")), "")
                rate = (f"{e['TFLOP/s']} TFLOP/s" if "TFLOP/s" in e else f"{e['GB/s']} GB/s" if "GB/s" in e else per_s)
                sp = f"{ref / mean:.2f}x" if ref else "-"
                peak = f"{e['peak_MB']:.0f}" if e.get("peak_MB") is not None else ""
                print(f"{g[:44]:<44} {e.get('impl', '?'):<16} {mean * 1e3:>9.3f} {rate:>16} {sp:>7} {peak:>9}")
                if "network_calls" in e:  # sampler runs: network calls and time outside the network
                    print(f"{'':<44}   network calls {e['network_calls']}, sequence evaluations "
                          f"{e.get('sequence_evaluations')}, outside the network {e.get('outside_network_pct', '?')}%")
        print_decisions(groups)
    print("=" * 100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
