"""keep_freed_memory (sepcli/separate/allocator.py): after it, tensors allocated and freed again and again reuse
their pages instead of page-faulting fresh ones in. Run in a fresh subprocess (the allocator's settings are
per process; `make test` exports the same settings as environment variables, which the call then leaves alone,
so they are removed here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, resource, statistics, sys, torch
from sepcli.separate.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "1" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
n, count = 1 << 18, 64  # 64 tensors of 1 MB: a layer stack's worth, far above glibc's dynamic trim threshold
def one_round():
    ts = [torch.ones(n) for _ in range(count)]  # every page written
    del ts
one_round(); one_round()
pages = n * count * 4 / 4096
shares = []
for _ in range(20):
    f0 = faults()
    one_round()
    shares.append((faults() - f0) / pages)
print(json.dumps({"set": ok, "median_fresh_page_share": statistics.median(shares)}))
"""


def _share(call: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-c", PROBE, "1" if call else "0"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_reuse_their_pages():
    after = _share(True)
    assert after["set"] is True
    # 1.0 is every page of a round fresh. With glibc's defaults most processes trim the freed 64 MB from the
    # heap's top after every round (median 0.998 in 5 of 8 runs here, 0.0 in the others); with the call the
    # rounds reuse their pages (0.0 in every run). The median over rounds leaves out a one-off fault burst (one
    # round of 20 at 0.016-0.07 was seen, which made a mean flaky before).
    assert after["median_fresh_page_share"] < 0.01, after


def test_left_alone_when_the_environment_sets_it(monkeypatch):
    import sepcli.separate.allocator as allocator

    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator.keep_freed_memory() is False
