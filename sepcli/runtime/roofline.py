"""A lower bound on a network's real-time factor on this machine, and the measurements behind it.

    bound RTF = GEMM FLOPs per second of audio / GEMM throughput (fp32 or bf16, at the thread count used)
              + selective-scan state updates per second of audio / scan throughput

- `count_work(network, sample_rate, seconds)`: one forward pass of `seconds` of noise, counted.
  GEMM FLOPs come from torch.utils.flop_counter.FlopCounterMode: matrix products (mm, addmm, bmm, baddbmm),
  convolutions (with their groups) and scaled-dot-product attention, 2 FLOPs per multiply-add. It does NOT count
  elementwise ops, norms, pooling, interpolation, FFTs (S4's convolution) or the selective scan (a numba kernel
  outside PyTorch's dispatcher). The scan is counted analytically at its entry point: every call of
  sepcli.kernels.selective_scan adds b x d x l x n state updates (its u is (b, d, l), its A (d, n); a caller
  that stacks both directions along d counts both), i.e. passes x directions x d_inner x d_state x L in all.
- `gemm_throughput(dtype, size)`: FLOP/s of a size^3 matrix product at torch's current thread count (median of
  timed runs after warm-up).
- `scan_throughput(shape)`: state updates/s of the default selective-scan backend on (b, d, l, n) (median after
  warm-up).
- `rtf_bound(...)`: the formula above; `multiple` = measured RTF / bound.

Both `sepcli bench` and `make bench` (benchmarks/bench_roofline.py) print these.
"""

from __future__ import annotations

import contextlib
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch

GEMM_SIZE = 1024  # representative of the networks' projections (hundreds to a few thousand rows and columns)
SCAN_SHAPE = (1, 512, 4000, 16)  # (b, d, l, n): SPMamba-8k's d_inner over a long sequence
SCAN_ENTRY_POINTS = ("selective_scan",)


def _median_time(fn: Callable[[], object], warmup: int = 2, runs: int = 7, min_time: float = 0.02) -> float:
    """Median seconds of one call of `fn` (each timed run repeats it until `min_time` has passed)."""
    for _ in range(warmup):
        fn()
    per_call = []
    for _ in range(runs):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        per_call.append(elapsed / n)
    return statistics.median(per_call)


