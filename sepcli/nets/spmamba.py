"""SPMamba (Li & Chen, "SPMamba: State-space model is all you need in speech separation"), official layout.

Architecture, constructor arguments, module names and numerics follow the official implementation
(JusperLee/SPMamba, `look2hear/models/SPMamba.py`, `look2hear/layers/stft_tfgn.py`; facts only, our own
code): std-normalised input -> STFT (Hann, center=True, reflect padding, onesided) -> real/imag as 2 channels
-> Conv2d 3x3 + GroupNorm -> `n_layers` GridNet blocks (intra-frame bidirectional Mamba over unfolded
frequency patches, inter-frame bidirectional Mamba over unfolded time patches, full-band multi-head
attention over frames) -> ConvTranspose2d -> iSTFT -> output times the input std.

`state_dict()` keys and shapes equal the official model's, so released checkpoints load with strict=True.

Differences, none of which change the outputs where the official code runs:
- silent input (std 0) and T = 1 are handled (the official code divides by 0 / cannot pad); inputs shorter
  than the network's minimum are zero-padded internally and the output is cropped back to T;
- the bidirectional Mamba (fused path) works channels-first, [sequences, channels, length], the layout of
  the selective scan and of the unfold / ConvTranspose1d around it, so no tensor is transposed; each projection
  is one batched GEMM, the RMSNorm weights are folded into in_proj, the depthwise causal conv1d is K shifted
  multiply-adds, and without gradients the sequences go through in chunks of about CHUNK_TOKENS tokens
  (bounded memory) with every intermediate in a buffer reused across chunks, directions and layers (`workspace`);
- the attention branches' 1x1 Conv2d run as a matrix product (same modules and weights);
  `SEPCLI_SPMAMBA_FUSED=0` (or `MambaBlock.fused = False`) selects the plain official-style path (one Block
  call per direction, no chunking) for comparisons;
- the full-band attention without gradients is two matrix products and a softmax per block of queries (in the
  autocast dtype; oneDNN's GEMM, AMX in bf16), with gradients torch's scaled-dot-product-attention;
- under `torch.autocast` (e.g. bfloat16 on CPU) the STFT/iSTFT run in the input's precision, the norms'
  statistics in float32, Mamba's in_proj/out_proj in the autocast dtype (weights cast once per call) and its
  depthwise conv, x_proj, dt_proj and the scan's recurrence in float32.
"""

from __future__ import annotations

import math
import os
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import causal_conv
from .mamba import (Block, Mamba, RMSNorm, Workspace, batched_weight, bmm_into, conv_silu_into, current_workspace,
                    causal_depthwise_conv_silu, init_weights, rms_normalise, selective_scan, workspace)

_BASE = {"n_srcs": 2, "window": "hann", "n_imics": 1, "n_layers": 6, "lstm_hidden_units": 256,
         "attn_n_head": 4, "attn_approx_qk_dim": 512, "emb_dim": 16, "emb_ks": 8, "emb_hs": 1,
         "activation": "prelu", "eps": 1.0e-5}

# name -> (arch, arch_args, sample_rate). Values from the official configs/spmamba-librimix.yml (8 kHz) and
# configs/spmamba-echo2mix.yml (16 kHz): 6,094,498 and 6,141,826 parameters.
CONFIGS = {
    "spmamba-8k": ("spmamba", {**_BASE, "n_fft": 256, "stride": 64, "sample_rate": 8000}, 8000),
    "spmamba-16k": ("spmamba", {**_BASE, "n_fft": 512, "stride": 128, "sample_rate": 16000}, 16000),
}

# Default of MambaBlock.fused for new modules; "0" selects the plain official-style path.
FUSED_DEFAULT = os.environ.get("SEPCLI_SPMAMBA_FUSED", "1") != "0"
# Sequences x length processed at once by the fused path without gradients (bounds peak memory).
CHUNK_TOKENS = 2048
# Query rows x keys per block of the attention without gradients (GridNetBlock._attention): bounded memory.
ATTN_BLOCK_SCORES = 1 << 21


