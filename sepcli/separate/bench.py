"""Speed of a loaded model on a synthetic input (`sepcli bench`, benchmarks): the real pipeline, timed, with the
share of the time spent outside the network."""

from __future__ import annotations

import time

import numpy as np

from ..runtime.roofline import describe_passes
from .results import _Timer
from .separator import Separator


def synthetic_length(seconds: float, rate: int) -> int:
    """Samples of synthetic_mixture(seconds, rate)."""
    return max(int(seconds * rate), 1)


def synthetic_mixture(seconds: float, rate: int, n_src: int = 2, seed: int = 0) -> np.ndarray:
    """Noise 'talkers' with syllable-rate envelopes, summed: a stand-in input for speed measurements."""
    rng = np.random.default_rng(seed)
    n = synthetic_length(seconds, rate)
    t = np.arange(n) / rate
    mix = np.zeros(n, np.float32)
    for k in range(n_src):
        env = 0.55 + 0.45 * np.sin(2 * np.pi * (3.0 + k) * t + rng.uniform(0, 6.28))
        mix += (0.1 * rng.standard_normal(n) * env).astype(np.float32)
    return mix


def bench_model(sep: Separator, seconds: float = 30.0, repeat: int = 3) -> dict:
    """Median timings of separating a synthetic input at the model's rate (after one warm-up)."""
    m = sep.model
    x = synthetic_mixture(seconds, m.sample_rate, m.n_src)
    sep._separate_array(x[: m.sample_rate], m.sample_rate, _Timer())  # warm-up (first-call compilation)
    totals, models = [], []
    for _ in range(max(repeat, 1)):
        timer = _Timer()
        t0 = time.perf_counter()
        sep._separate_array(x, m.sample_rate, timer)
        totals.append(time.perf_counter() - t0)
        models.append(timer.model)
    total, model_t = float(np.median(totals)), float(np.median(models))
    length, ov = sep.segment_geometry()
    passes = sep.network_passes(len(x))
    net_in = sum(n * k for n, k in passes.items()) / m.sample_rate
    return {"model": m.name, "arch": m.arch, "params_M": round(m.n_params / 1e6, 3), "sample_rate": m.sample_rate,
            **sep.runtime_info(),
            "input_s": seconds, "segment_s": length / m.sample_rate, "overlap_s": ov / m.sample_rate,
            "network_passes": describe_passes(passes, m.sample_rate),
            "network_input_s": round(net_in, 4),
            "total_s": round(total, 3), "model_s": round(model_t, 3),
            "rtf_total": round(total / seconds, 4), "rtf_model": round(model_t / seconds, 4),
            "model_s_per_network_input_s": round(model_t / net_in, 4) if net_in > 0 else None,
            "outside_model_share": round(1 - model_t / total, 4) if total > 0 else None}
