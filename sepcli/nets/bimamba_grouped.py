"""Both directions of SPMamba's bidirectional Mamba layer as ONE stream of work, for inference (no autograd).

The fused inference path ran the forward and the backward direction one after the other: two selective-scan
calls, two depthwise-conv calls and ten GEMM calls per chunk of sequences, each with a fixed cost (measured on
a 2-core Xeon, SPMamba-8k, per chunk: about 0.2 ms per scan call, 30-55 us per numba launch, about 30 us per
bf16 oneDNN GEMM call; SPMamba-8k runs about 20 chunks per second of audio and layer, so these fixed costs were
0.1-0.16 s per second of audio).

Here the two directions run side by side, channel-major: every intermediate is [2, channels, S, L] (direction
0 = forward, 1 = backward, its time axis reversed; channel c of direction d holds its S sequences' rows), so
each direction's projection input is one [K, S * L] matrix and each projection one large GEMM per direction
(one bmm over the two directions, N = S * L tokens; the [S, 2, channels, L] layout before made them 2S small
GEMMs, N = L, measured 103-138 GFLOP/s against 169-178 for the same work as one GEMM, SPMamba-8k, AVX2, fp32):
- the RMS norm writes both directions' normalised inputs channel-major in one pass (nets.bimamba_kernels; its
  weights are folded into in_proj);
- in_proj (x and z), x_proj, dt_proj and out_proj: one batched GEMM each over the two directions, the
  directions' weights stacked [2, M, K] (dt_proj, K = r = 8, folded into the scan's row setup instead with
  FOLD_DT: the scan takes delta in low rank, `delta_proj`);
- the depthwise conv + SiLU is one call over the 2 * d_inner * S channel-major rows (the two directions'
  filters side by side);
- the selective scan is one call over 2 * d_inner channels, reading u, delta and z in place through a
  (S, 2 * d_inner, L) view of the channel-major buffers (the CPU scan takes rows with any (b, d) strides and
  writes out in u's layout); B and C as two groups (g = 2 in the scan's (b, g, n, l) convention: channels
  [0, d_inner) read group 0, the others group 1), A, D and the dt bias concatenated: per channel the same
  recurrence as two calls;
- the residual sums (x + forward, x + the backward's time-reversed) read out_proj's channel-major output and
  write the block's [S, 2D, L] layout in one pass (nets.bimamba_kernels).

Sequences longer than a chunk (SPMamba's inter-frame pass on long inputs: one sequence of 2,493 frames at 20 s,
7,501 at 60 s) go through `windowed_inference`: the same steps on time windows of about a chunk's tokens, both
directions' windows side by side (the forward's [a, b), the backward's the time-reversed sequence's [a, b)), the
depthwise conv's last K - 1 inputs per row and the scan's state carried from window to window. So each window's
intermediates are a short input's (SPMamba-8k, d_inner 512: a whole 60 s sequence's [512, 7501] fp32 is 15 MB per
intermediate, a 2,048-step window's 4 MB per direction), and the norm, the flips and the residual stay one-pass
numba kernels. A chunk (`grouped_inference`) runs the same code as one window [0, L): no state is carried there,
so the scan is called without one and any scan backend runs it.

Precision: as the per-direction path. in_proj and out_proj in the GEMM dtype (bf16 under bf16 autocast), the
conv, x_proj, dt_proj and the scan in float32; the scan's gate z is cast to float32 (SCAN_Z_DTYPE: when the scan
takes bfloat16 inputs, setting it to None passes in_proj's bf16 z as is, without the cast pass).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from . import bimamba_kernels, causal_conv
from .mamba import Workspace

# dtype the scan's gate z is cast to from in_proj's output (None: passed in the GEMM dtype as is)
SCAN_Z_DTYPE: torch.dtype | None = torch.float32
# dt_proj folded into the scan (`_mixer`): the scan gets delta in low rank, delta_proj = (dt_proj's weight, x_proj's
# first r output rows in place), and the CPU kernel computes delta + bias in its row setup (r FMAs per step and 16
# channels) instead of a dt_proj GEMM writing a [2 * d_inner, S * L] float32 delta that the scan reads back;
# SEPCLI_SPMAMBA_FOLD_DT=0 (or FOLD_DT = False) keeps the GEMM.
FOLD_DT = os.environ.get("SEPCLI_SPMAMBA_FOLD_DT", "1") != "0"


def applies(x: Tensor, weights: dict, max_tokens: int) -> bool:
    """Whether the grouped path runs this chunk: numba kernels, float32 contiguous x, float32 or bf16 GEMMs, two
    directions with one norm eps, and at most `max_tokens` tokens (sequences x length). A whole sequence longer
    than that does not run here: with both directions' whole-sequence intermediates alive at once the scan's
    working set doubled, and on a 20 s input (sequences of 2,493 steps) the grouped scan measured slower (0.64 vs
    0.46 s per s of audio, bf16, one alternated run); such sequences go through `windowed_inference`."""
    dirs = weights["dirs"]
    return (x.shape[0] * x.shape[2] <= max_tokens and bimamba_kernels.available() and causal_conv.available()
            and x.dtype == torch.float32
            and x.is_contiguous() and weights["dtype"] in (torch.float32, torch.bfloat16) and len(dirs) == 2
            and dirs[0]["eps"] == dirs[1]["eps"] and x.device.type == "cpu")


def _stacked(weights: dict) -> dict:
    """The two directions' parameters side by side (made once per weights dict)."""
    g = weights.get("grouped")
    if g is None:
        f, b = weights["dirs"]

        def pair(name: str) -> Tensor | None:
            return None if f[name] is None else torch.stack([f[name], b[name]])

        g = weights["grouped"] = {
            "w_x": pair("w_x"), "w_z": pair("w_z"), "w_xp": pair("w_xp"), "w_dt": pair("w_dt"),
            "w_out": pair("w_out"), "b_x": pair("b_x"), "b_z": pair("b_z"), "b_out": pair("b_out"),
            "conv_w": torch.cat([f["conv_w"].float(), b["conv_w"].float()]),
            "conv_b": None if f["conv_b"] is None else torch.cat([f["conv_b"].float(), b["conv_b"].float()]),
            "A": torch.cat([f["A"], b["A"]]), "D": torch.cat([f["D"], b["D"]]),
            "dt_bias": torch.cat([f["dt_bias"], b["dt_bias"]]),
        }
    return g


