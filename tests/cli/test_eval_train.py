"""`sepcli eval` and `sepcli train` through the CLI.

eval is checked against an independent computation: the test network splits a mixture into a low band (a
fixed FIR) and the rest, so its outputs can be recomputed here with numpy and scored with SI-SNR written out
from its definition."""

import csv
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import lfilter
from typer.testing import CliRunner

from sepcli.cli import app
from tests.testnets import bandsplit_folder, lowpass_taps

SR = 8000
runner = CliRunner()


def plain_si_snr(est, ref):
    est, ref = est - est.mean(), ref - ref.mean()
    target = (est @ ref) / (ref @ ref) * ref
    return 10 * np.log10((target @ target) / ((est - target) @ (est - target)))


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """Mixtures of a low-band and a high-band 'talker' in LibriMix layout with speaker metadata."""
    d = tmp_path_factory.mktemp("bands")
    for sub in ("mix", "s1", "s2"):
        (d / sub).mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        noise = rng.standard_normal((2, 2 * SR))
        low = lfilter(np.ones(8) / 8, [1.0], noise[0]) * 0.2
        high = np.diff(noise[1], prepend=0.0) * 0.05
        name = f"{i}.wav"
        for sub, x in (("s1", low), ("s2", high), ("mix", low + high)):
            sf.write(d / sub / name, x.astype(np.float32), SR, subtype="FLOAT")
        rows.append({"mixture_ID": str(i), "mixture_path": f"mix/{name}", "speaker_1": "lo",
                     "speaker_2": "hi" if i < 2 else "hi2"})
    with open(d / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return d


def test_eval_matches_an_independent_computation(tmp_path, bands):
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--segment", "0", "--json", "--quiet",
                              "--csv", str(tmp_path / "scores.csv")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    h = lowpass_taps(15).numpy().ravel()
    want = []
    for i in range(3):
        mix = sf.read(bands / "mix" / f"{i}.wav")[0]
        refs = [sf.read(bands / s / f"{i}.wav")[0] for s in ("s1", "s2")]
        low = np.convolve(mix, h, mode="same")
        est = [low, mix - low]
        imp = [plain_si_snr(e, r) - plain_si_snr(mix, r) for e, r in zip(est, refs)]
        want.append(np.mean(imp))
    got = [f["si_snri"] for f in doc["files"]]
    assert np.allclose(got, want, atol=0.05), (got, want)
    assert doc["n"] == 3 and abs(doc["si_snri"]["mean"] - np.mean(want)) < 0.05
    assert set(doc["pairs"]) == {"hi+lo", "hi2+lo"} and doc["pairs"]["hi+lo"]["n"] == 2
    assert doc["sdri"]["mean"] is not None
    with open(tmp_path / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_eval_text_summary_and_bad_folder(tmp_path, bands):
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--no-sdr", "--quiet"])
    assert res.exit_code == 0 and "si_snri" in res.stdout and "hi+lo" in res.stdout
    (tmp_path / "empty").mkdir()
    bad = runner.invoke(app, ["eval", str(tmp_path / "empty"), "-m", str(model), "--quiet"])
    assert bad.exit_code == 2
    assert "no mix/ folder" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage,problem", [
    (lambda d: sf.write(d / "s1" / "1.wav", np.zeros(SR, np.float32), SR), "shorter than the mixture"),
    (lambda d: sf.write(d / "mix" / "1.wav", np.full(2 * SR, np.nan, np.float32), SR, subtype="FLOAT"),
     "non-finite"),
    (lambda d: sf.write(d / "mix" / "1.wav", np.zeros(0, np.float32), SR), "no samples"),
    (lambda d: (d / "s2" / "1.wav").unlink(), "missing source file(s)"),
    (lambda d: (d / "mix" / "1.wav").write_bytes(b"not audio at all" * 64), "cannot decode audio (Format not"),
    (lambda d: (d / "mix" / "1.wav").write_bytes((d / "mix" / "1.wav").read_bytes()[:3000]), "cut short"),
])
def test_eval_names_the_mixture_it_cannot_score_and_scores_the_others(tmp_path, bands, damage, problem):
    d = _copy_folder(bands, tmp_path / "d")
    damage(d)
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(d), "-m", str(model), "--quiet", "--json", "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 1  # as batch: the bad file is reported, the others are done
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(d / "mix" / "1.wav") in lines[0] and problem in lines[0], res.stderr
    doc = json.loads(res.stdout)
    assert doc["n"] == 2 and [f["file"] for f in doc["files"]] == ["0.wav", "2.wav"]
    assert doc["failed"] == [{"file": str(d / "mix" / "1.wav"), "error": lines[0].removeprefix("sepcli: error: ")}]
    with open(tmp_path / "s.csv") as f:
        assert [r["file"] for r in csv.DictReader(f)] == ["0.wav", "2.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m", "s.csv"]  # no temporary left
    text = runner.invoke(app, ["eval", str(d), "-m", str(model), "--quiet", "--no-sdr"])
    assert text.exit_code == 1 and "(2 mixtures, 1 could not be scored)" in text.stdout


