"""Diagonal state-space layer (S4D), bidirectional, with FFT convolution.

Facts from Gu et al., "On the Parameterization and Initialization of Diagonal State Space Models" (S4D,
NeurIPS 2022) and the standalone S4 layer that S4M uses (state-spaces/s4, `S4(..., bidirectional=True,
transposed=True)`: D skip, GELU, then a position-wise linear H -> 2H with GLU):

    x'(t) = A x(t) + B u(t),  y(t) = C x(t)          A diagonal complex, B = 1 (absorbed in C)
    zero-order hold with step dt:   dA = exp(dt A),  dB = (exp(dt A) - 1) / A
    kernel  K[l] = 2 Re( sum_n C_n dB_n dA_n^l )     (the Vandermonde product; conjugate pairs halve N)
    y = K * u (causal convolution, done by FFT) + D u

Bidirectional: a second kernel K' runs anticausally: y[t] += sum_{m>=1} K'[m-1] u[t+m]. Both are done by one
FFT of length 2L with the second kernel flipped into the upper half.

In eval mode with gradients off, the kernel's FFT is cached per (length, device, dtype) and recomputed when a
parameter changes (tracked through the tensors' version counters). Inside `shared_kernels(net)` (training too)
each layer computes its kernel once and reuses it: for a network that applies one layer several times in a
forward pass (S4M's shared block), so the kernel's generation and its backward run once, not once per pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fastconv import PointwiseConv1d


def on_meta_device() -> bool:
    """Whether tensors are being created on the meta device (the loader's shape-only build of a network from an
    untrusted config). There the initial values do not exist, and computing them would run PyTorch's Python
    reference implementations (randn, arange, repeat, out-of-place arithmetic), whose first call imports
    torch._dynamo and sympy: about 1.5 s of every `sepcli separate`. So the layers create empty tensors of the
    same shapes instead."""
    return torch.empty(0).is_meta


class S4DKernel(nn.Module):
    """Generates the [channels, H, L] convolution kernels of an S4D layer."""

    def __init__(self, d_model: int, d_state: int = 16, channels: int = 2,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        h, n2 = d_model, d_state // 2
        if on_meta_device():  # shapes only (see on_meta_device)
            log_dt, log_a_real, a_imag, c = (torch.empty(h), torch.empty(h, n2), torch.empty(h, n2),
                                             torch.empty(channels, h, n2, 2))
        else:
            log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            # S4D-Lin initialisation: A_n = -1/2 + i * pi * n
            log_a_real = torch.log(0.5 * torch.ones(h, n2))
            a_imag = math.pi * torch.arange(n2, dtype=torch.float32).repeat(h, 1)
            # C complex, stored as (real, imag) pairs; variance 1/2 per part
            c = torch.randn(channels, h, n2, 2) * math.sqrt(0.5)
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_real = nn.Parameter(log_a_real)
        self.a_imag = nn.Parameter(a_imag)
        self.c = nn.Parameter(c)

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dA [H, N/2], C*dB [channels, H, N/2]) as complex tensors (fp32 or wider)."""
        dtype = torch.promote_types(self.log_dt.dtype, torch.float32)
        dt = torch.exp(self.log_dt.to(dtype))
        a = torch.complex(-torch.exp(self.log_a_real.to(dtype)), self.a_imag.to(dtype))
        dta = a * dt.unsqueeze(-1)
        c = torch.view_as_complex(self.c.to(dtype).contiguous())
        return torch.exp(dta), c * (torch.exp(dta) - 1.0) / a

    def forward(self, length: int) -> torch.Tensor:
        da, cdb = self.discrete()
        # Vandermonde: dA^l for l < L, as exp(l * log dA) to stay stable for long L
        power = torch.exp(torch.log(da).unsqueeze(-1) * torch.arange(length, device=da.device))  # [H, N2, L]
        k = torch.einsum("chn,hnl->chl", cdb, power)
        return 2.0 * k.real


@contextmanager
def shared_kernels(module: nn.Module) -> Iterator[None]:
    """Within the block, every S4D layer of `module` computes its kernel once per length and reuses it.

    For one forward pass whose parameters do not change inside it (the kernel is a function of them only): the
    reused tensor stays in the autograd graph, so the gradients of all its uses add up in one backward through
    the kernel's generation, exactly as if it had been recomputed for each use.
    """
    layers = [m for m in module.modules() if isinstance(m, S4D)]
    for m in layers:
        m._memo = {}
    try:
        yield
    finally:
        for m in layers:
            m._memo = None


class S4D(nn.Module):
    """Bidirectional S4D layer on [B, H, L] ("transposed") input: conv -> +D u -> GELU -> Linear(H, 2H) -> GLU."""

    def __init__(self, d_model: int, d_state: int = 16, bidirectional: bool = True):
        super().__init__()
        self.h = d_model
        self.bidirectional = bidirectional
        self.kernel = S4DKernel(d_model, d_state, channels=2 if bidirectional else 1)
        self.D = nn.Parameter(torch.empty(d_model) if on_meta_device() else torch.randn(d_model))
        self.output_linear = PointwiseConv1d(d_model, 2 * d_model)
        self._cache: dict = {}
        self._memo: dict | None = None  # set by shared_kernels: this forward pass's kernels, graph included

    def _param_versions(self) -> tuple | None:
        """The kernel parameters' storage and version counters, or None when a parameter is an inference tensor
        (a layer built inside torch.inference_mode): those have no version counter, so an in-place change could
        not be seen and nothing is cached."""
        params = list(self.kernel.parameters())
        if any(p.is_inference() for p in params):
            return None
        return tuple((p.data_ptr(), p._version) for p in params)

    def kernel_fft(self, length: int, n_fft: int, device, dtype) -> torch.Tensor:
        """rfft of the (combined, possibly bidirectional) kernel, [H, n_fft//2+1]; cached in inference."""
        versions = None if self.training or torch.is_grad_enabled() else self._param_versions()
        use_cache = versions is not None
        key = (length, n_fft, str(device), dtype)
        if self._memo is not None and key in self._memo:
            return self._memo[key]
        if use_cache:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == versions:
                return hit[1]
        k = self.kernel(length)  # [C, H, L]
        if self.bidirectional:
            k = F.pad(k[0], (0, n_fft - length)) + F.pad(k[1].flip(-1), (n_fft - length, 0))
        else:
            k = F.pad(k[0], (0, n_fft - length))
        kf = torch.fft.rfft(k, n=n_fft)
        if self._memo is not None:
            self._memo[key] = kf
        if use_cache:
            if len(self._cache) > 8:  # bounded: a long file's few distinct segment lengths
                self._cache.clear()
            self._cache[key] = (versions, kf)
        return kf

    def train(self, mode: bool = True):
        self._cache.clear()
        return super().train(mode)

    def conv(self, u: torch.Tensor) -> torch.Tensor:
        """The linear state-space part only: y = K * u (+ anticausal K' * u), no D, no activation."""
        length = u.shape[-1]
        n_fft = 2 * length
        kf = self.kernel_fft(length, n_fft, u.device, u.dtype)
        uf = torch.fft.rfft(u.float(), n=n_fft)
        return torch.fft.irfft(uf * kf, n=n_fft)[..., :length].to(u.dtype)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        y = self.conv(u) + u * self.D.unsqueeze(-1)
        y = F.gelu(y)
        return F.glu(self.output_linear(y), dim=1)
