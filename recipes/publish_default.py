"""Publish the default model and the training run's continuation state into the repository.

    python recipes/publish_default.py [--run runs/default] [--limit N]

1. Exports the run's latest weights (runs/default/last.pt; fp32, no optimiser state) with its step, lr schedule
   and history to recipes/state/default-latest/: the next session continues training from there.
2. Scores the run's best-by-validation model, the latest weights and the model shipped now on the FULL validation
   set through the separation pipeline (`sepcli eval`) and ships the best on its same-kind pairs (real+real and
   synthetic+synthetic, what the held-out targets measure) as models/s4m-tiny-16k (alias `default`).
   Model selection uses validation only; the held-out test sets are then measured for the card, and the seen
   sets (the same kinds of mixture made of training people) to show how much of the gap is the people being new.
MODEL_CARD.md there is written by hand and kept. Prints one summary line for the commit message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sepcli.evaluate import evaluate  # noqa: E402
from sepcli.nets import build_network  # noqa: E402
from sepcli.pipeline import SeparationOptions, Separator  # noqa: E402
from sepcli.train.export import export_model_folder  # noqa: E402
from sepcli.train.speakers import read_index  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
ap.add_argument("--data", type=Path, default=ROOT / "data" / "16k")
ap.add_argument("--dest", type=Path, default=ROOT / "models" / "s4m-tiny-16k")
ap.add_argument("--latest-dest", type=Path, default=ROOT / "recipes" / "state" / "default-latest")
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()


POOLS = ROOT / "data" / "pools"
# by person; a person's voice variants (kind "variant") keep the person's own kind
KIND = ({s.person: s.kind for s in read_index(POOLS)[1] if s.kind in ("real", "synthetic")}
        if (POOLS / "speakers.json").exists() else {})


def kind_means(pairs: dict) -> dict[str, float]:
    """n-weighted mean SI-SNRi of the real+real pairs, the synthetic+synthetic pairs, and of both together
    ("same"): the held-out targets' mixtures (real+synthetic pairs are much easier). Kinds without pairs are
    left out."""
    sums: dict[str, list[float]] = {}
    for pair, r in pairs.items():
        kinds = {KIND.get(s) for s in pair.split("+")}
        if len(kinds) == 1 and None not in kinds:
            for k in (kinds.pop(), "same"):
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += r["si_snri"]["mean"] * r["n"]
                acc[1] += r["n"]
    return {k: total / n for k, (total, n) in sums.items()}


def selection_score(fig: dict) -> float:
    """The validation figure that picks the shipped model: same-kind pairs when the set has any (0.0 is a
    score, not "none"), else the overall mean."""
    same = fig.get("same_kind_si_snri")
    return fig["si_snri"]["mean"] if same is None else same


def score(folder: Path, split: str) -> dict:
    sep = Separator(str(folder), SeparationOptions(threads=a.threads, loudness="off"))
    res = evaluate(sep, a.data / split, with_sdr=True, limit=a.limit)
    fig = {"n": res["n"], "si_snri": res["si_snri"], "sdri": res["sdri"]}
    # the seen sets pair many people at random, one or two mixtures each: no per-pair figures
    pairs = {} if split.startswith("seen") else res.get("pairs", {})
    if pairs:
        fig["pairs"] = {p: r["si_snri"]["mean"] for p, r in pairs.items()}
        means = kind_means(pairs)
        fig["same_kind_si_snri"] = means.pop("same", None)
        fig["by_kind"] = means
        if fig["same_kind_si_snri"] is not None:
            print(f"{folder.name} {split}: same-kind pairs SI-SNRi {fig['same_kind_si_snri']:.2f} dB ("
                  + ", ".join(f"{k}+{k} {v:.2f} dB" for k, v in means.items()) + ")", flush=True)
    print(f"{folder.name} {split}: SI-SNRi mean {res['si_snri']['mean']:.2f} dB, median "
          f"{res['si_snri']['median']:.2f} dB, SDRi mean {res['sdri']['mean']:.2f} dB (n={res['n']})", flush=True)
    for p, r in pairs.items():
        print(f"  {p:28s} SI-SNRi {r['si_snri']['mean']:6.2f} dB (n={r['n']})")
    return fig


t0 = time.time()
# 1. the continuation state
ckpt = torch.load(a.run / "last.pt", map_location="cpu", weights_only=True)
net = build_network(ckpt["arch"], ckpt["arch_args"])
net.load_state_dict(ckpt["model"])
meta = {"arch": ckpt["arch"], "arch_args": ckpt["arch_args"], "sample_rate": ckpt["arch_args"]["sample_rate"],
        "n_src": net.n_src}
history = json.loads(ckpt["history"])
export_model_folder(a.latest_dest, net, meta, name="s4m-tiny-16k-latest", history=history,
                    train_config=json.loads(ckpt["config"]), schedule=ckpt["schedule"], step=int(ckpt["step"]))
print(f"continuation state: {a.latest_dest} (step {ckpt['step']})", flush=True)

# 2. choose on the full validation set, by its same-kind pairs (real+real, synthetic+synthetic: what the held-out
#    targets measure), among the run's best, its latest weights and the model shipped now (never ship a regression)
candidates = {"best": a.run / "best", "latest": a.latest_dest}
if (a.dest / "weights.safetensors").exists():
    shipped = Path(tempfile.mkdtemp()) / "shipped"
    shutil.copytree(a.dest, shipped)
    candidates["shipped"] = shipped
val = {k: score(f, "val") for k, f in candidates.items()}
pick = max(val, key=lambda k: selection_score(val[k]))
src = candidates[pick]
config = json.loads((src / "config.json").read_text())
figures = {"val": val[pick]}
for split in ("test_real", "test_synth", "seen_real", "seen_synth"):  # seen_*: training people (diagnostic)
    if (a.data / split).is_dir():
        figures[split] = score(src, split)

prov = config.get("provenance", {})
config.update({
    "name": "s4m-tiny-16k",
    "aliases": ["default"],
    "description": "S4M (small CPU-trained configuration), 16 kHz, 2 speakers; trained by sepcli on Debian-packaged "
                   "real and synthetic speech. See MODEL_CARD.md.",
    "segment": 4.0, "overlap": 0.25, "input_loudness": -25.0,
})
config["provenance"] = {k: v for k, v in prov.items() if k != "history"}
config["eval"] = {"measured": time.strftime("%Y-%m-%d", time.gmtime()), "step": prov.get("step"),
                  "selected": f"{pick} of run best / run latest / previously shipped, by the full validation set's "
                              "same-kind pairs",
                  "eval_seconds": round(time.time() - t0), **figures}
a.dest.mkdir(parents=True, exist_ok=True)
tmp = a.dest / ".weights.safetensors.tmp"
shutil.copyfile(src / "weights.safetensors", tmp)
tmp.replace(a.dest / "weights.safetensors")
(a.dest / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
real = figures.get("test_real", {}).get("si_snri", {}).get("mean")
synth = figures.get("test_synth", {}).get("si_snri", {}).get("mean")
print(f"SUMMARY shipped {pick} (step {prov.get('step')}; run at step {ckpt['step']}): val SI-SNRi "
      f"{figures['val']['si_snri']['mean']} dB, held-out real {real} dB, held-out synthetic {synth} dB")
