"""Separation networks on CPU: real-time factor and peak memory of spmamba-8k, s4m and s4m-tiny on 4, 10 and
30 s inputs, beside the same networks computed the reference way.

"ours" = default path (fastest scan backend; SPMamba's fused bidirectional block with chunked inference).
"ref"  = SEPCLI_SCAN=ref (the plain reference scan) and, for SPMamba, SEPCLI_SPMAMBA_FUSED=0 (one Block call
         per direction, no chunking: the official computation, as the official code runs without CUDA).
Each case runs in its own subprocess; peak memory is that process's ru_maxrss (model, input and imports
included). RTF = forward time / audio duration, median of the timed runs after a warm-up call (the
reference runs once, without warm-up: it has nothing to compile and takes minutes). Random weights, batch 1,
eval mode, no_grad, flush-to-zero on.

Second table (`precision_table`): SPMamba-8k and -16k at 1 and 2 threads, fp32 and bf16 (torch.autocast on
CPU), RTF (median of 2 timed runs after a warm-up) with the per-part breakdown of one profiled call
(benchmarks.net_profile: STFT, convolutions, Mamba projections, scan, attention, norms, copies, elementwise,
python/other, in s per s of audio), and each RTF as a multiple of its bound (counted GEMM FLOPs at this
machine's measured GEMM throughput of that dtype + the scan's state updates at its measured throughput); the
time inside and outside the selective scan (timed without the profiler, benchmarks.net_profile.scan_split) and
the outside time as a multiple of the GEMM part of the bound: what the network costs beyond its scan.
On CPUs without AMX / AVX512-BF16 autocast emulates bf16 (about 10x slower than fp32 end to end): the bf16 rows are
skipped there unless BENCH_EMULATED_BF16=1, and then marked "(no native bf16)".

Run: `.venv/bin/python -m benchmarks.run nets`. Quick run (4 s inputs only): `SEPCLI_BENCH_QUICK=1` or
`python -m benchmarks.bench_nets --quick`. Other flags: --seconds 4 10, --nets spmamba-8k, --threads N,
--modes ours ref, --precision-seconds 4, --precision-threads 1 2, --no-precision-table, --precision-only
(e.g. `--precision-only --quick --precision-seconds 60`: SPMamba-8k, 2 threads, 60 s).
Reference cases whose estimated memory exceeds 16 GB are skipped ('skipped (est. X GB)').
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NETS = ["spmamba-8k", "s4m-8k", "s4m-tiny-8k"]
SECONDS = [4.0, 10.0, 30.0]
MODES = ["ours", "ref"]

def _mem_limit_gb() -> float:
    """The reference computation runs only where its estimated peak fits: 16 GB, or 60 % of a smaller RAM."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        return 16.0
    return min(16.0, 0.6 * ram)


MEM_LIMIT_GB = _mem_limit_gb()
CHILD_TIMEOUT_S = 3 * 3600


def estimate_ref_gb(net: str, seconds: float) -> float:
    """Rough peak memory of the reference computation, GB. SPMamba's reference scan materialises four
    (batch, 512, length, 16) float tensors per call (exp(dt*A), dt*B*u and the expanded B and C), batch x length
    ~= frames x 122 patches; plus ~0.85 GB per second of audio for the rest of the network (calibrated on this
    machine: measured 2.96 GB at 1 s and 11.6 GB at 4 s)."""
    if not net.startswith("spmamba"):
        return 0.5 + 0.05 * seconds
    sr = 8000 if net.endswith("8k") else 16000
    hop = 64 if sr == 8000 else 128
    freqs = 129 if sr == 8000 else 257
    frames = int(seconds * sr) // hop + 1
    per_tensor = frames * (freqs - 7) * 512 * 16 * 4
    return 4 * per_tensor / 1e9 + 0.85 * seconds + 0.2


