"""Mamba block (sepcli.nets.mamba) against mamba_ssm's parameter layout and a per-time-step reference.

The reference below is written from the formulas (Gu & Dao, "Mamba", Algorithm 2 and mamba_ssm's
mamba_simple.Mamba.step): one time step at a time, in float64, from the module's raw parameters.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sepcli.nets.mamba import Block, Mamba, RMSNorm, init_weights

torch.set_num_threads(1)


def stepwise_mamba(m: Mamba, h: torch.Tensor) -> torch.Tensor:
    """Plain per-time-step Mamba forward in float64: h [B, L, d_model] -> [B, L, d_model]."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    h = h.double()
    batch, length, _ = h.shape
    di, n, r, k = m.d_inner, m.d_state, m.dt_rank, m.d_conv
    A = -torch.exp(p["A_log"])  # [di, n]
    out = torch.zeros(batch, length, m.d_model, dtype=torch.float64)
    for b in range(batch):
        state = torch.zeros(di, n, dtype=torch.float64)
        past = [torch.zeros(di, dtype=torch.float64) for _ in range(k - 1)]  # causal conv history
        for t in range(length):
            xz = p["in_proj.weight"] @ h[b, t]
            x, z = xz[:di], xz[di:]
            window = past + [x]  # oldest .. newest
            conv = sum(p["conv1d.weight"][:, 0, j] * window[j] for j in range(k)) + p["conv1d.bias"]
            past = window[1:]
            u = conv * torch.sigmoid(conv)
            dbl = p["x_proj.weight"] @ u
            dt_raw, Bt, Ct = dbl[:r], dbl[r:r + n], dbl[r + n:]
            delta = F.softplus(p["dt_proj.weight"] @ dt_raw + p["dt_proj.bias"])
            state = torch.exp(delta[:, None] * A) * state + (delta * u)[:, None] * Bt[None, :]
            y = state @ Ct + p["D"] * u
            y = y * (z * torch.sigmoid(z))
            out[b, t] = p["out_proj.weight"] @ y
    return out


def test_parameter_names_shapes_match_mamba_ssm():
    m = Mamba(128, d_state=16, d_conv=4, expand=4)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    # mamba_ssm.Mamba(d_model=128, d_state=16, d_conv=4, expand=4): d_inner 512, dt_rank ceil(128/16)=8
    assert shapes == {
        "A_log": (512, 16),
        "D": (512,),
        "in_proj.weight": (1024, 128),
        "conv1d.weight": (512, 1, 4),
        "conv1d.bias": (512,),
        "x_proj.weight": (8 + 32, 512),
        "dt_proj.weight": (512, 8),
        "dt_proj.bias": (512,),
        "out_proj.weight": (128, 512),
    }
    assert m.dt_rank == 8 and Mamba(100).dt_rank == 7 and Mamba(64, dt_rank=3).dt_rank == 3
    assert m.conv1d.padding == (3,) and m.conv1d.groups == 512
    with_bias = Mamba(32, bias=True, conv_bias=False)
    names = set(with_bias.state_dict())
    assert "in_proj.bias" in names and "out_proj.bias" in names and "conv1d.bias" not in names


def test_initialisation_statistics():
    torch.manual_seed(0)
    m = Mamba(128, expand=4, d_state=16)
    assert torch.equal(m.A_log, torch.log(torch.arange(1, 17, dtype=torch.float32)).repeat(512, 1))
    assert torch.equal(m.D, torch.ones(512))
    dt = F.softplus(m.dt_proj.bias.detach().double())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    # log-uniform on [1e-3, 0.1]: log(dt) uniform with mean (ln 1e-3 + ln 0.1) / 2, std (range) / sqrt(12)
    lg = dt.log()
    lo, hi = math.log(1e-3), math.log(0.1)
    assert abs(lg.mean().item() - (lo + hi) / 2) < 0.15
    assert abs(lg.std().item() - (hi - lo) / math.sqrt(12)) < 0.15
    bound = 8 ** -0.5
    w = m.dt_proj.weight.detach()
    assert w.abs().max() <= bound and w.std() > 0.5 * bound / math.sqrt(3)
    # floor: with dt_min below the floor every dt is at least dt_init_floor
    m2 = Mamba(16, dt_min=1e-6, dt_max=2e-6, dt_init_floor=1e-4)
    assert torch.allclose(F.softplus(m2.dt_proj.bias.detach().double()), torch.full((32,), 1e-4, dtype=torch.float64),
                          rtol=1e-4)
    c = Mamba(16, dt_init="constant", dt_scale=2.0)
    assert torch.allclose(c.dt_proj.weight, torch.full_like(c.dt_proj.weight, 2.0 * 1 ** -0.5))


