"""SPMamba's bidirectional Mamba stack (`MambaBlock`): the sequence model of a GridNet block's intra-frame and
inter-frame paths, over unfolded patch sequences.

Official layout and names (JusperLee/SPMamba; facts only, our own code): `forward_blocks.<i>` and
`backward_blocks.<i>`, each a mamba_ssm Block (sepcli.nets.mamba). Two computations with equal outputs:
- the plain official-style path (`forward_plain`): one Block call per direction and layer, [S, L, D] layout;
- the fused path (one bidirectional layer): channels-first, [sequences, channels, length], the layout of the
  selective scan and of the unfold / ConvTranspose1d around it, so no tensor is transposed; each projection is
  one batched GEMM, the RMSNorm weights are folded into in_proj, the depthwise causal conv1d and its SiLU are
  one numba pass without gradients (nets.causal_conv; K shifted multiply-adds with them); without gradients
  the sequences go through in chunks of about CHUNK_TOKENS tokens (bounded memory) with every intermediate in a
  buffer reused across chunks, directions and layers (`workspace`); sequences longer than a chunk go in time
  windows of about CHUNK_TOKENS tokens with the states carried across (bimamba_grouped.windowed_inference).
Without gradients (and with numba) both directions run as one stream of work, laid out side by side
(sepcli.nets.bimamba_grouped: one scan call, one depthwise-conv call and one batched GEMM per projection for both
directions, the norm and the residual sums as numba passes); `SEPCLI_SPMAMBA_GROUPED=0` (or `GROUPED = False`)
keeps the per-direction inference path. `SEPCLI_SPMAMBA_FUSED=0` (or `MambaBlock.fused = False`) selects the plain
path, for comparisons.

Under `torch.autocast` (e.g. bfloat16 on CPU) in_proj/out_proj run in the autocast dtype (weights cast once per
call), the depthwise conv, x_proj, dt_proj and the scan's recurrence in float32, RMSNorm's statistics in float32.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch import Tensor, nn

from . import bimamba_grouped, causal_conv
from .mamba import (Block, Mamba, RMSNorm, Workspace, batched_weight, bmm_into, causal_depthwise_conv_silu,
                    conv_silu_into, current_workspace, init_weights, rms_normalise, selective_scan)

# Default of MambaBlock.fused for new modules; "0" selects the plain official-style path.
FUSED_DEFAULT = os.environ.get("SEPCLI_SPMAMBA_FUSED", "1") != "0"
# Without gradients, both directions as one stream of work (sepcli.nets.bimamba_grouped) where it applies;
# False selects the per-direction inference path (_fused_inference), for comparisons.
GROUPED = os.environ.get("SEPCLI_SPMAMBA_GROUPED", "1") != "0"
# Sequences x length processed at once by the fused path without gradients (bounds peak memory).
CHUNK_TOKENS = 2048
# Sequences longer than a chunk go through the grouped path in time windows (bimamba_grouped.windowed_inference,
# where it applies); "0" (or WINDOWED = False) keeps them on the per-direction path a whole sequence at a time.
WINDOWED = os.environ.get("SEPCLI_SPMAMBA_WINDOWED", "1") != "0"
# Shortest time window the windowed path gives a group of sequences: up to chunk_tokens // WINDOW_MIN sequences
# share a window of chunk_tokens // group steps.
WINDOW_MIN = 256


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
        if (x.shape[2] > self.chunk_tokens and GROUPED and WINDOWED
                and bimamba_grouped.applies_windowed(x, weights)):
            return self._windowed(x, weights)
        step = max(1, self.chunk_tokens // max(1, x.shape[2]))
        out = x.new_empty(x.shape[0], 2 * x.shape[1], x.shape[2])
        for i in range(0, x.shape[0], step):
            self._fused_channels_first(x[i:i + step], weights, out=out[i:i + step])
        return out

    def _windowed(self, x: Tensor, weights: dict) -> Tensor:
        """Sequences longer than a chunk, without gradients: groups of up to chunk_tokens // WINDOW_MIN
        sequences, each group in time windows of chunk_tokens // group steps (bimamba_grouped.windowed_inference:
        the grouped path with the conv's and the scan's states carried across windows)."""
        S, D, L = x.shape
        group = max(1, min(S, self.chunk_tokens // max(1, WINDOW_MIN)))
        window = max(1, self.chunk_tokens // group)
        out = x.new_empty(S, 2 * D, L)
        ws = current_workspace() or Workspace()
        for i in range(0, S, group):
            bimamba_grouped.windowed_inference(x[i:i + group], weights, out[i:i + group], ws, selective_scan, window)
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
            if GROUPED and bimamba_grouped.applies(x, weights, self.chunk_tokens):
                ws = current_workspace() or Workspace()
                dst = out if out is not None and out.is_contiguous() else x.new_empty(x.shape[0], 2 * x.shape[1],
                                                                                       x.shape[2])
                res = bimamba_grouped.grouped_inference(x, weights, dst, ws, selective_scan)
                return res if out is None or out is res else out.copy_(res)
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
