"""Speaker pools: the speech of each person (or synthetic voice) as one array, and the split by person.

A pool folder holds `<speaker>.npy` (float16 mono at `speakers.json`'s sample rate: the person's utterances,
trimmed and joined with short pauses) and `speakers.json`:
    {"sample_rate": 16000, "speakers": {"<id>": {"person": ..., "kind": "real"|"synthetic"|"variant", "split": ...,
                                                 "seconds": ..., "source": ...}}}
Several speaker entries may share one `person` (e.g. the same voice database in two languages, or one
recorded person in two packages); splits are assigned per person so no person is in two splits. Kind "variant"
is a real person's speech with formants and pitch shifted (variants.py): it keeps the person's name, so its split,
and `load_pool` leaves it out unless asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Speaker:
    id: str
    person: str
    kind: str
    split: str
    seconds: float
    source: str = ""


def assign_splits(persons: list[str], held_out: dict[str, str]) -> dict[str, str]:
    """person -> split: the persons named in `held_out` (person -> "val"/"test") go there, the rest train."""
    bad = {p: s for p, s in held_out.items() if s not in SPLITS}
    if bad:
        raise ValueError(f"unknown split names: {bad}")
    return {p: held_out.get(p, "train") for p in persons}


def check_disjoint(speakers: list[Speaker]) -> None:
    """Raise if any person has speakers in more than one split."""
    seen: dict[str, set] = {}
    for s in speakers:
        seen.setdefault(s.person, set()).add(s.split)
    leaks = {p: sorted(v) for p, v in seen.items() if len(v) > 1}
    if leaks:
        raise ValueError(f"persons in more than one split: {leaks}")


def write_index(folder: Path, sample_rate: int, speakers: list[Speaker], skipped: list[str] | None = None) -> None:
    """Write speakers.json; `skipped` lists ids a recipe tried and left out (too little audio), so that
    incremental builds know them."""
    check_disjoint(speakers)
    data = {"sample_rate": sample_rate,
            "speakers": {s.id: {k: v for k, v in s.__dict__.items() if k != "id"} for s in speakers}}
    if skipped:
        data["skipped"] = sorted(set(skipped))
    (folder / "speakers.json").write_text(json.dumps(data, indent=1, sort_keys=True))


def read_skipped(folder: Path) -> list[str]:
    """The ids that speakers.json records as tried and left out."""
    return list(json.loads((Path(folder) / "speakers.json").read_text()).get("skipped", []))


def read_index(folder: Path) -> tuple[int, list[Speaker]]:
    data = json.loads((Path(folder) / "speakers.json").read_text())
    speakers = [Speaker(id=k, **v) for k, v in sorted(data["speakers"].items())]
    check_disjoint(speakers)
    return int(data["sample_rate"]), speakers


def load_pool(folder: Path, split: str, kinds: tuple[str, ...] = ("real", "synthetic"),
              min_seconds: float = 4.0) -> tuple[int, list[Speaker], list[np.ndarray]]:
    """Speakers of one split with their audio (float16 arrays, memory-mapped)."""
    sr, speakers = read_index(folder)
    chosen = [s for s in speakers if s.split == split and s.kind in kinds and s.seconds >= min_seconds]
    audio = [np.load(Path(folder) / f"{s.id}.npy", mmap_mode="r") for s in chosen]
    return sr, chosen, audio
