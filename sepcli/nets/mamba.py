"""Mamba block compatible with `mamba_ssm` (state-spaces/mamba), parameter for parameter.

Facts taken from state-spaces/mamba (our own code, no copied source):
- `mamba_ssm/modules/mamba_simple.py::Mamba`: parameter names, shapes and initialisation
  (`in_proj`, `conv1d` depthwise with padding d_conv-1, `x_proj`, `dt_proj`, `A_log`, `D`, `out_proj`),
  dt_rank="auto" = ceil(d_model / 16), dt drawn log-uniform in [dt_min, dt_max] floored at dt_init_floor and
  stored as its inverse softplus in `dt_proj.bias`, S4D-real `A_log = log(1..d_state)`, `D = 1`; and the
  non-fused forward path (in_proj -> x, z; causal conv1d -> SiLU; x_proj -> dt, B, C; dt_proj weight only;
  selective scan with delta_bias = dt_proj.bias and delta_softplus; out_proj).
- `mamba_ssm/modules/mamba_simple.py::Block` (mamba_ssm 1.x, the one SPMamba imports): submodules `mixer`
  then `norm`; forward(hidden, residual) -> (mixer(norm(hidden + residual)), hidden + residual).
- `mamba_ssm/ops/triton/layernorm.py::RMSNorm`: a `weight` parameter and no bias;
  y = x * rsqrt(mean(x^2) + eps) * weight, computed in float32.
- `mamba_ssm/models/mixer_seq_simple.py::_init_weights`: zero Linear biases (except those marked
  `_no_reinit`), re-draw `out_proj.weight` / `fc2.weight` with kaiming_uniform(a=sqrt(5)) / sqrt(n_res * n_layer).

The scan itself is `sepcli.kernels.selective_scan` (same signature and semantics as mamba_ssm's
`selective_scan_fn`); the dispatcher there picks the fastest available backend.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, initial_state: Tensor | None = None,
                   delta_proj: tuple[Tensor, Tensor] | None = None):
    """Forward to `sepcli.kernels.selective_scan` (imported lazily so nets/ import without kernels built);
    initial_state and delta_proj (delta in low rank, with delta None) are passed on only when given."""
    try:
        from sepcli.kernels import selective_scan as _scan
    except ImportError as exc:  # pragma: no cover - only while the kernels package is missing
        raise ImportError("sepcli.kernels.selective_scan is not available: " + str(exc)) from exc
    extra = {k: v for k, v in (("initial_state", initial_state), ("delta_proj", delta_proj)) if v is not None}
    return _scan(u, delta, A, B, C, D, z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                 return_last_state=return_last_state, **extra)


def rms_normalise(x: Tensor, eps: float, dim: int = -1) -> Tensor:
    """x * rsqrt(mean(x^2 over `dim`) + eps), statistics in float32; returned in x's dtype (RMSNorm without
    its weight)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.square().mean(dim=dim, keepdim=True) + eps)).to(x.dtype)


