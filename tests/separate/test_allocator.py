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
import json, resource, sys, torch
from sepcli.separate.allocator import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "1" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
sizes = [1 << 19, 1 << 20, 1 << 21, 1 << 18]  # 2, 4, 8 and 1 MB of float32, as a network's layers
def one_round():
    ts = [torch.ones(n) for n in sizes]  # every page written
    del ts
one_round()
f0 = faults()
for _ in range(20):
    one_round()
pages = sum(sizes) * 4 / 4096
print(json.dumps({"set": ok, "fresh_page_share": (faults() - f0) / 20 / pages}))
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
    # every page of every round fresh would be 1.0; glibc's defaults give about 0.1 here, 0.007 with the call
    assert after["fresh_page_share"] < 0.03, after


def test_left_alone_when_the_environment_sets_it(monkeypatch):
    import sepcli.separate.allocator as allocator

    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert allocator.keep_freed_memory() is False
