"""Plain, readable reference selective scan (the semantics of mamba_ssm's `selective_scan_ref`).

Semantics follow state-spaces/mamba, `mamba_ssm/ops/selective_scan_interface.py::selective_scan_ref`
(facts only; this is our own code). For each batch b, channel d and state index n:

    dt[b,d,t]   = delta[b,d,t] (+ delta_bias[d]) (-> softplus if delta_softplus)
                  (delta in low rank, delta_proj = (W, dt_low): delta[b,d,t] = sum_k W[d,k] dt_low[b,g(d),k,t])
    x[b,d,n]    = exp(dt * A[d,n]) * x[b,d,n] + dt * B[.., n, t] * u[b,d,t]      (x starts at 0, or at initial_state)
    y[b,d,t]    = sum_n x[b,d,n] * C[.., n, t]
    out[b,d,t]  = (y + D[d] * u[b,d,t]) * silu(z[b,d,t])       (the D and z terms only when given)

B and C are either constant `(d, n)`, or variable `(b, n, l)`, or grouped `(b, g, n, l)` where channel d uses
group `d // (dim // g)`. Everything is computed in float32 (float64 stays float64); `out` is returned in the
dtype of `u`, the last state `(b, d, n)` in the compute dtype. Only real A is supported.

This reference materialises `(b, d, l, n)` tensors and loops over time in Python: it is slow and memory-hungry
on purpose (clarity first). Fast kernels live in `scan_cpu.py` and `scan_triton.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_bc_layout(M: Tensor, batch: int, dim: int, length: int, name: str) -> None:
    """Raise ValueError unless M is (dim, n), (batch, n, length) or (batch, g, n, length) with g | dim."""
    if M.dim() == 2:  # constant (d, n)
        if M.shape[0] != dim:
            raise ValueError(f"{name}: constant shape must be (dim={dim}, n), got {tuple(M.shape)}")
        return
    M4 = M[:, None] if M.dim() == 3 else M
    if M4.dim() != 4 or M4.shape[0] != batch or M4.shape[-1] != length:
        raise ValueError(f"{name}: expected (d, n), (b, n, l) or (b, g, n, l) with b={batch}, l={length}; "
                         f"got {tuple(M.shape)}")
    if dim % M4.shape[1]:
        raise ValueError(f"{name}: groups g={M4.shape[1]} must divide dim={dim}")


def expand_bc(M: Tensor, batch: int, dim: int, length: int, name: str) -> Tensor:
    """B or C in any accepted layout -> `(batch, dim, n, length)` (a broadcast view for constant B/C,
    a copy with each group repeated over its channels otherwise)."""
    _check_bc_layout(M, batch, dim, length, name)
    if M.dim() == 2:
        return M[None, :, :, None].expand(batch, dim, M.shape[1], length)
    M4 = M[:, None] if M.dim() == 3 else M
    return M4.repeat_interleave(dim // M4.shape[1], dim=1)


def check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 z: Tensor | None, delta_bias: Tensor | None) -> None:
    """Raise ValueError with a one-line message when shapes do not follow selective_scan's contract."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, length), got {tuple(u.shape)}")
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (dim={u.shape[1]}, n), got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported (only real A)")
    n = A.shape[1]
    for name, M in (("B", B), ("C", C)):
        if M.dim() not in (2, 3, 4) or M.shape[-1 if M.dim() == 2 else -2] != n:
            raise ValueError(f"{name}: state size must match A's n={n}, got {tuple(M.shape)}")
        _check_bc_layout(M, u.shape[0], u.shape[1], u.shape[2], name)
    if D is not None and D.shape != (u.shape[1],):
        raise ValueError(f"D must be (dim={u.shape[1]},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (u.shape[1],):
        raise ValueError(f"delta_bias must be (dim={u.shape[1]},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def check_delta_proj(u: Tensor, delta: Tensor | None, delta_proj: tuple[Tensor, Tensor] | None) -> None:
    """Raise ValueError unless exactly one of delta and delta_proj is given, delta_proj = (W (d, r), dt_low
    (b, g, r, l)) with g dividing d (channels split evenly over the g groups, as B and C)."""
    if (delta is None) == (delta_proj is None):
        raise ValueError("give either delta or delta_proj = (W, dt_low), not both or neither")
    if delta_proj is None:
        return
    Wm, low = delta_proj
    b, d, l = u.shape
    if Wm.dim() != 2 or Wm.shape[0] != d:
        raise ValueError(f"delta_proj: W must be (dim={d}, r), got {tuple(Wm.shape)}")
    r = Wm.shape[1]
    if (low.dim() != 4 or low.shape[0] != b or low.shape[2] != r or low.shape[3] != l or low.shape[1] < 1
            or d % low.shape[1]):
        raise ValueError(f"delta_proj: dt_low must be (b={b}, g, r={r}, l={l}) with g dividing dim={d}, "
                         f"got {tuple(low.shape)}")


def low_rank_delta(W: Tensor, dt_low: Tensor, dtype: torch.dtype) -> Tensor:
    """delta (b, d, l) in `dtype` from delta_proj = (W (d, r), dt_low (b, g, r, l)): per group a matrix product,
    delta[b, c] = W[c] @ dt_low[b, c // (d / g)] (for the backends that take delta only)."""
    b, g, r, l = dt_low.shape
    d = W.shape[0]
    return torch.matmul(W.to(dtype).reshape(1, g, d // g, r), dt_low.to(dtype)).reshape(b, d, l)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                       z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False, initial_state: Tensor | None = None,
                       delta_proj: tuple[Tensor, Tensor] | None = None):
    """Reference selective scan. Returns `out (b, d, l)` or `(out, last_state (b, d, n))`. initial_state
    (b, d, n): the state x before the first step (default zeros; not in mamba_ssm's selective_scan_ref).
    delta_proj = (W (d, r), dt_low (b, g, r, l)) in place of delta (None): delta[b, c, t] = sum_k W[c, k] ·
    dt_low[b, c // (d / g), k, t] (Mamba's dt_proj without its bias; g groups of channels as B and C).

    Differentiable through plain torch autograd (used as the gradient reference in tests).
    """
    check_delta_proj(u, delta, delta_proj)
    check_shapes(u, u if delta is None else delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    cdt = _compute_dtype(u)
    batch, dim, length = u.shape
    u_f = u.to(cdt)
    if delta_proj is None:
        dt = delta.to(cdt)
    else:
        Wm, low = (t.to(cdt) for t in delta_proj)
        g = low.shape[1]
        dt = torch.einsum("gcr,bgrl->bgcl", Wm.reshape(g, dim // g, -1), low).reshape(batch, dim, length)
    if delta_bias is not None:
        dt = dt + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)  # torch default: beta=1, threshold=20 (same as mamba_ssm)
    A_f = A.to(cdt)
    Bx = expand_bc(B.to(cdt), batch, dim, length, "B")  # (b, d, n, l)
    Cx = expand_bc(C.to(cdt), batch, dim, length, "C")
    # Discretisation, all time steps at once: (b, d, l, n) tensors (the memory a fused kernel avoids).
    dA = torch.exp(dt[..., None] * A_f[None, :, None, :])
    dBu = (dt * u_f)[..., None] * Bx.permute(0, 1, 3, 2)
    Ct = Cx.permute(0, 1, 3, 2)
    x = u_f.new_zeros(batch, dim, A.shape[1])
    if initial_state is not None:
        if tuple(initial_state.shape) != tuple(x.shape):
            raise ValueError(f"initial_state must be (b, d, n) = {tuple(x.shape)}, got {tuple(initial_state.shape)}")
        x = initial_state.to(device=u.device, dtype=cdt, copy=True)  # (never the caller's tensor)
    ys = []
    for t in range(length):
        x = dA[:, :, t] * x + dBu[:, :, t]
        ys.append((x * Ct[:, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) if ys else u_f.new_zeros(batch, dim, 0)
    out = y if D is None else y + u_f * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out
