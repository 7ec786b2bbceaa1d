"""`sepcli bench --json`: the bound's figures, for one pass per second of audio and for the overlapping segments
the pipeline runs (a linear FIR test network: its FLOPs are a formula in the input length)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from tests.testnets import bandsplit_folder

SR = 8000
TAPS = 15  # tests.testnets.BandSplit: one conv1d of 15 taps, same-length output: 2 x 15 FLOPs per sample


@pytest.fixture(scope="module")
def fir_model(tmp_path_factory):
    return bandsplit_folder(tmp_path_factory.mktemp("models") / "bandsplit", sample_rate=SR, segment=0.5)


def _plan(n: int, length: int, ov: int) -> list[int]:
    """Segment lengths: one every length - ov samples while it reaches past the previous segment's end."""
    if length >= n:
        return [n]
    hop, out, start = length - ov, [length], length - ov
    while start + ov < n:
        out.append(min(length, n - start))
        start += hop
    return out


@pytest.mark.parametrize("args,length,ov", [([], 4000, 1000),  # the model's 0.5 s, 25 %
                                            (["--segment", "0.3", "--overlap", "0.1"], 2400, 240),
                                            (["--segment", "0"], 16000, 0)])
def test_bench_json_has_single_pass_and_as_run_bounds(fir_model, args, length, ov, monkeypatch):
    # measured throughputs stubbed (a bf16 GEMM measurement takes ~20 s on a CPU without native bf16): the figures
    # checked here are the counts and the formulas on them
    from sepcli.runtime import roofline

    monkeypatch.setattr(roofline, "gemm_throughput", lambda dtype=None, *a, **k: 5e10 if dtype == torch.float32
                        else 1e11)
    monkeypatch.setattr(roofline, "scan_throughput", lambda *a, **k: 1e9)
    r = CliRunner().invoke(app, ["bench", "-m", fir_model, "--seconds", "2", "--repeat", "1", "--threads", "1",
                                 "--json", *args], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    fig = json.loads(r.stdout)
    n = 2 * SR
    segs = _plan(n, length, ov)
    assert fig["network_input_s"] == pytest.approx(sum(segs) / SR)
    assert fig["as_run_network_input_s"] == pytest.approx(sum(segs) / SR)
    assert fig["as_run_overlap_factor"] == pytest.approx(sum(segs) / n, abs=1e-4)
    per_audio_s = 2 * TAPS * sum(segs) / 2.0  # FLOPs of the passes over the 2 s
    assert fig["as_run_gemm_gflop_per_audio_s"] == pytest.approx(per_audio_s / 1e9, rel=1e-3)
    assert fig["single_pass_gemm_gflop_per_audio_s"] == pytest.approx(2 * TAPS * SR / 1e9, rel=1e-3)
    assert fig["gemm_gflops_fp32"] == 50.0 and fig["gemm_gflops_bf16"] == 100.0
    # the bounds differ by the overlap factor exactly (a linear network); the measured RTF against both
    assert fig["as_run_rtf_bound"] == pytest.approx(fig["single_pass_rtf_bound"] * sum(segs) / n, rel=1e-3)
    assert fig["as_run_rtf_over_bound"] == pytest.approx(fig["rtf_model"] / fig["as_run_rtf_bound"], rel=0.02)
    assert fig["single_pass_rtf_over_bound"] == pytest.approx(fig["rtf_model"] / fig["single_pass_rtf_bound"],
                                                              rel=0.02)
    assert fig["model_s_per_network_input_s"] == pytest.approx(fig["model_s"] / fig["network_input_s"], abs=1e-3)


@pytest.mark.parametrize("args", [["--segment", "1e305"], ["--segment", "-1"], ["--overlap", "0.7"]])
def test_bench_bad_segment_options_are_one_line_usage_errors(fir_model, args):
    r = CliRunner().invoke(app, ["bench", "-m", fir_model, "--seconds", "1", "--repeat", "1", "--no-bound", *args])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("sepcli: error: ") and "Traceback" not in r.stderr