def _activation(name: str) -> type[nn.Module]:
    """torch.nn activation class by case-insensitive name ('prelu' -> nn.PReLU), as look2hear's get_layer."""
    for attr in dir(nn):
        if attr.lower() == name.lower():
            cls = getattr(nn, attr)
            if isinstance(cls, type) and issubclass(cls, nn.Module):
                return cls
    raise ValueError(f"unknown activation {name!r}")


def _at_least_fp32(x: Tensor) -> Tensor:
    """x in float32 when it is in a lower precision (bf16/fp16 under autocast): norms' statistics stay fp32."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def _normalise(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x - mean) / sqrt(biased variance + eps) over `dims`, two passes (mean, then the centred squares): the same
    values as torch.var_mean's, and several times faster on CPU for these outer (non-contiguous) reductions."""
    xc = x - x.mean(dim=dims, keepdim=True)
    return xc * torch.rsqrt(xc.square().mean(dim=dims, keepdim=True) + eps)


class LayerNormalization4D(nn.Module):
    """Normalise [B, C, T, F] over C (biased variance, eps inside the sqrt); gamma/beta [1, C, 1, 1]."""

    def __init__(self, input_dimension: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, input_dimension, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, input_dimension, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D tensor, got {x.ndim} dimensions")
        return _normalise(_at_least_fp32(x), (1,), self.eps) * self.gamma + self.beta


class LayerNormalization4DCF(nn.Module):
    """Normalise [B, C, T, F] over (C, F); gamma/beta [1, C, 1, F]."""

    def __init__(self, input_dimension: tuple[int, int], eps: float = 1e-5):
        super().__init__()
        if len(input_dimension) != 2:
            raise ValueError("input_dimension must be (channels, freqs)")
        shape = (1, input_dimension[0], 1, input_dimension[1])
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D tensor, got {x.ndim} dimensions")
        return _normalise(_at_least_fp32(x), (1, 3), self.eps) * self.gamma + self.beta


class MambaBlock(nn.Module):
    """Stack of pre-norm Mamba Blocks, optionally bidirectional: [S, L, D] -> [S, L, D] or [S, L, 2D].

    Official names: `forward_blocks.<i>` and `backward_blocks.<i>` (each a Block with `mixer` = Mamba(d_state 16,
    d_conv 4, expand 4) and `norm` = RMSNorm(eps 1e-5)). Output = cat(forward, flip(backward(flip(x)))), where
    each direction returns its last hidden state plus its residual stream.
    """

    def __init__(self, in_channels: int, n_layer: int = 1, bidirectional: bool = False):
        super().__init__()

        def make_block(i: int) -> Block:
            return Block(in_channels, mixer_cls=partial(Mamba, layer_idx=i, d_state=16, d_conv=4, expand=4),
                         norm_cls=partial(RMSNorm, eps=1e-5), fused_add_norm=False)

        self.forward_blocks = nn.ModuleList([make_block(i) for i in range(n_layer)])
        self.backward_blocks = nn.ModuleList([make_block(i) for i in range(n_layer)]) if bidirectional else None
        self.apply(partial(init_weights, n_layer=n_layer))
        self.fused = FUSED_DEFAULT
        self.chunk_tokens = CHUNK_TOKENS

    @staticmethod
    def _run(blocks: nn.ModuleList, x: Tensor) -> Tensor:
        residual = None
        for block in blocks:
            x, residual = block(x, residual)
        return x + residual if residual is not None else x

    def forward_plain(self, x: Tensor) -> Tensor:
        """The official computation: each direction through its Blocks, one Mamba call at a time."""
        out = self._run(self.forward_blocks, x)
        if self.backward_blocks is not None:
            back = self._run(self.backward_blocks, torch.flip(x, [1]))
            out = torch.cat([out, torch.flip(back, [1])], -1)
        return out

    @property
    def fusable(self) -> bool:
        """Whether the fused channels-first path applies (one bidirectional layer, `fused` on)."""
        return self.fused and self.backward_blocks is not None and len(self.forward_blocks) == 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.fusable:
            return self.forward_plain(x)
        return self.forward_channels_first(x.transpose(1, 2)).transpose(1, 2)

    def forward_channels_first(self, x: Tensor) -> Tensor:
        """[S, D, L] -> [S, 2D, L]: forward(x.transpose(1, 2)).transpose(1, 2) without the transposes.

        The fused path works on this layout throughout; without gradients it processes about
        `chunk_tokens` tokens (sequences x length) at a time, so that every intermediate stays small (in the
        CPU's cache) and peak memory is bounded whatever the number of sequences."""
        if not self.fusable:
            return self.forward_plain(x.transpose(1, 2)).transpose(1, 2)
        ws = None if torch.is_grad_enabled() else current_workspace()
        if ws is None:
            weights = self._fused_weights(x)
        else:  # made once per forward pass (the weights cannot change inside it), with their batched copies
            key = ("weights", id(self), x.dtype, torch.is_autocast_enabled(x.device.type))
            weights = ws.cache.get(key)
            if weights is None:
                weights = ws.cache[key] = self._fused_weights(x)
        if torch.is_grad_enabled() or x.shape[0] * x.shape[2] <= self.chunk_tokens:
            return self._fused_channels_first(x, weights)
        step = max(1, self.chunk_tokens // max(1, x.shape[2]))
        out = x.new_empty(x.shape[0], 2 * x.shape[1], x.shape[2])
        for i in range(0, x.shape[0], step):
            self._fused_channels_first(x[i:i + step], weights, out=out[i:i + step])
        return out

    def _fused_weights(self, x: Tensor) -> dict:
        """Per-direction weights, the RMSNorm weights folded into in_proj. in_proj and out_proj (90 % of the
        block's multiply-adds) are cast once to the GEMM dtype: the autocast dtype when autocast is on for x's
        device (autocast would re-cast them on every call), else x's dtype. The rest stays in x's precision:
        the depthwise convolution, x_proj and dt_proj (they feed the scan's recurrence, which sees their
        outputs without a cast) and the scan's parameters (float32)."""
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type) and x.dtype in (torch.float32, torch.float64):
            dtype = torch.get_autocast_dtype(x.device.type)
        dirs = []
        for blk in (self.forward_blocks[0], self.backward_blocks[0]):
            m = blk.mixer
            w_in = m.in_proj.weight * blk.norm.weight[None, :].to(m.in_proj.weight.dtype)
            b_in = m.in_proj.bias
            dirs.append({
                "eps": blk.norm.eps,
                "w_x": w_in[:m.d_inner].to(dtype), "w_z": w_in[m.d_inner:].to(dtype),
                "b_x": None if b_in is None else b_in[:m.d_inner].to(dtype)[:, None],
                "b_z": None if b_in is None else b_in[m.d_inner:].to(dtype)[:, None],
                "conv_w": m.conv1d.weight.to(x.dtype),
                "conv_b": None if m.conv1d.bias is None else m.conv1d.bias.to(x.dtype),
                "w_xp": m.x_proj.weight.to(x.dtype), "w_dt": m.dt_proj.weight.to(x.dtype),
                "A": -torch.exp(m.A_log.float()), "D": m.D.float(), "dt_bias": m.dt_proj.bias.float(),
                "w_out": m.out_proj.weight.to(dtype),
                "b_out": None if m.out_proj.bias is None else m.out_proj.bias.to(dtype)[:, None],
                "r": m.dt_rank, "n": m.d_state,
            })
        return {"dtype": dtype, "dirs": dirs}

    @staticmethod
    def _bmm(w: Tensor, x: Tensor) -> Tensor:
        """w [M, K] applied to every sequence of x [S, K, L] -> [S, M, L]: one batched GEMM with the weight
        broadcast (stride 0), no copy of w or x."""
        return torch.bmm(w.expand(x.shape[0], -1, -1), x)

    def _fused_channels_first(self, x: Tensor, weights: dict, out: Tensor | None = None) -> Tensor:
        """Both directions of a one-layer bidirectional block, channels-first: [S, D, L] -> [S, 2D, L].

        Equal to forward_plain: the per-token maps (RMSNorm, projections) commute with time reversal, so the
        backward direction runs on the time-reversed input and its output is reversed back. Every tensor is
        [S, channels, L], the layout of the selective scan, so nothing is transposed; each projection is one
        batched GEMM with a broadcast weight. Autocast is off inside: the dtypes are explicit (_fused_weights).
        Without gradients the work goes to `_fused_inference` (the same ops into reused buffers).
        """
        if not torch.is_grad_enabled():
            return self._fused_inference(x, weights, out)
        dtype = weights["dtype"]
        halves = []
        with torch.autocast(x.device.type, enabled=False):
            for d, p in enumerate(weights["dirs"]):
                xd = x if d == 0 else torch.flip(x, [2])
                xn = rms_normalise(xd, p["eps"], dim=1).to(dtype)
                xin = self._bmm(p["w_x"], xn)  # [S, di, L]
                z = self._bmm(p["w_z"], xn)
                if p["b_x"] is not None:
                    xin = xin + p["b_x"]
                    z = z + p["b_z"]
                del xn
                u = causal_depthwise_conv_silu(xin, p["conv_w"], p["conv_b"])  # x's precision
                del xin
                r, n = p["r"], p["n"]
                dbl = self._bmm(p["w_xp"], u)  # [S, r + 2n, L]
                delta = self._bmm(p["w_dt"], dbl[:, :r])  # [S, di, L]
                y = selective_scan(u, delta, p["A"], dbl[:, r:r + n], dbl[:, r + n:], p["D"], z=z.to(u.dtype),
                                   delta_bias=p["dt_bias"], delta_softplus=True)
                del u, delta, z, dbl
                o = self._bmm(p["w_out"], y.to(dtype))  # [S, D, L]
                if p["b_out"] is not None:
                    o = o + p["b_out"]
                if d == 1:
                    o = torch.flip(o, [2])
                halves.append(x + o)  # out= does not support autograd
        return torch.cat(halves, 1)

    def _fused_inference(self, x: Tensor, weights: dict, out: Tensor | None = None) -> Tensor:
        """_fused_channels_first without gradients: every intermediate is written into a buffer of the current
        workspace (`workspace()`: one per SPMamba forward, reused by every chunk, direction and layer), so no
        large tensor is allocated per call. Freshly allocated megabytes cost the kernel's page faults on
        every first touch; on a 60 s input they took as long as the GEMMs writing them."""
        gdt = weights["dtype"]
        S, D, length = x.shape
        if out is None:
            out = x.new_empty(S, 2 * D, length)
        ws = current_workspace() or Workspace()
        f32 = torch.float32 if x.dtype != torch.float64 else x.dtype
        xn0 = None  # the forward direction's normalised input
        with torch.autocast(x.device.type, enabled=False):
            for d, p in enumerate(weights["dirs"]):
                di, r, n = p["w_x"].shape[0], p["r"], p["n"]
                if xn0 is not None and p["eps"] == weights["dirs"][0]["eps"]:
                    # the norm is per token (its weights are folded into in_proj): the backward direction's
                    # normalised input is the forward's, time-reversed
                    xn = torch.ops.aten.flip.out(xn0, [2], out=ws.get("xnflip", (S, D, length), gdt))
                else:
                    xd = x
                    if d == 1:
                        xd = ws.get("xflip", (S, D, length), x.dtype)
                        torch.ops.aten.flip.out(x, [2], out=xd)
                    xf = xd if xd.dtype == f32 else xd.to(f32)
                    rstd = torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + p["eps"])  # statistics in fp32
                    xn = xn0 = torch.mul(xf, rstd, out=ws.get("xn", (S, D, length), gdt))
                xin = bmm_into(batched_weight(p, "w_x", S), xn, ws.get("xin", (S, di, length), gdt))
                z = bmm_into(batched_weight(p, "w_z", S), xn, ws.get("z", (S, di, length), gdt))
                if p["b_x"] is not None:
                    xin += p["b_x"]
                    z += p["b_z"]
                if z.dtype != f32:  # the scan's gate in fp32
                    z = ws.get("z32", (S, di, length), f32).copy_(z)
                u = ws.get("u", (S, di, length), f32)
                if causal_conv.available() and xin.dtype in (torch.float32, torch.bfloat16):
                    causal_conv.conv_silu_rows_into(xin, p["conv_w"], p["conv_b"], u)  # one pass, bf16 read as is
                else:
                    if xin.dtype != f32:  # one cast: a mixed-dtype op would cast its bf16 operand on every call
                        xin = ws.get("x32", (S, di, length), f32).copy_(xin)
                    conv_silu_into(xin, p["conv_w"], p["conv_b"], u)
                dbl = bmm_into(batched_weight(p, "w_xp", S), u, ws.get("dbl", (S, r + 2 * n, length), f32))
                delta = bmm_into(batched_weight(p, "w_dt", S), dbl[:, :r], ws.get("delta", (S, di, length), f32))
                y = selective_scan(u, delta, p["A"], dbl[:, r:r + n], dbl[:, r + n:], p["D"], z=z,
                                   delta_bias=p["dt_bias"], delta_softplus=True)
                if y.dtype != gdt:
                    y = ws.get("y", (S, di, length), gdt).copy_(y)
                half = out[:, d * D:(d + 1) * D]
                if d == 0 and p["b_out"] is None and gdt == x.dtype and half.is_contiguous():
                    bmm_into(batched_weight(p, "w_out", S), y, half, add=x)  # x + w_out @ y in one GEMM
                    continue
                o = bmm_into(batched_weight(p, "w_out", S), y, ws.get("o", (S, D, length), gdt))
                if p["b_out"] is not None:
                    o += p["b_out"]
                if d == 1:
                    o = torch.ops.aten.flip.out(o, [2], out=ws.get("oflip", (S, D, length), gdt))
                torch.add(x, o, out=half)
        return out


