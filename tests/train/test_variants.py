"""Voice variants (sepcli/train/variants.py) and the recipe's variants stage, against plain references:
pitch by autocorrelation and formants by LPC of a vowel made from known resonators."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import solve_toeplitz
from scipy.signal import lfilter

pytest.importorskip("parselmouth")

from sepcli.train.data import DataError, DynamicMixDataset  # noqa: E402
from sepcli.train.mixing import MixOptions, make_mixture, rng_for  # noqa: E402
from sepcli.train.speakers import Speaker, load_pool, read_index, write_index  # noqa: E402
from sepcli.train.variants import (VariantShift, choose_shift, make_variant, pitch_median,  # noqa: E402
                                   variant_id, variant_number, variant_source)

SR = 16000


def vowel(f0: float, formants: list[float], seconds: float = 2.0) -> np.ndarray:
    """A pulse train at f0 through two-pole resonators at the given formant frequencies (bandwidth 80-100 Hz)."""
    x = np.zeros(int(seconds * SR))
    x[:: int(round(SR / f0))] = 1.0
    for f, bw in zip(formants, (80.0, 100.0, 120.0)):
        r = np.exp(-np.pi * bw / SR)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / SR), r * r], x)
    return (x / np.abs(x).max() * 0.5).astype(np.float32)


def f0_autocorrelation(x: np.ndarray) -> float:
    z = x[SR // 2: SR] - x[SR // 2: SR].mean()
    ac = np.correlate(z, z, "full")[len(z) - 1:]
    lo, hi = SR // 500, SR // 60
    r = ac[lo:hi]
    # the first local maximum within 10 % of the highest: a multiple of the period can score as high
    peaks = [k for k in range(1, len(r) - 1) if r[k - 1] <= r[k] >= r[k + 1] and r[k] >= 0.9 * r.max()]
    return SR / (lo + peaks[0])


def lpc_formants(x: np.ndarray, order: int = 4) -> np.ndarray:
    """Resonance frequencies of an order-`order` LPC fit (autocorrelation method) of one second of `x`."""
    z = x[SR // 2: SR * 3 // 2].astype(np.float64) * np.hamming(SR)
    r = np.correlate(z, z, "full")[len(z) - 1: len(z) + order]
    a = solve_toeplitz(r[:-1], r[1:])
    roots = np.roots(np.r_[1.0, -a])
    return np.sort(np.angle(roots[np.imag(roots) > 0]) * SR / (2 * np.pi))


@pytest.mark.parametrize("f0, formants, shift", [
    (125.0, [700.0, 1800.0], VariantShift(1.16, 1.6)),
    (220.0, [800.0, 2200.0], VariantShift(0.86, 0.65)),
])
def test_variant_moves_pitch_and_formants_by_their_own_ratios(f0, formants, shift):
    x = vowel(f0, formants)
    median = pitch_median(x, SR)
    assert median == pytest.approx(f0, rel=0.01)
    y = make_variant(x, SR, shift, median)
    assert y.shape == x.shape and y.dtype == np.float32 and np.abs(y).max() <= 0.99
    assert f0_autocorrelation(x) == pytest.approx(f0, rel=0.02)
    assert f0_autocorrelation(y) == pytest.approx(f0 * shift.pitch_ratio, rel=0.03)
    before, after = lpc_formants(x), lpc_formants(y)
    assert before == pytest.approx(formants, rel=0.03)
    # formants follow their own ratio, not the pitch's (the two ratios differ by far more than the tolerance)
    assert after == pytest.approx(np.array(formants) * shift.formant_ratio, rel=0.08)


def test_variant_is_made_in_blocks_without_a_seam_in_length():
    x = vowel(150.0, [600.0, 1700.0], seconds=2.5)
    y = make_variant(x, SR, VariantShift(1.1, 1.3), 150.0, block_seconds=1.0)
    assert y.shape == x.shape
    assert np.sqrt(np.mean(y[2 * SR: int(2.4 * SR)] ** 2)) > 0.1 * np.sqrt(np.mean(x ** 2))  # the last block too


def test_shift_crosses_towards_the_other_end_of_the_pitch_range():
    low = [choose_shift(f"m{i}", 110.0) for i in range(20)]
    high = [choose_shift(f"f{i}", 220.0) for i in range(20)]
    assert all(1.12 <= s.formant_ratio <= 1.20 and 1.5 <= s.pitch_ratio <= 1.8 for s in low)
    assert all(0.83 <= s.formant_ratio <= 0.90 and 0.55 <= s.pitch_ratio <= 0.70 for s in high)
    assert choose_shift("m3", 110.0) == low[3]  # deterministic in the person's name
    assert len({s.formant_ratio for s in low}) > 10  # and different between persons
    # the new median stays within 85-300 Hz, also for voices at the ends of the range
    assert choose_shift("deep", 40.0).pitch_ratio * 40.0 == pytest.approx(85.0, abs=0.1)
    assert choose_shift("shrill", 600.0).pitch_ratio * 600.0 == pytest.approx(300.0, abs=0.2)


def test_second_variant_moves_less_far_the_other_way():
    low = [choose_shift(f"m{i}", 110.0, 2) for i in range(20)]
    high = [choose_shift(f"f{i}", 220.0, 2) for i in range(20)]
    assert all(0.88 <= s.formant_ratio <= 0.93 and 0.72 <= s.pitch_ratio <= 0.85 for s in low)
    assert all(1.07 <= s.formant_ratio <= 1.12 and 1.15 <= s.pitch_ratio <= 1.30 for s in high)
    assert choose_shift("m3", 110.0, 2) == low[3] and len({s.pitch_ratio for s in high}) > 10
    # the first variant is unchanged by the second's existence (pools built before keep their files)
    assert choose_shift("m3", 110.0, 1) == choose_shift("m3", 110.0)
    assert choose_shift("deep", 95.0, 2).pitch_ratio * 95.0 == pytest.approx(85.0, abs=0.1)
    with pytest.raises(ValueError):
        choose_shift("m3", 110.0, 3)
    assert [variant_id("a-en", n) for n in (1, 2)] == ["a-en.v", "a-en.v2"]
    assert [variant_source(v) for v in ("a-en.v", "a-en.v2", "a-en", "x.vowels")] == ["a-en", "a-en", "a-en",
                                                                                        "x.vowels"]
    assert [variant_number(v) for v in ("a-en.v", "a-en.v2")] == [1, 2]
    with pytest.raises(ValueError):
        variant_number("a-en")


def test_recipe_variants_stage_makes_the_asked_variants_per_real_training_person(tmp_path):
    """Only real training persons get variants; they keep the person's name and split, all of a person's entries
    are shifted alike, training loads variants only when asked, and a mixture never pairs a person with itself."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "recipes"))
    import make_data

    pools = tmp_path / "data" / "pools"
    pools.mkdir(parents=True)
    table = [("a-en", "a", "real", "train", 110), ("a-es", "a", "real", "train", 110),
             ("b", "b", "real", "train", 230), ("c", "c", "real", "test", 140),
             ("s", "s", "synthetic", "train", 180), ("t", "t", "synthetic", "train", 120)]
    speakers = []
    for sid, person, kind, split, f0 in table:
        np.save(pools / f"{sid}.npy", vowel(f0, [650.0, 1900.0], seconds=5.0).astype(np.float16))
        speakers.append(Speaker(sid, person, kind, split, 5.0))
    write_index(pools, SR, speakers)
    with pytest.raises(DataError, match="no voice variants"):
        DynamicMixDataset(pools, SR, MixOptions(seconds=1.0), variants=True)

    make_data.build_variants(tmp_path / "data", jobs_n=1, per_person=1)  # a pool built before session 8
    assert sorted(s.id for s in read_index(pools)[1] if s.kind == "variant") == ["a-en.v", "a-es.v", "b.v"]
    first = np.load(pools / "b.v.npy")
    make_data.build_variants(tmp_path / "data", jobs_n=1, per_person=2)  # adds only the second variants
    sr, index = read_index(pools)
    variants = {s.id: s for s in index if s.kind == "variant"}
    assert sorted(variants) == ["a-en.v", "a-en.v2", "a-es.v", "a-es.v2", "b.v", "b.v2"]
    assert np.array_equal(np.load(pools / "b.v.npy"), first)
    assert all(v.person == variant_source(v.id).split("-")[0] and v.split == "train" for v in variants.values())
    for n in ("v", "v2"):  # one new voice per person and variant
        assert variants[f"a-en.{n}"].source.split(": ")[1] == variants[f"a-es.{n}"].source.split(": ")[1]
    ratio = {v: float(variants[v].source.split("formants x")[1].split(",")[0]) for v in variants}
    assert ratio["a-en.v"] > 1.1 and ratio["a-en.v2"] < 0.95  # the low voice: up, then down
    assert ratio["b.v"] < 0.9 and ratio["b.v2"] > 1.05  # the high voice: down, then up
    y2 = np.load(pools / "b.v2.npy").astype(np.float32)
    assert len(y2) == 5 * SR and f0_autocorrelation(y2) > 1.1 * 230
    y = np.load(pools / "b.v.npy").astype(np.float32)
    assert len(y) == 5 * SR and f0_autocorrelation(y) < 0.75 * 230
    make_data.build_variants(tmp_path / "data", jobs_n=1, per_person=2)  # nothing left to do
    assert len(read_index(pools)[1]) == len(index)
    make_data.build_variants(tmp_path / "data", jobs_n=1, per_person=1)  # back to the recipe's count
    assert sorted(s.id for s in read_index(pools)[1] if s.kind == "variant") == ["a-en.v", "a-es.v", "b.v"]
    assert not list(pools.glob("*.v2.npy")) and np.array_equal(np.load(pools / "b.v.npy"), first)
    make_data.build_variants(tmp_path / "data", jobs_n=1, per_person=2)  # and again: the same second variants
    assert np.array_equal(np.load(pools / "b.v2.npy").astype(np.float32), y2)

    assert [s.id for s in load_pool(pools, "train")[1]] == ["a-en", "a-es", "b", "s", "t"]
    ds = DynamicMixDataset(pools, SR, MixOptions(seconds=1.0, real_share=1.0), variants=True)
    assert {s.id for s in ds.speakers} == {"a-en", "a-es", "b", "s", "t", *variants}
    assert ds.real == {"a", "b"}
    # real pairs are always a+b: a variant is its person, never its own partner
    for i in range(30):
        _, _, meta = make_mixture(rng_for(0, i), ds.audio, ds.persons, SR, ds.options, ds.real)
        assert sorted(meta["speakers"]) == ["a", "b"]


def test_variant_is_the_same_on_every_run_whatever_praat_drew_before():
    # a voiced vowel, then noise (an unvoiced stretch, where Change gender's resynthesis draws random numbers)
    rng = np.random.default_rng(3)
    x = np.concatenate([vowel(140.0, [700.0, 1200.0], seconds=1.5), 0.1 * rng.standard_normal(SR)]).astype(np.float32)
    first = make_variant(x, SR, VariantShift(0.86, 0.6), 140.0, block_seconds=1.0)
    from parselmouth.praat import run

    run("for i to 1000\n  x = randomUniform (0, 1)\nendfor")  # move Praat's generator on
    second = make_variant(x, SR, VariantShift(0.86, 0.6), 140.0, block_seconds=1.0)
    np.testing.assert_array_equal(first, second)