def test_eval_with_no_mixture_scored_fails_without_a_csv(tmp_path, bands):
    d = _copy_folder(bands, tmp_path / "d")
    for i in range(3):
        sf.write(d / "s1" / f"{i}.wav", np.zeros(SR, np.float32), SR)
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(d), "-m", str(model), "--quiet", "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 1 and res.stdout == ""
    lines = res.stderr.strip().splitlines()  # each mixture named on its own line
    named = [ln.removeprefix("sepcli: error: ").split(": ")[0] for ln in lines]
    assert named == [str(d / "mix" / f"{i}.wav") for i in range(3)], lines
    assert all("shorter than the mixture" in ln for ln in lines)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "m"]
    # with --json a script still gets the JSON: nothing scored, every failure listed
    res = runner.invoke(app, ["eval", str(d), "-m", str(model), "--quiet", "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 1 and doc["n"] == 0 and doc["files"] == [] and doc["si_snri"]["mean"] is None
    assert [f["file"] for f in doc["failed"]] == named
    three = _copy_folder(bands, tmp_path / "three")  # more sources than the model's outputs: refused before any
    shutil.copytree(three / "s1", three / "s3")       # separation, as train refuses it
    res = runner.invoke(app, ["eval", str(three), "-m", str(model), "--quiet", "--json"])
    assert res.exit_code == 2 and res.stdout == ""
    want = f"sepcli: error: {three}: 3 source folders (s1/ ...) but the model separates 2 speakers"
    assert res.stderr.strip() == want


def test_eval_json_stays_valid_with_a_silent_reference(tmp_path, bands):
    d = _copy_folder(bands, tmp_path / "d")
    mix = sf.read(d / "s2" / "0.wav", dtype="float32")[0]
    sf.write(d / "s1" / "0.wav", np.zeros_like(mix), SR, subtype="FLOAT")  # talker 1 silent: SDR is -inf
    sf.write(d / "mix" / "0.wav", mix, SR, subtype="FLOAT")
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(d), "-m", str(model), "--segment", "0", "--json", "--quiet",
                              "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""  # no numpy warnings
    doc = json.loads(res.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["files"][0]["sdr"] is None and doc["n"] == 3 and doc["sdr"]["n"] == 2
    # SI-SNR against silence would be its epsilon (about -40 dB, an 'improvement' of whatever): missing too
    assert doc["files"][0]["si_snr"] is None and doc["files"][0]["si_snri"] is None
    assert doc["si_snri"]["n"] == 2 and doc["files"][1]["si_snri"] is not None
    text = runner.invoke(app, ["eval", str(d), "-m", str(model), "--segment", "0", "--quiet"])
    assert text.exit_code == 0 and "1 files without a finite score" in text.stdout


def test_eval_usage_errors_come_before_any_scoring(tmp_path, bands):
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    for limit in ("0", "-1"):
        res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--quiet", "--limit", limit])
        assert res.exit_code == 2, res.output
    (tmp_path / "dir.csv").mkdir()
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--quiet", "--csv", str(tmp_path / "dir.csv")])
    assert res.exit_code == 2 and "names a folder" in res.stderr and "Errno" not in res.stderr
    (tmp_path / "afile").write_text("x")
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--quiet",
                              "--csv", str(tmp_path / "afile" / "s.csv")])
    assert res.exit_code == 2 and "cannot write the CSV" in res.stderr and "Errno" not in res.stderr
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--quiet", "--limit", "2",
                              "--csv", str(tmp_path / "new" / "s.csv")])
    assert res.exit_code == 0 and len((tmp_path / "new" / "s.csv").read_text().splitlines()) == 3
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["s.csv"]


