"""Publish the default model and the training run's continuation state into the repository.

    python recipes/publish_default.py [--run runs/default] [--limit N]

1. Exports the run's latest weights (runs/default/last.pt; fp32, no optimiser state) with its step, lr schedule
   and history to recipes/state/default-latest/: the next session continues training from there.
2. Scores the run's best-by-validation model, the latest weights (and their moving average when the run keeps one:
   train --ema) and the model shipped now on the FULL validation
   set through the separation pipeline (`sepcli eval`), on its same-kind pairs (real+real and synthetic+synthetic,
   what the held-out targets measure) outside the first `val_limit` mixtures, on which the run picks its best
   (there the best's score is biased upward), and ships the winner as models/s4m-tiny-16k (alias `default`),
   folder replaced whole. With --limit (a quick look) models/ is left alone.
   Model selection uses validation only; the held-out test sets are then measured for the card, and the seen
   sets (the same kinds of mixture made of training people) to show how much of the gap is the people being new.
   The shipped model is replaced only when a challenger beats it on the same validation mixtures by more than
   --margin standard errors of the paired per-mixture difference (default 2): candidates a few hundredths of a
   dB apart are level within the noise, and picking the larger of two noisy figures ships noise (session 7:
   a 0.02 dB validation "win" with a 0.08 dB paired standard error).
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sepcli.evaluate import evaluate  # noqa: E402
from sepcli.nets import build_network  # noqa: E402
from sepcli.pipeline import SeparationOptions, Separator  # noqa: E402
from sepcli.train.export import export_model_folder, replace_folder  # noqa: E402
from sepcli.train.data import librimix_items  # noqa: E402
from sepcli.train.speakers import read_index  # noqa: E402

POOLS = ROOT / "data" / "pools"


def person_kinds(pools: Path = POOLS) -> dict[str, str]:
    """Kind ("real"/"synthetic") by person; a person's voice variants (kind "variant") keep the person's own
    kind."""
    if not (pools / "speakers.json").exists():
        return {}
    return {s.person: s.kind for s in read_index(pools)[1] if s.kind in ("real", "synthetic")}


def same_kind(pair: str, kind: dict[str, str]) -> str | None:
    """The kind both people of `pair` ("a+b") share, or None (mixed kinds or an unknown person)."""
    kinds = {kind.get(s) for s in pair.split("+")}
    return kinds.pop() if len(kinds) == 1 and None not in kinds else None


def kind_means(pairs: dict, kind: dict[str, str]) -> dict[str, float]:
    """n-weighted mean SI-SNRi of the real+real pairs, the synthetic+synthetic pairs, and of both together
    ("same"): the held-out targets' mixtures (real+synthetic pairs are much easier). Kinds without pairs are
    left out."""
    sums: dict[str, list[float]] = {}
    for pair, r in pairs.items():
        k = same_kind(pair, kind)
        if k is not None:
            for key in (k, "same"):
                acc = sums.setdefault(key, [0.0, 0])
                acc[0] += r["si_snri"]["mean"] * r["n"]
                acc[1] += r["n"]
    return {k: total / n for k, (total, n) in sums.items()}


def selection_files(rows: list[dict], kind: dict[str, str]) -> dict[str, float]:
    """SI-SNRi by mixture file of the rows that select the model: the same-kind pairs when the set has any,
    else every mixture."""
    same = {r["file"]: r["si_snri"] for r in rows if r.get("pair") and same_kind(r["pair"], kind) is not None}
    return same or {r["file"]: r["si_snri"] for r in rows}


def paired_difference(challenger: dict[str, float], incumbent: dict[str, float]) -> dict:
    """Mean and standard error of challenger minus incumbent over the same mixtures."""
    if set(challenger) != set(incumbent):
        raise ValueError("candidates were scored on different mixtures")
    d = np.array([challenger[f] - incumbent[f] for f in sorted(incumbent)], dtype=np.float64)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {"diff": float(d.mean()), "se": se, "n": len(d)}


def choose(files: dict[str, dict[str, float]], incumbent: str | None = "shipped", margin: float = 2.0
           ) -> tuple[str, dict[str, dict]]:
    """Pick the model to ship from per-mixture validation SI-SNRi of each candidate (`files[name][file]`).

    With an incumbent, a challenger replaces it only if its paired mean difference exceeds `margin` standard
    errors; of several such challengers the largest difference wins. Without one, the best mean wins.
    Returns the pick and each challenger's paired statistics against the incumbent."""
    if incumbent not in files:
        return max(files, key=lambda k: float(np.mean(list(files[k].values())))), {}
    stats = {k: paired_difference(v, files[incumbent]) for k, v in files.items() if k != incumbent}
    winners = [k for k, st in stats.items() if st["diff"] > 0 and st["diff"] > margin * st["se"]]
    return (max(winners, key=lambda k: stats[k]["diff"]) if winners else incumbent), stats


