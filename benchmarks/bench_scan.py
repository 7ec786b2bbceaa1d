"""Selective-scan kernels: the CPU kernel's state updates per second (forward and backward, 1 and 2 threads) on
the issue's shape and on the shapes SPMamba produces, against this core's measured exp and FMA throughput;
speed-up over the reference, peak extra memory, and end-to-end real-time factors of the networks.

Bound model (printed with the figures): one state update h = exp(dt*A)*h + (dt*u)*B, y += h*C costs one exp and
4 multiply/FMA operations (dt*A, (dt*u)*B, the state FMA, the output FMA). With E exps/s and F FMAs/s measured on
one core (float32, vectorised: our inner-loop exp over an L1-resident array; Horner chains of FMAs on independent
elements), the arithmetic bound is 1 / (1/E + 4/F) updates/s per core; the kernel's figure is printed as a share of it
(per-step overheads such as softplus, the silu gate and layout changes are outside the model).

Recorded figures (issue 29, Intel Xeon with AVX-512, AVX512-BF16 and AMX, 2 vCPUs under KVM; medians, shared lock;
G state updates/s, forward | backward call, 1 thread and 2 threads):
  row kernel before the change: issue shape 0.97 | 0.26, 1.74 | 0.50; intra 0.88 | 0.24, 1.81 | 0.38;
                                inter 1.04 | 0.26, 2.10 | 0.50
  channel-block forward:        issue shape 1.34-1.51, 2.41-2.99; intra 1.47-1.58, 2.85-3.19; inter 1.43-1.58,
                                2.81-3.04 (backward unchanged); core bound 2.70 G/s per core (exp 3.64, FMA 41.8 G/s)
  2026-12-07 morning, explicitly vectorised forward for n = 16 (sepcli/kernels/scan_cpu_vec.py), same machine class
  ("Intel(R) Xeon(R) Processor", 2 vCPUs, flags fma avx2 avx512f avx512_bf16 amx_bf16 amx_tile), run with the
  Makefile's MALLOC_* settings, against the baseline kernel of git 4eb3200 in the same run (interleaved medians),
  forward G updates/s baseline -> new (ratio), 1 thread | 2 threads:
                                issue 1.06 -> 2.64 (2.50x) | 2.00 -> 5.02 (2.50x);
                                intra 0.90 -> 2.76 (3.07x) | 1.80 -> 5.21 (2.90x);
                                inter 1.03 -> 2.84 (2.75x) | 2.05 -> 5.39 (2.63x)
                                (other runs: issue 2.4-2.8x, intra 2.9-3.1x, inter 2.5-2.8x); core_throughput in
                                that run: exp (scan_cpu._exp, 256-bit loop) 4.14 G/s, FMA 44.7 G/s, bound 3.02 G/s
                                per core (the 16-lane IR loop itself, one block in cache: ~6.8 G/s per core, above
                                that bound because it runs on 512-bit registers). Around the loop, the passes over
                                u/delta/z/out are memory-bound; a fresh 33 MB output costs ~17 ms in page faults
                                alone (intra's out; above the Makefile's 32 MiB mmap threshold).
  2026-12-07 morning, backward (scan_cpu_bwd), same run as the 4eb3200 per-row kernel (print_backward_vs_baseline),
  new | baseline:
                                issue shape 0.70 | 0.28 (2.5x), 1.31 | 0.50 (2.6x); intra 1.02 | 0.26 (3.9x),
                                1.99 | 0.51 (3.9x); inter 0.79 | 0.26 (3.0x), 1.47 | 0.47 (3.1x)
  2026-12-07 afternoon (same machine class and flags, Makefile MALLOC_* settings, same run as the 4eb3200
  kernel), forward time-tiled (1024 steps) and backward in 256-step segments with vectorised row passes,
  G updates/s baseline -> new (ratio), 1 thread | 2 threads:
                                forward:  issue 1.06 -> 2.70 (2.55x) | 2.05 -> 4.94 (2.41x);
                                          intra 0.94 -> 2.73 (2.91x) | 1.88 -> 5.44 (2.89x);
                                          inter 1.06 -> 2.96 (2.80x) | 2.08 -> 5.65 (2.72x)  (the same as
                                          the morning's vectorised forward, within noise)
                                backward: issue 0.28 -> 0.73 (2.63x) | 0.50 -> 1.30 (2.60x);
                                          intra 0.25 -> 1.11 (4.42x) | 0.50 -> 1.95 (3.91x);
                                          inter 0.28 -> 0.90 (3.24x) | 0.48 -> 1.55 (3.21x)
                                One hot block of the n = 16 forward (16 channels, 1024 steps), ns per (b, d, t) element:
                                row setup (softplus, dt·u, transposes) 1.14, time loop 2.55 (6.3 G updates/s), output
                                (transposes, D term, gate) ~1.3: the passes around the loop are still ~half its time.

  2026-12-07 session 25 (same machine class and flags, Makefile MALLOC_* settings, same run as the 4eb3200
  kernel), forward with the base-2 exp (AVX-512 vreduceps/vscalefps: 11 vector operations per 16 state updates
  instead of 17), fused row passes (scan_vec_rows) and software prefetch 2 chunks ahead, G updates/s
  baseline -> new (ratio), 1 thread | 2 threads:
                                issue 0.94 -> 3.49 (3.74x) | 2.13 -> 8.45 (3.96x);
                                intra 1.01 -> 3.34 (3.32x) | 1.94 -> 6.74 (3.47x);
                                inter 1.07 -> 3.99 (3.74x) | 2.11 -> 7.74 (3.67x)
                                (another run: issue 0.99 -> 4.03 (4.06x) | 2.05 -> 7.75 (3.77x), intra 3.22x |
                                3.19x, inter 3.72x | 3.69x; before the prefetch: issue 3.6-3.7x, intra 3.1-3.3x,
                                inter 3.3-3.4x). The
                                core bound printed by print_kernel_figures (scan_cpu._exp's 15-operation exp:
                                4.02 G exps/s, FMA 44.8 G/s -> 2.96 G updates/s per core) no longer bounds this
                                forward (it exceeds it); it still models the backward. One hot block (16 channels,
                                4000 steps, in cache): time loop ~1.85 ns per (b, d, t) element (was 2.55), whole
                                block ~3.0-3.2 ns (was ~4.9).
                                bfloat16 u, delta, z, B, C read by the kernel vs .float() first (bf16_vs_cast),
                                ms, 1 thread | 2 threads (same run as the first figures above): issue 7.7 vs
                                10.1 | 4.1 vs 5.1 (21-24%); intra 37.1 vs 53.1 | 18.1 vs 26.5 (30-32%); inter
                                31.6 vs 47.1 | 15.2 vs 23.0 (33-34%).

The forward-vs-baseline table loads the baseline with `git show` (BASELINE_COMMIT) into a temporary module.
Run: `.venv/bin/python -m benchmarks.run scan`. Times are medians of several runs after warm-up; on a shared
machine they are noisy, so read ratios rather than absolute figures.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# (b, d, l, n): the issue's target shape; an SPMamba-like batch of short sequences (bidirectional scan stacked
# to 2x256 channels over ~122 frequency patches); one long sequence.
SHAPES = [(1, 512, 4000, 16), (64, 512, 122, 16), (2, 64, 16000, 16)]
TARGET = SHAPES[0]
# forward + backward: the reference's autograd is very slow (each time step's backward touches whole
# (b, d, l, n) tensors), so it is timed on a smaller shape; the CPU kernel also at the target shape.
BWD_SHAPES = [(1, 128, 500, 16), TARGET]
# (named config, seconds of audio): networks with a selective scan only (S4M has none: its rows would time the
# same computation under every backend)
NETWORKS = [("spmamba-8k", 1.0), ("spmamba-16k", 1.0)]


def _inputs(b: int, d: int, l: int, n: int, requires_grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    kw = {
        "u": torch.randn(b, d, l, generator=g),
        "delta": torch.randn(b, d, l, generator=g) * 0.5 - 1.0,
        "A": -(0.1 + torch.rand(d, n, generator=g)),
        "B": torch.randn(b, n, l, generator=g),
        "C": torch.randn(b, n, l, generator=g),
        "D": torch.randn(d, generator=g),
        "z": torch.randn(b, d, l, generator=g),
        "delta_bias": torch.rand(d, generator=g) * 0.2,
    }
    if requires_grad:
        kw = {k: v.requires_grad_(True) for k, v in kw.items()}
    return kw


def _scan_fn(backend: str):
    from sepcli.kernels import selective_scan

    return lambda **kw: selective_scan(**kw, delta_softplus=True, backend=backend)


def _once(backend: str, kw: dict, mode: str) -> None:
    out = _scan_fn(backend)(**kw)
    if mode == "fwd+bwd":
        out.backward(torch.ones_like(out))


def _median_time(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _hwm_bytes() -> int:
    """Peak resident set size of this process (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_extra_memory(backend: str, shape: tuple, mode: str) -> int:
    """Child-process entry: peak RSS during one call minus RSS just before it (inputs already allocated).

    The peak is reset first (Linux: writing 5 to /proc/self/clear_refs), so imports and JIT compilation
    on a tiny warm-up input do not count."""
    torch.set_flush_denormal(True)
    kw = _inputs(*shape, requires_grad=mode == "fwd+bwd")
    small = _inputs(1, shape[1], 8, shape[3], requires_grad=mode == "fwd+bwd")
    _once(backend, small, mode)  # compile / warm up on a tiny input so only the scan's own memory shows
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_bytes()
    _once(backend, kw, mode)
    return max(0, _hwm_bytes() - before)


def _measure_memory(backend: str, shape: tuple, mode: str) -> str:
    code = (f"import json, benchmarks.bench_scan as b; "
            f"print(json.dumps(b.peak_extra_memory({backend!r}, {tuple(shape)!r}, {mode!r})))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode:
        return "failed"
    return f"{json.loads(proc.stdout.strip().splitlines()[-1]) / 2**20:.0f} MiB"


# ------------------------------------------------------------------------------------------------- bounds


def machine_bounds(threads: int) -> dict:
    """Measured compute and memory roofs for the scan's arithmetic on this machine."""
    from numba import njit, prange

    from sepcli.kernels.scan_cpu import _exp

    @njit(fastmath={"reassoc", "contract", "nsz"})
    def body(x, A, h, B, C, reps):  # the scan's per-update arithmetic with no time dependency
        y = np.float32(0.0)
        for _ in range(reps):
            for k in range(x.shape[0]):
                y += (_exp(x[k] * A[k]) * h[k] + x[k] * B[k]) * C[k]
        return y

    @njit(parallel=True)
    def body_par(x, A, h, B, C, reps, nthreads):
        acc = np.zeros(nthreads, np.float32)
        for i in prange(nthreads):
            acc[i] = body(x, A, h, B, C, reps)
        return acc.sum()

    @njit(error_model="numpy")
    def exp_only(x, out, reps):
        for _ in range(reps):
            for k in range(x.shape[0]):
                out[k] = _exp(x[k])
        return out[0]

    rng = np.random.default_rng(0)
    m = 4096  # in L1/L2
    x, A, h, B, C = (rng.standard_normal(m).astype(np.float32) * 0.1 for _ in range(5))
    out = np.empty_like(x)
    reps = 2000
    body(x, A, h, B, C, 1)
    exp_only(x, out, 1)
    body_par(x, A, h, B, C, 1, threads)
    # Kernel and roof on one thread, interleaved, best of 7 each: the fairest comparison on a busy machine.
    from sepcli.kernels.scan_cpu import scan_forward

    kshape = (1, 64, 4000, 16)
    kw = _inputs(*kshape)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scan_forward(**kw, delta_softplus=True)
        t1, tk = [], []
        for _ in range(7):
            t1.append(_median_time(lambda: body(x, A, h, B, C, reps), 0, 1))
            tk.append(_median_time(lambda: scan_forward(**kw, delta_softplus=True), 0, 1))
    finally:
        torch.set_num_threads(old_threads)
    tp = _median_time(lambda: body_par(x, A, h, B, C, reps, threads), 1, 5)
    te = min(_median_time(lambda: exp_only(x, out, reps), 0, 1) for _ in range(7))
    big = np.ones(64 * 2**20 // 4, np.float32)
    dst = np.empty_like(big)
    tc = _median_time(lambda: np.copyto(dst, big), 1, 5)
    return {
        "exp_per_s_1thread": m * reps / te,
        "update_roof_1thread": m * reps / min(t1),
        "kernel_1thread": np.prod(kshape) / min(tk),
        "kernel_shape": kshape,
        "update_roof_all": threads * m * reps / tp,
        "copy_GBps": 2 * big.nbytes / tc / 1e9,
    }


# ------------------------------------------------------------------------------------------------- kernel figures

# (label, (b, d, l, n), B/C groups: 0 = (b, n, l), g = (b, g, n, l) views sliced from one projection output as in
# SPMamba's fused bidirectional block: 2*d_inner = 1024 channels, intra-frame: 67 frames x 122 frequency patches
# per chunk of 8192 tokens; inter-frame: 16 frequencies x 494 frames of a 4 s input)
KERNEL_SHAPES = [("issue", (1, 512, 4000, 16), 0), ("spmamba intra", (67, 1024, 122, 16), 2),
                 ("spmamba inter", (16, 1024, 494, 16), 2)]
FMA_PER_UPDATE = 4


def _kernel_inputs(shape: tuple, groups: int) -> dict:
    b, d, l, n = shape
    kw = _inputs(b, d, l, n)
    if groups:
        g = torch.Generator().manual_seed(1)
        dbl = torch.randn(b, groups, 32 + 2 * n, l, generator=g)
        kw["B"], kw["C"] = dbl[:, :, 32:32 + n], dbl[:, :, 32 + n:]
    return kw


def cpu_description() -> str:
    """CPU model and the vector/matrix flags that matter here (Linux /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("fma", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; {os.cpu_count()} logical CPUs; flags: {' '.join(shown) or 'n/a'}"


def core_throughput() -> dict:
    """Measured on one core: our inner-loop exp (float32 values/s) and float32 FMAs per s (vectorised)."""
    from numba import njit

    from sepcli.kernels.scan_cpu import _exp

    @njit(error_model="numpy")
    def exp_loop(x, out, reps):
        for _ in range(reps):
            for k in range(x.shape[0]):
                out[k] = _exp(x[k])
        return out[0]

    @njit(fastmath={"contract"})
    def fma_loop(x, out, reps):  # a Horner chain of 32 FMAs per element, elements independent: FMA-bound
        c = np.float32(0.5)
        for _ in range(reps):
            for k in range(x.shape[0]):
                v = x[k]
                p = c
                for _i in range(32):
                    p = p * v + c
                out[k] = p
        return out[0]

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * 3).astype(np.float32)
    out = np.empty_like(x)
    y = (rng.random(1024) * 0.5).astype(np.float32)
    out_y = np.empty_like(y)
    exp_loop(x, out, 1)
    fma_loop(y, out_y, 1)
    reps_e, reps_f = 2000, 500
    te = min(_median_time(lambda: exp_loop(x, out, reps_e), 0, 1) for _ in range(5))
    tf = min(_median_time(lambda: fma_loop(y, out_y, reps_f), 0, 1) for _ in range(5))
    exp_s = x.shape[0] * reps_e / te
    fma_s = 32 * y.shape[0] * reps_f / tf
    return {"exp_per_s": exp_s, "fma_per_s": fma_s, "bound_per_core": 1.0 / (1.0 / exp_s + FMA_PER_UPDATE / fma_s)}


def _kernel_cases(threads_list):
    """(label, shape, kernel inputs, backward's output gradient, state updates, threads) for each of KERNEL_SHAPES
    at each thread count, with torch's thread count set to it (and restored at the end)."""
    old = torch.get_num_threads()
    try:
        for label, shape, groups in KERNEL_SHAPES:
            kw = _kernel_inputs(shape, groups)
            go = torch.randn(shape[:3], generator=torch.Generator().manual_seed(2))
            for threads in threads_list:
                torch.set_num_threads(threads)
                yield label, shape, kw, go, float(np.prod(shape)), threads
    finally:
        torch.set_num_threads(old)


def kernel_figures(threads_list=(1, 2)) -> list[tuple]:
    """(label, shape, threads, fwd updates/s, bwd updates/s) of the CPU kernel; bwd = the autograd backward call
    alone (recompute + reverse scan), medians after warm-up."""
    from sepcli.kernels import scan_cpu

    rows = []
    for label, shape, kw, go, updates, threads in _kernel_cases(threads_list):
        with torch.no_grad():
            tf = _median_time(lambda kw=kw: scan_cpu.selective_scan_cpu(**kw, delta_softplus=True), 2, 5)
        rows.append((label, shape, threads, updates / tf, updates / _backward_time(scan_cpu, kw, go)))
    return rows


BASELINE_COMMIT = "4eb3200"  # the kernel before issue 29 part 2 (row-per-channel forward), the speed-up's reference


def baseline_module():
    """scan_cpu.py as of BASELINE_COMMIT, imported from a temporary file (`git show`), so that the baseline and
    today's kernel are timed in the same process and run. None when git or the commit is not available."""
    import importlib.util
    import tempfile

    try:
        src = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:sepcli/kernels/scan_cpu.py"], cwd=ROOT,
                             check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    src = src.replace("from .scan_ref import", "from sepcli.kernels.scan_ref import")
    path = Path(tempfile.gettempdir()) / f"sepcli_scan_cpu_{BASELINE_COMMIT}.py"
    if not path.exists() or path.read_text() != src:
        path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"sepcli_scan_cpu_{BASELINE_COMMIT}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # numba's disk cache finds the module of a cached function by name
    spec.loader.exec_module(mod)
    return mod


def _interleaved_medians(fns, runs: int) -> list[float]:
    """Median seconds of each function, timed in turn run by run after two warm-up calls each (so that drift
    of the machine hits all of them alike)."""
    for fn in fns:
        fn()
        fn()
    ts = [[] for _ in fns]
    for _ in range(runs):
        for i, fn in enumerate(fns):
            ts[i].append(_median_time(fn, 0, 1))
    return [statistics.median(t) for t in ts]


def forward_vs_baseline(threads_list=(1, 2), runs: int = 7) -> list[tuple]:
    """(label, shape, threads, baseline fwd updates/s, today's fwd updates/s): forward calls (no grad) of the
    baseline kernel and of today's, interleaved run by run (medians), on the KERNEL_SHAPES."""
    from sepcli.kernels.scan_cpu import scan_forward

    base = baseline_module()
    rows = []
    for label, shape, kw, _, updates, threads in _kernel_cases(threads_list):
        fns = [lambda kw=kw: scan_forward(**kw, delta_softplus=True)]
        if base is not None:
            fns.append(lambda kw=kw: base.scan_forward(**kw, delta_softplus=True))
        ts = _interleaved_medians(fns, runs)
        new = updates / ts[0]
        old_s = updates / ts[1] if base is not None else float("nan")
        rows.append((label, shape, threads, old_s, new))
    return rows


def print_forward_vs_baseline() -> None:
    print(f"Forward against the baseline kernel (git {BASELINE_COMMIT}), same run, interleaved medians:")
    print(f"{'shape':<16}{'(b, d, l, n)':<22}{'thr':>4}{'base G/s':>10}{'new G/s':>10}{'speed-up':>10}")
    for label, shape, threads, old, new in forward_vs_baseline():
        print(f"{label:<16}{shape!s:<22}{threads:>4}{old / 1e9:>10.2f}{new / 1e9:>10.2f}{new / old:>9.2f}x",
              flush=True)
    print()


def bf16_vs_cast(threads_list=(1, 2), runs: int = 7) -> list[tuple]:
    """(label, shape, threads, ms direct, ms cast first): the forward (no grad) on bfloat16 u, delta, z, B, C read
    by the kernel's row pass (bfloat16 out), against casting them with .float() first (float32 out), interleaved
    medians on the KERNEL_SHAPES."""
    from sepcli.kernels.scan_cpu import scan_forward

    keys = ("u", "delta", "z", "B", "C")
    rows = []
    for label, shape, kw, _, _, threads in _kernel_cases(threads_list):
        h = {k: (v.to(torch.bfloat16) if k in keys else v) for k, v in kw.items()}
        fns = [lambda h=h: scan_forward(**h, delta_softplus=True),
               lambda h=h: scan_forward(**{k: (v.float() if k in keys else v) for k, v in h.items()},
                                        delta_softplus=True)]
        ts = _interleaved_medians(fns, runs)
        rows.append((label, shape, threads, 1e3 * ts[0], 1e3 * ts[1]))
    return rows


def print_bf16_vs_cast() -> None:
    print("Forward on bfloat16 u, delta, z, B, C: read by the kernel vs cast with .float() first (interleaved "
          "medians):")
    print(f"{'shape':<16}{'(b, d, l, n)':<22}{'thr':>4}{'bf16 ms':>10}{'cast ms':>10}{'saved':>8}")
    for label, shape, threads, direct, cast in bf16_vs_cast():
        print(f"{label:<16}{shape!s:<22}{threads:>4}{direct:>10.1f}{cast:>10.1f}{100 * (1 - direct / cast):>7.0f}%",
              flush=True)
    print()


def print_kernel_figures() -> None:
    print(f"CPU: {cpu_description()}")
    core = core_throughput()
    bound = core["bound_per_core"]
    print(f"Core (1 thread): our vectorised exp {core['exp_per_s'] / 1e9:.2f} G/s, float32 FMA "
          f"{core['fma_per_s'] / 1e9:.1f} G/s -> arithmetic bound 1/(1/E + {FMA_PER_UPDATE}/F) = "
          f"{bound / 1e9:.2f} G updates/s per core")
    print(f"\n{'shape':<16}{'(b, d, l, n)':<22}{'thr':>4}{'fwd G upd/s':>13}{'% bound':>9}{'bwd G upd/s':>13}"
          f"{'% bound':>9}")
    for label, shape, threads, fwd, bwd in kernel_figures():
        roof = bound * min(threads, os.cpu_count() or 1)
        print(f"{label:<16}{shape!s:<22}{threads:>4}{fwd / 1e9:>13.2f}{100 * fwd / roof:>8.0f}%{bwd / 1e9:>13.2f}"
              f"{100 * bwd / roof:>8.0f}%", flush=True)
    print("(% bound: share of the arithmetic bound at that thread count; bwd = the backward call alone, which "
          "recomputes the forward: its bound is at most half the forward's. The n = 16 forward's time loop uses "
          "a cheaper base-2 exp than this bound's, so its share can exceed 100%)\n")


def _backward_time(mod, kw: dict, go: torch.Tensor, runs: int = 3) -> float:
    """Median time of the autograd backward call alone (the graph is built outside the timing)."""
    times = []
    for i in range(runs + 1):
        a = [kw[k].detach().clone().requires_grad_(True) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        out, _ = mod.SelectiveScanCPU.apply(*a, True)
        t0 = time.perf_counter()
        out.backward(go)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def print_backward_vs_baseline(threads_list=(1, 2)) -> None:
    """Backward call (recompute + reverse scan + plumbing) of the CPU kernel next to the BASELINE_COMMIT kernel's,
    interleaved in the same run, as G state updates/s and their ratio."""
    from sepcli.kernels import scan_cpu

    base = baseline_module()
    print(f"Backward call, G state updates/s: this kernel vs the per-row kernel at {BASELINE_COMMIT} (same run)")
    for label, shape, kw, go, updates, threads in _kernel_cases(threads_list):
        tb = _backward_time(base, kw, go) if base is not None else float("nan")
        tn = _backward_time(scan_cpu, kw, go)
        print(f"  {label:<16}{shape!s:<22}{threads:>2} thr  baseline {updates / tb / 1e9:6.2f}  "
              f"new {updates / tn / 1e9:6.2f}  ratio {tb / tn:5.2f}x", flush=True)
    print()


# ------------------------------------------------------------------------------------------------- networks


def network_rtf(backends: list[str]) -> None:
    """RTF of each named network with each scan backend, and the share of that time spent in the scan.

    The reference backend materialises (b, d, l, n) tensors and is very slow inside SPMamba, so it runs on
    a quarter of the audio, once, without warm-up."""
    print("\nEnd-to-end real-time factor (seconds of compute per second of audio, batch 1, no grad):")
    try:
        import sepcli.kernels as kernels
        from sepcli.nets import build_network, named_config
    except Exception as exc:  # noqa: BLE001 - a missing network must not hide the kernel figures
        print(f"  skipped all networks: sepcli.nets not importable ({type(exc).__name__}: {exc})")
        return
    print(f"  {'network':<16}{'backend':<10}{'audio s':>8}{'RTF':>10}{'scan share':>12}")
    for name, seconds in NETWORKS:
        try:
            arch, args, sr = named_config(name)
            net = build_network(arch, args).eval()
        except Exception as exc:  # noqa: BLE001
            print(f"  {name:<16}skipped: not available yet ({type(exc).__name__}: {str(exc)[:80]})")
            continue
        for backend in backends:
            secs = seconds if backend != "ref" else seconds / 4
            warmup, runs = (1, 2) if backend != "ref" else (0, 1)
            mix = torch.randn(1, int(secs * sr), generator=torch.Generator().manual_seed(0)) * 0.1
            old = os.environ.get("SEPCLI_SCAN")
            os.environ["SEPCLI_SCAN"] = backend
            scan_time = [0.0]
            real_scan = kernels.selective_scan

            def timed_scan(*a, _real=real_scan, _acc=scan_time, **k):
                t0 = time.perf_counter()
                try:
                    return _real(*a, **k)
                finally:
                    _acc[0] += time.perf_counter() - t0

            kernels.selective_scan = timed_scan
            try:
                with torch.inference_mode():
                    t = _median_time(lambda net=net, mix=mix: net(mix), warmup, runs)
                share = scan_time[0] / (t * (warmup + runs)) if t > 0 else 0.0
                print(f"  {name:<16}{backend:<10}{secs:>8.2f}{t / secs:>10.3f}{100 * share:>11.0f}%", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"  {name:<16}{backend:<10}failed: {type(exc).__name__}: {str(exc)[:80]}")
            finally:
                kernels.selective_scan = real_scan
                if old is None:
                    os.environ.pop("SEPCLI_SCAN", None)
                else:
                    os.environ["SEPCLI_SCAN"] = old


# ------------------------------------------------------------------------------------------------- main


def main() -> None:
    from sepcli.kernels import available_backends
    from sepcli.kernels.scan_cpu import threads_for_call

    torch.set_flush_denormal(True)
    threads = threads_for_call()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch threads {torch.get_num_threads()}, CPU-kernel threads {threads}; "
          f"backends: " + ", ".join(f"{dev}: {available_backends(dev)}" for dev in devices))
    if not torch.cuda.is_available():
        print("No CUDA device: the Triton and mamba_ssm backends are not timed here.")
    print("Times: median of runs after warm-up; shared machine, so figures are noisy.\n")
    print_forward_vs_baseline()
    print_bf16_vs_cast()
    print_kernel_figures()
    print_backward_vs_baseline()

    print(f"{'shape (b,d,l,n)':<22}{'backend':<9}{'mode':<9}{'time s':>9}{'updates/s':>12}{'vs ref':>9}")
    results: dict = {}
    plan = [(shape, "fwd", ("ref", "cpu")) for shape in SHAPES]
    plan += [(shape, "fwd+bwd", ("ref", "cpu") if shape != TARGET else ("cpu",)) for shape in BWD_SHAPES]
    for shape, mode, backends in plan:
        updates = int(np.prod(shape))
        for backend in backends:
            kw = _inputs(*shape, requires_grad=mode == "fwd+bwd")
            runs = (7, 2) if backend != "ref" else (3, 1) if mode == "fwd" else (1, 0)
            t = _median_time(lambda backend=backend, kw=kw, mode=mode: _once(backend, kw, mode), runs[1], runs[0])
            results[(shape, mode, backend)] = t
            ref_t = results.get((shape, mode, "ref"))
            ratio = f"{ref_t / t:>8.1f}x" if ref_t else f"{'n/a':>9}"
            print(f"{shape!s:<22}{backend:<9}{mode:<9}{t:>9.3f}{updates / t:>12.3g}{ratio}", flush=True)

    print(f"\nPeak extra memory (RSS above the inputs, one call, fresh process). At {TARGET}: (b,d,l,n) fp32 = "
          f"{np.prod(TARGET) * 4 / 2**20:.0f} MiB, out (b,d,l) = {np.prod(TARGET[:3]) * 4 / 2**20:.1f} MiB, "
          f"(b,d,n) = {TARGET[0] * TARGET[1] * TARGET[3] * 4 / 2**10:.0f} KiB")
    for shape, mode, backends in [(TARGET, "fwd", ("ref", "cpu")), (BWD_SHAPES[0], "fwd+bwd", ("ref", "cpu")),
                                  (TARGET, "fwd+bwd", ("cpu",))]:
        for backend in backends:
            print(f"  {shape!s:<22}{backend:<5}{mode:<9}{_measure_memory(backend, shape, mode):>10}", flush=True)

    bounds = machine_bounds(threads)
    achieved = np.prod(TARGET) / results[(TARGET, "fwd", "cpu")]
    print("\nMachine bound for the scan's arithmetic (per state update: one exp, ~3 multiply-adds):")
    print(f"  vectorised exp (ours), 1 thread:          {bounds['exp_per_s_1thread']:.3g} /s")
    print(f"  scan body without recurrence, 1 thread:   {bounds['update_roof_1thread']:.3g} updates/s")
    print(f"  same, {threads} threads (compute roof):          {bounds['update_roof_all']:.3g} updates/s")
    print(f"  memory copy bandwidth:                    {bounds['copy_GBps']:.3g} GB/s; the scan moves ~16 B per "
          f"(b,d,t), ~1 B per update at n=16: a memory roof near {bounds['copy_GBps'] * 1e9:.2g} updates/s, "
          f"so compute binds")
    print(f"  CPU kernel forward at {TARGET}, {threads} threads: {achieved:.3g} updates/s = "
          f"{100 * achieved / bounds['update_roof_all']:.0f}% of the {threads}-thread roof (medians)")
    print(f"  CPU kernel forward at {bounds['kernel_shape']}, 1 thread: {bounds['kernel_1thread']:.3g} updates/s = "
          f"{100 * bounds['kernel_1thread'] / bounds['update_roof_1thread']:.0f}% of the 1-thread roof "
          f"(best of 7, interleaved)")

    network_rtf(["ref", "cpu"])


if __name__ == "__main__":
    main()