def applies_windowed(x: Tensor, weights: dict) -> bool:
    """Whether `windowed_inference` runs x (any number of tokens): as `applies`, and a scan backend that takes an
    initial state (the CPU kernel or the reference)."""
    if not applies(x, weights, x.shape[0] * x.shape[2]):
        return False
    from sepcli.kernels import INITIAL_STATE_BACKENDS, ScanBackendError, backend_for

    try:
        return backend_for(x) in INITIAL_STATE_BACKENDS
    except ScanBackendError:  # (a forced backend that cannot run: the other path reports it)
        return False


def _mixer(xn: Tensor, S: int, L: int, weights: dict, ws: Workspace, scan, conv_state: Tensor | None = None,
           scan_state: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Both directions' Mamba mixers on their normalised inputs xn [2, D, S * L] (channel-major, the GEMM dtype):
    -> (out_proj's output [2, D, S * L] in the GEMM dtype, the scan's last state (S, 2 * d_inner, n) when
    scan_state is given or conv_state is). conv_state [2 * d_inner, S, K - 1] / scan_state (S, 2 * d_inner, n):
    the convolution's and the scan's state before this piece of the sequences (the windowed path), else none
    (zeros); conv_state is updated in place."""
    gdt = weights["dtype"]
    f32 = torch.float32
    p0 = weights["dirs"][0]
    di, r, n = p0["w_x"].shape[0], p0["r"], p0["n"]
    D = xn.shape[1]
    g = _stacked(weights)
    T = S * L  # tokens: every projection is [M, K] @ [K, T] per direction
    xin = torch.bmm(g["w_x"], xn, out=ws.get("c_xin", (2, di, T), gdt))
    z = torch.bmm(g["w_z"], xn, out=ws.get("c_z", (2, di, T), gdt))
    if g["b_x"] is not None:
        xin.add_(g["b_x"])
        z.add_(g["b_z"])
    if SCAN_Z_DTYPE is not None and z.dtype != SCAN_Z_DTYPE:
        z = ws.get("c_z32", (2, di, T), SCAN_Z_DTYPE).copy_(z)
    u = ws.get("c_u", (2, di, T), f32)
    causal_conv.conv_silu_rows_into(xin.view(2 * di, S, L), g["conv_w"], g["conv_b"], u.view(2 * di, S, L),
                                    channel_major=True, state=conv_state)
    dbl = torch.bmm(g["w_xp"], u, out=ws.get("c_dbl", (2, r + 2 * n, T), f32))

    def rows(t: Tensor) -> Tensor:  # [2, di, S * L] -> the scan's (S, 2 * di, L), rows in place
        return t.view(2 * di, S, L).permute(1, 0, 2)

    dbl4 = dbl.view(2, r + 2 * n, S, L).permute(2, 0, 1, 3)  # (S, 2 groups, r + 2n, L)
    kw = {"z": rows(z), "delta_bias": g["dt_bias"], "delta_softplus": True}
    if FOLD_DT:  # delta = dt_proj(dbl[:, :r]) inside the scan (groups = directions, as B and C)
        delta = None
        kw["delta_proj"] = (g["w_dt"].reshape(2 * di, r).float(), dbl4[:, :, :r])
    else:
        delta = rows(torch.bmm(g["w_dt"], dbl[:, :r], out=ws.get("c_delta", (2, di, T), f32)))
    args = (rows(u), delta, g["A"], dbl4[:, :, r:r + n], dbl4[:, :, r + n:], g["D"])
    last = None
    if conv_state is None and scan_state is None:
        y = scan(*args, **kw)
    else:
        y, last = scan(*args, **kw, return_last_state=True, initial_state=scan_state)
    y = y.permute(1, 0, 2)  # [2 * di, S, L]: channel-major as u (the CPU scan writes out in u's layout)
    if y.dtype != gdt or not y.is_contiguous():
        y = ws.get("c_y", (2 * di, S, L), gdt).copy_(y)
    o = torch.bmm(g["w_out"], y.view(2, di, T), out=ws.get("c_o", (2, D, T), gdt))
    if g["b_out"] is not None:
        o.add_(g["b_out"])
    return o, last


def grouped_inference(x: Tensor, weights: dict, out: Tensor, ws: Workspace, scan) -> Tensor:
    """Both directions of the fused one-layer bidirectional block, [S, D, L] -> out [S, 2D, L] (see the module
    docstring), the whole sequences as one window: nothing is carried, so any scan backend runs it. `weights` from
    MambaBlock._fused_weights, `ws` the scratch buffers, `scan` the selective_scan to call (the caller's, so that
    the one name tests and profilers wrap covers both inference paths)."""
    return _in_windows(x, weights, out, ws, scan, x.shape[2])


def windowed_inference(x: Tensor, weights: dict, out: Tensor, ws: Workspace, scan, window: int) -> Tensor:
    """grouped_inference in time windows of at most `window` steps, for sequences longer than a chunk (with more
    than one window the conv's and the scan's states carry across windows: the scan backend must then take
    `initial_state`, applies_windowed). Same arguments as grouped_inference."""
    return _in_windows(x, weights, out, ws, scan, window)


def _in_windows(x: Tensor, weights: dict, out: Tensor, ws: Workspace, scan, window: int) -> Tensor:
    """The one inference path: step i runs the forward direction on times [a, b) = [i * window, (i + 1) * window)
    and the backward on the time-reversed sequence's [a, b) (original times [L - b, L - a), reversed), both as one
    stream. With more than one window the depthwise convolution's last K - 1 inputs and the scan's last state carry
    from window to window, and every intermediate is [2, channels, S, window]: the working set of a short input
    however long the sequences. With one window (window >= L) no state is made or asked of the scan."""
    gdt = weights["dtype"]
    S, D, L = x.shape
    p0 = weights["dirs"][0]
    di = p0["w_x"].shape[0]
    g = _stacked(weights)
    n_win = max(1, -(-L // max(1, int(window))))
    w = max(1, -(-L // n_win))  # equal windows (the last one shorter by less than n_win steps), none of a few steps
    conv_state = None  # the convolution's last inputs [2 * di, S, K - 1], carried when there are several windows
    if n_win > 1:
        conv_state = ws.get("w_conv", (2 * di, S, g["conv_w"].shape[-1] - 1), torch.float32).zero_()
    h = None  # the scan's state, (S, 2 * di, n): zeros before the first window
    with torch.autocast(x.device.type, enabled=False):
        for a in range(0, L, w):
            m = min(w, L - a)
            xn = bimamba_kernels.rms_norm_window_pair_into(x, p0["eps"], a, ws.get("c_xn", (2, D, S, m), gdt))
            o, h = _mixer(xn.view(2, D, S * m), S, m, weights, ws, scan, conv_state, h)
            bimamba_kernels.residual_window_pair_into(x, o.view(2, D, S, m), a, out)
    return out
