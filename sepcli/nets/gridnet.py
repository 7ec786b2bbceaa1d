"""SPMamba's GridNet block (`GridNetBlock`, a TF-GridNet block with Mamba in place of the LSTMs) and its norms.

Official layout and names (JusperLee/SPMamba; facts only, our own code): on [B, C, T, Q], intra-frame
bidirectional Mamba over unfolded frequency patches, inter-frame bidirectional Mamba over unfolded time patches
(sepcli.nets.bimamba), then full-band multi-head self-attention over frames, each step with a residual.

Differences, none of which change the outputs:
- the attention branches' 1x1 Conv2d run as a matrix product (same modules and weights) on the fused path;
- the full-band attention without gradients is two matrix products and a softmax per block of queries (in the
  autocast dtype; oneDNN's GEMM, AMX in bf16), with gradients torch's scaled-dot-product-attention;
- without gradients the residual sums are written in the input's contiguous layout (fewer copies downstream),
  and the intra/inter paths read their sequences through transposed views, unfolded into patches by one numba
  pass (sepcli.nets.patch_unfold: no reshape copy, no F.unfold) with the residual sum written in place;
- under `torch.autocast` the norms' statistics stay in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import patch_unfold
from .bimamba import MambaBlock

# Query rows x keys per block of the attention without gradients (GridNetBlock._attention): bounded memory (two
# fp32 buffers of this many scores, 64 MiB). 2^23 rather than 2^21: on a 60 s 8 kHz input (7,501 frames, 4 heads
# x 516) the blocks of 1,118 query rows ran 135.6 GFLOP/s against 119.5 with 279 rows (AMD EPYC, AVX2, fp32, 2
# threads, medians of 4 interleaved runs). Inputs up to about 23 s at 8 kHz (2,896 frames) are now one block.
ATTN_BLOCK_SCORES = 1 << 23
# Without gradients on float32 CPU input (fused Mamba path, numba available): the intra/inter paths' sequences
# read through transposed views by one unfold pass (GridNetBlock._patch_sequences_into); False keeps the reshape
# copies and F.unfold, for comparisons.
FAST_PATCHES = True


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

    def _fast_patches(self, x: Tensor) -> bool:
        """Whether the forward takes _patch_sequences_into: no gradients, a float32 CPU input, both Mamba blocks
        on their fused channels-first path, numba available."""
        return (FAST_PATCHES and patch_unfold.available() and not torch.is_grad_enabled()
                and x.dtype == torch.float32 and x.device.type == "cpu"
                and self.intra_mamba.fusable and self.inter_mamba.fusable)

    def _patch_sequences_into(self, src: Tensor, mamba: MambaBlock, linear: nn.ConvTranspose1d, res: Tensor,
                              out: Tensor) -> None:
        """out = res + _patch_sequences(src) without gradients, for src, res and out [B, N1, C, Q] views (any
        strides: the block's [B, C, T, Q] tensors transposed; sequence (b, n1)). The sequences go through in
        chunks of about `mamba.chunk_tokens` patches, each unfolded from src into one reused buffer
        (patch_unfold), through the Mamba block and the ConvTranspose1d, and added to res into out's view."""
        ks, hs = self.emb_ks, self.emb_hs
        B, N1, C, Q = src.shape
        n_patches = (Q - ks) // hs + 1
        step = N1 if N1 * n_patches <= mamba.chunk_tokens else max(1, mamba.chunk_tokens // n_patches)
        patches = torch.empty(min(step, N1), C * ks, n_patches, dtype=src.dtype)
        for b in range(B):
            for s0 in range(0, N1, step):
                n = min(step, N1 - s0)
                p = patch_unfold.unfold_into(src[b], s0, ks, hs, patches[:n])
                torch.add(res[b, s0:s0 + n], linear(mamba.forward_channels_first(p)), out=out[b, s0:s0 + n])

    @staticmethod
    def _attention(q: Tensor, k: Tensor, v: Tensor, rows: int | None = None) -> Tensor:
        """softmax(q k^T / sqrt(dim)) v over frames, [hB, T, dim], in the autocast dtype when autocast is on.

        Without gradients: per head, blocks of `rows` queries (default: as many as keep a block's T scores near
        ATTN_BLOCK_SCORES), each two plain matrix products and a softmax into reused buffers. Those products run
        on oneDNN's GEMM (AMX in bf16): measured here (Xeon with AMX, 2 threads, 4 heads x 7,501 frames x 516)
        about 1,000 GFLOP/s in bf16 and 300 in fp32, where torch's scaled-dot-product-attention kernel ran 190-240
        in either precision. The scores are rounded to the GEMM dtype before the softmax (its sums are fp32): with the
        official Libri2Mix weights on examples/mix.wav the bf16 output is 42.18 dB SNR from fp32's, against 42.23
        with the scores kept in fp32 and 42.22 with scaled-dot-product attention: no measurable loss.
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

        if self._fast_patches(x):
            # the steps below with the sequences read through transposed views and the sums written in place
            intra = torch.empty(x.shape, dtype=x.dtype)
            self._patch_sequences_into(self.intra_norm(x).transpose(1, 2), self.intra_mamba, self.intra_linear,
                                       x.transpose(1, 2), intra.transpose(1, 2))
            inter = torch.empty(x.shape, dtype=x.dtype)
            self._patch_sequences_into(self.inter_norm(intra).permute(0, 3, 1, 2), self.inter_mamba,
                                       self.inter_linear, intra.permute(0, 3, 1, 2), inter.permute(0, 3, 1, 2))
            inter = inter[..., :old_T, :old_Q]
        else:
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
