"""The RTF bound's pieces (sepcli/runtime/roofline.py): FLOPs counted on networks whose FLOPs are a formula,
selective-scan updates counted at the kernel's entry points, and the bound's arithmetic on given numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sepcli.runtime.roofline import count_work, rtf_bound


class ConvLinear(nn.Module):
    """[1, T] -> Conv1d(1 -> 4, kernel 5) -> Linear(4 -> 3) over the T - 4 frames."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 5)
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(self.conv(x.unsqueeze(1))[0].T)


def test_flops_of_a_conv_and_a_linear_layer_are_their_formulas():
    rate, seconds = 100, 1.0
    frames = rate - 4  # a valid convolution of kernel 5
    conv = 2 * 4 * 1 * 5 * frames  # 2 FLOPs per multiply-add: out channels x in channels x kernel x frames
    lin = 2 * frames * 4 * 3  # rows x in x out
    work = count_work(ConvLinear(), rate, seconds)
    assert work["gemm_flops"] == conv + lin == 6144
    assert work["gemm_flops_per_s"] == pytest.approx((conv + lin) / seconds)
    assert work["scan_updates"] == 0


def test_grouped_convolution_counts_only_each_group_s_inputs():
    class Depthwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(6, 6, 3, groups=6, padding=1)

        def forward(self, x):
            return self.conv(x.unsqueeze(1).expand(1, 6, -1).contiguous())

    work = count_work(Depthwise(), 50, 2.0)
    assert work["gemm_flops"] == 2 * 6 * 1 * 3 * 100  # each output channel sees one input channel


class Scans(nn.Module):
    """One scan through nets/mamba's wrapper (b 2, d 3, n 4), which calls sepcli.kernels' selective_scan and
    must not count twice, and one direct call of sepcli.kernels.selective_scan (b 1, d 5, n 4) per forward."""

    def forward(self, x):
        from sepcli import kernels
        from sepcli.nets.mamba import selective_scan

        length = x.shape[-1]
        u = x.expand(2, 3, length).contiguous()
        A = -torch.ones(3, 4)
        B = C = torch.ones(2, 4, length)
        selective_scan(u, torch.zeros_like(u), A, B, C)
        kernels.selective_scan(u=x.expand(1, 5, length).contiguous(), delta=torch.zeros(1, 5, length),
                               A=-torch.ones(5, 4), B=torch.ones(1, 4, length), C=torch.ones(1, 4, length))
        return x


def test_scan_updates_are_b_d_l_n_per_call_counted_once(monkeypatch):
    monkeypatch.setenv("SEPCLI_SCAN", "ref")  # the reference backend: nothing to compile
    work = count_work(Scans(), 20, 1.0)
    assert work["scan_updates"] == 2 * 3 * 20 * 4 + 1 * 5 * 20 * 4
    assert work["scan_calls"] == 2
    assert work["gemm_flops"] == 0


def test_bound_arithmetic():
    # the SPMamba-8k figures: 178 GFLOP and 3.08 G updates per second of audio, 289 GFLOP/s fp32 GEMM,
    # 1.71 G updates/s scan: 0.616 + 1.801 s per second of audio
    assert rtf_bound(178e9, 289e9, 3.08e9, 1.71e9) == pytest.approx(178 / 289 + 3.08 / 1.71)
    assert rtf_bound(2e9, 1e12) == pytest.approx(0.002)  # no scan: GEMM only
    with pytest.raises(ValueError):
        rtf_bound(1e9, 0.0)
    with pytest.raises(ValueError):
        rtf_bound(1e9, 1e11, 1e9, None)  # a scan without its throughput
