"""Sanity check of the default model's network, loss and optimiser: train it from scratch on a few fixed real+real
validation mixtures and watch it fit them (MODEL_CARD.md, target point 13).

    python recipes/overfit_check.py --items 4 --seconds 2 --steps 200     # about 6 minutes at 1 thread

The same S4M configuration as models/s4m-tiny-16k (arch and arch_args from its config.json), Adam, gradient
clipping at 5, negative SI-SNR with PIT, one full batch of every chosen item per step. Items are the validation
set's mixtures of two real persons (kinds from data/pools/speakers.json, as publish_default.py reads them), every
second one, cropped to the middle `--seconds`. Prints the SI-SNRi on those same items every 25 steps: a memorisation
test, not a generalisation one.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sepcli.metrics import pit_loss, pit_si_snr  # noqa: E402
from sepcli.nets import build_network  # noqa: E402
from sepcli.train.data import read_mono  # noqa: E402

from publish_default import person_kinds, same_kind  # noqa: E402  (this folder is on sys.path)

ap = argparse.ArgumentParser()
ap.add_argument("--data", type=Path, default=Path("data"))
ap.add_argument("--model", type=Path, default=Path("models/s4m-tiny-16k"))
ap.add_argument("--items", type=int, default=4)
ap.add_argument("--seconds", type=float, default=2.0)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()

torch.set_num_threads(a.threads)
torch.set_flush_denormal(True)
torch.manual_seed(0)
cfg = json.loads((a.model / "config.json").read_text())
sr = cfg["sample_rate"]
kinds = person_kinds(a.data / "pools")
val = a.data / f"{sr // 1000}k/val"
rows = list(csv.DictReader((val / "metadata.csv").read_text().splitlines()))
real = [r for r in rows if same_kind(f"{r['speaker_1']}+{r['speaker_2']}", kinds) == "real"]
chosen = real[::2][: a.items]
if len(chosen) < a.items:
    sys.exit(f"{val}: only {len(chosen)} real+real items to choose from, asked for {a.items}")

n = int(a.seconds * sr)
mixes, refs = [], []
for r in chosen:
    mix, _ = read_mono(val / r["mixture_path"], sr)
    srcs = np.stack([read_mono(val / r[k], sr)[0][: len(mix)] for k in ("source_1_path", "source_2_path")])
    start = max(0, (len(mix) - n) // 2)
    mixes.append(mix[start: start + n])
    refs.append(srcs[:, start: start + n])
    print("item", r["mixture_ID"], flush=True)
mix_t, ref_t = torch.tensor(np.stack(mixes)), torch.tensor(np.stack(refs))

net = build_network(cfg["arch"], cfg["arch_args"])
opt = torch.optim.Adam(net.parameters(), lr=a.lr)
baseline = pit_si_snr(torch.stack([mix_t, mix_t], 1), ref_t)[0]
t0 = time.time()
for step in range(a.steps + 1):
    if step % 25 == 0:
        net.eval()
        with torch.no_grad():
            gain = pit_si_snr(net(mix_t), ref_t)[0] - baseline
        net.train()
        print(f"step {step} SI-SNRi mean {gain.mean():.2f} min {gain.min():.2f} dB  {time.time() - t0:.0f} s",
              flush=True)
    if step == a.steps:
        break
    loss = pit_loss(net(mix_t), ref_t)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
    opt.step()