def test_train_cli_runs_resumes_and_exports(tmp_path, bands):
    out = tmp_path / "run"
    common = ["train", "--arch", "s4m-small-8k", "--data", str(bands), "--segment", "0.25", "--batch-size", "1",
              "--out", str(out), "--threads", "1", "--quiet"]
    first = runner.invoke(app, common + ["--steps", "2"])
    assert first.exit_code == 0, first.output
    assert "step 2/2" in first.stderr
    again = runner.invoke(app, common + ["--steps", "3", "--resume"])
    assert again.exit_code == 0 and "step 3/3" in again.stderr
    conf = json.loads((out / "best" / "config.json").read_text())
    assert conf["arch"] == "s4m" and conf["sample_rate"] == SR
    sep = runner.invoke(app, ["eval", str(bands), "-m", str(out / "best"), "--no-sdr", "--json", "--quiet"])
    assert sep.exit_code == 0 and json.loads(sep.stdout)["n"] == 3


def test_train_cli_usage_errors(tmp_path, bands):
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(bands), "--quiet"])
    assert res.exit_code == 2 and "--arch" in res.stderr
    res = runner.invoke(app, ["train", "--arch", "nope", "--out", str(tmp_path / "r"), "--data", str(bands)])
    assert res.exit_code == 2 and "unknown network configuration" in res.stderr
    res = runner.invoke(app, ["train", "--arch", "s4m-tiny-8k", "--out", str(tmp_path / "r"), "--data", str(bands),
                              "--ema", "0"])
    assert res.exit_code == 2 and "decay is between 0 and 1" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "r" / "last.pt").exists()
    # --variants on pools that have none: one line naming the folder and the stage that makes them
    from sepcli.train.speakers import Speaker, write_index
    pools = tmp_path / "pools"
    pools.mkdir()
    for p in ("a", "b"):
        np.save(pools / f"{p}.npy", np.random.default_rng(0).standard_normal(SR * 5).astype(np.float16) * 0.1)
    write_index(pools, SR, [Speaker(p, p, "real", "train", 5.0) for p in ("a", "b")])
    res = runner.invoke(app, ["train", "--arch", "s4m-tiny-8k", "--out", str(tmp_path / "r"), "--pools", str(pools),
                              "--variants", "--steps", "1"])
    assert res.exit_code == 2 and f"{pools}: no voice variants" in res.stderr and "--stage variants" in res.stderr
    assert "Traceback" not in res.output


def _train(tmp_path, *extra, data=None, out="r"):
    args = ["train", "--arch", "s4m-small-8k", "--segment", "0.25", "--batch-size", "1", "--threads", "1",
            "--quiet", "--out", str(tmp_path / out)]
    return runner.invoke(app, args + (["--data", str(data)] if data is not None else []) + [str(a) for a in extra])


