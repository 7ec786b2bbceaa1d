"""Inference fast paths for the 1-D convolutions of S4M and S4D: the same modules and parameters as nn.Conv1d,
a different CPU kernel where PyTorch's is slow for the shape.

Measured on the default S4M model's shapes (2 threads, Xeon with AMX, fp32, one 4 s segment = 2003 frames):
- a 1x1 convolution 128 -> 256 channels took 1.9 ms through oneDNN's convolution and 0.45 ms as one matrix
  product (`PointwiseConv1d`: W [out, in] @ x [B, in, T] + bias);
- a depthwise convolution with kernel 5, stride 1 over 256 channels took 1.6 ms at 2003 frames through oneDNN
  and 0.43 ms as five shifted multiply-adds (`DepthwiseConv1d`; the strided ones stay convolutions, which are
  fast there).
S4M itself uses `fast_inference()` for two fused multiply-adds (addcmul) where it multiplied then added.

The fast paths run only when autograd is off (`sepcli separate`: inference mode): training keeps PyTorch's
convolutions and their backward, so its numbers are unchanged. `FAST_INFERENCE = False` turns them off (tests
compare both). Under bf16 autocast the matrix product runs in bf16 like the convolution it replaces; the
shifted multiply-adds compute in their input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FAST_INFERENCE = True


def fast_inference() -> bool:
    return FAST_INFERENCE and not torch.is_grad_enabled()


class PointwiseConv1d(nn.Conv1d):
    """nn.Conv1d(c_in, c_out, 1): in inference a matrix product over channels."""

    def __init__(self, c_in: int, c_out: int, bias: bool = True):
        super().__init__(c_in, c_out, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_inference() or x.dim() != 3:
            return super().forward(x)
        w = self.weight[:, :, 0]
        if x.shape[0] == 1:
            y = (torch.mm(w, x[0]) if self.bias is None else torch.addmm(self.bias.unsqueeze(1), w, x[0]))
            return y.unsqueeze(0)
        y = torch.matmul(w, x)
        return y if self.bias is None else y + self.bias.unsqueeze(1).to(y.dtype)


class DepthwiseConv1d(nn.Conv1d):
    """A depthwise nn.Conv1d (groups = channels) with "same" zero padding (kernel - 1) // 2, any stride; in
    inference with stride 1 and an odd kernel, y[c, t] = sum_k w[c, k] x[c, t + k - pad] as shifted
    multiply-adds over the padded input."""

    def __init__(self, channels: int, kernel: int, stride: int = 1, bias: bool = True):
        super().__init__(channels, channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=channels,
                         bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if not fast_inference() or self.stride[0] != 1 or k % 2 == 0 or x.dim() != 3:
            return super().forward(x)
        pad, length = self.padding[0], x.shape[-1]
        w = self.weight.to(x.dtype)
        # centre tap (and bias) over every frame, then each other tap over the frames it reaches: tap i reads
        # x[t + i - pad], zero outside, so y[t] for t in [max(0, pad - i), min(T, T + pad - i)) gets it
        tap = w[:, :, pad].unsqueeze(0)
        y = x * tap if self.bias is None else torch.addcmul(self.bias.to(x.dtype).view(1, -1, 1), x, tap)
        for i in range(k):
            shift = i - pad
            if shift == 0 or abs(shift) >= length:
                continue
            if shift > 0:
                y[..., : length - shift].addcmul_(x[..., shift:], w[:, :, i].unsqueeze(0))
            else:
                y[..., -shift:].addcmul_(x[..., : length + shift], w[:, :, i].unsqueeze(0))
        return y


class PReLU(nn.PReLU):
    """nn.PReLU; in inference with one shared slope, leaky_relu with that slope (the same product x * a for
    x <= 0, x itself above), optionally in place. PyTorch's prelu kernel ran a [1, 256, 2003] tensor about 2x
    slower than leaky_relu here (2 threads), and in place saves a pass and an allocation. `inplace` only where
    the caller's input is a fresh temporary (S4M's proj and re-entry)."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fast_inference() or self.weight.numel() != 1 or x.dtype != self.weight.dtype:
            return super().forward(x)
        slope = float(self.weight)
        return F.leaky_relu_(x, slope) if self.inplace else F.leaky_relu(x, slope)


class ConvTranspose1d(nn.ConvTranspose1d):
    """nn.ConvTranspose1d with groups 1, no dilation and no output padding; in inference, when the kernel is a
    multiple of the stride (S4M's decoder: kernel 4x stride), one matrix product and an overlap-add of kernel / stride
    shifted blocks.

    y[o, t*s + j] = sum_c sum_f w[c, o, j'] x[c, f] with t*s + j = f*s + j': the product W^T x gives every
    frame's kernel-long piece; split into q = kernel / s blocks of s samples, block j of frame f lands in output
    block f + j. PyTorch's CPU path for the decoder's shape (65 -> 1 channel, kernel 128,
    stride 32, 2003 frames) took about 2.8 ms of a 4 s segment's ~100 ms; the product and adds take a fraction."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if (not fast_inference() or output_size is not None or x.dim() != 3 or k % s or self.groups != 1
                or self.dilation[0] != 1 or self.output_padding[0] != 0 or x.dtype != self.weight.dtype):
            return super().forward(x, output_size)
        b, c_in, frames = x.shape
        c_out, q = self.out_channels, k // s
        # [b, frames, out * k]: x^T W, BLAS reads the transposed x in place; each (frame, out) row holds q blocks
        pieces = torch.matmul(x.transpose(1, 2), self.weight.reshape(c_in, c_out * k))
        pieces = pieces.view(b, frames, c_out, q, s).transpose(1, 2)  # [b, out, frames, q, s]
        full = x.new_zeros(b, c_out, frames + q - 1, s)  # output blocks of s samples
        for j in range(q):
            full[:, :, j:j + frames].add_(pieces[:, :, :, j])
        y = full.view(b, c_out, (frames + q - 1) * s)
        pad = self.padding[0]
        y = y[..., pad:y.shape[-1] - pad]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y