def unselected(files: dict[str, dict[str, float]], used: set[str]) -> tuple[dict[str, dict[str, float]], str]:
    """The candidates' per-mixture scores to compare, and what they are. The run's best/ is the top of hundreds of
    validations on the mixtures `used` (its first val_limit; all when it has none): there its score is biased
    upward, and a paired test would favour it. Every candidate is compared on the other mixtures; when there are
    none, best/ is left out and the others are compared on all."""
    if not used:
        return files, "all validation mixtures"
    rest = set(next(iter(files.values()))) - used
    if rest:
        return ({k: {f: v for f, v in scores.items() if f in rest} for k, scores in files.items()},
                f"the {len(rest)} validation mixtures outside the {len(used)} the run picks its best on")
    return ({k: v for k, v in files.items() if k != "best"},
            "all validation mixtures; the run picks its best on every one of them, so best/ is left out")


def write_model(dest: Path, weights: Path, config: dict) -> None:
    """Replace the model folder `dest` (weights and config.json; other files, e.g. the hand-written MODEL_CARD.md,
    kept) through replace_folder, so a kill leaves the old folder or the new one, never new weights under the old
    config or a truncated config."""
    def fill(tmp: Path) -> None:
        if dest.is_dir():
            for f in dest.iterdir():
                if f.is_file() and f.name not in ("weights.safetensors", "config.json"):
                    shutil.copy2(f, tmp / f.name)
        shutil.copyfile(weights, tmp / "weights.safetensors")
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")

    replace_folder(dest, fill)


def run_candidates(run: Path, latest: Path) -> dict[str, Path]:
    """The run's model folders to score: its best-by-validation export when it has one (a run continued from the
    committed state on a new machine has no best/ until it beats the best score it carried over), and the
    exported latest weights."""
    found = {"best": run / "best"} if (run / "best" / "weights.safetensors").exists() else {}
    return {**found, "latest": latest}


