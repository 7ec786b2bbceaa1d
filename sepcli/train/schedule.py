"""The two schedules that make a run a pure function of its step: the learning rate's (warm-up, then halving on
plateaus of the validation score) and the batches' (which dataset items each rank takes at each step). Both are
what an exact resume restores: the first from its state in the checkpoint, the second from the step alone."""

from __future__ import annotations

import math

import numpy as np


class Schedule:
    """lr = base * min(1, (step+1)/warmup) * scale; scale halves after `patience` validations without a new best."""

    def __init__(self, base: float, warmup: int, patience: int):
        self.base, self.warmup, self.patience = base, warmup, patience
        self.scale, self.best, self.bad = 1.0, -math.inf, 0
        self.warmup_from = 0  # a run continued from weights alone warms up again from here
        self.val_id: str | None = None  # fingerprint of the validation set that `best` was measured on

    def lr(self, step: int) -> float:
        return self.base * min(1.0, (step - self.warmup_from + 1) / max(1, self.warmup)) * self.scale

    def validated(self, score: float) -> bool:
        """Record a validation score; True when it is a new best."""
        if score > self.best:
            self.best, self.bad = score, 0
            return True
        self.bad += 1
        if self.bad >= self.patience:
            self.scale, self.bad = self.scale * 0.5, 0
        return False

    def use_validation_set(self, val_id: str | None) -> bool:
        """Bind the best score to a validation set. A different (or unrecorded) set than the one `best` was
        measured on restarts the best score and the patience count; the lr scale is kept. True if it did."""
        changed = val_id != self.val_id and (self.val_id is not None or math.isfinite(self.best))
        if changed:
            self.best, self.bad = -math.inf, 0
        self.val_id = val_id
        return changed

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best if math.isfinite(self.best) else None, "bad": self.bad,
                "warmup_from": self.warmup_from, "val_id": self.val_id}

    def load_state_dict(self, d: dict) -> None:
        best = d.get("best")
        self.scale, self.best, self.bad = float(d["scale"]), -math.inf if best is None else float(best), int(d["bad"])
        self.warmup_from = int(d.get("warmup_from", 0))
        self.val_id = d.get("val_id")


def batch_indices(step: int, rank: int, world: int, batch: int, n_items: int | None, seed: int,
                  steps_per_epoch: int | None) -> list[int]:
    """The dataset indices of one rank's share of a global step (pure function: exact resume, no overlap)."""
    if n_items is None:  # dynamic mixing: every index is a new mixture
        base = (step * world + rank) * batch
        return list(range(base, base + batch))
    epoch, pos = divmod(step, steps_per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_items)
    start = (pos * world + rank) * batch
    return [int(perm[(start + j) % n_items]) for j in range(batch)]


