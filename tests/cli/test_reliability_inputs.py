"""Bad and degenerate inputs, built at test time: every one gets one stderr line naming the file and the problem
(no traceback without --debug), the documented exit code, no partial or temporary output, and a batch still
processes the rest. Degenerate but valid audio gives finite outputs that add up to the input (BandSplit is a
low band plus its exact complement, so the sum of its outputs is an independent reference: the input itself).

Most cases run the CLI in-process (CliRunner, fast); a few run the real `sepcli` in a subprocess for real exit
codes and stderr; permission cases run the subprocess as an unprivileged user when the tests run as root."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.faultnets import broken_folder, register, run_cli
from tests.testnets import bandsplit_folder, synthetic_sources

register()
SR = 8000
ROOT = Path(__file__).resolve().parents[2]


run = run_cli


def run_subprocess(*args, user: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HOME=tempfile.gettempdir())
    return subprocess.run([sys.executable, "-m", "tests.faultnets", *[str(a) for a in args]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False, user=user)


def signal(n: int = SR, seed: int = 0) -> np.ndarray:
    return synthetic_sources(n, SR, seed=seed).sum(0)


def leftovers(folder: Path) -> list[str]:
    """Temporary files, spools or locks left anywhere under folder."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".sepcli") or p.name.endswith(".part")]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("sepcli: error:")]


def assert_sums_to(y: np.ndarray, ref: np.ndarray) -> None:
    """The speakers add up to the input: the error's energy at least 30 dB below the input's (the pipeline's
    own `match` criterion; the stitcher's per-segment least-squares gains move the sum slightly)."""
    assert y.shape == ref.shape
    err, sig = float(np.sum((y - ref) ** 2)), float(np.sum(ref**2))
    assert err <= 1e-3 * sig + 1e-12, f"error {10 * np.log10(max(err, 1e-30) / max(sig, 1e-30)):.1f} dB"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- the bad-input corpus
def _riff_header_only(p: Path) -> None:
    sf.write(p, signal(100), SR)
    p.write_bytes(p.read_bytes()[:30])  # inside the fmt chunk


def _truncated_data(p: Path) -> None:
    sf.write(p, signal(4000), SR)
    p.write_bytes(p.read_bytes()[:-3001])  # mid-sample, data chunk size now larger than the file


