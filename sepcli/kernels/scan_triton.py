"""Fused Triton selective scan (forward and backward), for CUDA tensors; runs on CPU under `TRITON_INTERPRET=1`.

Same contract as `scan_ref.selective_scan_ref` (mamba_ssm's selective_scan semantics). One program handles
one batch index and a block of BLOCK_D channels, holding the `(BLOCK_D, n)` state in registers and walking
time sequentially: no `(b, d, l, n)` intermediate, extra memory O(b·d·n) (the last state).
B and C are read through strides, so constant `(d, n)`, variable `(b, n, l)` and grouped `(b, g, n, l)`
layouts need no copy.

Backward (`_scan_bwd_kernel`, same program layout), with no `(b, d, l, n)` tensor either:
1. recompute the forward, keeping the state at the start of every CHUNK steps: `(b, d, l/CHUNK, n)`;
2. walk the chunks from last to first: recompute the chunk's states into a `(b, d, CHUNK, n)` scratch, then walk
   it backwards in time with g_h, the gradient of the state (the formulas of `scan_cpu`'s docstring):
       g_h[t] = go[t]·C[t] + exp(dt[t+1]·A)·g_h[t+1]
       dC[t] += go[t]·h[t];   dB[t] += g_h[t]·dt[t]·u[t];   du[t] = go[t]·D + dt[t]·Σ g_h[t]·B[t]
       ddt[t] = Σ g_h[t]·(h[t-1]·exp(dt[t]·A)·A + B[t]·u[t]);   dA += g_h[t]·h[t-1]·exp(dt[t]·A)·dt[t]
   go is the gradient of y (through silu(z) when z is given; y before the gate is recomputed from h[t]).
Per-channel sums (dA, dD, d_bias, constant dB/dC) stay in registers and are added atomically at the end (the
batch programs share them); variable B/C gradients are summed over the block's channels, which all belong to one
group (the block size divides the channels per group), and added atomically per time step. Extra memory is
O(b·d·n·(l/CHUNK + CHUNK)) against the reference's O(b·d·l·n). As in mamba_ssm, the gradient of the returned last
state is not propagated. Everything is computed in float32; gradients are returned in the inputs' dtypes.

Triton decides between compiling and interpreting when a kernel is *defined*, i.e. when this module is
imported: `TRITON_INTERPRET=1` must be in the environment before the first import of this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .scan_ref import check_shapes

try:  # triton >= 3.4 keeps its environment switches in `knobs`
    from triton import knobs as _knobs

    INTERPRETED: bool = bool(_knobs.runtime.interpret)
except Exception:  # noqa: BLE001  # pragma: no cover - older triton
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, offs_d, offs_n, mask_d, mask_dn, nstate,
                    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (BLOCK_D, BLOCK_N), delta_bias and D (BLOCK_D) of a block of channels, float32 (zeros when absent)."""
    A = tl.load(A_ptr + offs_d[:, None] * nstate + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BLOCK_D], tl.float32)
    return A, bias, Dv


