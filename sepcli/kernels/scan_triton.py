"""Fused Triton selective scan (forward), for CUDA tensors; runs on CPU under `TRITON_INTERPRET=1`.

Same contract as `scan_ref.selective_scan_ref` (mamba_ssm's selective_scan semantics). One program handles
one batch index and a block of BLOCK_D channels, holding the `(BLOCK_D, n)` state in registers and walking
time sequentially: no `(b, d, l, n)` intermediate, extra memory O(b·d·n) (the last state).
B and C are read through strides, so constant `(d, n)`, variable `(b, n, l)` and grouped `(b, g, n, l)`
layouts need no copy.

Backward: there is no Triton backward kernel yet. `selective_scan_triton` runs its forward under an autograd
Function whose backward recomputes the scan with the reference (`scan_ref`) and differentiates that: correct,
but it costs the reference's O(b·d·l·n) memory during backward.

Triton decides between compiling and interpreting when a kernel is *defined*, i.e. when this module is
imported: `TRITON_INTERPRET=1` must be in the environment before the first import of this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .scan_ref import check_shapes, selective_scan_ref

try:  # triton >= 3.4 keeps its environment switches in `knobs`
    from triton import knobs as _knobs

    INTERPRETED: bool = bool(_knobs.runtime.interpret)
except Exception:  # noqa: BLE001  # pragma: no cover - older triton
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


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
    A = tl.load(A_ptr + offs_d[:, None] * nstate + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        Dv = tl.zeros([BLOCK_D], tl.float32)
    B_base = B_ptr + pid_b * s_Bb + (offs_d // dpg_B)[:, None] * s_Bg + offs_n[None, :] * s_Bn
    C_base = C_ptr + pid_b * s_Cb + (offs_d // dpg_C)[:, None] * s_Cg + offs_n[None, :] * s_Cn
    row = pid_b * s_b + offs_d * s_d
    h = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    for t in range(length):
        u = tl.load(u_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dt_ptr + row + t, mask=mask_d, other=0.0).to(tl.float32) + bias
        if SOFTPLUS:
            dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
        Bt = tl.load(B_base + t * s_Bl, mask=mask_dn, other=0.0).to(tl.float32)
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


class SelectiveScanTriton(torch.autograd.Function):
    """Triton forward; backward by recomputation through the reference (see the module docstring)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last = scan_forward_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.delta_softplus = bool(delta_softplus)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, _dlast):
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(True) if t is not None else None for t in saved]
        with torch.enable_grad():
            out = selective_scan_ref(*inputs, delta_softplus=ctx.delta_softplus)
            wanted = [t for t in inputs if t is not None]
            grads = torch.autograd.grad(out, wanted, dout, allow_unused=True)
        it = iter(grads)
        return tuple(next(it) if t is not None else None for t in inputs) + (None,)


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
