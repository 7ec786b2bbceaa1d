"""Separation metrics: SI-SNR(i), SDR(i) and permutation-invariant matching.

SI-SNR follows Le Roux et al. (2019), "SDR - half-baked or well done?": both signals are made zero-mean,
the estimate is projected on the reference, SI-SNR = 10 log10(|s_target|^2 / |e|^2).
SDR is BSS-eval v4's (time-invariant 512-tap distortion filter) through fast_bss_eval when installed.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

EPS = 1e-8


def si_snr(est: torch.Tensor, ref: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """SI-SNR in dB over the last axis; broadcasts leading axes."""
    est = est - est.mean(dim=-1, keepdim=True)
    ref = ref - ref.mean(dim=-1, keepdim=True)
    dot = (est * ref).sum(dim=-1, keepdim=True)
    energy = (ref * ref).sum(dim=-1, keepdim=True) + eps
    target = dot / energy * ref
    noise = est - target
    return 10 * torch.log10(((target * target).sum(-1) + eps) / ((noise * noise).sum(-1) + eps))


def pairwise_si_snr(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """[B, n_est, T] x [B, n_ref, T] -> [B, n_est, n_ref] SI-SNR of every pairing."""
    return si_snr(est.unsqueeze(2), ref.unsqueeze(1))


def best_permutation(score: np.ndarray) -> tuple[int, ...]:
    """Assignment maximising the summed score of a square [n, n] matrix: est i -> ref perm[i].

    Every permutation is tried up to 4 sources; above that the Hungarian algorithm (scipy) is used.
    """
    n = score.shape[0]
    if n <= 4:
        perms = list(itertools.permutations(range(n)))
        totals = [sum(score[i, p[i]] for i in range(n)) for p in perms]
        return perms[int(np.argmax(totals))]
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(-score)
    return tuple(int(c) for _, c in sorted(zip(rows, cols)))


def pit_si_snr(est: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation-invariant SI-SNR. est, ref: [B, n, T].

    Returns (mean SI-SNR per item under the best permutation [B], permutation [B, n] with
    est[b, i] matched to ref[b, perm[b, i]]). Differentiable in `est` (for the PIT loss).
    """
    b, n, _ = est.shape
    pair = pairwise_si_snr(est, ref)  # [B, n, n]
    perms = torch.tensor(list(itertools.permutations(range(n))), device=est.device)  # [P, n]
    idx = torch.arange(n, device=est.device)
    # total[b, p] = sum_i pair[b, i, perms[p, i]]
    total = pair[:, idx.unsqueeze(0).expand(len(perms), n), perms].sum(-1)  # [B, P]
    best = total.argmax(dim=-1)
    return total[torch.arange(b), best] / n, perms[best]


def pit_loss(est: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Negative permutation-invariant SI-SNR, averaged over the batch."""
    return -pit_si_snr(est, ref)[0].mean()


def sdr(est: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """BSS-eval SDR (dB) of already matched est/ref pairs [n, T] -> [n]."""
    import fast_bss_eval

    return np.asarray(fast_bss_eval.sdr(ref.astype(np.float64), est.astype(np.float64), load_diag=1e-10))


def separation_scores(est: np.ndarray, ref: np.ndarray, mix: np.ndarray, with_sdr: bool = True) -> dict:
    """Match est [n, T] to ref [n, T] by SI-SNR and score against the mixture baseline [T].

    Returns a dict of per-source arrays: si_snr, si_snri, sdr, sdri (the last two when with_sdr) and `perm`.
    """
    est_t = torch.as_tensor(est, dtype=torch.float64)
    ref_t = torch.as_tensor(ref, dtype=torch.float64)
    mix_t = torch.as_tensor(mix, dtype=torch.float64)
    perm = best_permutation(pairwise_si_snr(est_t[None], ref_t[None])[0].numpy())
    # est i matches ref perm[i]; reorder estimates to reference order
    order = np.argsort(perm)
    matched = est_t[list(order)]
    s = si_snr(matched, ref_t).numpy()
    base = si_snr(mix_t.expand_as(ref_t), ref_t).numpy()
    out = {"perm": perm, "si_snr": s, "si_snri": s - base}
    if with_sdr:
        d = sdr(matched.numpy(), ref_t.numpy())
        d0 = sdr(np.broadcast_to(mix_t.numpy(), ref_t.shape).copy(), ref_t.numpy())
        out["sdr"], out["sdri"] = d, d - d0
    return out


SILENT_RATIO = 1e-10  # a reference 100 dB below its mixture is silent


def silent_reference(refs: np.ndarray, mix: np.ndarray) -> bool:
    """True when a reference [n, T] is silent: its zero-mean energy 100 dB or more below the mixture's [T] (or
    zero). Its SI-SNR is only the epsilon's and its SDR -inf: such a mixture is left out of scores."""
    floor = SILENT_RATIO * zero_mean_energy(mix)
    return any(zero_mean_energy(r) <= floor for r in refs)


def zero_mean_energy(x) -> float:
    """The energy of a signal after removing its mean (float64)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum((x - x.mean()) ** 2))


def finite_or_none(v):
    """A score as JSON and CSV can hold it: a non-finite float (a degenerate file's -inf, a diverged run's NaN)
    becomes None; anything else is returned as it is."""
    return None if isinstance(v, float) and not math.isfinite(v) else v
