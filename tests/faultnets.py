"""Test-only networks for the reliability tests (never shipped in sepcli), and a `sepcli` entry point for
subprocess tests that registers them.

- `SlowSplit` ("test-slow"): tests.testnets.BandSplit (a low band and its complement, which sum to the input)
  that sleeps `delay` seconds per model call, so a signal can arrive while a file is half done.
- `BrokenNet` ("test-broken"): raises RuntimeError in forward (a model bug or an unforeseen library error).
- `NanNet` ("test-nan"): returns NaN (a model that blows up on some input).

`register()` adds them (and the archs of tests.testnets) to sepcli.nets._ARCH_CLASSES. Subprocess tests run
`python -m tests.faultnets <sepcli arguments>`, which registers them and then runs the real `sepcli` CLI.
"""

from __future__ import annotations

import sys
import time

import torch

from tests.testnets import BandSplit, lowpass_taps, register_test_archs, write_model_folder


class SlowSplit(BandSplit):
    def __init__(self, taps: int = 15, delay: float = 0.2):
        super().__init__(taps)
        self.delay = float(delay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return super().forward(x)


class BrokenNet(torch.nn.Module):
    def __init__(self, n_src: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("deliberate failure inside the model")


class NanNet(torch.nn.Module):
    def __init__(self, n_src: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.n_src = n_src

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], self.n_src, x.shape[1]), float("nan")) * self.w


def register() -> None:
    from sepcli import nets

    register_test_archs()
    nets._ARCH_CLASSES.setdefault("test-slow", ("tests.faultnets", "SlowSplit"))
    nets._ARCH_CLASSES.setdefault("test-broken", ("tests.faultnets", "BrokenNet"))
    nets._ARCH_CLASSES.setdefault("test-nan", ("tests.faultnets", "NanNet"))


def run_cli(*args):
    """`sepcli ARGS` in-process (typer's CliRunner, exceptions not caught): the reliability tests' harness."""
    from typer.testing import CliRunner

    from sepcli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def slow_folder(folder, sample_rate: int = 8000, segment: float = 0.25, delay: float = 0.2):
    """A model folder whose forward takes `delay` s per call (segment 0.25 s: 1 s of audio = ~5 calls)."""
    return write_model_folder(folder, "test-slow", {"taps": 15, "delay": delay}, {"fir": lowpass_taps(15)},
                              sample_rate, segment=segment)


def broken_folder(folder, arch: str = "test-broken", sample_rate: int = 8000):
    return write_model_folder(folder, arch, {"n_src": 2}, {"w": torch.ones(1)}, sample_rate, segment=0.5)


if __name__ == "__main__":
    torch.set_num_threads(1)
    register()
    from sepcli.cli import app

    app(args=sys.argv[1:], prog_name="sepcli")
