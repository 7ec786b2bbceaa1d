"""S4M: multi-scale separation network with S4 layers (Chen et al., Interspeech 2023).

Layout, following the paper and its public code (JusperLee/S4M, `S4M.py`, a TDANet-style block):

    encoder      Conv1d(1 -> basis, kernel K = enc_kernel_ms * sr / 1000, stride K/4), basis = K/2 + 1
    bottleneck   global layer norm, 1x1 conv basis -> bn_channels
    separator    ONE shared block applied `num_blocks` times; from the second pass on its input is
                 PReLU(depthwise 1x1(bottleneck features + previous output)):
        proj       1x1 conv bn -> hidden, gLN, PReLU
        down       depthwise conv k5 (stride 1), then depth-1 depthwise convs k5 stride 2 (each + gLN)
        global     sum of every scale, average-pooled to the coarsest length ("global feature fusion"),
                   then a prenorm residual bidirectional S4 layer and a prenorm residual feed-forward block
        fuse       per scale, local-attention fusion of the local features with the global ones
                   (local * sigmoid(global gate) + global, both interpolated to the local length)
        top-down   fuse from the coarsest scale back up to the finest with k5 local-attention layers
        out        1x1 conv hidden -> bn, plus the block's input (residual)
    mask         PReLU, 1x1 conv bn -> n_src * basis, ReLU; masks multiply the encoder output
    decoder      ConvTranspose1d(basis -> 1) shared by all sources (as in Conv-TasNet), kernel K, stride K/4

Deviations from the public code, each deliberate: the decoder is shared across sources (the public code mixes
every source's masked features into every output through one groups=1 transposed conv); the top-down pass starts
from the coarsest fused scale (the public loop reads index i-1 at its first step); the encoder is padded so that
any length T >= 1 round-trips exactly (the public padding has an off-by-stride case).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import s4m_fused
from .fastconv import ConvTranspose1d, DepthwiseConv1d, PointwiseConv1d, PReLU, fast_inference
from .s4 import S4D, shared_kernels


class GlobalLayerNorm(nn.Module):
    """gLN: normalise over channels and time per item, then per-channel gain and bias ([B, C, T])."""

    def __init__(self, channels: int, eps: float = 1e-8):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1))
        self.beta = nn.Parameter(torch.zeros(channels, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # gLN is GroupNorm with one group; the fused kernel is about 3x cheaper than the op-by-op formula
        # (mean, var, scale, shift) in a CPU training step. Parameters keep their [C, 1] shape.
        return F.group_norm(x, 1, self.gamma.view(-1), self.beta.view(-1), self.eps)


class DepthwisePointwise(nn.Conv1d):
    """A depthwise 1x1 Conv1d (weights [C, 1, 1]) computed as a per-channel scale.

    Same parameters and result as the convolution; PyTorch's CPU path for this shape loops over the groups
    (hundreds of tiny calls per layer, forward and backward), which cost about a fifth of a training step.
    """

    def __init__(self, channels: int, bias: bool = True):
        super().__init__(channels, channels, 1, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None and fast_inference():  # one pass over x instead of two
            return torch.addcmul(self.bias.view(1, -1, 1), x, self.weight.view(1, -1, 1))
        y = x * self.weight.view(1, -1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1)


def conv_gln(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True):
    if kernel == 1 and stride == 1 and groups == c_in == c_out:
        conv: nn.Module = DepthwisePointwise(c_in, bias=bias)
    elif kernel == 1 and stride == 1 and groups == 1:
        conv = PointwiseConv1d(c_in, c_out, bias=bias)
    elif groups == c_in == c_out:
        conv = DepthwiseConv1d(c_in, kernel, stride=stride, bias=bias)
    else:
        conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=bias)
    return nn.Sequential(conv, GlobalLayerNorm(c_out))


def upsample_nearest(x: torch.Tensor, length: int) -> torch.Tensor:
    """F.interpolate(x, size=length, mode="nearest") on [B, C, L]; a power-of-two ratio as a repeat.

    PyTorch's nearest index is floor(i * L / length); with length = L * 2^k (exact in floating point) that is
    i >> k, each input repeated 2^k times. The repeat is an expand and a reshape, whose backward is a sum, about
    3x cheaper on CPU than interpolate's forward and backward. S4M's fusions all take it when the frame count is
    divisible by 2^(depth-1); otherwise some do (4 s at 16 kHz: 2003 frames, the top-down steps 1002 -> 501 ->
    251 are not exact doublings). Other ratios go to interpolate.
    """
    n = x.shape[-1]
    r = length // n if n else 0
    if r >= 1 and r * n == length and r & (r - 1) == 0:
        return x if r == 1 else x.unsqueeze(-1).expand(*x.shape, r).reshape(*x.shape[:-1], length)
    return F.interpolate(x, size=length, mode="nearest")


def pool_to(x: torch.Tensor, length: int) -> torch.Tensor:
    """F.adaptive_avg_pool1d(x, length) on [B, C, L]; when L is a multiple of length, the mean of each block of
    L/length frames (the same windows adaptive pooling takes then), as a reshape and a mean; otherwise, in
    inference, as batched matrix products (`_banded_pool`)."""
    n = x.shape[-1]
    r = n // length if length else 0
    if r >= 1 and r * length == n:
        return x if r == 1 else x.reshape(*x.shape[:-1], length, r).mean(-1)
    if fast_inference() and x.dim() == 3 and n > length >= 2:
        return _banded_pool(x, length)
    return F.adaptive_avg_pool1d(x, length)


_POOL_PLANS: dict = {}


def _pool_plan(n: int, length: int, dtype, device) -> tuple[int, int, int, int, torch.Tensor]:
    """(step, rows, groups, per_group, P [groups, rows, per_group]) for `_banded_pool`. Adaptive pooling's
    window i is [floor(i n / length), ceil((i + 1) n / length)) (PyTorch's start_index / end_index); the outputs
    go in groups of consecutive ones, group b reads the input rows [b * step, b * step + rows), which hold all
    its windows, and P holds 1 / window size where a row is in an output's window."""
    key = (n, length, dtype, str(device))
    plan = _POOL_PLANS.get(key)
    if plan is not None:
        return plan
    start = [(i * n) // length for i in range(length)]
    end = [-(-((i + 1) * n) // length) for i in range(length)]
    per = -(-length // 16)  # about 16 groups: measured fastest for 251 outputs of 501-2003 frames
    groups = -(-length // per)
    step = min(start[(b + 1) * per] - start[b * per] for b in range(groups - 1)) if groups > 1 else 0
    rows = max(end[min(length, (b + 1) * per) - 1] - b * step for b in range(groups))
    p = torch.zeros(groups, rows, per, dtype=torch.float64)
    for i in range(length):
        b = i // per
        p[b, start[i] - b * step:end[i] - b * step, i - b * per] = 1.0 / (end[i] - start[i])
    if len(_POOL_PLANS) > 16:  # bounded: a long file's few distinct segment lengths
        _POOL_PLANS.clear()
    plan = _POOL_PLANS[key] = (step, rows, groups, per, p.to(device=device, dtype=dtype))
    return plan


def _banded_pool(x: torch.Tensor, length: int) -> torch.Tensor:
    """Adaptive average pooling [B, C, L] -> [B, C, length] as one batched product of overlapping row blocks of
    x (a strided view, no copy for B = 1) with the small banded matrices of `_pool_plan`. PyTorch's adaptive
    pooling kernel took 0.26-0.33 ms for each of S4M's three poolings to 251 frames per block pass (2 threads),
    this 0.09-0.27 ms. Each output is the same weighted sum up to float round-off (sum / size there, sum of
    x / size here)."""
    b_, c, n = x.shape
    step, rows, groups, per, p = _pool_plan(n, length, x.dtype, x.device)
    need = (groups - 1) * step + rows
    if need > n:
        x = F.pad(x, (0, need - n))
    x = x.contiguous()
    blocks = x.as_strided((b_, groups, c, rows), (x.stride(0), step, x.stride(1), 1))
    with torch.autocast(x.device.type, enabled=False):  # an average, kept in its input's precision under autocast
        y = torch.matmul(blocks, p)  # [B, groups, C, per]
    return y.permute(0, 2, 1, 3).reshape(b_, c, groups * per)[..., :length]


class LocalAttentionFusion(nn.Module):
    """out = local_embed(x_l) * sigmoid(gate(x_g)) + global_embed(x_g), x_g resized to x_l's length."""

    def __init__(self, channels: int, kernel: int = 1):
        super().__init__()
        self.local_embed = conv_gln(channels, channels, kernel, groups=channels, bias=False)
        self.global_embed = conv_gln(channels, channels, kernel, groups=channels, bias=False)
        self.global_gate = conv_gln(channels, channels, kernel, groups=channels, bias=False)

    def forward(self, x_local: torch.Tensor, x_global: torch.Tensor) -> torch.Tensor:
        length = x_local.shape[-1]
        gate = upsample_nearest(torch.sigmoid(self.global_gate(x_global)), length)
        glob = upsample_nearest(self.global_embed(x_global), length)
        if fast_inference():  # one pass instead of two
            return torch.addcmul(glob, self.local_embed(x_local), gate)
        return self.local_embed(x_local) * gate + glob


class PreNormResidual(nn.Module):
    """x + layer(LayerNorm over channels(x)) on [B, C, T]."""

    def __init__(self, channels: int, layer: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layer(self.norm(x.transpose(1, 2)).transpose(1, 2))


class FeedForward(nn.Module):
    def __init__(self, channels: int, expand: int = 2):
        super().__init__()
        self.fc1 = PointwiseConv1d(channels, channels * expand)
        self.fc2 = PointwiseConv1d(channels * expand, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MultiScaleS4Block(nn.Module):
    def __init__(self, bn_channels: int, hidden: int, depth: int, d_state: int, ff_expand: int):
        super().__init__()
        self.depth = depth
        self.proj = nn.Sequential(conv_gln(bn_channels, hidden, 1), PReLU(inplace=True))
        self.down = nn.ModuleList(
            [conv_gln(hidden, hidden, 5, stride=1 if i == 0 else 2, groups=hidden) for i in range(depth)]
        )
        self.s4 = PreNormResidual(hidden, S4D(hidden, d_state, bidirectional=True))
        self.ff = PreNormResidual(hidden, FeedForward(hidden, ff_expand))
        self.fuse = nn.ModuleList([LocalAttentionFusion(hidden, 1) for _ in range(depth)])
        self.top_down = nn.ModuleList([LocalAttentionFusion(hidden, 5) for _ in range(depth - 1)])
        self.out = PointwiseConv1d(hidden, bn_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = [self.down[0](self.proj(x))]
        for k in range(1, self.depth):
            scales.append(self.down[k](scales[-1]))
        coarse = scales[-1].shape[-1]
        glob = sum(pool_to(s, coarse) for s in scales)
        glob = self.ff(self.s4(glob))
        fused = [self.fuse[k](scales[k], glob) for k in range(self.depth)]
        y = fused[-1]
        for k in range(self.depth - 2, -1, -1):
            y = self.top_down[k](fused[k], y)
        return self.out(y) + x


class S4M(nn.Module):
    """S4M separation network: forward(mix [B, T]) -> [B, n_src, T]."""

    def __init__(self, n_src: int = 2, sample_rate: int = 16000, enc_kernel_ms: float = 4.0,
                 bn_channels: int = 128, hidden: int = 512, num_blocks: int = 16, depth: int = 4,
                 d_state: int = 16, ff_expand: int = 2):
        super().__init__()
        self.n_src = n_src
        self.sample_rate = sample_rate
        k = int(round(enc_kernel_ms * sample_rate / 1000))
        self.kernel = max(4, k - k % 4)
        self.stride = self.kernel // 4
        self.basis = self.kernel // 2 + 1
        self.num_blocks = num_blocks
        pad = self.kernel - self.stride
        self.encoder = nn.Conv1d(1, self.basis, self.kernel, stride=self.stride, padding=pad, bias=False)
        self.decoder = ConvTranspose1d(self.basis, 1, self.kernel, stride=self.stride, padding=pad, bias=False)
        nn.init.xavier_uniform_(self.encoder.weight)
        nn.init.xavier_uniform_(self.decoder.weight)
        self.norm = GlobalLayerNorm(self.basis)
        self.bottleneck = PointwiseConv1d(self.basis, bn_channels)
        self.block = MultiScaleS4Block(bn_channels, hidden, depth, d_state, ff_expand)
        self.reentry = (nn.Sequential(DepthwisePointwise(bn_channels), PReLU(inplace=True))
                        if num_blocks > 1 else None)
        self.mask = nn.Sequential(PReLU(), PointwiseConv1d(bn_channels, n_src * self.basis))

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.dim() == 1:
            mix = mix.unsqueeze(0)
        b, t = mix.shape
        t_pad = -(-t // self.stride) * self.stride
        x = F.pad(mix, (0, t_pad - t)).unsqueeze(1)
        feats = self.encoder(x)  # [B, basis, F]
        y = self.bottleneck(self.norm(feats))
        first = y
        block = self.block
        if s4m_fused.usable(y):  # inference on CPU in float32: the fused kernels, parameters read once
            block = s4m_fused.plan_for(self.block)
        with shared_kernels(self.block):  # the passes share the block, so its S4 kernel is computed once
            for i in range(self.num_blocks):
                y = block(y if i == 0 else self.reentry(first + y))
        masks = F.relu(self.mask(y)).view(b, self.n_src, self.basis, -1)
        masked = (masks * feats.unsqueeze(1)).reshape(b * self.n_src, self.basis, -1)
        out = self.decoder(masked).view(b, self.n_src, -1)
        return out[..., :t]


def _cfg(sr: int, **kw) -> tuple[str, dict, int]:
    return ("s4m", {"sample_rate": sr, **kw}, sr)


# Chosen dimensions. The paper gives S4M 3.6 M and S4M-tiny 1.8 M parameters; with bottleneck 128, S4 state 16,
# depth 4 and 16 passes of the shared block, hidden width 736 gives 3.59 M (s4m) and the public code's default
# width 512 gives 1.81-1.82 M (s4m-tiny), at 8 and 16 kHz (the encoder grows slightly with the rate).
# `s4m-small` is the CPU training configuration of the default model (see models/s4m-tiny-16k/MODEL_CARD.md):
# the S4M-tiny layout with half the width, 8 passes and an 8 ms encoder, about 11x cheaper per training step.
CONFIGS: dict = {
    "s4m-8k": _cfg(8000, hidden=736),
    "s4m-16k": _cfg(16000, hidden=736),
    "s4m-tiny-8k": _cfg(8000, hidden=512),
    "s4m-tiny-16k": _cfg(16000, hidden=512),
    "s4m-small-8k": _cfg(8000, hidden=256, num_blocks=8, enc_kernel_ms=8.0),
    "s4m-small-16k": _cfg(16000, hidden=256, num_blocks=8, enc_kernel_ms=8.0),
}
CONFIGS["s4m"] = CONFIGS["s4m-8k"]
CONFIGS["s4m-tiny"] = CONFIGS["s4m-tiny-8k"]
