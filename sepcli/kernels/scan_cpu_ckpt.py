"""Forward of the CPU scan for autograd (float32, n = 16) that also keeps the backward's checkpoints: the state
of every channel block at the start of each backward time segment (every SEG steps).

Why: the backward runs in segments of SEG steps from the last to the first, each from its start state. Without
checkpoints it first runs the forward's time loop once more over the whole sequence to find those states (the
"checkpoint pass": dt = softplus(delta + bias), dt·u and the scan, ~17% of the backward on the issue's shape
b=1, d=512, l=4000). The forward computes these states anyway: storing them costs one [16, 16] copy per block
and segment (l/SEG·n values per channel, 0.5 MB at the issue's shape), like mamba_ssm's CUDA forward, which
saves its chunk states for the backward.

How: scan_cpu_vec's forward (ck_par / ck_ser: the same row passes and base-2 time loop as inference) with time
tiles of SEG steps (the backward's segment length) instead of its own TT, storing the carried state at each
tile's start. Other dtypes and n keep scan_cpu.scan_forward and no checkpoints (the backward then runs its
checkpoint pass).
"""

from __future__ import annotations

import numpy as np
import torch

from .scan_cpu import W, _blocks, _kernel_args, _prepare, _run, scan_forward, threads_for_call
from .scan_cpu_vec import N, ck_par, ck_ser, no_lowr

SEG = 256  # time steps per backward segment (scan_cpu_bwd.SEG is this value)


def scan_forward_ckpt(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """scan_cpu.scan_forward plus the backward's checkpoints: (out, last_state, checkpoints or None).

    checkpoints: float32 [blocks, segments, 16, 16], the state (state-major, one channel per lane) of each channel
    block of scan_cpu._blocks at the start of each SEG-step segment; None where the backward finds them itself
    (float64, n != 16, empty input) or where it needs none (one segment: l <= SEG, the first state is 0)."""
    b, d, l = u.shape
    if u.dtype == torch.float64 or A.shape[1] != N or not b * d * l or l <= SEG:
        out, last = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        return out, last, None
    p = _prepare(u, delta, A, B, C, D, z, delta_bias)
    out = np.empty((b, d, l), p["u"].dtype)
    last = np.zeros((b, d, N), p["u"].dtype)
    blk = _blocks(b, d, p)
    hck = np.empty((len(blk), (l + SEG - 1) // SEG, N, W), p["u"].dtype)
    _run(ck_par, ck_ser, min(threads_for_call(), len(blk)), blk, *_kernel_args(p, delta_softplus), out, last,
         SEG, hck, no_lowr())
    return torch.from_numpy(out).to(u.dtype), torch.from_numpy(last), hck