class GridNetBlock(nn.Module):
    """One TF-GridNet block with Mamba in place of the LSTMs (official names and layout). x: [B, C, T, Q]."""

    def __init__(self, emb_dim: int, emb_ks: int, emb_hs: int, n_freqs: int, hidden_channels: int,
                 n_head: int = 4, approx_qk_dim: int = 512, activation: str = "prelu", eps: float = 1e-5):
        super().__init__()
        in_channels = emb_dim * emb_ks
        self.intra_norm = LayerNormalization4D(emb_dim, eps=eps)
        self.intra_mamba = MambaBlock(in_channels, 1, True)
        self.intra_linear = nn.ConvTranspose1d(in_channels * 2, emb_dim, emb_ks, stride=emb_hs)
        self.inter_norm = LayerNormalization4D(emb_dim, eps=eps)
        self.inter_mamba = MambaBlock(in_channels, 1, True)
        self.inter_linear = nn.ConvTranspose1d(in_channels * 2, emb_dim, emb_ks, stride=emb_hs)

        E = math.ceil(approx_qk_dim * 1.0 / n_freqs)
        if emb_dim % n_head:
            raise ValueError(f"emb_dim ({emb_dim}) must be divisible by attn_n_head ({n_head})")
        act = _activation(activation)

        def branch(out_ch: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(emb_dim, out_ch, 1), act(),
                                 LayerNormalization4DCF((out_ch, n_freqs), eps=eps))

        for ii in range(n_head):
            self.add_module(f"attn_conv_Q_{ii}", branch(E))
            self.add_module(f"attn_conv_K_{ii}", branch(E))
            self.add_module(f"attn_conv_V_{ii}", branch(emb_dim // n_head))
        self.add_module("attn_concat_proj", branch(emb_dim))
        self.emb_dim, self.emb_ks, self.emb_hs, self.n_head = emb_dim, emb_ks, emb_hs, n_head

    def _branch(self, kind: str, ii: int) -> nn.Module:
        return getattr(self, f"attn_conv_{kind}_{ii}")

    @staticmethod
    def _run_branch(branch: nn.Sequential, x: Tensor) -> Tensor:
        """branch(x) (1x1 Conv2d -> activation -> LayerNormalization4DCF) with the 1x1 convolution as one matrix
        product over [channels, frames x freqs] in float32: torch's CPU convolution kernel took 12-24 ms for this
        16 -> 4 channel 1x1 case on 10 s of audio where the product takes 0.3 ms (fp32, this machine; under bf16
        autocast its casts cost more than the product)."""
        conv = branch[0]
        B, C, T, Q = x.shape
        w = conv.weight.float().reshape(conv.out_channels, C)
        with torch.autocast(x.device.type, enabled=False):
            y = torch.matmul(w, x.float().reshape(B, C, T * Q))
            if conv.bias is not None:
                y += conv.bias.float()[:, None]
        y = y.view(B, conv.out_channels, T, Q)
        for module in list(branch)[1:]:
            y = module(y)
        return y

    def _patch_sequences(self, h: Tensor, mamba: MambaBlock, linear: nn.ConvTranspose1d) -> Tensor:
        """[N, C, Q] -> unfold into patches of emb_ks -> bidirectional Mamba -> ConvTranspose1d -> [N, C, Q].

        The N sequences are independent, so without gradients they go through in chunks of about
        `mamba.chunk_tokens` patches: the wide intermediates (patches x 2*C*emb_ks and Mamba's inner
        tensors) then take bounded memory whatever the input length.
        """
        ks, hs = self.emb_ks, self.emb_hs

        def run(part: Tensor) -> Tensor:
            p = F.unfold(part[..., None], (ks, 1), stride=(hs, 1))  # [n, C*ks, L]
            if mamba.fusable:  # channels-first throughout: no transposes
                return linear(mamba.forward_channels_first(p))  # [n, C, Q]
            return linear(mamba(p.transpose(1, 2)).transpose(1, 2))

        n_patches = (h.shape[-1] - ks) // hs + 1
        if torch.is_grad_enabled() or not mamba.fused or h.shape[0] * n_patches <= mamba.chunk_tokens:
            return run(h)
        step = max(1, mamba.chunk_tokens // n_patches)
        return torch.cat([run(h[i:i + step]) for i in range(0, h.shape[0], step)], 0)

    @staticmethod
    def _attention(q: Tensor, k: Tensor, v: Tensor, rows: int | None = None) -> Tensor:
        """softmax(q k^T / sqrt(dim)) v over frames, [hB, T, dim], in the autocast dtype when autocast is on.

        Without gradients: per head, blocks of `rows` queries (default: as many as keep a block's T scores near
        ATTN_BLOCK_SCORES), each two plain matrix products and a softmax into reused buffers. Those products run
        on oneDNN's GEMM (AMX in bf16): measured here (Xeon with AMX, 2 threads, 4 heads x 7,501 frames x 516)
        about 1,000 GFLOP/s in bf16 and 300 in fp32, where torch's scaled-dot-product-attention kernel ran 190-240
        in either precision. The scores are rounded to the GEMM dtype before the softmax (its sums are fp32).
        With gradients: torch's scaled-dot-product-attention (blockwise on CPU)."""
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return F.scaled_dot_product_attention(q, k, v)
        dtype = q.dtype
        if torch.is_autocast_enabled(q.device.type) and dtype in (torch.float32, torch.float64):
            dtype = torch.get_autocast_dtype(q.device.type)
        hb, n_q, dim = q.shape
        n_k = k.shape[1]
        if rows is None:
            rows = max(16, ATTN_BLOCK_SCORES // max(1, n_k))
        rows = max(1, min(rows, n_q))
        with torch.autocast(q.device.type, enabled=False):
            qs = (q * (1.0 / math.sqrt(dim))).to(dtype)
            kt = k.to(dtype).transpose(1, 2)
            v = v.to(dtype)
            out = torch.empty(hb, n_q, v.shape[-1], dtype=dtype, device=q.device)
            scores = torch.empty(rows, n_k, dtype=dtype, device=q.device)
            probs = torch.empty(rows, n_k, dtype=dtype, device=q.device)
            for h in range(hb):
                for r0 in range(0, n_q, rows):
                    r1 = min(n_q, r0 + rows)
                    s = torch.mm(qs[h, r0:r1], kt[h], out=scores[:r1 - r0])
                    p = torch.ops.aten._softmax.out(s, -1, False, out=probs[:r1 - r0])
                    torch.mm(p, v[h], out=out[h, r0:r1])
        return out

    @staticmethod
    def _add_contiguous(h: Tensor, x: Tensor) -> Tensor:
        """h + x in x's (contiguous) layout: h is a transposed view, and `h + x` took h's strides, so every later
        reshape of the sum (norms, the attention branches' products) copied it again (about 0.9 ms per copy of
        a 4 s input's [1, 16, 501, 129] here)."""
        if torch.is_grad_enabled() or not x.is_contiguous() or h.shape != x.shape:
            return h + x
        return torch.add(h, x, out=torch.empty(x.shape, dtype=torch.result_type(h, x), device=x.device))

    def forward(self, x: Tensor) -> Tensor:
        B, C, old_T, old_Q = x.shape
        ks, hs = self.emb_ks, self.emb_hs
        T = math.ceil((old_T - ks) / hs) * hs + ks
        Q = math.ceil((old_Q - ks) / hs) * hs + ks
        x = F.pad(x, (0, Q - old_Q, 0, T - old_T))

        # intra-frame: sequences over frequency patches, one per (batch, frame)
        input_ = x
        h = self.intra_norm(input_).transpose(1, 2).reshape(B * T, C, Q)
        h = self._patch_sequences(h, self.intra_mamba, self.intra_linear)  # [BT, C, Q]
        h = h.view(B, T, C, Q).transpose(1, 2)
        intra = self._add_contiguous(h, input_)

        # inter-frame: sequences over time patches, one per (batch, frequency)
        h = self.inter_norm(intra).permute(0, 3, 1, 2).reshape(B * Q, C, T)
        h = self._patch_sequences(h, self.inter_mamba, self.inter_linear)  # [BQ, C, T]
        h = h.view(B, Q, C, T).permute(0, 2, 3, 1)
        inter = self._add_contiguous(h, intra)[..., :old_T, :old_Q]
        if not inter.is_contiguous() and not torch.is_grad_enabled():
            inter = inter.contiguous()  # read by 13 attention branches: one copy here, not one per branch

        # full-band self-attention over frames, heads stacked along the batch; the plain path (MambaBlock.fused
        # off) calls the branch modules as the official code does
        run = self._run_branch if self.intra_mamba.fused else (lambda branch, t: branch(t))
        q = torch.cat([run(self._branch("Q", i), inter) for i in range(self.n_head)], 0)  # [hB, E, T, F]
        k = torch.cat([run(self._branch("K", i), inter) for i in range(self.n_head)], 0)
        v = torch.cat([run(self._branch("V", i), inter) for i in range(self.n_head)], 0)  # [hB, C/h, T, F]
        q = q.transpose(1, 2).flatten(2)  # [hB, T, E*F]
        k = k.transpose(1, 2).flatten(2)
        v_shape = v.transpose(1, 2).shape
        v = v.transpose(1, 2).flatten(2)
        v = self._attention(q, k, v).reshape(v_shape).transpose(1, 2)  # [hB, C/h, T, F]
        ch = v.shape[1]
        batch = v.reshape(self.n_head, B, ch, old_T, -1).transpose(0, 1).reshape(B, self.n_head * ch, old_T, -1)
        return run(self.attn_concat_proj, batch) + inter


class SPMamba(nn.Module):
    """SPMamba separator: `forward(mix [B, T]) -> [B, n_srcs, T]` (any T >= 1), at `sample_rate`.

    Arguments are the official `audionet_config` keys; `input_dim`, `lstm_hidden_units` and
    `use_builtin_complex` are accepted for compatibility and do not change the network (as officially).
    A 3-D input [B, n_imics, T] is accepted for multi-microphone configurations.
    """

    def __init__(self, input_dim: int | None = None, n_srcs: int = 2, n_fft: int = 128, stride: int = 64,
                 window: str = "hann", n_imics: int = 1, n_layers: int = 6, lstm_hidden_units: int = 192,
                 attn_n_head: int = 4, attn_approx_qk_dim: int = 512, emb_dim: int = 48, emb_ks: int = 4,
                 emb_hs: int = 1, activation: str = "prelu", eps: float = 1.0e-5,
                 use_builtin_complex: bool = False, sample_rate: int = 16000):
        super().__init__()
        if n_fft % 2:
            raise ValueError(f"n_fft must be even, got {n_fft}")
        if not hasattr(torch, f"{window}_window"):
            raise ValueError(f"unknown window {window!r}")
        self.sample_rate = sample_rate
        self.n_srcs, self.n_layers, self.n_imics = n_srcs, n_layers, n_imics
        self.n_fft, self.stride, self.window = n_fft, stride, window
        self.emb_ks, self.emb_hs = emb_ks, emb_hs
        n_freqs = n_fft // 2 + 1
        self.register_buffer("_window", getattr(torch, f"{window}_window")(n_fft), persistent=False)

        ks, padding = (3, 3), (1, 1)
        self.conv = nn.Sequential(nn.Conv2d(2 * n_imics, emb_dim, ks, padding=padding),
                                  nn.GroupNorm(1, emb_dim, eps=eps))
        self.blocks = nn.ModuleList([
            GridNetBlock(emb_dim, emb_ks, emb_hs, n_freqs, lstm_hidden_units, n_head=attn_n_head,
                         approx_qk_dim=attn_approx_qk_dim, activation=activation, eps=eps)
            for _ in range(n_layers)
        ])
        self.deconv = nn.ConvTranspose2d(emb_dim, n_srcs * 2, ks, padding=padding)

    @property
    def num_spk(self) -> int:
        return self.n_srcs

    @property
    def bf16_on_cpu_pays(self) -> bool:
        """Whether `--precision auto` may pick bf16 on this CPU (sepcli.runtime.device): where it has AMX. Measured
        on a 2-core Xeon with AMX: bf16 autocast ran SPMamba-8k end to end clearly faster than fp32 (its projections
        and attention on AMX), at SNR >= 40 dB against fp32 (tests/nets/test_spmamba.py). A CPU with AVX512-BF16
        but no AMX has not been measured, so auto stays fp32 there; without native bf16 device.py keeps fp32."""
        from ..runtime.device import cpu_features

        return bool(cpu_features()["amx_bf16"])

    def min_length(self) -> int:
        """Shortest input the official computation accepts: reflect padding needs T > n_fft/2 and the
        GridNet unfold needs at least emb_ks frames (1 + T // stride >= emb_ks)."""
        return max(self.n_fft // 2 + 1, (self.emb_ks - 1) * self.stride)

    def forward(self, mix: Tensor) -> Tensor:
        if mix.ndim == 1:
            mix = mix[None]
        if mix.ndim == 2:
            mix = mix[:, None]  # [B, 1, T]
        if mix.ndim != 3 or mix.shape[1] != self.n_imics:
            raise ValueError(f"expected input [B, T] (or [B, {self.n_imics}, T]), got {tuple(mix.shape)}")
        n_batch, n_mics, n_samples = mix.shape
        if n_samples < 1:
            raise ValueError("input has no samples")

        # Official: x / std(x) (unbiased, over mics and samples), outputs * std. Guard std == 0 / T == 1.
        if n_samples * n_mics > 1:
            std = torch.std(mix, dim=(1, 2), keepdim=True)
        else:
            std = torch.zeros_like(mix[:, :1, :1])
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        x = mix / std
        length = max(n_samples, self.min_length())
        if length > n_samples:
            x = F.pad(x, (0, length - n_samples))

        window = self._window.to(device=x.device, dtype=x.dtype)
        with torch.autocast(x.device.type, enabled=False):  # the STFT and iSTFT stay in the input's precision
            spec = torch.stft(x.reshape(n_batch * n_mics, length), self.n_fft, self.stride, self.n_fft, window,
                              center=True, pad_mode="reflect", normalized=False, onesided=True,
                              return_complex=True)  # [B*M, F, T]
        spec = spec.transpose(1, 2).reshape(n_batch, n_mics, -1, spec.shape[1])  # [B, M, T, F]
        batch = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2M, T, F]
        n_frames, n_freqs = batch.shape[2], batch.shape[3]

        batch = self.conv(batch)
        with workspace():  # scratch buffers shared by the blocks' Mamba passes (without gradients)
            for block in self.blocks:
                batch = block(batch)
        batch = self.deconv(batch)  # [B, n_srcs*2, T, F]

        batch = batch.to(x.dtype).view(n_batch * self.n_srcs, 2, n_frames, n_freqs)
        with torch.autocast(x.device.type, enabled=False):
            est = torch.complex(batch[:, 0], batch[:, 1]).transpose(1, 2)  # [B*n_srcs, F, T]
            wav = torch.istft(est, self.n_fft, self.stride, self.n_fft, window, center=True, normalized=False,
                              onesided=True, length=length)
        wav = wav.view(n_batch, self.n_srcs, length)[..., :n_samples]
        return wav * std.view(n_batch, 1, 1)