def _child(net: str, seconds: float, threads: int, repeat: int, warmup: bool) -> dict:
    """Runs inside the subprocess: build, (warm up), time, and report as a dict."""
    import resource
    import statistics

    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    from sepcli.nets import build_network, named_config

    arch, args, sr = named_config(net)
    torch.manual_seed(0)
    model = build_network(arch, args).eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, int(seconds * sr)) * 0.1
    try:
        from sepcli.kernels import backend_for

        backend = backend_for(x) if arch == "spmamba" else "none"  # S4M has no selective scan
    except Exception as exc:  # noqa: BLE001 - informational only
        backend = f"n/a ({type(exc).__name__})"
    first = None
    times = []
    with torch.no_grad():
        if warmup:
            t0 = time.perf_counter()
            model(x[:, : int(min(seconds, 2.0) * sr)])
            first = time.perf_counter() - t0
        for _ in range(repeat):
            t0 = time.perf_counter()
            y = model(x)
            times.append(time.perf_counter() - t0)
    if not torch.isfinite(y).all():
        raise RuntimeError("non-finite output")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"rtf": statistics.median(times) / seconds, "runs": len(times), "first_call_s": first,
            "peak_gb": peak / 1e9, "params": n_params, "backend": backend}


def run_case(net: str, seconds: float, mode: str, threads: int) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    if mode == "ref":
        env["SEPCLI_SCAN"] = "ref"
        env["SEPCLI_SPMAMBA_FUSED"] = "0"
        repeat, warmup = 1, False
    else:
        env.pop("SEPCLI_SCAN", None)
        env.pop("SEPCLI_SPMAMBA_FUSED", None)
        repeat, warmup = (3 if seconds <= 4 else 2 if seconds <= 10 else 1), True
    cmd = [sys.executable, "-m", "benchmarks.bench_nets", "--child", net, str(seconds), str(threads),
           str(repeat), "1" if warmup else "0"]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _importable(net: str) -> str | None:
    try:
        from sepcli.nets import build_network, named_config

        arch, args, _ = named_config(net)
        build_network(arch, args)
    except Exception as exc:  # noqa: BLE001 - a missing network must not stop the others
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def _fmt(r: dict | None, what: str) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return r["skipped"]
    if "error" in r:
        return "error"
    return f"{r['rtf']:.2f}" if what == "rtf" else f"{r['peak_gb']:.2f}"


