"""The shipped default model and demo file, as `make demo` and a fresh install use them: the alias resolves to the
repo's folder, the weights are fp32 parameters only (no optimiser state), the continuation state loads too, and
the example is small, 16 kHz, about 10 s, and comes out as two different speaker tracks of its length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors import safe_open

from sepcli.pipeline import SeparationOptions, Separator
from sepcli.runtime.loader import load_model

ROOT = Path(__file__).resolve().parents[2]


def _fp32_parameters_only(folder: Path, n_params: int) -> None:
    with safe_open(str(folder / "weights.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert sum(t.numel() for t in tensors.values()) == n_params  # nothing beside the network's parameters
    assert (folder / "weights.safetensors").stat().st_size < 4 * n_params + 64 * 1024


def test_default_alias_is_the_shipped_fp32_model_and_the_state_loads():
    m = load_model("default")
    assert m.path.resolve() == (ROOT / "models" / "s4m-tiny-16k").resolve()
    assert (m.name, m.sample_rate, m.n_src) == ("s4m-tiny-16k", 16000, 2)
    _fp32_parameters_only(m.path, m.n_params)
    state = load_model(ROOT / "recipes" / "state" / "default-latest")
    assert state.n_params == m.n_params
    _fp32_parameters_only(state.path, state.n_params)
    assert (m.path / "MODEL_CARD.md").is_file()


def test_example_is_small_and_separates_into_two_different_tracks():
    path = ROOT / "examples" / "mix.wav"
    assert path.stat().st_size < 500 * 1024
    x, sr = sf.read(path, dtype="float32")
    assert sr == 16000 and x.ndim == 1 and 8 <= len(x) / sr <= 12
    y = Separator("default", SeparationOptions(threads=1)).separate_array(x, sr)
    assert y.shape == (2, len(x)) and np.isfinite(y).all()
    assert abs(np.corrcoef(y[0], y[1])[0, 1]) < 0.9  # two tracks, not one signal twice
    for track in y:  # each a part of the mixture, not a copy of it
        assert 0.05 < np.sqrt(np.mean(track ** 2) / np.mean(x ** 2)) < 0.95
