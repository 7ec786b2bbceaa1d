"""Memory stays flat in the input's length: peak RSS separating a 60-minute 16 kHz file is within 150 MB of
that for a 2-minute file, in fp32 and under bf16 autocast (--precision bf16).
Each run is a fresh subprocess (tests/_memory_probe.py) with a cheap real network,
so the figure is the pipeline's own (decode, stitching, loudness spools, encode), not the model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _probe(minutes: float, work: Path, precision: str = "fp32") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "tests._memory_probe", str(minutes), str(work), precision], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_peak_memory_flat_in_length(tmp_path, precision):
    short = _probe(2, tmp_path / "short", precision)
    long = _probe(60, tmp_path / "long", precision)
    assert short["precision"] == long["precision"] == precision
    assert long["frames"] == [long["input_frames"]] * 2 == [60 * 60 * 16000] * 2
    growth_mb = (long["maxrss_kb"] - short["maxrss_kb"]) / 1024
    print(f"{precision}: peak RSS 2 min {short['maxrss_kb'] / 1024:.0f} MB, 60 min {long['maxrss_kb'] / 1024:.0f} MB, "
          f"growth {growth_mb:.1f} MB")
    assert growth_mb < 150
