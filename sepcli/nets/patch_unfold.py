"""The GridNet block's patch unfold as one numba pass over a strided view, for inference (no autograd).

A GridNet block's intra-frame and inter-frame paths (sepcli.nets.gridnet) cut each sequence of its normalised
[B, C, T, Q] tensor into patches of `ks` steps with hop `hs` before the bidirectional Mamba:

    out[i, c * ks + k, l] = src[s0 + i, c, l * hs + k]

what `F.unfold(seqs[..., None], (ks, 1), stride=(hs, 1))` gives for the contiguous sequences `seqs`. The torch
composition needed the sequences contiguous first (a reshape of the transposed tensor: one copy) and then wrote
the patches (a second pass). Here `src` is the transposed view itself ([N, C, Q] with any strides: for the
intra path [T, C, Q] of one batch item, for the inter path [Q, C, T]) and the patches are written in one pass.

Measured in the session that wrote it (s27-gridconv, SPMamba-8k at 4 s, AMD EPYC, AVX2, fp32, 2 threads): the
unfold's share of the copies went from 0.059 to 0.021 s per second of audio. float32 and bfloat16 (copied as
their 16 bits) are supported; the sequences are split over numba's threads, as many as torch's.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # numba is a dependency of the CPU scan; without it the caller keeps F.unfold
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover
    numba = None

if numba is not None:
    from ..kernels.threads import parallel_threads

    @njit(cache=True, error_model="numpy")
    def _unfold_seqs(src, s0, ks, hs, out, i0, i1):  # pragma: no cover - compiled
        length = out.shape[2]
        for i in range(i0, i1):
            for c in range(src.shape[1]):
                row = src[s0 + i, c]
                for k in range(ks):
                    dst = out[i, c * ks + k]
                    for t in range(length):
                        dst[t] = row[t * hs + k]

    @njit(cache=True, parallel=True)
    def _unfold_par(src, s0, ks, hs, out, n_blocks):  # pragma: no cover - compiled
        n = out.shape[0]
        for j in prange(n_blocks):
            _unfold_seqs(src, s0, ks, hs, out, j * n // n_blocks, (j + 1) * n // n_blocks)


def available() -> bool:
    return numba is not None


def _bits(t: Tensor):
    """t's memory as a numpy array of its own strides: float32 as is, bfloat16 as its 16 bits."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def unfold_into(src: Tensor, s0: int, ks: int, hs: int, out: Tensor) -> Tensor:
    """out[i, c*ks + k, l] = src[s0 + i, c, l*hs + k] for i < out.shape[0]: the patches of the sequences
    s0 .. s0 + n - 1 of src [N, C, Q] (any strides, e.g. a transposed view) into out [n, C*ks, L] (contiguous,
    L = (Q - ks) // hs + 1, the same dtype: float32 or bfloat16). Returns out. No autograd."""
    if numba is None:
        raise RuntimeError("numba is not available")
    if src.dtype not in (torch.float32, torch.bfloat16) or out.dtype != src.dtype:
        raise TypeError(f"src and out must both be float32 or bfloat16, got {src.dtype} and {out.dtype}")
    if src.device.type != "cpu" or out.device.type != "cpu":
        raise TypeError("unfold_into needs CPU tensors")
    if src.dim() != 3 or out.dim() != 3 or not out.is_contiguous():
        raise ValueError("src must be [N, C, Q] and out a contiguous [n, C*ks, L]")
    N, C, Q = src.shape
    n = out.shape[0]
    if ks < 1 or hs < 1 or ks > Q:
        raise ValueError(f"patch size {ks} and hop {hs} do not fit sequences of {Q} steps")
    length = (Q - ks) // hs + 1
    if out.shape[1:] != (C * ks, length) or not 0 <= s0 <= s0 + n <= N:
        raise ValueError(f"out {tuple(out.shape)} does not match src {tuple(src.shape)}, ks {ks}, hs {hs}, s0 {s0}")
    if n == 0 or length == 0:
        return out
    sa, oa = _bits(src.detach()), _bits(out)
    if n < 2:
        _unfold_seqs(sa, s0, ks, hs, oa, 0, n)
        return out
    with parallel_threads() as threads:  # one lock and fork guard with the other numba kernels
        if threads:
            _unfold_par(sa, s0, ks, hs, oa, min(n, 4 * threads))
        else:
            _unfold_seqs(sa, s0, ks, hs, oa, 0, n)
    return out