@triton.jit
def _step_inputs(u_ptr, dt_ptr, B_base, row, t, s_Bl, bias, mask_d, mask_dn, SOFTPLUS: tl.constexpr):
    """u[t], delta[t] + bias (before softplus), dt[t] and B[t] of a block of channels, float32."""
    u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
    raw = tl.load(dt_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32) + bias
    if SOFTPLUS:
        dt = tl.where(raw <= 20.0, tl.log(1.0 + tl.exp(raw)), raw)
    else:
        dt = raw
    Bt = tl.load(B_base + t * s_Bl, mask=mask_dn, other=0.0).to(tl.float32)
    return u, raw, dt, Bt


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr,
    dim, length, nstate,
    s_b, s_d,  # strides of the contiguous (b, d, l) tensors u, delta, z, out (time stride is 1)
    s_Bb, s_Bg, s_Bn, s_Bl, dpg_B,
    s_Cb, s_Cg, s_Cn, s_Cl, dpg_C,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < nstate)[None, :]
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, offs_d, offs_n, mask_d, mask_dn, nstate,
                                  HAS_BIAS, HAS_D, BLOCK_D)
    B_base = B_ptr + pid_b * s_Bb + (offs_d // dpg_B)[:, None] * s_Bg + offs_n[None, :] * s_Bn
    C_base = C_ptr + pid_b * s_Cb + (offs_d // dpg_C)[:, None] * s_Cg + offs_n[None, :] * s_Cn
    row = pid_b * s_b + offs_d * s_d
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for t in range(length):
        u, raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_base, row, t, s_Bl, bias, mask_d, mask_dn, SOFTPLUS)
        Ct = tl.load(C_base + t * s_Cl, mask=mask_dn, other=0.0).to(tl.float32)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
        y = tl.sum(h * Ct, axis=1) + Dv * u
        if HAS_Z:
            zt = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(out_ptr + row + t, y.to(out_ptr.dtype.element_ty), mask=mask_d)
    tl.store(last_ptr + (pid_b * dim + offs_d[:, None]) * nstate + offs_n[None, :], h, mask=mask_dn)


def _bc_strides(M: Tensor, dim: int) -> tuple[Tensor, int, int, int, int, int]:
    """(tensor, stride_b, stride_g_or_channel, stride_n, stride_l, channels per group) for B or C."""
    if M.dim() == 2:  # constant (d, n): "group" = channel, no batch or time stride
        return M, 0, M.stride(0), M.stride(1), 0, 1
    M4 = M[:, None] if M.dim() == 3 else M
    return M4, M4.stride(0), M4.stride(1), M4.stride(2), M4.stride(3), dim // M4.shape[1]


def _contiguous_channels(*vectors):
    """D and delta_bias as the kernels index them: one float per channel at stride 1 (a strided view, e.g. D[::2],
    would otherwise be read as its neighbours)."""
    return tuple(v.contiguous() if v is not None else None for v in vectors)


def scan_forward_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        block_d: int | None = None):
    """Forward only: returns (out in u's dtype, last_state (b, d, n) float32)."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    n = A.shape[1]
    u = u.contiguous()
    delta = delta.contiguous()
    z = z.contiguous() if z is not None else None
    A = A.contiguous()
    D, delta_bias = _contiguous_channels(D, delta_bias)
    out = torch.empty_like(u)
    last = torch.zeros(b, d, n, device=u.device, dtype=torch.float32)
    if b * d * l == 0:
        return out, last
    Bt, sBb, sBg, sBn, sBl, dpgB = _bc_strides(B, d)
    Ct, sCb, sCg, sCn, sCl, dpgC = _bc_strides(C, d)
    block_n = triton.next_power_of_2(n)
    if block_d is None:
        block_d = max(1, min(triton.next_power_of_2(d), max(1, 2048 // block_n), 64))
    grid = (b, triton.cdiv(d, block_d))
    dummy = u  # never read when the matching HAS_* flag is off
    _scan_fwd_kernel[grid](
        u, delta, A, Bt, Ct, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, out, last,
        d, l, n, u.stride(0), u.stride(1),
        sBb, sBg, sBn, sBl, dpgB, sCb, sCg, sCn, sCl, dpgC,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n,
    )
    return out, last


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr,
    du_ptr, ddt_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, ckpt_ptr, scratch_ptr,
    dim, length, nstate, chunk, nchunks,
    s_b, s_d,
    s_Bb, s_Bg, s_Bn, s_Bl, dpg_B,
    s_Cb, s_Cg, s_Cn, s_Cl, dpg_C,
    s_dBb, s_dBg, s_dBn, s_dBl,
    s_dCb, s_dCg, s_dCn, s_dCl,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < dim
    mask_n = offs_n < nstate
    mask_dn = mask_d[:, None] & mask_n[None, :]
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, offs_d, offs_n, mask_d, mask_dn, nstate,
                                  HAS_BIAS, HAS_D, BLOCK_D)
    B_base = B_ptr + pid_b * s_Bb + (offs_d // dpg_B)[:, None] * s_Bg + offs_n[None, :] * s_Bn
    C_base = C_ptr + pid_b * s_Cb + (offs_d // dpg_C)[:, None] * s_Cg + offs_n[None, :] * s_Cn
    row = pid_b * s_b + offs_d * s_d
    state_rows = (pid_b * dim + offs_d)[:, None]
    ckpt_base = ckpt_ptr + state_rows * nchunks * nstate + offs_n[None, :]
    scratch_base = scratch_ptr + state_rows * chunk * nstate + offs_n[None, :]

    # 1. forward, keeping the state at the start of each chunk
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for c in range(nchunks):
        tl.store(ckpt_base + c * nstate, h, mask=mask_dn)
        t0 = c * chunk
        for t in range(t0, tl.minimum(t0 + chunk, length)):
            u, raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_base, row, t, s_Bl, bias, mask_d, mask_dn, SOFTPLUS)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt

    tl.debug_barrier()  # the checkpoints written above are read back below, possibly by other threads

    # 2. chunks from last to first
    gh = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)  # exp(dt[t+1]·A)·g_h[t+1], carried backwards in time
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dBc_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dCc_acc = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    grp_B = (pid_d * BLOCK_D) // dpg_B  # one group per block for variable B/C (the host picks BLOCK_D so)
    grp_C = (pid_d * BLOCK_D) // dpg_C
    for cc in range(nchunks):
        c = nchunks - 1 - cc
        t0 = c * chunk
        nt = tl.minimum(chunk, length - t0)
        h0 = tl.load(ckpt_base + c * nstate, mask=mask_dn, other=0.0)
        h = h0
        for j in range(nt):
            t = t0 + j
            u, raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_base, row, t, s_Bl, bias, mask_d, mask_dn, SOFTPLUS)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt
            tl.store(scratch_base + j * nstate, h, mask=mask_dn)
        tl.debug_barrier()
        for jj in range(nt):
            j = nt - 1 - jj
            t = t0 + j
            u, raw, dt, Bt = _step_inputs(u_ptr, dt_ptr, B_base, row, t, s_Bl, bias, mask_d, mask_dn, SOFTPLUS)
            Ct = tl.load(C_base + t * s_Cl, mask=mask_dn, other=0.0).to(tl.float32)
            go = tl.load(dout_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
            h_t = tl.load(scratch_base + j * nstate, mask=mask_dn, other=0.0)
            h_prev = tl.load(scratch_base + tl.maximum(j - 1, 0) * nstate, mask=mask_dn, other=0.0)
            h_prev = tl.where(j > 0, h_prev, h0)
            if HAS_Z:
                zt = tl.load(z_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
                sz = tl.sigmoid(zt)
                y0 = tl.sum(h_t * Ct, axis=1) + Dv * u
                tl.store(dz_ptr + row + t, go * y0 * sz * (1.0 + zt * (1.0 - sz)), mask=mask_d)
                go = go * zt * sz
            dA_t = tl.exp(dt[:, None] * A)
            gh = gh + go[:, None] * Ct
            dB_t = gh * (dt * u)[:, None]
            dC_t = go[:, None] * h_t
            du = go * Dv + dt * tl.sum(gh * Bt, axis=1)
            ddt = tl.sum(gh * (h_prev * dA_t * A + Bt * u[:, None]), axis=1)
            dA_acc += gh * h_prev * dA_t * dt[:, None]
            dD_acc += go * u
            if SOFTPLUS:
                ddt = tl.where(raw <= 20.0, ddt * tl.sigmoid(raw), ddt)
            dbias_acc += ddt
            tl.store(du_ptr + row + t, du, mask=mask_d)
            tl.store(ddt_ptr + row + t, ddt, mask=mask_d)
            if VAR_B:
                tl.atomic_add(dB_ptr + pid_b * s_dBb + grp_B * s_dBg + offs_n * s_dBn + t * s_dBl,
                              tl.sum(dB_t, axis=0), mask=mask_n)
            else:
                dBc_acc += dB_t
            if VAR_C:
                tl.atomic_add(dC_ptr + pid_b * s_dCb + grp_C * s_dCg + offs_n * s_dCn + t * s_dCl,
                              tl.sum(dC_t, axis=0), mask=mask_n)
            else:
                dCc_acc += dC_t
            gh = gh * dA_t
        tl.debug_barrier()
    tl.atomic_add(dA_ptr + offs_d[:, None] * nstate + offs_n[None, :], dA_acc, mask=mask_dn)
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d)
    if not VAR_B:
        tl.atomic_add(dB_ptr + offs_d[:, None] * s_dBg + offs_n[None, :] * s_dBn, dBc_acc, mask=mask_dn)
    if not VAR_C:
        tl.atomic_add(dC_ptr + offs_d[:, None] * s_dCg + offs_n[None, :] * s_dCn, dCc_acc, mask=mask_dn)


def _pow2_dividing(k: int) -> int:
    return k & -k


def scan_backward_triton(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         chunk: int = 64, block_d: int | None = None):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, d_delta_bias) of sum(out * dout), each in its input's dtype
    (None for absent inputs)."""
    check_shapes(u, delta, A, B, C, D, z, delta_bias)
    b, d, l = u.shape
    n = A.shape[1]
    f32 = dict(device=u.device, dtype=torch.float32)
    u, delta, dout = u.contiguous(), delta.contiguous(), dout.contiguous()
    z = z.contiguous() if z is not None else None
    A = A.contiguous()
    D, delta_bias = _contiguous_channels(D, delta_bias)
    du, ddt = torch.zeros(b, d, l, **f32), torch.zeros(b, d, l, **f32)
    dz = torch.zeros(b, d, l, **f32) if z is not None else None
    dA, dD, dbias = torch.zeros(d, n, **f32), torch.zeros(d, **f32), torch.zeros(d, **f32)
    dB, dC = torch.zeros(B.shape, **f32), torch.zeros(C.shape, **f32)
    if b * d * l > 0:
        Bt, sBb, sBg, sBn, sBl, dpgB = _bc_strides(B, d)
        Ct, sCb, sCg, sCn, sCl, dpgC = _bc_strides(C, d)
        dBt, sdBb, sdBg, sdBn, sdBl, _ = _bc_strides(dB, d)
        dCt, sdCb, sdCg, sdCn, sdCl, _ = _bc_strides(dC, d)
        var_b, var_c = B.dim() > 2, C.dim() > 2
        block_n = triton.next_power_of_2(n)
        if block_d is None:
            block_d = max(1, min(triton.next_power_of_2(d), max(1, 2048 // block_n), 64))
        for var, dpg in ((var_b, dpgB), (var_c, dpgC)):
            if var:  # a block's channels must share one group of B/C
                block_d = min(block_d, _pow2_dividing(dpg))
        chunk = max(1, min(chunk, l))
        nchunks = triton.cdiv(l, chunk)
        ckpt = torch.empty(b, d, nchunks, n, **f32)
        scratch = torch.empty(b, d, chunk, n, **f32)
        dummy = u
        _scan_bwd_kernel[(b, triton.cdiv(d, block_d))](
            u, delta, A, Bt, Ct, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, dout,
            du, ddt, dA, dBt, dCt, dD, dz if dz is not None else du, dbias, ckpt, scratch,
            d, l, n, chunk, nchunks, u.stride(0), u.stride(1),
            sBb, sBg, sBn, sBl, dpgB, sCb, sCg, sCn, sCl, dpgC,
            sdBb, sdBg, sdBn, sdBl, sdCb, sdCg, sdCn, sdCl,
            VAR_B=var_b, VAR_C=var_c, HAS_D=D is not None, HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n,
        )

    def cast(g, like):
        return None if like is None else g.to(like.dtype)

    return (cast(du, u), cast(ddt, delta), cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), cast(dz, z),
            cast(dbias, delta_bias))


class SelectiveScanTriton(torch.autograd.Function):
    """Triton forward and backward (see the module docstring); saves only the inputs."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last = scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, _dlast):
        grads = scan_backward_triton(dout, *ctx.saved_tensors, delta_softplus=ctx.delta_softplus)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None,)


def selective_scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                          z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False):
    """Triton selective scan with mamba_ssm's selective_scan_fn contract."""
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out, last = SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:
        out, last = scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out