def test_init_weights_keeps_dt_bias_and_zeroes_other_biases():
    torch.manual_seed(1)
    m = Mamba(32, bias=True)
    torch.nn.init.normal_(m.in_proj.bias)
    dt_bias = m.dt_proj.bias.detach().clone()
    m.apply(lambda mod: init_weights(mod, n_layer=4))
    assert torch.equal(m.dt_proj.bias, dt_bias)
    assert torch.count_nonzero(m.in_proj.bias) == 0
    bound = 1 / math.sqrt(m.d_inner) / math.sqrt(4)  # kaiming_uniform(a=sqrt 5) bound 1/sqrt(fan_in), / sqrt(n_layer)
    assert m.out_proj.weight.abs().max() <= bound + 1e-7
    assert m.out_proj.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize("length", [1, 3, 17])
def test_forward_matches_stepwise_reference(length):
    torch.manual_seed(2)
    m = Mamba(24, d_state=8, d_conv=4, expand=2)
    with torch.no_grad():  # non-trivial D and conv bias so every term counts
        m.D.normal_()
        m.conv1d.bias.normal_(0, 0.5)
    h = torch.randn(2, length, 24)
    with torch.no_grad():
        got = m(h)
    want = stepwise_mamba(m, h)
    assert got.shape == (2, length, 24) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_forward_is_causal():
    torch.manual_seed(3)
    m = Mamba(16, d_state=4, expand=2)
    h = torch.randn(1, 12, 16)
    h2 = h.clone()
    h2[:, 7:] = torch.randn(1, 5, 16)
    with torch.no_grad():
        a, b = m(h), m(h2)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_rmsnorm_formula():
    torch.manual_seed(4)
    n = RMSNorm(10, eps=1e-5)
    with torch.no_grad():
        n.weight.uniform_(0.5, 2.0)
    x = torch.randn(3, 5, 10)
    want = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5) * n.weight
    torch.testing.assert_close(n(x), want)
    assert list(n.state_dict()) == ["weight"]


def test_block_prenorm_residual():
    torch.manual_seed(5)
    blk = Block(16, lambda d: Mamba(d, d_state=4, expand=2), norm_cls=lambda d: RMSNorm(d, eps=1e-5))
    assert [name for name, _ in blk.named_children()] == ["mixer", "norm"]
    h = torch.randn(2, 6, 16)
    res = torch.randn(2, 6, 16)
    with torch.no_grad():
        out, r = blk(h, res)
        torch.testing.assert_close(r, h + res)
        torch.testing.assert_close(out, blk.mixer(blk.norm(h + res)))
        out0, r0 = blk(h)
        torch.testing.assert_close(r0, h)
        torch.testing.assert_close(out0.double(), stepwise_mamba(blk.mixer, blk.norm(h)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_silu_into_buffer_equals_causal_depthwise_conv_silu(dtype):
    # the into-buffer variant of the fused inference path against Mamba's own conv1d + SiLU (fp32 output)
    from sepcli.nets.mamba import conv_silu_into

    torch.manual_seed(11)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(3, 6, 17).to(dtype)
    with torch.no_grad():
        want = torch.nn.functional.silu(conv(x.float())[..., :17])
        out = torch.full((3, 6, 17), float("nan"))
        got = conv_silu_into(x, conv.weight, conv.bias, out)
    assert got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("n_seq", [1, 3])
def test_bmm_into_equals_matmul(n_seq):
    from sepcli.nets.mamba import batched_weight, bmm_into

    torch.manual_seed(12)
    w, x, add = torch.randn(5, 4), torch.randn(n_seq, 4, 7), torch.randn(n_seq, 5, 7)
    p = {"w": w.bfloat16()}
    want = torch.matmul(w, x)
    torch.testing.assert_close(bmm_into(w, x, torch.empty(n_seq, 5, 7)), want)
    torch.testing.assert_close(bmm_into(w, x, torch.empty(n_seq, 5, 7), add=add), want + add)
    wb = batched_weight(p, "w", n_seq)  # dense per-sequence copy in bf16, made once
    assert wb is batched_weight(p, "w", n_seq) and wb.dim() == (2 if n_seq == 1 else 3)
    got = bmm_into(wb, x.bfloat16(), torch.empty(n_seq, 5, 7, dtype=torch.bfloat16))
    torch.testing.assert_close(got.float(), torch.matmul(w.bfloat16().float(), x.bfloat16().float()),
                               rtol=2e-2, atol=2e-2)
