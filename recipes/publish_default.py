"""Publish the training run's best model as the shipped default: models/s4m-tiny-16k (alias `default`).

    python recipes/publish_default.py [--run runs/default] [--limit N]

Evaluates the run's best weights on the held-out test sets through the same pipeline as `sepcli separate`
(`sepcli eval`), then writes config.json (with the measured figures) and weights.safetensors (fp32, no optimiser
state) into models/s4m-tiny-16k/. MODEL_CARD.md there is written by hand and kept. Prints a one-line summary for
the commit message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sepcli.evaluate import evaluate  # noqa: E402
from sepcli.pipeline import SeparationOptions, Separator  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
ap.add_argument("--data", type=Path, default=ROOT / "data" / "16k")
ap.add_argument("--dest", type=Path, default=ROOT / "models" / "s4m-tiny-16k")
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()

src = a.run / "best"
config = json.loads((src / "config.json").read_text())
sep = Separator(str(src), SeparationOptions(threads=a.threads, loudness="off"))
figures = {}
t0 = time.time()
for name in ("test_real", "test_synth", "val"):
    if not (a.data / name).is_dir():
        continue
    res = evaluate(sep, a.data / name, with_sdr=True, limit=a.limit)
    fig = {"n": res["n"], "si_snri": res["si_snri"], "sdri": res["sdri"]}
    if "pairs" in res:
        fig["pairs"] = {p: r["si_snri"]["mean"] for p, r in res["pairs"].items()}
    figures[name] = fig
    print(f"{name}: SI-SNRi mean {res['si_snri']['mean']:.2f} dB, median {res['si_snri']['median']:.2f} dB, "
          f"SDRi mean {res['sdri']['mean']:.2f} dB (n={res['n']})", flush=True)
    for p, r in res.get("pairs", {}).items():
        print(f"  {p:28s} SI-SNRi {r['si_snri']['mean']:6.2f} dB (n={r['n']})")

prov = config.get("provenance", {})
config.update({
    "name": "s4m-tiny-16k",
    "aliases": ["default"],
    "description": "S4M (small CPU-trained configuration), 16 kHz, 2 speakers; trained by sepcli on Debian-packaged "
                   "real and synthetic speech. See MODEL_CARD.md.",
    "segment": 4.0, "overlap": 0.25, "input_loudness": -25.0,
})
config["eval"] = {"measured": time.strftime("%Y-%m-%d", time.gmtime()), "step": prov.get("step"),
                  "val_si_snri_training": config.get("eval", {}).get("val_si_snri"),
                  "eval_seconds": round(time.time() - t0), **figures}
a.dest.mkdir(parents=True, exist_ok=True)
tmp = a.dest / ".weights.safetensors.tmp"
shutil.copyfile(src / "weights.safetensors", tmp)
tmp.replace(a.dest / "weights.safetensors")
(a.dest / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
real = figures.get("test_real", {}).get("si_snri", {}).get("mean")
synth = figures.get("test_synth", {}).get("si_snri", {}).get("mean")
print(f"SUMMARY step {prov.get('step')}: held-out real SI-SNRi {real} dB, held-out synthetic {synth} dB")
