"""Training-step cost on CPU: seconds per step and audio throughput for segment length x batch size.

One step = forward, PIT SI-SNR loss, backward, gradient clipping, Adam (what `sepcli train` does per step).
Median of the timed steps after two warm-up steps. Per-sample cost is what decides the training budget: with a
convolutional/S4 network it should be nearly flat across segment x batch at the same audio per step, so the
choice between them is about learning (context per example vs. examples per step), not speed.

    python -m benchmarks.bench_train [--arch s4m-small-16k] [--threads 2] [--grid 1x8 2x4 4x2] [--profile]
    python -m benchmarks.bench_train --ranks 2 --threads 1 --grid 2x4   # data-parallel (gloo), batch split
With --ranks N the batch is split over N processes (DistributedDataParallel over gloo, as `torchrun` runs
`sepcli train`): the same global step, so its s/step compares directly with one process at N x the threads.
Environment: SEPCLI_BENCH_QUICK=1 (fewer steps, two configurations), SEPCLI_BENCH_THREADS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def time_steps(arch: str, segment: float, batch: int, steps: int, profile: bool = False, world: int = 1) -> dict:
    """Time one process's steps; under an initialised process group of `world` ranks it takes batch/world items."""
    from sepcli.nets import build_network, named_config
    from sepcli.train.trainer import train_step

    name, args, sr = named_config(arch)
    torch.manual_seed(0)
    net = build_network(name, args).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    t = int(segment * sr)
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(batch // world, 2, t, generator=gen) * 0.1
    mix = ref.sum(1)

    def step() -> None:
        train_step(model, opt, mix, ref, clip=5.0)  # exactly what `sepcli train` runs per step

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    out = {"arch": arch, "segment": segment, "batch": batch, "s_per_step": statistics.median(times),
           "params": sum(p.numel() for p in net.parameters())}
    out["audio_s_per_s"] = segment * batch / out["s_per_step"]
    out["samples_per_s"] = t * batch / out["s_per_step"]
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            step()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return out


def _rank(rank: int, world: int, port: int, threads: int, job: tuple, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        r = time_steps(*job, world=world)
        if rank == 0:
            queue.put(r)
    finally:
        dist.destroy_process_group()


def time_steps_ranks(arch: str, segment: float, batch: int, steps: int, ranks: int, threads: int) -> dict:
    """time_steps with the batch split over `ranks` data-parallel processes (rank 0's timings)."""
    import socket

    import torch.multiprocessing as mp

    if batch % ranks:
        raise SystemExit(f"bench_train: batch {batch} does not split over {ranks} ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_rank, args=(ranks, port, threads, (arch, segment, batch, steps), queue), nprocs=ranks,
                       start_method="spawn")
    return queue.get(timeout=60)


def main(argv: list[str] | None = None) -> None:
    quick = os.environ.get("SEPCLI_BENCH_QUICK") == "1"
    p = argparse.ArgumentParser(prog="bench_train")
    p.add_argument("--arch", default="s4m-small-16k")
    p.add_argument("--threads", type=int, default=int(os.environ.get("SEPCLI_BENCH_THREADS", os.cpu_count() or 1)))
    p.add_argument("--grid", nargs="+", default=["2x4", "4x2"] if quick else ["1x8", "2x4", "4x2", "2x8"],
                   help="SEGMENTxBATCH, seconds x items")
    p.add_argument("--steps", type=int, default=3 if quick else 6)
    p.add_argument("--profile", action="store_true", help="print the top ops of one step per configuration")
    p.add_argument("--ranks", type=int, default=1, help="data-parallel processes (gloo), each with --threads")
    a = p.parse_args(argv if argv is not None else [])
    if a.ranks > 1 and a.profile:
        p.error("--profile times one process: leave out --ranks")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    ranks = f" x {a.ranks} data-parallel processes" if a.ranks > 1 else ""
    print(f"training step, {a.arch}, {a.threads} thread(s){ranks}, median of {a.steps} steps after 2 warm-up steps")
    print(f"{'segment':>8} {'batch':>5} {'s/step':>8} {'audio s/s':>10} {'samples/s':>10}")
    for cell in a.grid:
        seg, batch = cell.lower().split("x")
        if a.ranks > 1:
            r = time_steps_ranks(a.arch, float(seg), int(batch), a.steps, a.ranks, a.threads)
        else:
            r = time_steps(a.arch, float(seg), int(batch), a.steps, a.profile)
        print(f"{r['segment']:>7.1f}s {r['batch']:>5d} {r['s_per_step']:>8.2f} {r['audio_s_per_s']:>10.1f} "
              f"{r['samples_per_s']:>10.0f}", flush=True)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
