"""The RTF bound (sepcli/runtime/roofline.py) against the measured RTF, per network and precision.

For each row: the network's GEMM FLOPs and selective-scan updates per second of audio (counted in one 4 s forward
pass), this CPU's measured fp32 / bf16 GEMM throughput and scan throughput at the thread count used, the lower
bound on the RTF they give, the measured model RTF (sepcli.pipeline.bench_model: median after a warm-up) and its
multiple of the bound. The pipeline runs the network on overlapping segments (more network input than audio: the
overlap factor), so the row also gives the bound for the work as run (each distinct segment length of this
input's plan counted once, times its number of segments) and the measured RTF's multiple of that.
Rows: the default S4M model, and SPMamba-8k with random weights (its speed does not depend on the weights),
each in fp32 and bf16 autocast. A network that fails under a precision prints why.

Environment: SEPCLI_BENCH_THREADS (default: torch's default), BENCH_ROOFLINE_SECONDS (default 8),
BENCH_ROOFLINE_SPMAMBA (default 1; 0 skips SPMamba, whose rows take about a minute). On a CPU without native bf16
(AMX / AVX512-BF16) the bf16 rows are skipped, with a row saying so: there autocast emulates bf16 (GEMMs about 100x
slower than fp32 measured on an AVX2-only EPYC), so SPMamba's bf16 row alone would take about half an hour;
BENCH_EMULATED_BF16=1 runs them anyway.
"""

from __future__ import annotations

import os

import torch


def _spmamba():
    from sepcli.nets import build_network, named_config
    from sepcli.runtime.loader import LoadedModel

    arch, args, sr = named_config("spmamba-8k")
    torch.manual_seed(0)
    net = build_network(arch, args).eval()
    return LoadedModel(network=net, sample_rate=sr, n_src=2, segment=4.0, overlap=0.25, name="spmamba-8k (random)",
                       arch=arch)


def main() -> None:
    from sepcli.pipeline import Separator, bench_model
    from sepcli.runtime.device import cpu_features
    from sepcli.runtime.roofline import (bf16_gemm_throughput, count_passes_work, count_work, gemm_throughput,
                                         rtf_bound, scan_throughput)
    from sepcli.separate.bench import synthetic_length

    threads = os.environ.get("SEPCLI_BENCH_THREADS")
    seconds = float(os.environ.get("BENCH_ROOFLINE_SECONDS", "8"))
    models = [("default", 1)]
    if os.environ.get("BENCH_ROOFLINE_SPMAMBA", "1") != "0":
        models.append((_spmamba(), 1))
    if threads:
        torch.set_num_threads(int(threads))
    cpu = cpu_features()
    emulated_ok = os.environ.get("BENCH_EMULATED_BF16", "0") == "1"
    run_bf16 = cpu["native_bf16"] or emulated_ok
    fp32 = gemm_throughput(torch.float32)
    bf16 = bf16_gemm_throughput(cpu["native_bf16"]) if run_bf16 else float("nan")  # seconds per product emulated
    scan = None
    print(f"CPU: {cpu['model']} (amx_bf16 {cpu['amx_bf16']}, avx512_bf16 {cpu['avx512_bf16']}, torch kernels "
          f"{cpu['torch_capability']}); threads {torch.get_num_threads()}")
    bf16_text = (f"bf16 {bf16 / 1e9:.0f} GFLOP/s (ratio {bf16 / fp32:.1f})" if run_bf16
                 else "bf16 not measured (emulated)")
    print(f"GEMM {1024}^3: fp32 {fp32 / 1e9:.0f} GFLOP/s, {bf16_text}")
    print("not counted in FLOPs: elementwise ops, norms, pooling, interpolation, FFTs; the scan is counted "
          "analytically (b x d x l x n per call)")
    head = ("model", "precision", "GFLOP/audio s", "G upd/audio s", "bound RTF", "measured RTF", "x bound",
            "overlap factor", "bound RTF as run", "x bound as run")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for model, repeat in models:
        for precision in ("fp32", "bf16"):
            if precision == "bf16" and not run_bf16:
                name = model if isinstance(model, str) else model.name
                cells = (name, precision, "skipped: no native bf16 on this CPU (emulated; BENCH_EMULATED_BF16=1 "
                         "runs it)") + ("-",) * (len(head) - 3)
                print("| " + " | ".join(cells) + " |", flush=True)
                continue
            try:
                sep = Separator(model, threads=int(threads) if threads else None, precision=precision)
                net = sep.model.network
                sr = sep.model.sample_rate
                work = count_work(net, sr, 4.0)
                n = synthetic_length(seconds, sr)
                run = count_passes_work(net, sr, sep.network_passes(n), n, {int(round(4.0 * sr)): work})
                if work["scan_updates"] and scan is None:
                    scan = scan_throughput()
                gemm = fp32 if precision == "fp32" else bf16
                bound = rtf_bound(work["gemm_flops_per_s"], gemm, work["scan_updates_per_s"], scan)
                bound_run = rtf_bound(run["gemm_flops_per_s"], gemm, run["scan_updates_per_s"], scan)
                fig = bench_model(sep, seconds=seconds, repeat=repeat)
                row = (sep.model.name, sep.precision.name, f"{work['gemm_flops_per_s'] / 1e9:.2f}",
                       f"{work['scan_updates_per_s'] / 1e9:.3f}", f"{bound:.4f}", f"{fig['rtf_model']:.4f}",
                       f"{fig['rtf_model'] / bound:.2f}", f"{run['overlap_factor']:.3f}", f"{bound_run:.4f}",
                       f"{fig['rtf_model'] / bound_run:.2f}")
            except Exception as exc:  # noqa: BLE001  (a precision a network cannot run yet: say so, go on)
                name = model if isinstance(model, str) else model.name
                row = (name, precision, "-", "-", "-", f"failed: {type(exc).__name__}: {str(exc)[:80]}", "-", "-", "-",
                       "-")
            print("| " + " | ".join(row) + " |", flush=True)
    if scan is not None:
        print(f"scan throughput (b, d, l, n) = (1, 512, 4000, 16): {scan / 1e9:.2f} G updates/s")


if __name__ == "__main__":
    main()
