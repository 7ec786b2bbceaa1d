"""GridNet block (sepcli.nets.gridnet): blocked attention, attention branches as matrix products, layer norms.

References: the softmax attention formula, the branch modules themselves, the official look2hear norm formula."""

from __future__ import annotations

import torch

from sepcli.nets.gridnet import GridNetBlock, LayerNormalization4D, LayerNormalization4DCF

torch.set_num_threads(1)


def test_attention_in_query_chunks_equals_whole():
    torch.manual_seed(6)
    q, k, v = torch.randn(3, 50, 12), torch.randn(3, 50, 12), torch.randn(3, 50, 7)
    want = torch.softmax(q @ k.transpose(1, 2) / 12 ** 0.5, dim=2) @ v
    with torch.no_grad():
        torch.testing.assert_close(GridNetBlock._attention(q, k, v, rows=7), want)
        torch.testing.assert_close(GridNetBlock._attention(q, k, v), want)


def test_attention_blocks_under_bf16_autocast_match_fp32_formula():
    # without gradients the attention is blocked matrix products in the autocast dtype: bf16 out, within bf16
    # rounding of the fp32 formula; with gradients (SDPA) the gradient reaches q, k and v
    torch.manual_seed(7)
    q, k, v = torch.randn(2, 300, 40), torch.randn(2, 300, 40), torch.randn(2, 300, 9)
    want = torch.softmax(q @ k.transpose(1, 2) / 40 ** 0.5, dim=2) @ v
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = GridNetBlock._attention(q, k, v, rows=64)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=0.03 * want.abs().max().item())
    qg = q.clone().requires_grad_()
    GridNetBlock._attention(qg, k, v).sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


def test_attention_branch_as_matrix_product_equals_module():
    # the fast path's 1x1 convolution as a matrix product against the branch module itself (Conv2d, PReLU,
    # LayerNormalization4DCF), values and gradients
    torch.manual_seed(10)
    blk = GridNetBlock(8, 4, 1, 9, 8, n_head=2, approx_qk_dim=32)
    for name in ("attn_conv_Q_0", "attn_conv_V_1", "attn_concat_proj"):
        branch = getattr(blk, name)
        x = torch.randn(2, 8, 7, 9, requires_grad=True)
        want = branch(x)
        got = GridNetBlock._run_branch(branch, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # a loss the norm does not cancel: the squares' sum of a normalised output is nearly constant, so its
        # gradient is a difference of large terms (fp32 round-off ~2e-3 of its peak on an AVX2 CPU)
        r = torch.randn(want.shape)
        g_want = torch.autograd.grad((want * r).sum(), [x, branch[0].weight])
        g_got = torch.autograd.grad((got * r).sum(), [x, branch[0].weight])
        for a, b in zip(g_got, g_want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_layer_norms_equal_official_var_mean_formula():
    # official look2hear: var_mean(unbiased=False), (x - mu) / sqrt(var + eps) * gamma + beta
    torch.manual_seed(10)
    x = torch.randn(2, 6, 7, 5) * 3 + 2
    n4, ncf = LayerNormalization4D(6), LayerNormalization4DCF((6, 5))
    with torch.no_grad():
        for n in (n4, ncf):
            n.gamma.normal_()
            n.beta.normal_()
    for norm, dims in ((n4, 1), (ncf, (1, 3))):
        var, mu = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        want = (x - mu) / torch.sqrt(var + norm.eps) * norm.gamma + norm.beta
        torch.testing.assert_close(norm(x), want)
        got16 = norm(x.bfloat16())  # lower-precision input: statistics and output in float32
        assert got16.dtype == torch.float32
        torch.testing.assert_close(got16, norm(x.bfloat16().float()))