def gemm_throughput(dtype: torch.dtype = torch.float32, size: int = GEMM_SIZE, runs: int = 7, warmup: int = 3) -> float:
    """FLOP/s of a [size x size] @ [size x size] product in `dtype` on the CPU (2 size^3 FLOPs per product)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    seconds = _median_time(lambda: torch.mm(a, b, out=out), warmup=warmup, runs=runs)
    return 2.0 * size**3 / seconds


def bf16_gemm_throughput(native_bf16: bool) -> float:
    """`gemm_throughput` in bfloat16. Without native bf16 (emulated) one product takes seconds: there one warm-up
    and one timed run give its order of magnitude."""
    return gemm_throughput(torch.bfloat16, **({} if native_bf16 else {"runs": 1, "warmup": 1}))


def scan_throughput(shape: tuple[int, int, int, int] = SCAN_SHAPE, runs: int = 5) -> float:
    """State updates/s of sepcli.kernels.selective_scan (default backend, fp32, softplus on delta, with D, z and
    delta_bias as in Mamba) on (b, d, l, n)."""
    from sepcli.kernels import selective_scan

    b, d, length, n = shape
    g = torch.Generator().manual_seed(0)
    kw = {"u": torch.randn(b, d, length, generator=g), "delta": torch.randn(b, d, length, generator=g) * 0.5 - 1.0,
          "A": -(0.1 + torch.rand(d, n, generator=g)), "B": torch.randn(b, n, length, generator=g),
          "C": torch.randn(b, n, length, generator=g), "D": torch.randn(d, generator=g),
          "z": torch.randn(b, d, length, generator=g), "delta_bias": torch.rand(d, generator=g) * 0.2}
    with torch.inference_mode():
        seconds = _median_time(lambda: selective_scan(**kw, delta_softplus=True), warmup=2, runs=runs)
    return b * d * length * n / seconds


class _ScanCounter:
    """Counts state updates at the outermost scan call only (a wrapper in nets/ calls sepcli.kernels': each
    update is counted once)."""

    def __init__(self) -> None:
        self.updates = 0
        self.calls = 0
        self._depth = 0

    def _count(self, u: torch.Tensor, A: torch.Tensor) -> None:
        if self._depth == 0:
            b, d, length = u.shape
            self.updates += b * d * length * A.shape[-1]
            self.calls += 1

    def wrap(self, fn: Callable) -> Callable:
        def counted(*args, **kwargs):
            self._count(args[0] if args else kwargs["u"], args[2] if len(args) > 2 else kwargs["A"])
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        return counted


@contextlib.contextmanager
def counting_scans() -> Iterator[_ScanCounter]:
    """Counts the selective scan's state updates inside the block: the scan entry points are wrapped in
    sepcli.kernels and in every loaded sepcli.nets module that holds them by name, and restored afterwards."""
    counter = _ScanCounter()
    saved = []
    targets = [importlib.import_module("sepcli.kernels")]
    targets += [m for name, m in list(sys.modules.items()) if name.startswith("sepcli.nets.") and m is not None]
    for module in targets:
        for attr in SCAN_ENTRY_POINTS:
            fn = getattr(module, attr, None)
            if callable(fn):
                saved.append((module, attr, fn))
                setattr(module, attr, counter.wrap(fn))
    try:
        yield counter
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)


@contextlib.contextmanager
def _pytorch_path() -> Iterator[None]:
    """The networks' numba-fused inference kernels off inside the block: FlopCounterMode sees only PyTorch ops, and
    the default S4M model switches to its fused kernels from its FUSE_AFTER-th forward in a process (after
    `sepcli bench`'s timed runs a count would miss about a third of its FLOPs), and SPMamba's grouped Mamba path
    keeps its dt_proj GEMM (with bimamba_grouped.FOLD_DT the scan computes it, out of the counter's sight)."""
    from sepcli.nets import bimamba_grouped, s4m_fused

    saved = s4m_fused.ENABLED, bimamba_grouped.FOLD_DT
    s4m_fused.ENABLED = bimamba_grouped.FOLD_DT = False
    try:
        yield
    finally:
        s4m_fused.ENABLED, bimamba_grouped.FOLD_DT = saved


def count_work(network: torch.nn.Module, sample_rate: int, seconds: float = 4.0, samples: int | None = None) -> dict:
    """FLOPs (FlopCounterMode) and selective-scan state updates of one forward pass over `seconds` of noise
    (or exactly `samples` samples), and both per second of audio. `by_op`: FLOPs per counted ATen op."""
    from torch.utils.flop_counter import FlopCounterMode

    n = max(1, int(samples) if samples is not None else int(round(seconds * sample_rate)))
    x = 0.1 * torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    param = next(iter(network.parameters()), None)
    if param is not None:
        x = x.to(param.device)
    with torch.inference_mode(), counting_scans() as scans, _pytorch_path(), FlopCounterMode(display=False) as flops:
        network(x)
    total = int(flops.get_total_flops())
    by_op = {str(op): int(v) for op, v in flops.get_flop_counts().get("Global", {}).items()}
    return {"seconds": n / sample_rate, "gemm_flops": total, "scan_updates": scans.updates, "scan_calls": scans.calls,
            "gemm_flops_per_s": total * sample_rate / n, "scan_updates_per_s": scans.updates * sample_rate / n,
            "by_op": by_op}


def count_passes_work(network: torch.nn.Module, sample_rate: int, passes: dict[int, int], audio_samples: int,
                      counted: dict[int, dict] | None = None) -> dict:
    """The work of a pipeline's network passes over an input of `audio_samples` samples: `passes` maps an input
    length in samples to how many passes of that length the pipeline makes (Separator.network_passes); each
    distinct length is counted once with count_work (or taken from `counted`, {samples: count_work result}) and
    multiplied by its number of passes. `overlap_factor` = network input samples / audio samples (as the pipeline
    passes them: a network that pads a short input to its minimum length does more, which the counts include); the
    per second figures are per second of the audio (not of the network's input)."""
    counted = {} if counted is None else counted
    flops = updates = total = 0
    for n, k in passes.items():
        if n not in counted:
            counted[n] = count_work(network, sample_rate, samples=n)
        flops += k * counted[n]["gemm_flops"]
        updates += k * counted[n]["scan_updates"]
        total += k * n
    audio = max(int(audio_samples), 1)
    return {"audio_s": audio / sample_rate, "network_input_s": total / sample_rate, "overlap_factor": total / audio,
            "passes": sum(passes.values()), "gemm_flops": flops, "scan_updates": updates,
            "gemm_flops_per_s": flops * sample_rate / audio, "scan_updates_per_s": updates * sample_rate / audio}


def describe_passes(passes: dict[int, int], sample_rate: int) -> str:
    """'19 x 4 s + 1 x 3 s' (longest first)."""
    return " + ".join(f"{k} x {n / sample_rate:g} s" for n, k in sorted(passes.items(), key=lambda p: -p[0]))


def rtf_bound(gemm_flops_per_s: float, gemm_flops_per_second: float, scan_updates_per_s: float = 0.0,
              scan_updates_per_second: float | None = None) -> float:
    """Seconds of compute per second of audio at the measured throughputs: GEMM FLOPs per second of audio over
    the GEMM throughput, plus scan updates per second of audio over the scan throughput."""
    if gemm_flops_per_second <= 0:
        raise ValueError("the GEMM throughput must be positive")
    bound = gemm_flops_per_s / gemm_flops_per_second
    if scan_updates_per_s:
        if not scan_updates_per_second or scan_updates_per_second <= 0:
            raise ValueError("a network with a selective scan needs a positive scan throughput")
        bound += scan_updates_per_s / scan_updates_per_second
    return bound


def _sig(x: float, digits: int = 4) -> float:
    """x to `digits` significant digits (a tiny test network's bound stays visible, a large one stays short)."""
    return float(f"{x:.{digits}g}")


def bound_figures(network: torch.nn.Module, sample_rate: int, precision: str, measured_rtf: float | None = None,
                  seconds: float = 4.0, passes: dict[int, int] | None = None,
                  audio_samples: int | None = None) -> dict:
    """Everything `sepcli bench` prints about the bound: the CPU, the counted work, the measured GEMM throughputs
    (fp32 and bf16) and scan throughput at torch's current thread count, the bound at `precision` ("fp32" or
    "bf16"; fp16 counts as bf16) and the measured RTF's multiple of it.

    Two counts of the work: one forward of `seconds` per second of audio (`single_pass_*`, the network's own
    cost), and, given the pipeline's `passes` over `audio_samples` samples (Separator.network_passes), the work
    as run (`as_run_*`): overlapping segments make the network process more than the audio's length
    (`overlap_factor`), and the measured RTF is compared with the bound for that work too."""
    from .device import cpu_features

    counted: dict[int, dict] = {}
    work = count_work(network, sample_rate, seconds)
    counted[int(round(work["seconds"] * sample_rate))] = work
    cpu = cpu_features()
    fp32 = gemm_throughput(torch.float32)
    bf16 = bf16_gemm_throughput(cpu["native_bf16"])
    run = None if not passes else count_passes_work(network, sample_rate, passes, audio_samples or 0, counted)
    scan = scan_throughput() if work["scan_updates"] or (run and run["scan_updates"]) else None
    gemm = fp32 if precision == "fp32" else bf16
    bound = rtf_bound(work["gemm_flops_per_s"], gemm, work["scan_updates_per_s"], scan)
    out = {"cpu": cpu["model"], "amx_bf16": cpu["amx_bf16"], "avx512_bf16": cpu["avx512_bf16"],
           "threads": torch.get_num_threads(),
           "not_counted": "elementwise ops, norms, pooling, interpolation, FFTs (scan counted analytically)",
           "gemm_gflops_fp32": _sig(fp32 / 1e9), "gemm_gflops_bf16": _sig(bf16 / 1e9),
           "scan_gupdates_per_s": None if scan is None else _sig(scan / 1e9),
           "bound_precision": precision,
           "single_pass_s": _sig(work["seconds"]),
           "single_pass_gemm_gflop_per_audio_s": _sig(work["gemm_flops_per_s"] / 1e9),
           "single_pass_scan_gupdates_per_audio_s": _sig(work["scan_updates_per_s"] / 1e9),
           "single_pass_rtf_bound": _sig(bound)}
    if measured_rtf is not None and bound > 0:
        out["single_pass_rtf_over_bound"] = _sig(measured_rtf / bound)
    if run is not None:
        bound_run = rtf_bound(run["gemm_flops_per_s"], gemm, run["scan_updates_per_s"], scan)
        out.update({"as_run_passes": describe_passes(passes, sample_rate),
                    "as_run_network_input_s": _sig(run["network_input_s"]),
                    "as_run_overlap_factor": _sig(run["overlap_factor"]),
                    "as_run_gemm_gflop_per_audio_s": _sig(run["gemm_flops_per_s"] / 1e9),
                    "as_run_scan_gupdates_per_audio_s": _sig(run["scan_updates_per_s"] / 1e9),
                    "as_run_rtf_bound": _sig(bound_run)})
        if measured_rtf is not None and bound_run > 0:
            out["as_run_rtf_over_bound"] = _sig(measured_rtf / bound_run)
    return out