def score(folder: Path, data: Path, threads: int, limit: int | None, kind: dict[str, str]) -> dict:
    """Evaluate the model folder on one LibriMix folder through the separation pipeline; prints and returns its
    figures (with the per-mixture rows under "files")."""
    split = data.name
    sep = Separator(str(folder), SeparationOptions(threads=threads, loudness="off"))
    res = evaluate(sep, data, with_sdr=True, limit=limit)
    if res["failed"]:  # the recipe's own sets: every mixture must score, or the comparison is not paired
        raise SystemExit("; ".join(f["error"] for f in res["failed"]))
    fig = {"n": res["n"], "si_snri": res["si_snri"], "sdri": res["sdri"], "files": res["files"]}
    # the seen sets pair many people at random, one or two mixtures each: no per-pair figures
    pairs = {} if split.startswith("seen") else res.get("pairs", {})
    if pairs:
        fig["pairs"] = {p: r["si_snri"]["mean"] for p, r in pairs.items()}
        means = kind_means(pairs, kind)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "default")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "16k")
    ap.add_argument("--dest", type=Path, default=ROOT / "models" / "s4m-tiny-16k")
    ap.add_argument("--latest-dest", type=Path, default=ROOT / "recipes" / "state" / "default-latest")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--margin", type=float, default=2.0,
                    help="standard errors of the paired validation difference a challenger needs to replace the "
                         "shipped model (default 2)")
    a = ap.parse_args()
    t0 = time.time()
    kind = person_kinds()
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

    # 2. choose on the full validation set, by its same-kind pairs (real+real, synthetic+synthetic: what the
    #    held-out targets measure), among the run's best, its latest weights and the model shipped now; the
    #    shipped model stays unless a challenger beats it by the margin (never ship a regression or noise)
    candidates = run_candidates(a.run, a.latest_dest)
    if ckpt.get("ema"):  # the run's latest moving average of the weights (train --ema)
        net.load_state_dict(ckpt["ema"]["shadow"])
        candidates["latest-average"] = export_model_folder(
            Path(tempfile.mkdtemp()) / "latest-average", net, meta, name="s4m-tiny-16k-latest-average",
            history=history, train_config=json.loads(ckpt["config"]), schedule=ckpt["schedule"],
            step=int(ckpt["step"]))
    if (a.dest / "weights.safetensors").exists():
        shipped = Path(tempfile.mkdtemp()) / "shipped"
        shutil.copytree(a.dest, shipped)
        candidates["shipped"] = shipped
    val = {k: score(f, a.data / "val", a.threads, a.limit, kind) for k, f in candidates.items()}
    # the run validates (and picks best/) on its first val_limit mixtures, on all without one; a quick look
    # (--limit) scores only first ones, so it compares on all it has (and writes nothing into models/)
    names = [p.name for p in librimix_items(a.data / "val")[0]]
    used = set() if a.limit else set(names[:json.loads(ckpt["config"]).get("val_limit") or len(names)])
    compared, on = unselected({k: selection_files(v.pop("files"), kind) for k, v in val.items()}, used)
    print(f"compared on {on}", flush=True)
    pick, stats = choose(compared, "shipped", a.margin)
    for k, st in stats.items():
        print(f"{k} minus shipped on validation: {st['diff']:+.3f} dB, paired SE {st['se']:.3f} dB (n={st['n']}); "
              f"needs > {a.margin:g} SE", flush=True)
    src = candidates[pick]
    config = json.loads((src / "config.json").read_text())
    figures = {"val": val[pick]}
    for split in ("test_real", "test_synth", "seen_real", "seen_synth"):  # seen_*: training people (diagnostic)
        if (a.data / split).is_dir():
            figures[split] = score(src, a.data / split, a.threads, a.limit, kind)
            figures[split].pop("files")

    prov = config.get("provenance", {})
    config.update({
        "name": "s4m-tiny-16k",
        "aliases": ["default"],
        "description": "S4M (small CPU-trained configuration), 16 kHz, 2 speakers; trained by sepcli on "
                       "Debian-packaged real and synthetic speech. See MODEL_CARD.md.",
        "segment": 4.0, "overlap": 0.25, "input_loudness": -25.0,
    })
    config["provenance"] = {k: v for k, v in prov.items() if k != "history"}
    config["eval"] = {"measured": time.strftime("%Y-%m-%d", time.gmtime()), "step": prov.get("step"),
                      "selected": f"{pick} of {' / '.join(candidates)}: the shipped model stays "
                                  f"unless another beats it by {a.margin:g} paired standard errors on the "
                                  f"same-kind pairs of {on}",
                      "challengers": {k: {m: round(v, 3) for m, v in st.items()} for k, st in stats.items()},
                      "eval_seconds": round(time.time() - t0), **figures}
    if a.limit is None:  # figures of part of the sets never go into the shipped model's config
        a.dest.parent.mkdir(parents=True, exist_ok=True)
        write_model(a.dest, src / "weights.safetensors", config)
    else:
        print(f"--limit {a.limit}: {a.dest} left as it is", flush=True)
    real = figures.get("test_real", {}).get("si_snri", {}).get("mean")
    synth = figures.get("test_synth", {}).get("si_snri", {}).get("mean")
    print(f"SUMMARY shipped {pick} (step {prov.get('step')}; run at step {ckpt['step']}): val SI-SNRi "
          f"{figures['val']['si_snri']['mean']} dB, held-out real {real} dB, held-out synthetic {synth} dB")


if __name__ == "__main__":
    main()
