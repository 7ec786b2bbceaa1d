"""The GridNet block's unfold pass (sepcli.nets.patch_unfold) against F.unfold, and the block's forward with it
(GridNetBlock._patch_sequences_into) against the torch composition it replaces (FAST_PATCHES off).

The pass reads [N, C, Q] views with any strides: tested through the transposed views the block uses (intra:
[B, C, T, Q] -> [T, C, Q] of one batch item; inter: -> [Q, C, T]), on chunks of sequences (s0 > 0)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sepcli.nets.gridnet as gridnet
from sepcli.nets.gridnet import GridNetBlock
from sepcli.nets.patch_unfold import unfold_into

torch.set_num_threads(1)


def _view(x: torch.Tensor, kind: str) -> torch.Tensor:
    """One batch item's sequences as the block reads them: a strided view, no copy."""
    return x[1].transpose(0, 1) if kind == "intra" else x[1].permute(2, 0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["intra", "inter"])
@pytest.mark.parametrize("ks,hs", [(8, 1), (4, 2), (3, 3), (1, 1), (5, 1), (11, 1)])
def test_unfold_equals_f_unfold_on_transposed_views(dtype, kind, ks, hs):
    torch.manual_seed(ks * 10 + hs)
    x = torch.randn(2, 3, 13, 11).to(dtype)  # [B, C, T, Q]
    src = _view(x, kind)  # [N, C, len]
    assert not src.is_contiguous()
    N, C, length = src.shape
    if ks > length:
        with pytest.raises(ValueError, match="do not fit"):
            unfold_into(src, 0, ks, hs, torch.empty(N, C * ks, 1, dtype=dtype))
        return
    want = F.unfold(src.float().contiguous()[..., None], (ks, 1), stride=(hs, 1)).to(dtype)  # [N, C*ks, L]
    for s0, n in [(0, N), (5, N - 6), (N - 1, 1), (3, 0)]:
        out = torch.full((n, C * ks, want.shape[-1]), float("nan"), dtype=dtype)
        assert unfold_into(src, s0, ks, hs, out) is out
        assert torch.equal(out, want[s0:s0 + n])
    assert torch.equal(_view(x, kind), src)  # the source is only read


def test_unfold_rejects_mismatched_shapes_and_dtypes():
    src = torch.randn(4, 3, 10)
    with pytest.raises(ValueError):
        unfold_into(src, 0, 4, 1, torch.empty(4, 12, 6))  # L is 7
    with pytest.raises(ValueError):
        unfold_into(src, 2, 4, 1, torch.empty(4, 12, 7))  # past the last sequence
    with pytest.raises(ValueError):
        unfold_into(src, 0, 4, 1, torch.empty(4, 7, 12).transpose(1, 2))  # out not contiguous
    with pytest.raises(TypeError):
        unfold_into(src.double(), 0, 4, 1, torch.empty(4, 12, 7, dtype=torch.float64))
    with pytest.raises(TypeError):
        unfold_into(src, 0, 4, 1, torch.empty(4, 12, 7, dtype=torch.bfloat16))


def _block(hs: int, seed: int = 0) -> GridNetBlock:
    torch.manual_seed(seed)
    blk = GridNetBlock(8, 4, hs, 17, 16, n_head=2, approx_qk_dim=32).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial norms, biases and slopes
    return blk


@pytest.mark.parametrize("hs", [1, 2])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("chunk_tokens", [50, 1 << 20])
@pytest.mark.parametrize("autocast", [False, True])
def test_block_with_unfold_pass_equals_torch_composition(monkeypatch, hs, batch, chunk_tokens, autocast):
    blk = _block(hs)
    for m in (blk.intra_mamba, blk.inter_mamba):
        m.chunk_tokens = chunk_tokens  # 50: several chunks of sequences per path, inter sequences one at a time
    x = torch.randn(batch, 8, 23, 17)
    calls = []
    real = gridnet.patch_unfold.unfold_into
    monkeypatch.setattr(gridnet.patch_unfold, "unfold_into", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        got = blk(x)
        assert calls  # the unfold pass ran
        monkeypatch.setattr(gridnet, "FAST_PATCHES", False)
        n_calls = len(calls)
        want = blk(x)
        assert len(calls) == n_calls  # and not in the reference
    assert got.shape == want.shape == x.shape and got.dtype == want.dtype
    if not autocast and batch == 1:
        # the same sequences in the same chunks through the same ops: the same values
        assert torch.equal(got, want)
    tol = 1e-2 if autocast else 1e-5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())


def test_unfold_pass_only_without_gradients_on_float32():
    blk = _block(1)
    x = torch.randn(1, 8, 12, 17)
    with torch.no_grad():
        assert blk._fast_patches(x)
        assert not blk._fast_patches(x.double())
        blk.inter_mamba.fused = False  # the plain path keeps the official composition
        assert not blk._fast_patches(x)
        blk.inter_mamba.fused = True
    assert not blk._fast_patches(x)  # gradients on: the torch composition, and gradients reach the weights
    blk(x).square().sum().backward()
    assert blk.intra_linear.weight.grad.abs().sum() > 0 and blk.inter_linear.weight.grad.abs().sum() > 0
