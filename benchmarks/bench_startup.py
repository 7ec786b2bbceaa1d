"""Cold start: the wall time of a fresh `sepcli separate examples/mix.wav -o <tmp>` (10 s of audio, the default
model), median of BENCH_STARTUP_RUNS (default 5) runs, against `python -c "import torch"` measured in the same
run (the floor every sepcli command pays). Target: 2 s or less. Also the walls of `sepcli models` (the model list,
read without torch) and `sepcli --help`, which scripts and people call as often.

Threads: SEPCLI_BENCH_THREADS if set (passed as --threads), else the CLI's default (one per idle core).
Bytecode: the processes may write sepcli's .pyc files (PYTHONDONTWRITEBYTECODE is dropped for them), so the runs
after the warm-up read sepcli's modules compiled, as an installed copy (pip compiles at install) does; with that
variable set, an editable checkout recompiles its ~300 kB of sources in every process (~0.06 s on an AVX2 EPYC)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    return time.perf_counter() - t0


def main() -> None:
    from sepcli.runtime.device import cpu_features

    runs = int(os.environ.get("BENCH_STARTUP_RUNS", "5"))
    threads = os.environ.get("SEPCLI_BENCH_THREADS")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sepcli", "separate", str(ROOT / "examples" / "mix.wav"), "-o", tmp,
               "--overwrite", "-q"] + (["--threads", threads] if threads else [])
        _wall(cmd)  # warm the file cache (sepcli's bytecode, and numba's cache if anything compiled)
        sep, torch_only = [], []
        for _ in range(runs):  # alternated, so that both see the same machine (it is noisy)
            sep.append(_wall(cmd))
            torch_only.append(_wall([sys.executable, "-c", "import torch"]))
    listing = [_wall([sys.executable, "-m", "sepcli", "models"]) for _ in range(runs)]
    helping = [_wall([sys.executable, "-m", "sepcli", "--help"]) for _ in range(runs)]
    cpu = cpu_features()
    print(f"CPU: {cpu['model']} (amx_bf16 {cpu['amx_bf16']}, avx512_bf16 {cpu['avx512_bf16']}); "
          f"median of {runs} fresh processes")
    print(f"| {'figure':<44} | {'value':>8} |")
    print(f"| {'-' * 44} | {'-' * 8}:|")
    s, t = statistics.median(sep), statistics.median(torch_only)
    beyond = statistics.median(a - b for a, b in zip(sep, torch_only))
    for name, value in [("sepcli separate examples/mix.wav, wall (s)", f"{s:.2f}"),
                        ("python -c 'import torch', wall (s)", f"{t:.2f}"),
                        ("sepcli beyond importing torch (s)", f"{beyond:.2f}"),
                        ("sepcli models, wall (s)", f"{statistics.median(listing):.2f}"),
                        ("sepcli --help, wall (s)", f"{statistics.median(helping):.2f}"),
                        (f"target <= {TARGET_S:g} s met", "yes" if s <= TARGET_S else "NO")]:
        print(f"| {name:<44} | {value:>8} |")


if __name__ == "__main__":
    main()
