"""The validation score of a run: SI-SNR and its improvement over the mixture on whole files, as `sepcli eval`
scores them, so that a run's best/ is chosen by the figure users will measure."""

from __future__ import annotations

import numpy as np
import torch

from .. import metrics
from .data import DataError, LibriMixDataset


@torch.no_grad()
def validate(model: torch.nn.Module, ds: LibriMixDataset, batch: int = 4, limit: int | None = None,
             should_stop=None) -> dict | None:
    """Mean SI-SNR and SI-SNRi (dB) of the model on whole validation mixtures (PIT-matched); None when
    `should_stop()` turns true between batches (a signal: the run stops without waiting for the whole set).
    Mixtures with a silent source are left out, as `sepcli eval` leaves them out (their SI-SNR is only its
    epsilon's); `n` counts the mixtures scored."""
    was = model.training
    model.eval()
    n = len(ds) if limit is None else min(limit, len(ds))
    vals, imps = [], []
    for i in range(0, n, batch):
        if should_stop is not None and should_stop():
            model.train(was)
            return None
        by_length: dict[int, list] = {}  # whole files: only mixtures of one length share a forward pass
        for j in range(i, min(n, i + batch)):
            m, src = ds[j]
            if not metrics.silent_reference(src[:, : m.shape[-1]].numpy(), m.numpy()):
                by_length.setdefault(m.shape[-1], []).append((m, src))
        for items in by_length.values():
            mix = torch.stack([m for m, _ in items])
            ref = torch.stack([s[:, : m.shape[-1]] for m, s in items])
            est = model(mix)
            score, _ = metrics.pit_si_snr(est, ref)
            base = metrics.si_snr(mix.unsqueeze(1).expand_as(ref), ref).mean(-1)
            vals += score.tolist()
            imps += (score - base).tolist()
    model.train(was)
    if not vals:
        raise DataError(f"{ds.folder}: no validation mixture can be scored (each has a silent source)")
    return {"si_snr": float(np.mean(vals)), "si_snri": float(np.mean(imps)), "n": len(vals)}
