"""Pipeline speed: separate a 5-minute 16 kHz file with the default model on CPU and report the total time,
the time inside the model, and the share spent outside it (decode, resample, loudness passes, alignment and
gain fitting, crossfades, encode). Target: outside the model < 10 % of the total. Then the end-to-end RTF of
the issue (29): a fresh `sepcli separate` process on the same file (start-up included), wall time / duration;
target 0.03 at 2 threads (0.079 when the issue was filed), printed with its ratio to that figure (another day's
run, so a rough one). The same run's baseline: the in-process separation again with the networks' inference fast
paths off (`sepcli.nets.fastconv.FAST_INFERENCE = False`: PyTorch's own convolutions, PReLU, interpolation),
with the ratio of the two model times.

If the zoo has no `default` model yet, a small S4M built with random weights stands in (said in the output):
the speed of the pipeline around it does not depend on the weights.
Environment: BENCH_PIPELINE_MINUTES (default 5), SEPCLI_BENCH_THREADS (default: 2 for the end-to-end row, else
torch's default), BENCH_PRECISION (default auto), as the other benchmarks. One timed run after a warm-up: a long
file is itself many segments.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def _model():
    from sepcli.runtime.loader import LoadedModel, ModelError, load_model

    try:
        return load_model("default"), "zoo model 'default'"
    except ModelError as exc:
        why = str(exc)
    from sepcli.nets import build_network, named_config

    try:
        arch, args, sr = named_config("s4m-tiny-16k")
        label = "s4m-tiny-16k configuration"
    except Exception:  # the named configuration may not be registered yet  # noqa: BLE001
        arch, args, sr = "s4m", {"sample_rate": 16000, "n_src": 2, "bn_channels": 64, "hidden": 128,
                                 "num_blocks": 4}, 16000
        label = "small S4M configuration"
    torch.manual_seed(0)
    net = build_network(arch, args).eval()
    note = f"{label} with RANDOM weights (no default model: {why})"
    return LoadedModel(network=net, sample_rate=sr, n_src=2, segment=4.0, overlap=0.25, name=label, arch=arch), note


def main() -> None:
    import sepcli.nets.fastconv as fastconv
    from sepcli.separate import Separator, synthetic_mixture

    minutes = float(os.environ.get("BENCH_PIPELINE_MINUTES", "5"))
    precision = os.environ.get("BENCH_PRECISION", "auto")
    threads = os.environ.get("SEPCLI_BENCH_THREADS") or os.environ.get("BENCH_THREADS")  # (the old name)
    torch.set_flush_denormal(True)
    model, note = _model()
    rate = model.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "long.wav"
        with sf.SoundFile(src, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
            for i in range(int(minutes)):  # minute by minute: the benchmark itself stays flat in memory
                f.write(synthetic_mixture(60.0, rate, seed=i))
            rest = minutes - int(minutes)
            if rest > 0:
                f.write(synthetic_mixture(rest * 60, rate, seed=999))
        sep = Separator(model, overwrite=True, threads=int(threads) if threads else None, precision=precision)
        sep.separate_array(np.zeros(rate, np.float32), rate)  # warm-up (first-call compilation)
        t0 = time.perf_counter()
        res = sep.separate_file(src, Path(tmp) / "out")
        wall = time.perf_counter() - t0
        fastconv.FAST_INFERENCE = False  # the same run's baseline: the plain PyTorch modules
        try:
            plain = sep.separate_file(src, Path(tmp) / "plain")
        finally:
            fastconv.FAST_INFERENCE = True
        cli = None
        if model.name == "s4m-tiny-16k":  # the shipped default: the CLI can name it
            cmd = [sys.executable, "-m", "sepcli", "separate", str(src), "-o", str(Path(tmp) / "cli"), "-q",
                   "--overwrite", "--threads", threads or "2", "--precision", precision]
            t1 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            cli = time.perf_counter() - t1
    assert res.status == "ok" and plain.status == "ok", res.error or plain.error
    model_s = res.timings["model_s"]
    plain_s = plain.timings["model_s"]
    outside = wall - model_s
    from sepcli.runtime.device import cpu_features

    cpu = cpu_features()
    print(f"CPU: {cpu['model']} (amx_bf16 {cpu['amx_bf16']}, avx512_bf16 {cpu['avx512_bf16']})")
    print(f"model: {note}, precision {sep.precision.name} ({sep.precision.reason})")
    print(f"input: {minutes:g} min at {rate} Hz, segment {model.segment} s, overlap {model.overlap}, "
          f"threads {torch.get_num_threads()}, loudness match (two passes)")
    print(f"| {'figure':<28} | {'value':>10} |")
    print(f"| {'-' * 28} | {'-' * 10}:|")
    for name, value in [("total time (s)", f"{wall:.2f}"), ("model time (s)", f"{model_s:.2f}"),
                        ("outside the model (s)", f"{outside:.2f}"),
                        ("outside share (target <10%)", f"{100 * outside / wall:.1f} %"),
                        ("real-time factor (total)", f"{wall / (minutes * 60):.4f}"),
                        ("real-time factor (model)", f"{model_s / (minutes * 60):.4f}"),
                        ("model, fast paths off (s)", f"{plain_s:.2f}"),
                        ("fast paths' speed-up (model)", f"{plain_s / model_s:.2f}x"),
                        (f"end-to-end RTF, CLI, {threads or 2} thr",
                         "-" if cli is None else f"{cli / (minutes * 60):.4f}"),
                        ("CLI RTF / 0.079 (issue 29)", "-" if cli is None else f"{cli / (minutes * 60) / 0.079:.2f}")]:
        print(f"| {name:<28} | {value:>10} |")


if __name__ == "__main__":
    main()