def causal_depthwise_conv_silu(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """SiLU(causal depthwise conv1d(x)) for x [..., channels, L], weight [channels, 1, K], bias [channels]:
    out[t] = silu(bias + sum_k weight[k] * x[t + k - (K - 1)]), zeros before t = 0 (Mamba's conv1d with
    padding K-1, cropped to L). Computed as K shifted multiply-adds on x's own layout: several times faster
    on CPU than the depthwise convolution kernel for short rows, and differentiable. The result has the
    promoted dtype of x and weight (bf16 x with fp32 weights gives fp32)."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
        return conv_silu_into(x, weight, bias, out)
    k = weight.shape[-1]
    length = x.shape[-1]
    w = weight.reshape(weight.shape[0], k)
    shape = (x.shape[-2], 1)
    if bias is not None:
        acc = torch.addcmul(bias.view(shape), x, w[:, k - 1].reshape(shape))
    else:
        acc = x * w[:, k - 1].reshape(shape)
    for j in range(1, min(k, length)):  # no in-place update of a tensor autograd saved
        acc = acc + F.pad(x[..., :length - j] * w[:, k - 1 - j].reshape(shape), (j, 0))
    return F.silu(acc)


def conv_silu_into(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """causal_depthwise_conv_silu(x, weight, bias) without autograd, written into `out` (its dtype: fp32 for a
    bf16 x): the first tap, then K - 1 shifted multiply-adds in place."""
    k, length = weight.shape[-1], x.shape[-1]
    w = weight.reshape(weight.shape[0], k)
    if bias is not None:
        torch.addcmul(bias[:, None], x, w[:, k - 1:], out=out)
    else:
        torch.mul(x, w[:, k - 1:], out=out)
    for j in range(1, min(k, length)):
        out[..., j:].addcmul_(x[..., :length - j], w[:, k - 1 - j:k - j])
    return F.silu(out, inplace=True)


# -- scratch buffers and into-buffer ops for fused inference paths (SPMamba's MambaBlock) -------------

class Workspace:
    """Named scratch buffers reused across calls: `get(name, shape, dtype)` returns a view of a buffer that grows
    to the largest size asked for that (name, dtype)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.dtype], Tensor] = {}
        self.cache: dict = {}  # anything else worth keeping for the scope (e.g. MambaBlock's fused weights)

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        numel = math.prod(shape)
        buf = self._bufs.get((name, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype)
            self._bufs[(name, dtype)] = buf
        return buf[:numel].view(shape)


_LOCAL = threading.local()


def current_workspace() -> Workspace | None:
    return getattr(_LOCAL, "workspace", None)


@contextlib.contextmanager
def workspace():
    """One Workspace for the MambaBlocks called inside (per thread); nested scopes share the outer one. Its
    buffers are released on exit, so memory between calls is what it was."""
    if current_workspace() is not None:
        yield current_workspace()
        return
    _LOCAL.workspace = ws = Workspace()
    try:
        yield ws
    finally:
        _LOCAL.workspace = None


def batched_weight(p: dict, name: str, n_seq: int) -> Tensor:
    """Weight p[name] [M, K] for n_seq sequences: itself for one sequence or in fp32, else (bf16/fp16) a dense
    [n_seq, M, K] copy made once per (weights, n_seq): torch.bmm copied a broadcast (stride-0) bf16 weight on
    every call (oneDNN wants it dense); measured here, the dense copy made bf16 bmm 5-30 % faster and changed
    nothing in fp32. The copies are small (weights x sequences per chunk)."""
    if n_seq == 1 or p[name].element_size() >= 4:
        return p[name]
    key = (name, n_seq)
    w = p.get(key)
    if w is None:
        w = p[key] = p[name].expand(n_seq, -1, -1).contiguous()
    return w


def bmm_into(w: Tensor, x: Tensor, out: Tensor, add: Tensor | None = None) -> Tensor:
    """out = w @ x[s] (+ add[s]) for every sequence s of x [S, K, L]: w [M, K] (one GEMM, S == 1) or [S, M, K]."""
    if w.dim() == 2:
        w = w.expand(x.shape[0], -1, -1)
    if x.shape[0] == 1:
        if add is None:
            torch.mm(w[0], x[0], out=out[0])
        else:
            torch.addmm(add[0], w[0], x[0], out=out[0])
    elif add is None:
        torch.bmm(w, x, out=out)
    else:
        torch.baddbmm(add, w, x, out=out)
    return out


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension: x * rsqrt(mean(x^2) + eps) * weight.

    Like mamba_ssm's RMSNorm it has a `weight` (init 1) and a `bias` registered as None, and computes in fp32.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + self.eps)
        return (xf * rstd * self.weight.float()).to(x.dtype)


class Mamba(nn.Module):
    """Selective state-space block; `forward(hidden [B, L, d_model]) -> [B, L, d_model]`.

    Constructor arguments, parameter names, shapes and initialisation are those of `mamba_ssm.Mamba`, so its
    state_dicts load here (and back) unchanged. `use_fast_path`, `layer_idx`: accepted for compatibility.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init: str = "random", dt_scale: float = 1.0, dt_init_floor: float = 1e-4,
                 conv_bias: bool = True, bias: bool = False, use_fast_path: bool = True,
                 layer_idx: int | None = None, device=None, dtype=None):
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.activation = "silu"
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)

        # dt projection: weight ~ U(-s, s) (or constant s), s = dt_rank^-0.5 * dt_scale.
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        # bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max], floored at dt_init_floor.
        dt = torch.exp(torch.rand(self.d_inner, **factory) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        # S4D-real: A = -(1, 2, ..., d_state) for every channel, stored as log(-A) in fp32.
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # -- pieces shared with fused callers (e.g. SPMamba's bidirectional block) --------------------------
    def scan_inputs(self, xz: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """From `xz [B, 2*d_inner, L]` (in_proj output) to the scan's `(u, delta, B, C, z)`.

        u: SiLU(causal depthwise conv(x)) [B, d_inner, L]; delta: dt_proj.weight @ dt (no bias) [B, d_inner, L];
        B, C: [B, d_state, L]; z: [B, d_inner, L].
        """
        seqlen = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = F.linear(u.transpose(1, 2), self.x_proj.weight)  # [B, L, R + 2N]
        dt, Bm, Cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(self.dt_proj.weight, dt.transpose(1, 2))  # [B, d_inner, L]
        return u, delta, Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(), z

    def forward(self, hidden_states: Tensor, inference_params=None) -> Tensor:
        if inference_params is not None:
            raise NotImplementedError("step-by-step decoding (inference_params) is not supported")
        # in_proj as weight @ hidden^T gives [B, 2*d_inner, L] directly (the layout the scan wants).
        xz = torch.matmul(self.in_proj.weight, hidden_states.transpose(1, 2))
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        u, delta, Bm, Cm, z = self.scan_inputs(xz)
        A = -torch.exp(self.A_log.float())
        y = selective_scan(u, delta, A, Bm, Cm, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                           delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class Block(nn.Module):
    """Pre-norm residual block of mamba_ssm 1.x: `forward(h, residual) -> (mixer(norm(r)), r)`, r = h + residual.

    Submodules `mixer` and `norm` (in that order, as in mamba_ssm.modules.mamba_simple.Block).
    `fused_add_norm` only selects a fused kernel upstream, so it computes the same thing here.
    """

    def __init__(self, dim: int, mixer_cls: Callable[[int], nn.Module],
                 norm_cls: Callable[[int], nn.Module] = nn.LayerNorm, fused_add_norm: bool = False,
                 residual_in_fp32: bool = False):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.fused_add_norm = fused_add_norm
        self.mixer = mixer_cls(dim)
        self.norm = norm_cls(dim)

    def forward(self, hidden_states: Tensor, residual: Tensor | None = None,
                inference_params=None) -> tuple[Tensor, Tensor]:
        residual = hidden_states + residual if residual is not None else hidden_states
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        return self.mixer(hidden_states, inference_params=inference_params), residual


def init_weights(module: nn.Module, n_layer: int, initializer_range: float = 0.02,
                 rescale_prenorm_residual: bool = True, n_residuals_per_layer: int = 1) -> None:
    """mamba_ssm's `_init_weights`, meant for `model.apply(partial(init_weights, n_layer=...))`."""
    if isinstance(module, nn.Linear):
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=initializer_range)
    if rescale_prenorm_residual:
        for name, p in module.named_parameters():
            if name in ("out_proj.weight", "fc2.weight"):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals_per_layer * n_layer)