def test_train_refuses_bad_options_before_writing_anything(tmp_path, bands):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--steps", "0"], "--steps"), (["--batch-size", "0"], "--batch-size"), (["--segment", "-1"], "--segment"),
        (["--pools", str(tmp_path)], "not both"),  # with --data
        (["--lr", "inf"], "--lr must be a positive number"), (["--sample-rate", "100"], "--sample-rate must be"),
        (["--sample-rate", "0"], "--sample-rate must be"), (["--threads", "0"], "--threads must be at least 1"),
        (["--max-minutes", "-1"], "--max-minutes must not be negative"),
        (["--steps", "2", "--epochs", "5"], "not both"), (["--lr-scale", "0.5"], "give it with --resume"),
        (["--epoch-steps", "50"], "--epoch-steps apply to dynamic mixing (--pools) only"),
        (["--reverb", "0.3", "--variants"], "--reverb, --variants apply to dynamic mixing (--pools) only"),
    ]
    for extra, words in cases:
        res = _train(tmp_path, *extra, data=bands)
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, (extra, res.output)
        assert not (tmp_path / "r").exists(), extra  # no empty run folder left behind
    res = _train(tmp_path, data=bands, out="afile")
    assert res.exit_code == 2 and "must name a folder" in res.stderr
    res = runner.invoke(app, ["train", "--init", "default", "--arch", "s4m-small-8k", "--data", str(bands),
                              "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == 2 and "not both" in res.stderr and not (tmp_path / "r").exists()
    for extra, words in ((["--init", "nosuch"], "nosuch"), (["--init", "default", "--sample-rate", "8000"],
                                                            "is a 16000 Hz model")):
        res = runner.invoke(app, ["train", *extra, "--data", str(bands), "--out", str(tmp_path / "r"), "--quiet"])
        assert res.exit_code == 2 and words in res.stderr and not (tmp_path / "r").exists(), res.output


def test_train_protects_an_existing_run_and_names_a_corrupt_checkpoint(tmp_path, bands):
    (tmp_path / "logonly").mkdir()  # a run's log without its checkpoint: still that run's folder
    (tmp_path / "logonly" / "log.jsonl").write_text('{"step": 3}\n')
    res = _train(tmp_path, "--steps", "1", data=bands, out="logonly")
    assert res.exit_code == 2 and "holds a run already (log.jsonl)" in res.stderr
    assert (tmp_path / "logonly" / "log.jsonl").read_text() == '{"step": 3}\n'
    assert _train(tmp_path, "--steps", "1", data=bands).exit_code == 0
    before = (tmp_path / "r" / "last.pt").read_bytes()
    res = _train(tmp_path, "--steps", "1", data=bands)  # no --resume: the run is not overwritten
    assert res.exit_code == 2 and "holds a run already" in res.stderr and "--resume" in res.stderr
    assert (tmp_path / "r" / "last.pt").read_bytes() == before
    res = _train(tmp_path, "--steps", "2", "--resume", "--batch-size", "2", data=bands)  # changed: a warning
    assert res.exit_code == 0 and "changed options (batch_size 1 -> 2)" in res.stderr
    (tmp_path / "r" / "last.pt").write_bytes(before[:1000])  # truncated
    res = _train(tmp_path, "--steps", "3", "--resume", data=bands)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'r' / 'last.pt'}: not a readable training checkpoint" in res.stderr
    (tmp_path / "r" / "last.pt").write_text("garbage")
    res = _train(tmp_path, "--steps", "3", "--resume", data=bands)
    assert res.exit_code == 2 and "not a readable training checkpoint" in res.stderr
    assert "weights_only=False" not in res.stderr


def _variant_folder(src, dst, change):
    import shutil

    shutil.copytree(src, dst)
    change(dst)
    return dst


def test_train_checks_the_data_folder_layout(tmp_path, bands):
    import shutil

    def third_source(d):
        shutil.copytree(d / "s1", d / "s3")

    def short_source(d):
        sf.write(d / "s2" / "1.wav", np.zeros(SR // 2, np.float32), SR)

    def reverb_targets(d):  # WHAMR: s1_reverb/ beside s1/ is another target, not a third speaker
        shutil.copytree(d / "s1", d / "s1_reverb")

    def libri_names(d):  # LibriMix proper: mix_clean/ and mix_both/, no mix/
        shutil.copytree(d / "mix", d / "mix_both")
        (d / "mix").rename(d / "mix_clean")

    def two_unknown(d):
        shutil.copytree(d / "mix", d / "mix_a")
        (d / "mix").rename(d / "mix_b")

    three = _variant_folder(bands, tmp_path / "three", third_source)
    res = _train(tmp_path, "--steps", "1", data=three)
    assert res.exit_code == 2 and f"{three}: 3 source folders" in res.stderr and "separates 2" in res.stderr
    short = _variant_folder(bands, tmp_path / "short", short_source)
    for opt in ("--data", "--val-data"):  # found before training, not at the first validation
        res = _train(tmp_path, "--steps", "1", opt, short, data=None if opt == "--data" else bands)
        assert res.exit_code == 2 and f"source {short / 's2' / '1.wav'} is shorter than the mixture" in res.stderr
        assert not (tmp_path / "r").exists()
    ok = _variant_folder(bands, tmp_path / "whamr", reverb_targets)
    assert _train(tmp_path, "--steps", "1", data=ok, out="w").exit_code == 0
    ok = _variant_folder(bands, tmp_path / "libri", libri_names)
    assert _train(tmp_path, "--steps", "1", data=ok, out="l").exit_code == 0
    bad = _variant_folder(bands, tmp_path / "two", two_unknown)
    res = _train(tmp_path, "--steps", "1", data=bad)
    assert res.exit_code == 2 and "several mixture folders (mix_a/, mix_b/)" in res.stderr
    junk = _variant_folder(bands, tmp_path / "junk", lambda d: (d / "s1" / "2.wav").write_bytes(b"junk" * 50))
    res = _train(tmp_path, "--steps", "1", data=junk)
    want = f"sepcli: error: {junk / 's1' / '2.wav'}: cannot decode audio (Format not recognised.)"
    assert res.exit_code == 2 and res.stderr.strip() == want, res.stderr


def test_model_exported_from_run_folder_dot_is_named_after_the_folder(tmp_path, bands, monkeypatch):
    run_dir = tmp_path / "myrun"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    res = runner.invoke(app, ["train", "--arch", "s4m-small-8k", "--segment", "0.25", "--batch-size", "1",
                              "--threads", "1", "--quiet", "--out", ".", "--data", str(bands), "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads((run_dir / "best" / "config.json").read_text())["name"] == "myrun"  # was ""


def test_train_stopped_by_a_signal_exits_with_it(tmp_path, bands, monkeypatch):
    import signal

    import sepcli.train.trainer as trainer

    def stopped(cfg):
        return {"step": 1, "total": 5, "best": float("-inf"), "stopped": True, "export": str(tmp_path / "none"),
                "history": [], "signal": signal.SIGINT}

    monkeypatch.setattr(trainer, "train", stopped)
    res = _train(tmp_path, "--steps", "5", data=bands)
    assert res.exit_code == 130 and "stopped (resume with --resume)" in res.stderr and "none yet" in res.stderr


def test_train_diverged_is_a_failure_and_other_ranks_stay_quiet(tmp_path, bands, monkeypatch):
    import signal

    import sepcli.train.trainer as trainer

    def diverged(cfg):
        raise trainer.TrainDiverged("training diverged at step 7: the loss is not finite; r/last.pt holds ...")

    monkeypatch.setattr(trainer, "train", diverged)
    res = _train(tmp_path, "--steps", "9", data=bands)
    assert res.exit_code == 1 and res.stderr.startswith("sepcli: error: training diverged at step 7")

    def rank_one(signum):
        return lambda cfg: {"step": 3, "total": 3 if signum is None else 5, "best": 1.0, "stopped": signum is not None,
                            "export": str(tmp_path), "history": [], "signal": signum, "rank": 1}

    monkeypatch.setattr(trainer, "train", rank_one(None))
    res = _train(tmp_path, "--steps", "3", data=bands)
    assert res.exit_code == 0 and res.stderr == ""  # rank 0 prints the run's summary, once
    monkeypatch.setattr(trainer, "train", rank_one(signal.SIGTERM))
    assert _train(tmp_path, "--steps", "5", data=bands).exit_code == 143


def test_json_reports_the_scan_backend_that_runs(tmp_path, monkeypatch):
    """`separate --json` names the selective-scan backend: the CPU kernel by default, the forced one with
    SEPCLI_SCAN, and none for a network without a scan."""
    import torch

    from sepcli.nets import build_network
    from sepcli.train.export import export_model_folder

    args = {"n_srcs": 2, "n_fft": 64, "stride": 32, "n_layers": 1, "lstm_hidden_units": 8, "attn_n_head": 1,
            "attn_approx_qk_dim": 16, "emb_dim": 4, "emb_ks": 2, "emb_hs": 1, "sample_rate": SR}
    torch.manual_seed(0)
    folder = export_model_folder(tmp_path / "spm", build_network("spmamba", args),
                                 {"arch": "spmamba", "arch_args": args, "sample_rate": SR}, name="tiny-spm",
                                 segment=1.0, input_loudness=None)
    x = np.random.default_rng(0).standard_normal(SR // 2).astype(np.float32) * 0.1
    sf.write(tmp_path / "in.wav", x, SR)
    for env, want in ((None, "cpu"), ("ref", "ref")):
        if env:
            monkeypatch.setenv("SEPCLI_SCAN", env)
        res = runner.invoke(app, ["separate", str(tmp_path / "in.wav"), "-o", str(tmp_path / f"o{want}"),
                                  "-m", str(folder), "--json", "--quiet"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["runtime"]["scan_backend"] == want
    s4m = bandsplit_folder(tmp_path / "bs", sample_rate=SR)
    res = runner.invoke(app, ["separate", str(tmp_path / "in.wav"), "-o", str(tmp_path / "o3"), "-m", str(s4m),
                              "--json", "--quiet"])
    assert json.loads(res.stdout)["runtime"]["scan_backend"].startswith("none")


def test_models_table_summarises_held_out_quality(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    folder = bandsplit_folder(zoo / "m1", sample_rate=SR)
    conf = json.loads((folder / "config.json").read_text())
    conf["eval"] = {"test_real": {"n": 3, "si_snri": {"mean": 3.14, "median": 3.0}},
                    "test_synth": {"si_snri": {"mean": 7.25}}, "measured": "2026-11-22"}
    (folder / "config.json").write_text(json.dumps(conf))
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    monkeypatch.setenv("COLUMNS", "200")
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0
    assert "SI-SNRi 3.1 dB held-out real, 7.2 dB held-out synthetic" in res.output


def test_help_texts_show_in_full():
    # square brackets in a help text are rich markup: a "[default: ...]" there vanished from --help
    for cmd, wanted in (("separate", "one per idle core"), ("eval", "every mixture scored"),
                        ("train", "raised again when they stop")):
        res = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "250"})
        assert res.exit_code == 0 and wanted in res.output, (cmd, res.output)
    res = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "250"})
    assert "Show tracebacks on errors" in res.output and "No progress bar" in res.output


def test_eval_interrupted_exits_with_the_signal_and_writes_nothing(tmp_path, bands, monkeypatch):
    import signal

    import sepcli.evaluate
    from sepcli.cli import Interrupted

    def interrupted(*a, **k):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(sepcli.evaluate, "evaluate", interrupted)
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(bands), "-m", str(model), "--quiet", "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 143 and "interrupted by SIGTERM" in res.stderr
    assert not (tmp_path / "s.csv").exists()


def test_a_quiet_reference_is_scored_and_only_silence_is_not():
    from sepcli.metrics import silent_reference

    rng = np.random.default_rng(3)
    mix = rng.standard_normal(SR)
    quiet = 10 ** (-90 / 20) * rng.standard_normal(SR)  # 90 dB below the mixture: a real, very quiet talker
    assert not silent_reference(np.stack([mix, quiet]), mix)
    assert silent_reference(np.stack([mix, np.zeros(SR)]), mix)
    assert silent_reference(np.stack([mix, np.full(SR, 0.3)]), mix)  # a DC offset is silence after zero-mean
    assert silent_reference(np.stack([mix, 1e-6 * quiet]), mix)  # 210 dB below: numerically silent


def test_eval_of_file_names_that_are_not_utf8(tmp_path, bands):
    import os

    d = _copy_folder(bands, tmp_path / "d")
    name = os.fsdecode(b"M\xfcller.wav")
    for sub in ("mix", "s1", "s2"):
        os.rename(d / sub / "0.wav", d / sub / name)
    model = bandsplit_folder(tmp_path / "m", sample_rate=SR, segment=2.0)
    res = runner.invoke(app, ["eval", str(d), "-m", str(model), "--segment", "0", "--json", "--quiet",
                              "--csv", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n"] == 3
    assert b"\nM\xfcller.wav," in (tmp_path / "s.csv").read_bytes()  # the name's own bytes, as on disk


def test_resume_takes_the_runs_own_options(tmp_path, bands):
    """`train -o RUN --resume` alone continues the run as it was started (arch, data, segment, batch, ...);
    what is given again replaces the saved value (here --steps: one more step)."""
    assert _train(tmp_path, "--steps", "1", "--val-data", str(bands), data=bands).exit_code == 0
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "2", "--quiet",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "changed options" not in res.stderr and "done at step 2/2" in res.stderr
    log = [json.loads(ln) for ln in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # --val-data came from the checkpoint too
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--resume", "--steps", "3", "--segment", "0.5",
                              "--quiet", "--threads", "1"])
    assert res.exit_code == 0 and "changed options (segment 0.25 -> 0.5)" in res.stderr, res.stderr


def test_resume_of_a_checkpoint_with_relative_folders_sees_no_change(tmp_path, bands, monkeypatch):
    """Checkpoints written before folders were stored absolute hold them as given (relative): resuming from the same
    directory with the same folders is no change of options."""
    import os
    import shutil

    import torch

    shutil.copytree(bands, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert _train(tmp_path, "--steps", "1", data="data").exit_code == 0
    ckpt = tmp_path / "r" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    saved = json.loads(state["config"])
    assert saved["data"] == os.path.abspath("data")
    state["config"] = json.dumps({**saved, "data": "data"})  # as an older version wrote it
    torch.save(state, ckpt)
    res = _train(tmp_path, "--steps", "2", "--resume", data="data")
    assert res.exit_code == 0 and "changed options" not in res.stderr, res.stderr
    res = _train(tmp_path, "--steps", "3", "--resume", data=bands)  # another folder is still a change
    assert res.exit_code == 0 and f"data {tmp_path / 'data'} -> {bands}" in res.stderr, res.stderr


def test_train_warns_about_data_that_trains_other_than_expected(tmp_path, bands):
    res = _train(tmp_path, "--steps", "1", "--batch-size", "5", data=bands)
    assert res.exit_code == 0 and f"warning: {bands} holds 3 mixtures, fewer than a step's 5" in res.stderr
    res = _train(tmp_path, "--steps", "1", "--batch-size", "3", data=bands, out="r3")
    assert res.exit_code == 0 and "warning" not in res.stderr
    res = _train(tmp_path, "--steps", "1", "--segment", "3", data=bands, out="r4")  # the mixtures last 2 s
    assert res.exit_code == 0 and "warning: --segment 3 s is longer than every mixture" in res.stderr
    assert "(the longest lasts 2.00 s)" in res.stderr
    d = _copy_folder(bands, tmp_path / "rates")
    x = sf.read(d / "s2" / "0.wav", dtype="float32")[0]
    sf.write(d / "s2" / "0.wav", np.repeat(x, 2), 2 * SR, subtype="FLOAT")  # the same 2 s at 16 kHz
    res = _train(tmp_path, "--steps", "1", data=d, out="r5")
    assert res.exit_code == 0
    assert f"warning: {d / 's2' / '0.wav'} is at 16000 Hz, its mixture at 8000 Hz: sources are resampled" in res.stderr
    # a folder at another rate than the network's (16 kHz data, an 8 kHz configuration) is resampled: said so
    hi = _copy_folder(bands, tmp_path / "hi")
    for p in hi.glob("*/*.wav"):
        x = sf.read(p, dtype="float32")[0]
        sf.write(p, np.repeat(x, 2), 2 * SR, subtype="FLOAT")
    res = _train(tmp_path, "--steps", "1", data=hi, out="r6")
    assert res.exit_code == 0
    assert f"warning: {hi} holds mixtures at 16000 Hz: they are resampled to the network's 8000 Hz" in res.stderr


def test_train_into_a_folder_it_cannot_create_is_one_line(tmp_path, bands):
    (tmp_path / "afile").write_text("x")
    res = _train(tmp_path, "--steps", "1", data=bands, out="afile/run")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.stderr.strip().splitlines()[-1] == f"sepcli: error: {tmp_path / 'afile' / 'run'}: a parent of this " \
        "path is not a folder", res.stderr