PRECISION_NETS = ["spmamba-8k", "spmamba-16k"]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next(line for line in fh if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown CPU flags"
    return ", ".join(f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in flags) or "no AVX-512"


def _child_precision(net: str, seconds: float, threads: int, precision: str) -> dict:
    """Runs inside the subprocess: RTF (median of 2 after a warm-up), the breakdown of one profiled call and
    the bound terms, for one (net, threads, precision)."""
    import contextlib
    import statistics

    import torch

    from benchmarks.net_profile import breakdown, scan_split
    from sepcli.runtime.roofline import count_work, gemm_throughput, scan_throughput

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    from sepcli.nets import build_network, named_config

    arch, args, sr = named_config(net)
    torch.manual_seed(0)
    model = build_network(arch, args).eval()
    x = torch.randn(1, int(seconds * sr)) * 0.1
    dtype = torch.bfloat16 if precision == "bf16" else None
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext
    with torch.no_grad(), ctx():
        model(x)
    splits = [scan_split(model, x, dtype, warmup=False) for _ in range(2)]  # timed without the profiler
    split = sorted(splits, key=lambda r: r["total"])[0]
    parts = breakdown(model, x, dtype, warmup=False)
    work = count_work(model, sr, seconds)  # the counting `sepcli bench` uses
    flops, updates = work["gemm_flops_per_s"], work["scan_updates_per_s"]
    gemm = gemm_throughput(dtype or torch.float32)
    scan = scan_throughput()
    bound = flops / gemm + updates / scan
    return {"rtf": statistics.median(r["total"] for r in splits) / seconds,
            "scan_s": split["scan"] / seconds, "non_scan_s": split["non_scan"] / seconds,
            "parts": {k: v / seconds for k, v in parts.items()},
            "gflop_per_s_audio": flops / 1e9, "gupdates_per_s_audio": updates / 1e9,
            "gemm_gflops": gemm / 1e9, "scan_gupdates": scan / 1e9, "bound": bound, "gemm_bound": flops / gemm}


def precision_table(nets=None, threads=(1, 2), precisions=("fp32", "bf16"), seconds: float = 4.0) -> dict:
    """Print (and return) the precision/thread table with per-part breakdowns; each case in a subprocess."""
    from benchmarks.net_profile import PARTS

    nets = nets or PRECISION_NETS
    flags = _cpu_flags()
    native = "amx_bf16" in flags or "avx512_bf16" in flags
    print(f"\nSPMamba by precision ({seconds:g} s input, random weights, batch 1, no_grad; CPU flags: {flags}); "
          "parts in s per s of audio; bound = GEMM FLOPs / GEMM throughput + scan updates / scan throughput; "
          "scan / n-scan = s per s of audio inside / outside the selective scan (timed without the profiler); "
          "GEMMb = the GEMM part of the bound; xGEMMb = n-scan / GEMMb", flush=True)
    results = {}
    emulated_ok = os.environ.get("BENCH_EMULATED_BF16", "0") == "1"
    for net in nets:
        for th in threads:
            for prec in precisions:
                if prec == "bf16" and not native and not emulated_ok:
                    results[(net, th, prec)] = {"skipped": "no native bf16 on this CPU (emulated; "
                                                           "BENCH_EMULATED_BF16=1 runs it)"}
                    continue
                env = dict(os.environ, OMP_NUM_THREADS=str(th))
                cmd = [sys.executable, "-m", "benchmarks.bench_nets", "--child-precision", net, str(seconds),
                       str(th), prec]
                proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=CHILD_TIMEOUT_S)
                if proc.returncode != 0:
                    lines = (proc.stderr or proc.stdout).strip().splitlines()
                    results[(net, th, prec)] = {"error": lines[-1] if lines else f"exit {proc.returncode}"}
                else:
                    results[(net, th, prec)] = json.loads(proc.stdout.strip().splitlines()[-1])
    short = {"Mamba projections": "proj", "convolutions": "conv", "elementwise": "elemw", "python/other": "py"}
    head = f"{'network':<12} {'thr':>3} {'prec':>5} {'RTF':>6} {'bound':>6} {'xbound':>6} {'scan':>6} " + \
        f"{'n-scan':>6} {'GEMMb':>6} {'xGEMMb':>6} " + \
        " ".join(f"{short.get(p, p):>9}" for p in PARTS) + f" {'GEMM GF/s':>9} {'scan G/s':>8}"
    print(head)
    print("-" * len(head))
    for (net, th, prec), r in results.items():
        if "error" in r or "skipped" in r:
            print(f"{net:<12} {th:>3} {prec:>5} " + (f"error: {r['error']}" if "error" in r else
                                                     f"skipped: {r['skipped']}"))
            continue
        tag = "" if prec == "fp32" or native else " (no native bf16)"
        print(f"{net:<12} {th:>3} {prec:>5} {r['rtf']:>6.2f} {r['bound']:>6.2f} {r['rtf'] / r['bound']:>6.2f} "
              f"{r['scan_s']:>6.2f} {r['non_scan_s']:>6.2f} {r['gemm_bound']:>6.3f} "
              f"{r['non_scan_s'] / r['gemm_bound']:>6.2f} "
              + " ".join(f"{r['parts'][p]:>9.3f}" for p in PARTS)
              + f" {r['gemm_gflops']:>9.0f} {r['scan_gupdates']:>8.2f}{tag}")
    errors = [k for k, r in results.items() if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} precision case(s) failed")
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="bench_nets")
    p.add_argument("--quick", action="store_true", help="4 s inputs only (also SEPCLI_BENCH_QUICK=1)")
    p.add_argument("--seconds", type=float, nargs="+")
    p.add_argument("--nets", nargs="+", default=NETS)
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--threads", type=int, default=int(os.environ.get("SEPCLI_BENCH_THREADS", os.cpu_count() or 1)))
    p.add_argument("--precision-seconds", type=float, default=4.0)
    p.add_argument("--precision-threads", type=int, nargs="+")
    p.add_argument("--no-precision-table", action="store_true")
    p.add_argument("--precision-only", action="store_true", help="only the precision/breakdown table")
    a = p.parse_args([] if argv is None else argv)
    quick = a.quick or os.environ.get("SEPCLI_BENCH_QUICK") == "1"
    threads = tuple(a.precision_threads or ((2,) if quick else (1, 2)))
    if a.precision_only:
        precision_table(["spmamba-8k"] if quick else None, threads, seconds=a.precision_seconds)
        return
    seconds = a.seconds or ([4.0] if a.quick or os.environ.get("SEPCLI_BENCH_QUICK") == "1" else SECONDS)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f} on {os.cpu_count()} cores (other work on the machine slows every figure); "
          f"threads {a.threads}; ours = default scan backend + fused SPMamba; ref = SEPCLI_SCAN=ref "
          f"(+ SEPCLI_SPMAMBA_FUSED=0); RTF = time / audio seconds (lower is faster)", flush=True)
    results: dict = {}
    for net in a.nets:
        why = _importable(net)
        if why:
            print(f"{net}: skipped, not importable ({why})", flush=True)
            continue
        for secs in seconds:
            for mode in a.modes:
                if mode == "ref" and estimate_ref_gb(net, secs) > MEM_LIMIT_GB:
                    r = {"skipped": f"skipped (est. {estimate_ref_gb(net, secs):.0f} GB)"}
                else:
                    t0 = time.perf_counter()
                    r = run_case(net, secs, mode, a.threads)
                    r["wall_s"] = time.perf_counter() - t0
                results[(net, secs, mode)] = r
                print(f"  {net} {secs:g}s {mode}: {json.dumps(r)}", flush=True)

    print()
    head = f"{'network':<13} {'input':>6} {'params':>9} {'backend':>8} {'RTF ours':>9} {'RTF ref':>18} " \
           f"{'speed-up':>8} {'peak GB ours':>12} {'peak GB ref':>18} {'mem ratio':>9}"
    print(head)
    print("-" * len(head))
    for net in a.nets:
        for secs in seconds:
            o, r = results.get((net, secs, "ours")), results.get((net, secs, "ref"))
            if o is None and r is None:
                continue
            ok = o is not None and "rtf" in o
            rok = r is not None and "rtf" in r
            speed = f"{r['rtf'] / o['rtf']:.1f}x" if ok and rok else "-"
            mem = f"{r['peak_gb'] / o['peak_gb']:.1f}x" if ok and rok else "-"
            params = f"{(o or r).get('params', 0) / 1e6:.2f}M" if (ok or rok) else "-"
            backend = o.get("backend", "-") if ok else "-"
            print(f"{net:<13} {secs:>5g}s {params:>9} {backend:>8} {_fmt(o, 'rtf'):>9} {_fmt(r, 'rtf'):>18} "
                  f"{speed:>8} {_fmt(o, 'mem'):>12} {_fmt(r, 'mem'):>18} {mem:>9}")
    errors = [f"{key}: {r['error']}" for key, r in results.items() if "error" in r]
    for e in errors:
        print(f"error in {e}")
    print("Anchors (official code, 2 threads): SPMamba 4 s with mamba_ssm's reference scan RTF 101.8, 7.6 GB; "
          "official S4M 10 s RTF 0.11, 0.4 GB.")
    if not a.no_precision_table:
        precision_table(["spmamba-8k"] if quick else None, threads, seconds=a.precision_seconds)
    if errors:  # benchmarks.run counts it as failed (exit 1) after the others have run
        raise RuntimeError(f"{len(errors)} case(s) failed")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-precision":
        net, secs, threads, prec = sys.argv[2:6]
        print(json.dumps(_child_precision(net, float(secs), int(threads), prec)))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        net, secs, threads, repeat, warm = sys.argv[2:7]
        print(json.dumps(_child(net, float(secs), int(threads), int(repeat), warm == "1")))
    else:
        main(sys.argv[1:])
