"""S4M's shared block in inference through the fused numba kernels of `s4m_kernels` (float32, CPU).

The same parameters and the same result as `MultiScaleS4Block.forward` up to float32 round-off: proj's 1x1
convolution stays a matrix product and the S4 and feed-forward layers (at the coarsest length, a small share)
stay PyTorch modules; every gLN'd depthwise convolution, gLN + PReLU, the pooled sum of the scales and each
local-attention fusion (convolutions, three gLNs, sigmoid gate, nearest upsampling, multiply-add) is one kernel
call. `S4M.forward` builds a `BlockPlan` once per forward (numpy views of the parameters, shared memory, so it
sees the current weights) and runs its passes through it when `usable` says so.

Used only where it is safe and pays: `fast_inference()` (no autograd), float32 on CPU without autocast, `ENABLED`,
layers of the form the kernels compute (`plan_for`), not in a process forked after numba's OpenMP threads
started (GNU OpenMP is not fork-safe; sepcli.kernels.threads keeps that record and the lock for every module with
parallel kernels), and from the `FUSE_AFTER`-th S4M forward of the process on (one forward is one batch of
`--batch-size` segments, each `--shifts` pass its own). Loading the kernels costs about 0.45 s even with numba's
disk cache warm (importing numba 0.15 s, setting up its JIT and threads 0.26 s; measured on a 2-vCPU Xeon) and
about 6 s more compiling them on a cold cache, against about 55 ms saved per 4 s segment of the default model: a
short file (the 10 s example: 4 segments) stays on the PyTorch path and starts as fast as before, a long one
switches at its 8th forward. The two paths agree within about 4e-7 of the peak (float32 round-off), so a long
file's early and late segments differ by no more than that.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .fastconv import fast_inference

ENABLED = True
_TABLES: dict = {}


FUSE_AFTER = 8  # the fused kernels from this S4M forward of the process on (see the module's docstring)
_seen = 0  # eligible forwards so far
_loaded: bool | None = None  # None: not tried yet


def usable(x: torch.Tensor) -> bool:
    """Whether this S4M forward (input of the shared block: x) runs through the fused kernels."""
    global _seen, _loaded
    if not (ENABLED and fast_inference() and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 3):
        return False
    if torch.is_autocast_enabled("cpu"):  # bf16 autocast (`--precision bf16`): PyTorch's modules
        return False
    if _loaded is None:
        _seen += 1
        if _seen < FUSE_AFTER:
            return False
        try:
            from . import s4m_kernels  # noqa: F401
            _loaded = True
        except Exception:  # numba missing, or broken (llvmlite's library, a failed compile): the PyTorch path
            _loaded = False
    if not _loaded:
        return False
    from ..kernels.threads import fork_safe

    return fork_safe()


def _np(p: torch.Tensor, *shape: int) -> np.ndarray:
    return np.ascontiguousarray(p.detach().reshape(*shape).numpy())


def _tables(n: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end) of adaptive pooling from n to `length` frames (PyTorch's windows), and the nearest-upsampling
    source index of each of n frames from `length` frames (F.interpolate's own, computed once by it)."""
    key = (n, length)
    hit = _TABLES.get(key)
    if hit is None:
        i = np.arange(length, dtype=np.int64)
        start = (i * n) // length
        end = -((-(i + 1) * n) // length)
        src = torch.arange(length, dtype=torch.float32).view(1, 1, -1)
        idx = F.interpolate(src, size=n, mode="nearest").view(-1).to(torch.int64).numpy().astype(np.uint64)
        if len(_TABLES) > 32:
            _TABLES.clear()
        hit = _TABLES[key] = (start, end, idx)
    return hit


def _check_depthwise(conv) -> None:
    """The kernels compute a depthwise convolution with "same" padding (K - 1) // 2 and no dilation: the form
    `conv_gln` builds. Anything else raises ValueError (the caller keeps the PyTorch modules)."""
    k = conv.weight.shape[-1]
    if not (conv.groups == conv.weight.shape[0] and conv.weight.shape[1] == 1 and conv.dilation[0] == 1
            and conv.padding[0] == (k - 1) // 2):
        raise ValueError(f"not a depthwise convolution with same padding: {conv}")


def plan_for(block):
    """A `BlockPlan` of `block`, or `block` itself where a layer is not of the form the kernels compute."""
    try:
        return BlockPlan(block)
    except ValueError:
        return block


class _Fusion:
    def __init__(self, m):
        for seq in (m.local_embed, m.global_gate, m.global_embed):
            _check_depthwise(seq[0])
        c = m.local_embed[1].gamma.shape[0]
        k = m.local_embed[0].weight.shape[-1]
        self.wl = _np(m.local_embed[0].weight, c, k)
        self.wg = _np(m.global_gate[0].weight, c, -1)
        self.we = _np(m.global_embed[0].weight, c, -1)
        self.gl, self.bl = _np(m.local_embed[1].gamma, -1), _np(m.local_embed[1].beta, -1)
        self.gg, self.bg = _np(m.global_gate[1].gamma, -1), _np(m.global_gate[1].beta, -1)
        self.ge, self.be = _np(m.global_embed[1].gamma, -1), _np(m.global_embed[1].beta, -1)
        self.eps = float(m.local_embed[1].eps)
        if not (m.global_gate[1].eps == m.global_embed[1].eps == self.eps):
            raise ValueError("fused fusion needs one gLN eps")

    def __call__(self, k, xl: np.ndarray, xg: np.ndarray) -> np.ndarray:
        out = np.empty_like(xl)
        gate = np.empty_like(xg)
        emb = np.empty_like(xg)
        idx = _tables(xl.shape[1], xg.shape[1])[2]
        k.fusion(xl, self.wl, self.gl, self.bl, xg, self.wg, self.gg, self.bg, self.we, self.ge, self.be, idx,
                 self.eps, gate, emb, out)
        return out


class BlockPlan:
    """A `MultiScaleS4Block`'s parameters as numpy views, and its forward pass through the fused kernels."""

    def __init__(self, block):
        from . import s4m_kernels

        self.k = s4m_kernels
        self.block = block
        conv, gln = block.proj[0][0], block.proj[0][1]
        self.proj_w, self.proj_b = conv.weight[:, :, 0].detach(), conv.bias.detach().unsqueeze(1)
        self.proj_g, self.proj_beta, self.proj_eps = _np(gln.gamma, -1), _np(gln.beta, -1), float(gln.eps)
        self.slope = float(block.proj[1].weight.detach())
        self.down = []
        for seq in block.down:
            conv, gln = seq[0], seq[1]
            _check_depthwise(conv)
            c = conv.weight.shape[0]
            bias = conv.bias if conv.bias is not None else torch.zeros(c)
            self.down.append((_np(conv.weight, c, -1), _np(bias, -1), conv.stride[0], (conv.kernel_size[0] - 1) // 2,
                              _np(gln.gamma, -1), _np(gln.beta, -1), float(gln.eps)))
        self.fuse = [_Fusion(m) for m in block.fuse]
        self.top_down = [_Fusion(m) for m in block.top_down]
        self.out_w, self.out_b = block.out.weight[:, :, 0].detach(), block.out.bias.detach().unsqueeze(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.threads import parallel_threads

        # one lock and fork guard with the scan's kernels; `usable` checked that this process may run them
        with parallel_threads(single=True) as threads:
            if not threads:
                return self.block(x)
            return torch.stack([self._item(x[i]) for i in range(x.shape[0])])

    def _item(self, x: torch.Tensor) -> torch.Tensor:
        k, blk = self.k, self.block
        h = torch.addmm(self.proj_b, self.proj_w, x)
        k.gln_leaky_(h.numpy(), self.proj_g, self.proj_beta, self.proj_eps, self.slope)
        src = h.numpy()
        scales = []
        for w, b, stride, pad, g, beta, eps in self.down:
            n_out = (src.shape[1] + 2 * pad - w.shape[1]) // stride + 1
            out = np.empty((src.shape[0], n_out), np.float32)
            k.conv_gln(src, w, b, stride, g, beta, eps, out)
            scales.append(out)
            src = out
        coarse = scales[-1].shape[1]
        glob = scales[-1].copy()
        for s in scales[:-1]:
            start, end, _ = _tables(s.shape[1], coarse)
            k.pool_add(s, start, end, glob)
        g = blk.ff(blk.s4(torch.from_numpy(glob).unsqueeze(0)))[0]
        g = np.ascontiguousarray(g.numpy())
        fused = [f(k, s, g) for f, s in zip(self.fuse, scales)]
        y = fused[-1]
        for i in range(len(self.top_down) - 1, -1, -1):
            y = self.top_down[i](k, fused[i], y)
        res = x + self.out_b
        return res.addmm_(self.out_w, torch.from_numpy(y))
