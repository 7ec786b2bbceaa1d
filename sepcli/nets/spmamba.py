"""SPMamba (Li & Chen, "SPMamba: State-space model is all you need in speech separation"), official layout.

Architecture, constructor arguments, module names and numerics follow the official implementation
(JusperLee/SPMamba, `look2hear/models/SPMamba.py`, `look2hear/layers/stft_tfgn.py`; facts only, our own
code): std-normalised input -> STFT (Hann, center=True, reflect padding, onesided) -> real/imag as 2 channels
-> Conv2d 3x3 + GroupNorm -> `n_layers` GridNet blocks (intra-frame bidirectional Mamba over unfolded
frequency patches, inter-frame bidirectional Mamba over unfolded time patches, full-band multi-head
attention over frames) -> ConvTranspose2d -> iSTFT -> output times the input std.

`state_dict()` keys and shapes equal the official model's, so released checkpoints load with strict=True.

This module holds the network and its official configurations (`CONFIGS`); its parts live in modules of their
own: sepcli.nets.gridnet (GridNetBlock, its norms and its attention) and sepcli.nets.bimamba (MambaBlock, the
bidirectional Mamba stack with its fused paths). Their public names are re-exported here.

Differences, none of which change the outputs where the official code runs:
- silent input (std 0) and T = 1 are handled (the official code divides by 0 / cannot pad); inputs shorter
  than the network's minimum are zero-padded internally and the output is cropped back to T;
- the bidirectional Mamba (fused path) works channels-first, [sequences, channels, length], the layout of
  the selective scan and of the unfold / ConvTranspose1d around it, so no tensor is transposed; each projection
  is one batched GEMM, the RMSNorm weights are folded into in_proj, the depthwise causal conv1d and its SiLU are
  one numba pass without gradients (nets.causal_conv), and without gradients the sequences go through in
  chunks of about CHUNK_TOKENS tokens (bounded memory) with every intermediate in a buffer reused across
  chunks, directions and layers (`workspace`);
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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Re-exported: the network's parts keep their historical import path (sepcli.nets.spmamba). The module-level
# constants are read in the module that defines them: change or monkeypatch them there (sepcli.nets.bimamba,
# sepcli.nets.gridnet), not here; likewise the selective_scan / rms_normalise the fused path calls.
from .bimamba import CHUNK_TOKENS, FUSED_DEFAULT, MambaBlock
from .gridnet import ATTN_BLOCK_SCORES, GridNetBlock, LayerNormalization4D, LayerNormalization4DCF
from .mamba import workspace

__all__ = ["ATTN_BLOCK_SCORES", "CHUNK_TOKENS", "CONFIGS", "FUSED_DEFAULT", "GridNetBlock", "LayerNormalization4D",
           "LayerNormalization4DCF", "MambaBlock", "SPMamba", "workspace"]

_BASE = {"n_srcs": 2, "window": "hann", "n_imics": 1, "n_layers": 6, "lstm_hidden_units": 256,
         "attn_n_head": 4, "attn_approx_qk_dim": 512, "emb_dim": 16, "emb_ks": 8, "emb_hs": 1,
         "activation": "prelu", "eps": 1.0e-5}

# name -> (arch, arch_args, sample_rate). Values from the official configs/spmamba-librimix.yml (8 kHz) and
# configs/spmamba-echo2mix.yml (16 kHz): 6,094,498 and 6,141,826 parameters.
CONFIGS = {
    "spmamba-8k": ("spmamba", {**_BASE, "n_fft": 256, "stride": 64, "sample_rate": 8000}, 8000),
    "spmamba-16k": ("spmamba", {**_BASE, "n_fft": 512, "stride": 128, "sample_rate": 16000}, 16000),
}


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
        and attention on AMX). Output against fp32: 42.2 dB SNR with the official Libri2Mix weights on
        examples/mix.wav (the same as with torch's scaled-dot-product attention in bf16, 42.2 dB, which keeps the
        scores in fp32), and >= 40 dB on random weights in tests/nets/test_spmamba.py. A CPU with AVX512-BF16
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
