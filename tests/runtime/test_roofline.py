"""The RTF bound's pieces (sepcli/runtime/roofline.py): FLOPs counted on networks whose FLOPs are a formula,
selective-scan updates counted at the kernel's entry points, and the bound's arithmetic on given numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from sepcli.runtime.roofline import count_passes_work, count_work, describe_passes, rtf_bound


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


class Outer(nn.Module):
    """[1, T] -> the outer product x^T x ([T, 1] @ [1, T]: 2 T^2 FLOPs, not linear in T) -> its row sums, plus
    a scan of (b 1, d 2, l T, n 3) -> [1, 2, T]."""

    def forward(self, x):
        from sepcli import kernels

        t = x.shape[-1]
        y = (x.T @ x).sum(0)[None]
        kernels.selective_scan(u=x.expand(1, 2, t).contiguous(), delta=torch.zeros(1, 2, t), A=-torch.ones(2, 3),
                               B=torch.ones(1, 3, t), C=torch.ones(1, 3, t))
        return torch.stack([y, x - y], dim=1)


def test_passes_work_is_the_sum_of_each_pass_counted_alone(monkeypatch):
    monkeypatch.setenv("SEPCLI_SCAN", "ref")
    rate, passes, audio = 100, {40: 3, 25: 1, 7: 2}, 120
    work = count_passes_work(Outer(), rate, passes, audio)
    segs = [n for n, k in passes.items() for _ in range(k)]  # every pass counted on its own
    alone = [count_work(Outer(), rate, samples=n) for n in segs]
    assert work["gemm_flops"] == sum(w["gemm_flops"] for w in alone) == sum(2 * n * n for n in segs)
    assert work["scan_updates"] == sum(w["scan_updates"] for w in alone) == sum(2 * n * 3 for n in segs)
    assert work["passes"] == 6
    assert work["network_input_s"] == pytest.approx(sum(segs) / rate)
    assert work["overlap_factor"] == pytest.approx(sum(segs) / audio)
    # per second of the audio, not of the network's input
    assert work["gemm_flops_per_s"] == pytest.approx(work["gemm_flops"] / (audio / rate))
    assert work["scan_updates_per_s"] == pytest.approx(work["scan_updates"] / (audio / rate))


def test_count_work_takes_an_exact_sample_count():
    assert count_work(Outer(), 100, samples=33)["gemm_flops"] == 2 * 33 * 33
    assert count_work(Outer(), 100, seconds=0.33)["gemm_flops"] == 2 * 33 * 33


def test_describe_passes_longest_first():
    assert describe_passes({24000: 1, 32000: 19}, 8000) == "19 x 4 s + 1 x 3 s"


def test_bound_figures_single_pass_and_as_run(monkeypatch):
    # a GEMM-only network (no scan throughput measured); the GEMM throughput is stubbed at 1000 FLOP/s in fp32:
    # the counting and the arithmetic are what is tested (figures to 4 significant digits)
    from sepcli.runtime import roofline

    monkeypatch.setattr(roofline, "gemm_throughput",
                        lambda dtype=torch.float32, size=0, **_: 1e3 if dtype == torch.float32 else 5e2)
    fig = roofline.bound_figures(ConvLinear(), 100, "fp32", measured_rtf=20.0, seconds=1.0,
                                 passes={100: 2, 60: 1}, audio_samples=200)
    # ConvLinear makes 64 (T - 4) FLOPs on T samples (test_flops_of_a_conv_and_a_linear_layer_are_their_formulas)
    single = 64 * 96  # one 1 s pass per second of audio
    as_run = (2 * 64 * 96 + 64 * 56) / 2.0  # two 1 s passes and one 0.6 s pass over 2 s of audio
    assert fig["single_pass_s"] == 1.0
    assert fig["single_pass_rtf_bound"] == pytest.approx(single / 1e3, rel=1e-3)
    assert fig["single_pass_rtf_over_bound"] == pytest.approx(20.0 / (single / 1e3), rel=1e-3)
    assert fig["as_run_passes"] == "2 x 1 s + 1 x 0.6 s"
    assert fig["as_run_network_input_s"] == pytest.approx(2.6)
    assert fig["as_run_overlap_factor"] == pytest.approx(260 / 200)
    assert fig["as_run_rtf_bound"] == pytest.approx(as_run / 1e3, rel=1e-3)
    assert fig["as_run_rtf_over_bound"] == pytest.approx(20.0 / (as_run / 1e3), rel=1e-3)
    assert fig["scan_gupdates_per_s"] is None
    bf16 = roofline.bound_figures(ConvLinear(), 100, "bf16", seconds=1.0, passes={100: 2, 60: 1}, audio_samples=200)
    assert bf16["as_run_rtf_bound"] == pytest.approx(as_run / 5e2, rel=1e-3) and "as_run_rtf_over_bound" not in bf16


def test_network_passes_are_the_calls_the_pipeline_makes():
    """Separator.network_passes against the lengths the network is really called with, and against the segment
    plan written out here (segments every hop = length - overlap samples while they reach past the previous one)."""
    import numpy as np

    from sepcli.separate import Separator

    calls = []

    class Recording(nn.Module):
        sample_rate, n_src, segment, overlap = 8000, 2, 0.3, 0.2  # 2400 samples, 480 overlap, hop 1920

        def forward(self, x):
            calls.extend([x.shape[-1]] * x.shape[0])
            return torch.stack([0.5 * x, 0.5 * x], dim=1)

    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    for kw, expected in [({}, {2400: 3, 2240: 1}),  # starts 0, 1920, 3840, 5760 (7680 + 480 >= 8000: no fifth)
                         ({"segment": 0.0}, {8000: 1}),
                         ({"batch_size": 3}, {2400: 3, 2240: 1}),
                         ({"segment": 0.5, "overlap": 0.4}, {4000: 2, 3200: 1}),  # hop 2400: starts 0, 2400, 4800
                         ({"shifts": 2}, {2400: 3, 2240: 1, 2404: 3, 2244: 1})]:  # 0.5 ms delay: 4 samples
        calls.clear()
        sep = Separator(Recording(), loudness="off", **kw)
        sep.separate_array(x, 8000)
        assert sep.network_passes(len(x)) == expected
        assert sorted(calls) == sorted(n for n, k in expected.items() for _ in range(k)), kw


def test_count_work_sees_s4m_after_its_fused_kernels_switch_on(monkeypatch):
    # S4M runs numba kernels (invisible to FlopCounterMode) from its FUSE_AFTER-th forward in a process, as after
    # `sepcli bench`'s timed runs: the count must be the PyTorch path's all the same, and the fused path must
    # really be on around it (else this test could not fail)
    import sepcli.nets.s4m_fused as fused
    from sepcli.nets import build_network

    torch.manual_seed(4)
    net = build_network("s4m", dict(sample_rate=8000, bn_channels=8, hidden=12, num_blocks=3, depth=4)).eval()
    count_work(net, 8000, seconds=0.5)  # the first forward also computes S4's kernel, reused by later ones
    fresh = count_work(net, 8000, seconds=0.5)
    monkeypatch.setattr(fused, "FUSE_AFTER", 1)
    calls = []
    item = fused.BlockPlan._item
    monkeypatch.setattr(fused.BlockPlan, "_item", lambda self, v: calls.append(1) or item(self, v))
    with torch.inference_mode():
        net(torch.randn(1, 4000))
    assert calls, "the fused path did not run"
    assert count_work(net, 8000, seconds=0.5)["gemm_flops"] == fresh["gemm_flops"] > 0


def test_count_work_counts_dt_proj_that_the_scan_folds(monkeypatch):
    # SPMamba's grouped Mamba path hands dt_proj to the CPU scan (bimamba_grouped.FOLD_DT), where FlopCounterMode
    # cannot see it: the count must still be every projection's FLOPs (the formula below), and the fold must really
    # be on outside the count (else this test could not fail)
    from sepcli.nets import bimamba, bimamba_grouped, bimamba_kernels
    from sepcli.nets.bimamba import MambaBlock

    if not bimamba_kernels.available():
        pytest.skip("numba not installed")
    torch.manual_seed(0)
    D, L = 8, 50
    mb = MambaBlock(D, 1, True).eval()
    mb.fused = True

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mb = mb

        def forward(self, x):
            return self.mb.forward_channels_first(x.view(1, D, -1))

    folded = []
    real = bimamba.selective_scan
    monkeypatch.setattr(bimamba, "selective_scan",
                        lambda *a, **k: folded.append(k.get("delta_proj") is not None) or real(*a, **k))
    monkeypatch.setattr(bimamba_grouped, "FOLD_DT", True)
    with torch.inference_mode():
        Net()(torch.randn(1, D * L))
    assert folded == [True]
    m = mb.forward_blocks[0].mixer
    di, r, n = m.d_inner, m.dt_rank, m.d_state
    per_direction = 2 * L * (2 * di * D + (r + 2 * n) * di + di * r + D * di)  # in, x, dt and out projections
    assert count_work(Net(), 100, samples=D * L)["gemm_flops"] == 2 * per_direction
    assert bimamba_grouped.FOLD_DT  # restored after the count
