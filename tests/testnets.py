"""Test networks (test-only code, never shipped in sepcli).

- `OracleSeparator`: the test double. It holds the true sources of a synthetic mixture, finds where each
  segment it receives lies in the mixture (normalised cross-correlation of the segment's start against the
  mixture), and returns the true sources of that stretch in a random order with a random gain (and sign) per
  source and per call. A pipeline that aligns speaker order and gains correctly reproduces the sources exactly.
- `OracleNet`: the same double as an nn.Module built from config.json arch_args {"sources": path to .npy
  [n_src, T], "seed": int}, with one weight (`scale`, must load as 1.0), for CLI tests that need a model folder.
- `BandSplit`: a cheap real network (a learned FIR low-pass and its complement: two outputs that sum to the
  input), for CLI and memory tests that need speed rather than exactness.

conftest.py registers `OracleNet` and `BandSplit` as the archs "test-oracle" and "test-bandsplit" in
sepcli.nets._ARCH_CLASSES for the test session only; CLI tests run the Typer app in-process (CliRunner), so
the registration is visible to the CLI. Subprocess tests import this module and register the arch themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from scipy.signal import correlate


class OracleSeparator:
    def __init__(self, sources: np.ndarray, sample_rate: int, segment: float = 1.0, overlap: float = 0.25,
                 seed: int = 0, input_loudness: float | None = None, probe: int = 256):
        self.sources = np.asarray(sources, np.float64)
        self.mix = self.sources.sum(0)
        self.sample_rate, self.n_src = sample_rate, self.sources.shape[0]
        self.segment, self.overlap, self.input_loudness = segment, overlap, input_loudness
        self.rng = np.random.default_rng(seed)
        self.probe = probe
        self.offsets: list[int] = []
        self.name = "oracle"

    def locate(self, x: np.ndarray) -> int:
        p = x[: min(self.probe, len(x))].astype(np.float64)
        if len(p) > len(self.mix):
            p = p[: len(self.mix)]
        c = correlate(self.mix, p, mode="valid", method="fft")
        e = np.sqrt(np.convolve(self.mix**2, np.ones(len(p)), mode="valid")) + 1e-12
        return int(np.argmax(c / e))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.detach().cpu().numpy()
        out = np.zeros((xb.shape[0], self.n_src, xb.shape[1]), np.float32)
        for b in range(xb.shape[0]):
            off = self.locate(xb[b])
            self.offsets.append(off)
            seg = self.sources[:, off : off + xb.shape[1]]
            perm = self.rng.permutation(self.n_src)
            gains = self.rng.uniform(0.2, 5.0, self.n_src) * self.rng.choice([-1.0, 1.0], self.n_src)
            out[b, :, : seg.shape[1]] = seg[perm] * gains[:, None]
        return torch.from_numpy(out)


class OracleNet(torch.nn.Module):
    def __init__(self, sources: str, seed: int = 0, sample_rate: int = 8000):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(1))
        self.oracle = OracleSeparator(np.load(sources), sample_rate, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert float(self.scale) == 1.0, "weights were not loaded"
        return self.oracle(x) * self.scale


class BandSplit(torch.nn.Module):
    def __init__(self, taps: int = 15):
        super().__init__()
        self.fir = torch.nn.Parameter(torch.zeros(1, 1, taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.nn.functional.conv1d(x[:, None], self.fir, padding=self.fir.shape[-1] // 2)[:, 0]
        return torch.stack([low, x - low], dim=1)


def lowpass_taps(taps: int = 15) -> torch.Tensor:
    n = torch.arange(taps) - taps // 2
    h = torch.sinc(n / 4.0) * torch.hann_window(taps + 2)[1:-1]
    return (h / h.sum()).float().reshape(1, 1, taps)


def register_test_archs() -> None:
    from sepcli import nets

    nets._ARCH_CLASSES.setdefault("test-oracle", ("tests.testnets", "OracleNet"))
    nets._ARCH_CLASSES.setdefault("test-bandsplit", ("tests.testnets", "BandSplit"))


def write_model_folder(folder: Path, arch: str, arch_args: dict, state: dict, sample_rate: int, n_src: int = 2,
                       segment: float = 1.0, overlap: float = 0.25, input_loudness=None, name=None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"name": name or folder.name, "arch": arch, "arch_args": arch_args, "sample_rate": sample_rate,
           "n_src": n_src, "segment": segment, "overlap": overlap, "input_loudness": input_loudness,
           "aliases": [], "description": "test model", "provenance": "tests", "eval": {}}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "weights.safetensors"))
    return folder


def bandsplit_folder(folder: Path, sample_rate: int = 16000, segment: float = 2.0, name: str | None = None
                     ) -> Path:
    return write_model_folder(folder, "test-bandsplit", {"taps": 15}, {"fir": lowpass_taps(15)}, sample_rate,
                              segment=segment, name=name)


def synthetic_sources(n: int, rate: int, n_src: int = 2, seed: int = 0) -> np.ndarray:
    """n_src noise 'talkers' [n_src, n] with slow envelopes that never fall silent (both always present,
    so the alignment on every overlap is well defined)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    out = []
    for k in range(n_src):
        env = 0.6 + 0.35 * np.sin(2 * np.pi * (1.1 + 0.7 * k) * t + rng.uniform(0, 6.28))
        out.append(0.12 * rng.standard_normal(n) * env)
    return np.asarray(out, np.float32)


def perturbed_mamba_block(d: int, seed: int, biases: bool = False, random_d: bool = False):
    """A one-layer bidirectional MambaBlock (fused path on) with both directions' weights distinct and away from
    their initial values: every parameter + 0.05 N(0, 1), norm weights in [0.5, 1.5); optionally D in [0.5, 1.5)
    and in_proj / out_proj biases (0.3 N(0, 1))."""
    from sepcli.nets.bimamba import MambaBlock

    torch.manual_seed(seed)
    mb = MambaBlock(d, 1, True).eval()
    with torch.no_grad():
        for p in mb.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for blk in (mb.forward_blocks[0], mb.backward_blocks[0]):
            blk.norm.weight.uniform_(0.5, 1.5)
            if random_d:
                blk.mixer.D.uniform_(0.5, 1.5)
            if biases:
                m = blk.mixer
                m.in_proj.bias = torch.nn.Parameter(0.3 * torch.randn(m.in_proj.out_features))
                m.out_proj.bias = torch.nn.Parameter(0.3 * torch.randn(m.out_proj.out_features))
    mb.fused = True
    return mb


def plain_channels_first(mb, x: torch.Tensor) -> torch.Tensor:
    """MambaBlock.forward_plain (the official computation) on channels-first x [S, D, L] -> [S, 2D, L]."""
    return mb.forward_plain(x.transpose(1, 2)).transpose(1, 2)