BAD = {  # name -> (maker, expected words in the message)
    "empty.wav": (lambda p: p.write_bytes(b""), "empty"),
    "zero_samples.wav": (lambda p: sf.write(p, np.zeros(0), SR), "no audio samples"),
    "truncated_header.wav": (_riff_header_only, "cannot decode"),
    "random_bytes.wav": (lambda p: p.write_bytes(np.random.default_rng(5).bytes(4000)), "cannot decode"),
    "text.flac": (lambda p: p.write_text("not audio at all\n" * 50), "cannot decode"),
    "a_folder.wav": (lambda p: p.mkdir(), "is a folder"),
    "loop.wav": (lambda p: os.symlink(p, p), "symbolic link loop"),
    "dangling.wav": (lambda p: os.symlink(p.parent / "missing-target.wav", p), "broken symbolic link"),
    "rate_4000.wav": (lambda p: sf.write(p, signal(800), 4000), "outside"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_exit_1_no_output(tmp_path, model, name):
    make, words = BAD[name]
    src = tmp_path / "in" / name
    src.parent.mkdir()
    make(src)
    out = tmp_path / "out"
    r = run("separate", src, "-o", out, "-m", model)
    assert r.exit_code == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"sepcli: error: {src}: ") and words in lines[0], lines[0]
    assert files_under(out) == [] and leftovers(tmp_path) == []


@pytest.mark.slow
def test_bad_input_real_subprocess_exit_codes(tmp_path, model):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    p = run_subprocess("separate", bad, "-o", tmp_path / "out", "-m", model)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and str(bad) in p.stderr
    assert "cannot decode" in p.stderr and "Traceback" not in p.stderr
    assert files_under(tmp_path / "out") == []
    q = run_subprocess("separate", tmp_path / "missing.wav", "-o", tmp_path / "out", "-m", tmp_path / "nomodel")
    assert q.returncode == 2 and "no such model" in q.stderr and "Traceback" not in q.stderr


def test_batch_goes_past_every_bad_file(tmp_path, model):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name, (make, _) in BAD.items():
        make(root / name)
    good = {root / "good1.wav": signal(SR, 1), root / "sub" / "good2.flac": signal(SR // 2, 2)}
    for p, x in good.items():
        sf.write(p, x, SR, subtype="FLOAT" if p.suffix == ".wav" else "PCM_24")
    (root / "notes.txt").write_text("a note")
    (root / "cover.png").write_bytes(b"\x89PNG\r\n")
    os.symlink(root, root / "sub" / "up")  # a folder loop: not followed
    out, man = tmp_path / "out", tmp_path / "m.jsonl"
    r = run("batch", root, "-o", out, "-m", model, "--manifest", man, "--subtype", "FLOAT", "--loudness", "off")
    assert r.exit_code == 1
    errs = error_lines(r.stderr)
    bad = [n for n in BAD if n != "a_folder.wav"]  # in a batch, a folder named *.wav is walked, not read
    assert "Traceback" not in r.stderr and len(errs) == len(bad) == len(r.stderr.strip().splitlines())
    for name in bad:
        assert sum(f"{root / name}: " in e for e in errs) == 1, name
    rows = {json.loads(ln)["input"]: json.loads(ln) for ln in man.read_text().splitlines()}
    assert len(rows) == len(bad) + 2  # the .txt/.png and the folder loop are not inputs
    for p, x in good.items():
        assert rows[str(p)]["status"] == "ok"
        outs = [sf.read(o, dtype="float64")[0] for o in rows[str(p)]["outputs"]]
        assert len(outs) == 2 and all(len(o) == len(x) for o in outs)
        assert_sums_to(outs[0] + outs[1], x)
    assert sorted(f.name for f in files_under(out)) == ["good1_spk1.wav", "good1_spk2.wav", "good2_spk1.wav",
                                                        "good2_spk2.wav"]
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------- degenerate but valid audio
def _square() -> np.ndarray:
    return np.sign(np.sin(2 * np.pi * 200 * np.arange(SR) / SR) + 1e-9)


DEGENERATE = {  # name -> (data [T] or [T, C], rate, subtype)
    "silence.wav": (np.zeros(SR), SR, "PCM_16"),
    "dc.wav": (np.full(SR, 0.5), SR, "PCM_16"),
    "square_full_scale.wav": (_square(), SR, "FLOAT"),
    "one_sample.wav": (np.array([0.25]), SR, "PCM_16"),
    "five_samples.wav": (np.array([0.1, -0.2, 0.3, -0.1, 0.05]), SR, "PCM_16"),  # < 15-tap receptive field
    "pcm24.wav": (signal(), SR, "PCM_24"),
    "pcm32.wav": (signal(), SR, "PCM_32"),
    "double.wav": (signal(), SR, "DOUBLE"),
    "8ch_96k.wav": (0.05 * np.random.default_rng(3).standard_normal((96000 // 4, 8)), 96000, "PCM_16"),
    ("ü naïve talk, 語 " * 20)[:196] + ".wav": (signal(SR // 2), SR, "PCM_16"),  # 200 chars, 231 bytes
}


@pytest.mark.parametrize("name", list(DEGENERATE), ids=lambda n: n[:20])
def test_degenerate_audio_gives_finite_outputs_that_sum_to_the_input(tmp_path, model, name):
    x, rate, subtype = DEGENERATE[name]
    src = tmp_path / "in" / name
    src.parent.mkdir()
    sf.write(src, x, rate, subtype=subtype)
    before = sha(src)
    out = tmp_path / "out"
    r = run("separate", src, "-o", out, "-m", model, "--subtype", "FLOAT", "--loudness", "off", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    outs = [sf.read(o["path"], dtype="float64") for o in res["outputs"]]
    assert len(outs) == 2 and sha(src) == before
    ref, _ = sf.read(src, dtype="float64", always_2d=True)
    ref = ref.mean(axis=1)
    for y, sr in outs:
        assert sr == rate and len(y) == len(ref) and np.isfinite(y).all()
    if rate == SR:
        assert_sums_to(outs[0][0] + outs[1][0], ref)
    else:  # resampled to 8 kHz and back: the sum is the input's band below 4 kHz
        assert np.sqrt(np.mean((outs[0][0] + outs[1][0]) ** 2)) < 1.5 * np.sqrt(np.mean(ref**2))
    if name == "silence.wav":
        assert all("silent" in o["flags"] for o in res["outputs"])
    assert leftovers(tmp_path) == []


def test_degenerate_audio_default_options_pcm16(tmp_path, model):
    """Default `match` loudness into PCM_16: a full-scale square wave is lowered (flag), never clipped."""
    src = tmp_path / "square.wav"
    sf.write(src, _square(), SR, subtype="FLOAT")
    r = run("separate", src, "-o", tmp_path / "out", "-m", model, "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    ys = [sf.read(o["path"])[0] for o in res["outputs"]]
    assert all(np.isfinite(y).all() and len(y) == SR for y in ys)
    assert "clipped" not in res["flags"]
    if "scaled_to_avoid_clipping" in res["flags"]:
        assert max(np.abs(y).max() for y in ys) <= 1.0


def test_nan_and_inf_samples_are_replaced_and_flagged(tmp_path, model):
    x = signal()
    bad = x.copy()
    bad[[10, 500, 4000]] = [np.nan, np.inf, -np.inf]
    src = tmp_path / "nan.wav"
    sf.write(src, bad, SR, subtype="FLOAT")
    r = run("separate", src, "-o", tmp_path / "out", "-m", model, "--subtype", "FLOAT", "--loudness", "off",
            "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["flags"] == ["nonfinite_input_replaced"]
    ys = [sf.read(o["path"], dtype="float64")[0] for o in res["outputs"]]
    assert all(np.isfinite(y).all() for y in ys)
    ref = np.nan_to_num(bad.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # the documented replacement
    assert_sums_to(ys[0] + ys[1], ref)
    for loud in ("match", "-23"):  # the loudness paths see no NaN either
        r = run("separate", src, "-o", tmp_path / loud, "-m", model, "--subtype", "FLOAT", "--loudness", loud)
        assert r.exit_code == 0, r.stderr
        assert all(np.isfinite(sf.read(p)[0]).all() for p in (tmp_path / loud).iterdir())


def test_model_producing_nan_is_refused_not_written(tmp_path):
    folder = broken_folder(tmp_path / "nanmodel", arch="test-nan")
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    r = run("separate", src, "-o", tmp_path / "out", "-m", folder, "--subtype", "FLOAT", "--loudness", "off")
    assert r.exit_code == 1 and "NaN/Inf" in r.stderr and str(src) in r.stderr
    assert files_under(tmp_path / "out") == [] and leftovers(tmp_path) == []


def test_model_exception_is_one_line_per_file_and_batch_continues(tmp_path):
    folder = broken_folder(tmp_path / "broken")
    root = tmp_path / "in"
    root.mkdir()
    for k in range(3):
        sf.write(root / f"f{k}.wav", signal(SR // 2, k), SR)
    r = run("batch", root, "-o", tmp_path / "out", "-m", folder)
    errs = error_lines(r.stderr)
    assert r.exit_code == 1 and len(errs) == 3 and "Traceback" not in r.stderr
    assert all("deliberate failure inside the model" in e for e in errs)
    r = run("batch", root, "-o", tmp_path / "out", "-m", folder, "--debug")
    assert r.exit_code == 1 and r.stderr.count("Traceback") == 3
    assert files_under(tmp_path / "out") == [] and leftovers(tmp_path) == []


# ---------------------------------------------------------------------- permissions and output folders
def _world_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="sepcli-perm-"))
    d.chmod(0o755)
    return d


def test_unreadable_input_simulated(tmp_path, model, monkeypatch):
    """open() of the input raises EACCES (what chmod 000 gives a non-root user)."""
    import builtins

    import sepcli.audio.io as io_mod

    src = tmp_path / "secret.wav"
    sf.write(src, signal(), SR)

    def deny(path, *a, **k):
        if Path(path) == src:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *a, **k)

    monkeypatch.setattr(io_mod, "open", deny, raising=False)
    r = run("separate", src, "-o", tmp_path / "out", "-m", model)
    assert r.exit_code == 1 and r.stderr.strip() == f"sepcli: error: {src}: cannot read (permission denied)"
    assert files_under(tmp_path / "out") == []


def test_unreadable_input_real(tmp_path, model):
    """chmod 000 input, read by a real unprivileged process (as root, the subprocess runs as `nobody`)."""
    user = 65534 if os.geteuid() == 0 else None  # root reads everything: drop privileges in the subprocess
    d = _world_dir()
    try:
        m = shutil.copytree(model, d / "model")
        src, ok = d / "secret.wav", d / "ok.wav"
        sf.write(src, signal(), SR)
        sf.write(ok, signal(), SR)
        src.chmod(0o000)
        out = d / "out"
        out.mkdir()
        out.chmod(0o777)
        try:
            p = run_subprocess("separate", src, ok, "-o", out, "-m", m, user=user)
        except PermissionError as exc:
            pytest.skip(f"running as root and `nobody` cannot run this interpreter ({exc}); "
                        f"test_unreadable_input_simulated covers the path")
        if p.returncode != 1 or "secret" not in p.stderr:
            pytest.skip(f"cannot run sepcli as an unprivileged user here: {p.stderr[-300:]}")
        assert p.stderr.strip() == f"sepcli: error: {src}: cannot read (permission denied)"
        assert sorted(f.name for f in out.iterdir()) == ["ok_spk1.wav", "ok_spk2.wav"]
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _read_only(folder: Path) -> bool:
    """Make folder unwritable for this process: chmod for a normal user, a read-only bind mount for root."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False)
    if ok.returncode != 0:
        return False
    ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, check=False)
    if ro.returncode != 0:
        subprocess.run(["umount", str(folder)], check=False)
        return False
    return True


def test_unwritable_output_folder_real(tmp_path, model):
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _read_only(locked):
        pytest.skip("running as root without permission to mount a read-only folder; "
                    "test_unwritable_output_folder_simulated covers the path")
    try:
        r = run("separate", src, "-o", locked, "-m", model)
        assert r.exit_code == 1 and "Traceback" not in r.stderr
        why = "read-only file system" if os.geteuid() == 0 else "permission denied"
        assert r.stderr.strip() == f"sepcli: error: {locked}: cannot write in the output folder ({why})"
        r = run("batch", tmp_path, "-o", locked / "sub", "-m", model)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1  # one line, not one per input
        assert list(locked.iterdir()) == []
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=False)
        else:
            locked.chmod(0o755)


def test_unwritable_output_folder_simulated(tmp_path, model, monkeypatch):
    """EACCES when creating files in the output folder (os.open of the probe, libsndfile for outputs)."""
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    out = tmp_path / "out"
    real_open = os.open

    def deny(path, *a, **k):
        if str(path).startswith(str(out)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", deny)
    r = run("separate", src, "-o", out, "-m", model)
    monkeypatch.undo()
    assert r.exit_code == 1
    assert r.stderr.strip() == f"sepcli: error: {out}: cannot write in the output folder (permission denied)"
    assert files_under(out) == []


def test_output_folder_problems(tmp_path, model):
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    before = sha(src)
    r = run("separate", src, "-o", src, "-m", model)  # -o names a file
    assert r.exit_code == 2 and r.stderr.strip() == f"sepcli: error: {src}: -o must name a folder, but this is a file"
    r = run("separate", src, "-o", src / "sub", "-m", model)  # parent is a file
    assert r.exit_code == 1
    assert r.stderr.strip() == f"sepcli: error: {src / 'sub'}: cannot create the output folder (a file is in the way)"
    r = run("separate", src, "-o", tmp_path, "-m", model)  # output folder = input folder: allowed for files
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("a*.wav")) == ["a.wav", "a_spk1.wav", "a_spk2.wav"]
    assert sha(src) == before


def test_output_name_that_would_replace_an_input_is_refused(tmp_path, model):
    a, b = tmp_path / "x.wav", tmp_path / "x_spk1.wav"
    sf.write(a, signal(), SR)
    sf.write(b, signal(SR, 7), SR)
    hb = sha(b)
    r = run("separate", a, b, "-o", tmp_path, "-m", model)
    assert r.exit_code == 1 and error_lines(r.stderr) == [
        f"sepcli: error: {a}: output {b} would overwrite an input"]
    assert sha(b) == hb and not (tmp_path / "x_spk2.wav").exists()  # all speakers or none


def test_batch_output_folder_equal_to_input_is_refused_and_ancestor_works(tmp_path, model):
    root = tmp_path / "calls" / "2024"
    root.mkdir(parents=True)
    sf.write(root / "c.wav", signal(), SR)
    r = run("batch", root, "-o", root, "-m", model)
    assert r.exit_code == 2 and "output folder is the input folder" in r.stderr
    assert f"e.g. {tmp_path.resolve() / 'calls' / '2024-separated'}" in r.stderr  # outside the tree, not in it
    assert sorted(p.name for p in root.iterdir()) == ["c.wav"]
    r = run("batch", root, "-o", tmp_path / "calls", "-m", model)  # an ancestor of the input folder
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "calls").glob("*.wav")) == ["c_spk1.wav", "c_spk2.wav"]


def test_same_stem_inputs(tmp_path, model):
    """`separate a.wav a.flac` into one folder is a usage error; `batch` names both by their full file name."""
    root = tmp_path / "in"
    root.mkdir()
    xa, xb = signal(SR, 1), signal(SR, 2)
    sf.write(root / "a.wav", xa, SR, subtype="FLOAT")
    sf.write(root / "a.flac", xb, SR, subtype="PCM_24")
    r = run("separate", root / "a.wav", root / "a.flac", "-o", tmp_path / "o1", "-m", model)
    assert r.exit_code == 2 and files_under(tmp_path / "o1") == []
    assert r.stderr.startswith(f"sepcli: error: {root / 'a.wav'}, {root / 'a.flac'}: the same file name stem 'a'")
    r = run("batch", root, "-o", tmp_path / "o2", "-m", model, "--subtype", "FLOAT", "--loudness", "off")
    assert r.exit_code == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "o2").iterdir())
    assert names == ["a.flac_spk1.wav", "a.flac_spk2.wav", "a.wav_spk1.wav", "a.wav_spk2.wav"]
    for tag, x in (("a.wav", xa), ("a.flac", xb)):
        y = sum(sf.read(tmp_path / "o2" / f"{tag}_spk{k}.wav", dtype="float64")[0] for k in (1, 2))
        assert_sums_to(y, x)  # each from its own input


def test_a_file_of_the_same_stem_arriving_later_is_flagged(tmp_path, model):
    """a.wav was separated as a_spk*.wav; then a.flac arrives: both are now named by their full file names, and
    the short-named outputs of the earlier run are left alone but flagged, since scripts glob *_spk1.wav."""
    root, out = tmp_path / "in", tmp_path / "out"
    root.mkdir()
    sf.write(root / "a.wav", signal(SR, 1), SR)
    assert run("batch", root, "-o", out, "-m", model).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["a_spk1.wav", "a_spk2.wav"]
    sf.write(root / "a.flac", signal(SR, 2), SR)
    r = run("batch", root, "-o", out, "-m", model, "--json")
    assert r.exit_code == 0, r.stderr
    res = {Path(x["input"]).name: x for x in json.loads(r.stdout)["results"]}
    assert {k: (v["status"], v["flags"]) for k, v in res.items()} == {
        "a.wav": ("ok", ["older_outputs_under_stem"]), "a.flac": ("ok", ["older_outputs_under_stem"])}
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name.startswith("a_")} == before  # untouched
    r = run("batch", root, "-o", tmp_path / "fresh", "-m", model, "--json")  # no earlier outputs: no flag
    assert all(x["flags"] == [] for x in json.loads(r.stdout)["results"])


# ---------------------------------------------------------------------- models and checkpoints
def test_unknown_model_is_usage_error(tmp_path):
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    r = run("separate", src, "-o", tmp_path / "out", "-m", "no-such-model")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown model 'no-such-model'" in r.stderr and not (tmp_path / "out").exists()
    empty = tmp_path / "empty_folder"  # a path that exists but holds no model: also a usage error (as models info)
    empty.mkdir()
    r = run("separate", src, "-o", tmp_path / "out", "-m", empty)
    assert r.exit_code == 2 and r.stderr.strip() == f"sepcli: error: {empty}: not a model folder (no config.json)"
    assert not (tmp_path / "out").exists()


def _bad_model(tmp_path: Path, kind: str) -> tuple[Path, str]:
    folder = bandsplit_folder(tmp_path / kind, sample_rate=SR)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if kind == "wrong_shapes":
        from safetensors.torch import save_file

        save_file({"fir": torch.zeros(1, 1, 31)}, str(folder / "weights.safetensors"))
        return folder, "weights do not match the network"
    if kind == "syntax":
        cfg_path.write_text('{"arch": "test-bandsplit", "sample_rate": 8000,')
        return folder, "invalid JSON"
    if kind == "nested":
        cfg_path.write_text("[" * 100000 + "]" * 100000)
        return folder, "invalid JSON"
    if kind == "not_object":
        cfg_path.write_text("[1, 2, 3]")
        return folder, "must hold a JSON object"
    if kind == "bad_rate":
        cfg["sample_rate"] = "__import__('os').system('true')"
        cfg_path.write_text(json.dumps(cfg))
        return folder, "'sample_rate' must be an integer"
    if kind == "bad_arch_args":
        cfg["arch_args"] = {"taps": "fifteen"}
        cfg_path.write_text(json.dumps(cfg))
        return folder, "'arch_args' do not fit arch 'test-bandsplit'"
    if kind == "negative_size":
        cfg["arch_args"] = {"taps": -5}
        cfg_path.write_text(json.dumps(cfg))
        return folder, "cannot build arch 'test-bandsplit'"
    if kind == "unknown_arg":
        cfg["arch_args"] = {"taps": 15, "exec": "print(1)"}
        cfg_path.write_text(json.dumps(cfg))
        return folder, "'arch_args' do not fit"
    if kind == "huge_config":  # built first on the meta device: refused before 400 GB are asked for
        cfg["arch_args"] = {"taps": 10**11}
        cfg_path.write_text(json.dumps(cfg))
        return folder, "'arch_args' describe a network far larger than its weights"
    if kind == "other_size":  # a plausible size that is not the weights'
        cfg["arch_args"] = {"taps": 31}
        cfg_path.write_text(json.dumps(cfg))
        return folder, "weights do not match the network: 1 wrong shape (file != network): fir (1, 1, 15) != (1, 1, 31)"
    if kind == "unknown_arch":
        cfg["arch"] = "os.system"
        cfg_path.write_text(json.dumps(cfg))
        return folder, "unknown architecture 'os.system'"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["wrong_shapes", "syntax", "nested", "not_object", "bad_rate", "bad_arch_args",
                                  "negative_size", "unknown_arg", "unknown_arch", "huge_config",
                                  "other_size"])
def test_bad_model_folder_one_line_exit_1(tmp_path, kind):
    folder, words = _bad_model(tmp_path, kind)
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    r = run("separate", src, "-o", tmp_path / "out", "-m", folder)
    assert r.exit_code == 1, (kind, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and words in lines[0], lines
    assert str(folder) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", [{"n_src": 3}, {"sample_rate": 8000}, {"sample_rate": 8000, "arch_args": None}])
def test_model_config_that_contradicts_its_network_is_refused_at_load(tmp_path, change):
    """config.json's n_src and sample_rate are what the pipeline trusts: they must be the network's own (here the
    shipped S4M: 2 outputs at 16 kHz), or every file would fail later with a shape error."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "s4m-tiny-16k", folder)
    cfg = json.loads((folder / "config.json").read_text())
    if "arch_args" in change:  # arch_args without their sample_rate: the network's default (16 kHz) is its rate
        change = {**change, "arch_args": {k: v for k, v in cfg["arch_args"].items() if k != "sample_rate"}}
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    src = tmp_path / "a.wav"
    sf.write(src, signal(), SR)
    r = run("separate", src, "-o", tmp_path / "out", "-m", folder)
    lines = r.stderr.strip().splitlines()
    key = next(iter(change))
    assert r.exit_code == 1 and len(lines) == 1 and f"{folder / 'config.json'}: '{key}' {change[key]} differs" \
        in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_a_config_with_thousands_of_layers_is_refused_before_they_are_built(tmp_path):
    """SPMamba weights of 2 layers under a config.json asking for 3000: refused by the element budget of the meta
    build (4x the weights), not after building 3000 layers (85 s and 1.5 GB, measured)."""
    from safetensors.torch import save_file

    from sepcli.nets.spmamba import SPMamba
    from sepcli.runtime.loader import ModelError, load_model
    from tests.nets.test_spmamba import TINY

    save_file(SPMamba(**TINY).state_dict(), str(tmp_path / "weights.safetensors"))
    cfg = {"arch": "spmamba", "arch_args": {**TINY, "n_layers": 3000}, "sample_rate": 8000, "n_src": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="far larger than its weights"):
        load_model(tmp_path)
    cfg["arch_args"]["n_layers"] = 2  # the same folder as the weights were made: loads
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model(tmp_path).network.n_layers == 2


def test_shorter_than_one_sample_at_the_model_rate(tmp_path, model):
    """5 frames at 192 kHz are 0 samples at the model's 8 kHz: no model call with T=0 (networks need T >= 1);
    the outputs are silence of the input's exact length, flagged silent."""
    src = tmp_path / "blip.wav"
    sf.write(src, np.array([0.1, -0.2, 0.3, -0.1, 0.05]), 192000)
    r = run("separate", src, "-o", tmp_path / "out", "-m", model, "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    for o in res["outputs"]:
        y, rate = sf.read(o["path"])
        assert rate == 192000 and len(y) == 5 and np.all(y == 0) and "silent" in o["flags"]


def test_batch_resume_after_drop_silent_skips_the_finished_input(tmp_path, model):
    """A 100 Hz tone has (almost) nothing above the BandSplit cut-off: speaker 2 is silent and --drop-silent
    does not write it. A rerun must count the input as finished, not fail on the existing speaker 1."""
    root = tmp_path / "in"
    root.mkdir()
    sf.write(root / "tone.wav", 0.3 * np.sin(2 * np.pi * 100 * np.arange(SR) / SR), SR)
    out = tmp_path / "out"
    r = run("batch", root, "-o", out, "-m", model, "--drop-silent", "--json")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["tone_spk1.wav"]
    mtime = (out / "tone_spk1.wav").stat().st_mtime_ns
    r = run("batch", root, "-o", out, "--drop-silent", "-m", model, "--json", "--manifest", tmp_path / "m.jsonl")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["status"] == "skipped"
    assert (out / "tone_spk1.wav").stat().st_mtime_ns == mtime
    # what the skipped input reports is what is on disk: speaker 1's file as it is, speaker 2 not written
    spk1, spk2 = res["outputs"]
    assert spk1["path"] == str(out / "tone_spk1.wav") and spk1["written"] is True
    assert (spk1["sample_rate"], spk1["frames"], spk1["duration"]) == (SR, SR, 1.0)
    assert spk1["loudness_lufs"] is None and spk1["gain_db"] is None  # measured when written, not known now
    assert spk2["path"] is None and spk2["written"] is False and spk2["flags"] == ["silent"]
    line = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])
    assert line["status"] == "skipped" and line["outputs"] == [str(out / "tone_spk1.wav")]


def test_mp3_output_of_an_input_rate_it_cannot_store_is_named_not_unexpected(tmp_path, model):
    p = tmp_path / "hi.wav"
    sf.write(p, signal(96000, 3), 96000)
    r = run("separate", p, "-o", tmp_path / "o", "-m", model, "--format", "mp3")
    assert r.exit_code == 1
    assert error_lines(r.stderr) == [f"sepcli: error: {p}: mp3 cannot store 96000 Hz (use --sample-rate with one of "
                                     f"(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)) "
                                     f"(96000 Hz input)"]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    # a --sample-rate mp3 cannot store fails whatever the input: a usage error before any file is read
    r = run("separate", p, "-o", tmp_path / "o2", "-m", model, "--format", "mp3", "--sample-rate", "22000")
    assert r.exit_code == 2 and not (tmp_path / "o2").exists()
    assert r.stderr.strip() == ("sepcli: error: mp3 cannot store 22000 Hz (use --sample-rate with one of "
                                "(8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000))"), r.stderr


def test_file_names_that_are_not_utf8(tmp_path, model):
    # Latin-1 names from old archives: Python sees them as surrogate escapes; libsndfile must get the bytes.
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    sf.write(tmp_path / "x.wav", signal(), SR)
    name = os.fsdecode(b"M\xfcller")
    os.rename(tmp_path / "x.wav", src_dir / f"{name}.wav")
    r = run("separate", src_dir / f"{name}.wav", "-o", tmp_path / "o1", "-m", model)
    assert r.exit_code == 0, r.stderr
    assert sorted(os.listdir(os.fsencode(tmp_path / "o1"))) == [b"M\xfcller_spk1.wav", b"M\xfcller_spk2.wav"]
    y = sum(sf.read(os.fsencode(tmp_path / "o1" / f"{name}_spk{k}.wav"), dtype="float64")[0] for k in (1, 2))
    assert_sums_to(y, sf.read(os.fsencode(src_dir / f"{name}.wav"), dtype="float64")[0])
    r = run("batch", src_dir, "-o", tmp_path / "o2", "-m", model, "--json")
    assert r.exit_code == 0, r.stderr
    assert [f["status"] for f in json.loads(r.stdout)["results"]] == ["ok"]
    assert sorted(os.listdir(os.fsencode(tmp_path / "o2"))) == [b"M\xfcller_spk1.wav", b"M\xfcller_spk2.wav"]


def test_loudness_off_into_pcm_reports_the_clipped_file(tmp_path, model):
    """--loudness off writes what the model gives, clipped to full scale in a PCM file (flag): the peak and
    loudness reported are those of the file, measured here independently with pyloudnorm."""
    import pyloudnorm

    src = tmp_path / "hot.wav"
    sf.write(src, 4.0 * signal(2 * SR, 5), SR, subtype="FLOAT")
    r = run("separate", src, "-o", tmp_path / "out", "-m", model, "--loudness", "off", "--json")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert "clipped" in res["flags"]
    for o in res["outputs"]:
        y = sf.read(o["path"], dtype="float64")[0]
        assert o["peak_dbfs"] <= 0.0 and o["peak_dbfs"] == pytest.approx(20 * np.log10(np.abs(y).max()), abs=0.01)
        assert o["loudness_lufs"] == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(y), abs=0.1)
