"""Subprocess body of the memory test: write an N-minute 16 kHz file in blocks, separate it with a cheap real
network, print the peak resident memory (ru_maxrss, kB) as JSON. Usage: python -m tests._memory_probe
MINUTES WORKDIR [PRECISION (fp32 | bf16; default fp32)] [NET (bandsplit | spmamba; default bandsplit)]

`spmamba` is a small SPMamba imported from a release-format zip (8 kHz, so the pipeline also resamples): the
network's own inference path (its per-pass workspace, the selective scan, attention over the segment) runs on
every segment, at a width that keeps an hour of audio within a few minutes."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def main() -> None:
    minutes, work = float(sys.argv[1]), Path(sys.argv[2])
    precision = sys.argv[3] if len(sys.argv) > 3 else "fp32"
    net = sys.argv[4] if len(sys.argv) > 4 else "bandsplit"
    torch.set_num_threads(1)
    from tests.testnets import bandsplit_folder, register_test_archs

    register_test_archs()
    from sepcli.pipeline import Separator

    rate = 16000
    work.mkdir(parents=True, exist_ok=True)
    src = work / "long.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(src, "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        n = int(minutes * 60 * rate)
        for i in range(0, n, 10 * rate):
            f.write((0.1 * rng.standard_normal(min(10 * rate, n - i))).astype(np.float32))
    if net == "spmamba":
        from sepcli.runtime.spmamba_import import import_release
        from tests.spmamba_release import make_release

        zip_path, _ = make_release(work / "release.zip", emb_dim=8, n_fft=64, stride=32)
        folder = import_release(zip_path, work / "model", name="probe-spmamba").folder
    else:
        folder = bandsplit_folder(work / "model", sample_rate=rate, segment=4.0)
    # default loudness `match`: spools + second pass
    sep = Separator(folder, batch_size=4, overwrite=True, precision=precision)
    t0 = time.perf_counter()
    res = sep.separate_file(src, work / "out")
    assert res.status == "ok", res.error
    frames = [sf.info(o.path).frames for o in res.outputs]
    print(json.dumps({"precision": sep.runtime_info()["precision"],
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "frames": frames,
                      "input_frames": sf.info(src).frames, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
