"""Train (or resume) the default model: S4M-small at 16 kHz, dynamic mixing of the recipe's speaker pools.

    python recipes/make_data.py --out data            # once: pools + fixed val/test sets
    python recipes/train_default.py --minutes 150     # resumes runs/default/last.pt when present

Same as `sepcli train --arch s4m-small-16k --pools data/pools --val-data data/16k/val --out runs/default --resume
--segment 4 --batch-size 2 --ema 0.999` (and the mixing options below). Under `torchrun --standalone
--nproc_per_node N` (N = 1 or 2; before session 9, with 2 s segments, 4 too) the global batch (2 mixtures of 4 s)
is split across the N processes: the same mixtures, step for step. On this 2-core CPU two processes at one
thread each are only 4 % faster than one at two threads (0.86 vs 0.90 s/step, `benchmarks/bench_train.py --ranks 2
--threads 1`), so resume_default.sh runs one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sepcli.train.trainer import TrainConfig, train  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--data", type=Path, default=Path("data"))
ap.add_argument("--out", type=Path, default=Path("runs/default"))
ap.add_argument("--minutes", type=float, default=None)
ap.add_argument("--steps", type=int, default=200_000)
ap.add_argument("--threads", type=int, default=None, help="per process (default: one process follows the idle "
                "CPUs, as sepcli train without --threads does; under torchrun, 2 cores over the processes)")
ap.add_argument("--val-limit", type=int, default=60)
ap.add_argument("--lr-scale", type=float, default=None, help="set the lr scale when resuming (sepcli train "
                "--lr-scale), e.g. after new training data")
ap.add_argument("--person-power", type=float, default=0.0, help="persons drawn ∝ seconds**power (sepcli train "
                "--person-power); for A/B runs against the recipe's value")
ap.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                help="also draw the pools' voice variants (sepcli train --variants; recipes/make_data.py --stage "
                "variants makes them); on since session 7")
ap.add_argument("--segment", type=float, default=4.0, help="training segment in seconds; the batch keeps 8 s of "
                "audio per step (2 s x 4, 4 s x 2); for A/B runs against the recipe's value")
ap.add_argument("--num-blocks", type=int, default=None, help="passes of the shared S4M block (default: the "
                "configuration's, or the checkpoint's); for A/B runs against the recipe's value")
ap.add_argument("--ema", type=float, default=0.999, help="decay of the weight average that is validated and "
                "exported (sepcli train --ema); on since session 9")
a = ap.parse_args()
world = int(os.environ.get("WORLD_SIZE", "1"))
batch = round(8.0 / a.segment)
if batch < 1 or abs(batch * a.segment - 8.0) > 1e-9:
    ap.error(f"--segment {a.segment:g} does not divide 8 s of audio per step")
if batch % world:
    ap.error(f"the global batch of {batch} mixtures does not split over {world} processes")
if a.num_blocks is not None and a.num_blocks < 1:
    ap.error("--num-blocks is at least 1")
if not 0.0 <= a.person_power <= 1.0:
    ap.error("--person-power is between 0 and 1")
threads = a.threads or (max(1, 2 // world) if world > 1 else None)
# patience: 4 validations (1000 steps) until step 10250, then 8: a quick validation (n=60) moves by about
# +-0.2 dB between neighbours, so four misses in a row were often noise, and new data had just been added.
# mixed_share 0.15 from step 13250 (before: each source independently, so 42 % of the mixtures paired a real
# person with a synthetic voice): those pairs separate at 5-7 dB on validation while real+real and
# synthetic+synthetic pairs, the two held-out targets, stay at 0-3 dB; now 60 % real+real, 25 % synthetic pairs.
# Session 4 A/B runs from one checkpoint (1 thread each, same steps; the uniform arm is the run itself):
# - lr x4 (5e-4 instead of 1.25e-4) from step 17250: training loss worse in all 21 logged windows (mean +0.34 dB)
#   and quick validation 3.82 against 4.46 dB after 500 steps: the low lr is not what holds the run back.
# - --person-power 0.5 from step 18106 to 20020: quick validation (8 points) 2.57 against 2.44 dB, full
#   validation of the last weights 2.46 against 2.57 dB (paired difference -0.11 +- 0.09 dB): no measurable gain,
#   so persons are still drawn uniformly.
# Session 7 A/B from step 37201 (1 thread each, 3,600 steps, same batches): voice variants (each real training person
# once more with formants and pitch shifted, half of a real person's draws) against none: quick validation +0.078 +-
# 0.026 dB over 15 paired validations; on the full sets, validation same-kind +0.20 +- 0.08 dB (real+real 2.21
# against 1.77), held-out real people +0.33 +- 0.10 dB, held-out synthetic +0.05 +- 0.05 dB: variants are on.
# Session 9 A/B from step 49275 (1 thread each, 63-65 minutes of wall time each; the EMA on in both): 4 s x 2
# segments against 2 s x 4 (the same 8 s of audio per step, 1.68 against 1.57 s per step, so 2,126 against 2,348
# steps): quick validation higher in all 8 paired validations (+0.14 dB; neighbours are correlated); the latest
# weight averages on the full sets, paired per mixture: validation same-kind +0.09 +- 0.07 dB (3.23 against 3.14),
# held-out real +0.14 +- 0.08 dB, held-out synthetic +0.00 +- 0.04 dB. Not significant alone, but no measure shows
# harm, inference runs 4 s segments (where a 2 s context scores 0.33 dB less than 4 s on validation), so 4 s it is.
# Session 11 A/B from step 56834 (1 thread each, 62 minutes of wall time each; the EMA on in both): the shared block
# applied 12 times instead of 8 (--num-blocks 12; same weights, so the arm started from the run's own; 2.1 against
# 1.4 s per step, 1,758 against 2,612 steps). Zero-shot, the 8-pass weights at 6 / 10 / 12 passes score -0.81 / -0.12
# / -0.46 dB on validation; the 12-pass arm's training loss on the same batches was behind by 0.32 dB in its first 250
# steps and still by 0.03-0.05 dB (+- 0.03) at steps 57500-58500. The latest averages on the full sets, paired per
# mixture, 12 minus 8 passes: validation -0.01 +- 0.06 dB, held-out real -0.30 +- 0.14 dB, held-out synthetic +0.01 +-
# 0.05 dB. No gain per step and 1.5x the cost, so 8 passes stay.
# Session 12 A/B from step 62841 (same seed, 1 thread each, about 3,700 steps): --lr-scale 0.125 (1.25e-4) against
# the run's 3.1e-5 without new data: training loss behind by 0.17-0.19 dB for 2,000 steps, then 0.05; the latest
# averages, paired: validation +0.01 +- 0.07 dB, held-out real -0.10 +- 0.04 dB. The low rate stays.
# Session 13 A/B from step 67450 (1 thread each, about 4,150 steps, both at --lr-scale 0.03125, 3.1e-5 from 7.8e-6):
# the recipe's 8 new real persons (Kajongg, Nexuiz, Warzone 2100; 20 min) against none: validation +0.01 +- 0.03 dB,
# held-out real -0.03 +- 0.04 dB, held-out synthetic -0.01 +- 0.02 dB: no measurable effect; the run keeps them.
# Both arms gained about +0.1 dB on validation over the start at the raised rate, neither on held-out real people.
# Resume order: this machine's checkpoint (exact); else the committed continuation state recipes/state/default-latest
# (latest weights, step, lr schedule, history; Adam re-warmed: the repo carries no optimiser state), else the
# shipped model; else a fresh start.
here = Path(__file__).resolve().parent
committed = next((p for p in (here / "state" / "default-latest", here.parent / "models" / "s4m-tiny-16k")
                  if (p / "weights.safetensors").exists()), None)
init = str(committed) if committed and not (a.out / "last.pt").exists() else None
cfg = TrainConfig(out=a.out, arch=None if init else "s4m-small-16k", init=init,
                  arch_args={} if a.num_blocks is None else {"num_blocks": a.num_blocks},
                  continue_init=bool(init), pools=a.data / "pools", val_data=a.data / "16k" / "val",
                  segment=a.segment, batch_size=batch // world, steps=a.steps, epoch_steps=250, lr=1e-3, warmup=200,
                  patience=8, reverb_prob=0.2, noise_prob=0.1, speed=0.15, real_share=0.7, mixed_share=0.15,
                  person_power=a.person_power, variants=a.variants, ema=a.ema, lr_scale=a.lr_scale, ckpt_minutes=10,
                  max_minutes=a.minutes, resume=True, name="s4m-tiny-16k", threads=threads, val_limit=a.val_limit,
                  log_every=25)
summary = train(cfg)
if int(os.environ.get("RANK", "0")) == 0:
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, default=str))
