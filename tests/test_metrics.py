"""Metrics against closed-form cases."""

import itertools

import numpy as np
import pytest
import torch

from sepcli import metrics


def test_si_snr_of_scaled_copy_is_very_high():
    x = torch.randn(8000, dtype=torch.float64)
    assert metrics.si_snr(3.7 * x, x) > 100
    assert metrics.si_snr(-0.2 * x, x) > 100  # the projection absorbs the sign too
    assert metrics.si_snr(0.2 * x + 5.0, x) > 100  # offset removed (zero-mean), scale invariant


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_si_snr_of_signal_plus_orthogonal_noise_is_that_snr(snr):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(16000, generator=g, dtype=torch.float64)
    s -= s.mean()
    n = torch.randn(16000, generator=g, dtype=torch.float64)
    n -= n.mean()
    n -= (n @ s) / (s @ s) * s  # orthogonal to s: the projection keeps exactly s
    n *= torch.sqrt((s @ s) / (n @ n) * 10 ** (-snr / 10))
    assert abs(float(metrics.si_snr(s + n, s)) - snr) < 0.1


def test_si_snr_with_independent_noise_is_close_to_nominal():
    rng = np.random.default_rng(1)
    s = torch.tensor(rng.standard_normal(200_000))
    n = torch.tensor(rng.standard_normal(200_000)) * 10 ** (-10 / 20)
    assert abs(float(metrics.si_snr(s + n, s)) - 10.0) < 0.1


def test_pit_finds_the_true_permutation():
    torch.manual_seed(0)
    ref = torch.randn(4, 3, 2000)
    perms = [(2, 0, 1), (0, 1, 2), (1, 2, 0), (2, 1, 0)]
    est = torch.stack([ref[b, list(p)] + 0.05 * torch.randn(3, 2000) for b, p in enumerate(perms)])
    score, perm = metrics.pit_si_snr(est, ref)
    assert [tuple(p.tolist()) for p in perm] == perms
    assert (score > 20).all()


def test_pit_loss_is_differentiable_and_invariant_to_order():
    torch.manual_seed(0)
    ref = torch.randn(2, 2, 500)
    est = torch.randn(2, 2, 500, requires_grad=True)
    loss = metrics.pit_loss(est, ref)
    loss.backward()
    assert est.grad is not None
    assert torch.isclose(metrics.pit_loss(est.flip(1), ref), loss)


def test_best_permutation_hungarian_agrees_with_exhaustive_search():
    rng = np.random.default_rng(3)
    for _ in range(20):
        score = rng.standard_normal((6, 6))
        brute = max(itertools.permutations(range(6)), key=lambda p: sum(score[i, p[i]] for i in range(6)))
        assert metrics.best_permutation(score) == brute


def test_separation_scores_improvement_against_mixture():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 8000))
    mix = ref.sum(0)
    est = ref[::-1] + 0.01 * rng.standard_normal((2, 8000))
    out = metrics.separation_scores(est, ref, mix)
    assert out["perm"] == (1, 0)
    base = [float(metrics.si_snr(torch.tensor(mix), torch.tensor(r))) for r in ref]
    assert np.allclose(out["si_snri"], out["si_snr"] - base)
    assert (out["si_snr"] > 35).all() and (out["sdri"] > 30).all()


def _zero_mean_orthogonal_noise(rng, ref, snr_db):
    """Zero-mean noise orthogonal to the zero-mean reference, at exactly snr_db below it."""
    n = rng.standard_normal(ref.shape)
    n -= n.mean()
    n -= (n @ ref) / (ref @ ref) * ref
    return n * np.sqrt((ref @ ref) / (n @ n) / 10 ** (snr_db / 10))


def test_separation_scores_match_three_sources_through_a_cycle():
    """Estimates in a 3-cycle of the references' order (a permutation that is not its own inverse), each at a
    known SI-SNR: the scores come back in the references' order with exactly those values."""
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((3, 6000))
    ref -= ref.mean(axis=1, keepdims=True)
    snr = np.array([4.0, 11.0, 19.0])  # per reference
    perm = (1, 2, 0)  # estimate i is reference perm[i]
    est = np.stack([ref[perm[i]] + _zero_mean_orthogonal_noise(rng, ref[perm[i]], snr[perm[i]]) for i in range(3)])
    mix = ref.sum(0)
    out = metrics.separation_scores(est, ref, mix, with_sdr=False)
    assert out["perm"] == perm
    np.testing.assert_allclose(out["si_snr"], snr, atol=1e-6)
    base = [10 * np.log10(1 / (1 - (mix @ r) ** 2 / ((mix @ mix) * (r @ r))) - 1) for r in ref]
    np.testing.assert_allclose(out["si_snri"], snr - base, atol=1e-6)


def _plain_bss_eval_sdr(est, ref, taps=512):
    """BSS-eval v4 SDR written plainly: project the estimate (zero-padded to the full convolution's length) on
    the span of the reference delayed by 0..taps-1 samples; SDR = 10 log10(|projection|^2 / |rest|^2)."""
    t = len(ref)
    delayed = np.zeros((t + taps - 1, taps))
    for d in range(taps):
        delayed[d : d + t, d] = ref
    e = np.concatenate([est, np.zeros(taps - 1)])
    proj = delayed @ np.linalg.lstsq(delayed, e, rcond=None)[0]
    return 10 * np.log10((proj @ proj) / ((e - proj) @ (e - proj)))


def test_sdr_and_sdri_equal_a_plain_bss_eval_projection():
    """Estimates with a short filter, leakage of the other speaker and noise (SDR, unlike SI-SNR, forgives the
    filter), matched through a swap; SDRi is against the mixture's own SDR for each reference."""
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((2, 4000))
    mix = ref.sum(0)
    filt = np.convolve(ref[0], 0.3 * rng.standard_normal(24))[:4000]
    est = np.stack([ref[1] + 0.4 * ref[0], ref[0] + filt + 0.2 * ref[1] + 0.1 * rng.standard_normal(4000)])
    out = metrics.separation_scores(est, ref, mix)
    assert out["perm"] == (1, 0)
    want = np.array([_plain_bss_eval_sdr(est[1], ref[0]), _plain_bss_eval_sdr(est[0], ref[1])])
    np.testing.assert_allclose(out["sdr"], want, atol=1e-4)
    np.testing.assert_allclose(out["sdri"], want - [_plain_bss_eval_sdr(mix, r) for r in ref], atol=1e-4)
    assert abs(out["sdr"][0] - out["si_snr"][0]) > 1.0  # the filter: SDR and SI-SNR really differ here
