"""The Typer CLI, run in-process with CliRunner on model folders built from test networks (see conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sepcli import __version__
from sepcli.cli import app
from sepcli.metrics import separation_scores
from tests.testnets import bandsplit_folder, synthetic_sources, write_model_folder

SR = 8000
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def fast_model(models_dir):
    return bandsplit_folder(models_dir / "bandsplit", sample_rate=SR, segment=0.5)


@pytest.fixture(scope="module")
def oracle(models_dir):
    """An oracle model folder plus the mixture file whose sources it knows."""
    src = synthetic_sources(int(2.3 * SR), SR, seed=21)
    np.save(models_dir / "sources.npy", src)
    folder = write_model_folder(models_dir / "oracle", "test-oracle",
                                {"sources": str(models_dir / "sources.npy"), "seed": 3, "sample_rate": SR},
                                {"scale": torch.ones(1)}, SR, segment=0.6, overlap=0.25)
    mix = models_dir / "talk.wav"
    sf.write(mix, src.sum(0), SR, subtype="FLOAT")
    return folder, mix, src


def _wav(path: Path, seconds=1.0, seed=0, rate=SR):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synthetic_sources(int(seconds * rate), rate, seed=seed).sum(0), rate)
    return path


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"sepcli {__version__}"
    p = subprocess.run([sys.executable, "-m", "sepcli", "--version"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0 and p.stdout.strip() == f"sepcli {__version__}"


def test_separate_json_summary_and_quality(tmp_path, oracle):
    folder, mix, src = oracle
    r = run("separate", mix, "-o", tmp_path / "out", "-m", folder, "--json", "--subtype", "FLOAT",
            "--loudness", "off")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"ok": 1, "failed": 0, "skipped": 0}
    assert doc["model"]["sample_rate"] == SR and doc["model"]["n_src"] == 2
    res = doc["results"][0]
    assert res["status"] == "ok" and res["input"] == str(mix) and res["input_rate"] == SR
    assert res["duration"] == pytest.approx(len(src[0]) / SR)
    assert res["rtf"] > 0 and res["timings"]["total_s"] >= res["timings"]["model_s"] > 0
    outs = [o["path"] for o in res["outputs"]]
    assert outs == [str(tmp_path / "out" / f"talk_spk{k}.wav") for k in (1, 2)]
    est = np.stack([sf.read(p, dtype="float32")[0] for p in outs])
    for o, e in zip(res["outputs"], est):
        assert o["frames"] == len(src[0]) and o["sample_rate"] == SR
        assert o["loudness_lufs"] == pytest.approx(_lufs(e), abs=0.05)
    assert np.all(separation_scores(est, src, src.sum(0), with_sdr=False)["si_snr"] > 40)


def _lufs(x):
    import pyloudnorm

    return pyloudnorm.Meter(SR).integrated_loudness(x.astype(np.float64))


def test_exit_code_1_when_some_input_fails(tmp_path, fast_model):
    good = _wav(tmp_path / "good.wav")
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"\x00" * 1000)
    r = run("separate", good, bad, tmp_path / "missing.wav", "-o", tmp_path / "out", "-m", fast_model, "--json")
    assert r.exit_code == 1
    errs = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errs) == 2 and all(line.startswith("sepcli: error: ") for line in errs)
    assert str(bad) in errs[0] and "missing.wav" in errs[1] and "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert [x["status"] for x in doc["results"]] == ["ok", "error", "error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_spk1.wav", "good_spk2.wav"]


@pytest.mark.parametrize("args", [["--overlap", "0.9"], ["--segment", "-1"], ["--segment", "1e305"],
                                  ["--format", "aac"], ["--loudness", "loud"], ["--name", "../{stem}{k}.{ext}"],
                                  ["--sample-rate", "1000"], ["--subtype", "FLOAT", "--format", "flac"],
                                  ["--batch-size", "0"], ["--shifts", "0"], ["-m", "no-such-model"]])
def test_exit_code_2_for_usage_errors(tmp_path, fast_model, args):
    good = _wav(tmp_path / "g.wav")
    full = ["separate", good, "-o", tmp_path / "out"] + (["-m", fast_model] if "-m" not in args else []) + args
    r = run(*full)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_missing_output_option_is_usage_error(tmp_path):
    r = run("separate", tmp_path / "x.wav")
    assert r.exit_code == 2


def test_debug_shows_traceback(tmp_path):
    r = run("separate", _wav(tmp_path / "g.wav"), "-o", tmp_path / "o", "-m", tmp_path / "nomodel", "--debug")
    assert r.exit_code == 2 and "Traceback" in r.stderr


def test_stdin_input(tmp_path, fast_model):
    flac = tmp_path / "in.flac"
    x = synthetic_sources(int(1.3 * SR), SR, seed=4).sum(0)
    sf.write(flac, x, SR)
    r = run("separate", "-", "-o", tmp_path / "out", "-m", fast_model, "--json", input=flac.read_bytes())
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["results"][0]["input"] == "-"
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outs == ["stdin_spk1.wav", "stdin_spk2.wav"]  # the spooled stdin copy is gone
    assert sf.info(tmp_path / "out" / "stdin_spk1.wav").frames == len(x)
    r = run("separate", "-", "-o", tmp_path / "o2", "-m", fast_model, input=b"")
    assert r.exit_code == 1 and "stdin is empty" in r.stderr


def test_name_template_and_format(tmp_path, fast_model):
    good = _wav(tmp_path / "song.wav")
    r = run("separate", good, "-o", tmp_path / "out", "-m", fast_model, "--name", "{k}/{stem}.{ext}",
            "--format", "flac", "--sample-rate", "16000")
    assert r.exit_code == 0, r.stderr
    for k in (1, 2):
        info = sf.info(tmp_path / "out" / str(k) / "song.flac")
        assert info.format == "FLAC" and info.samplerate == 16000 and info.frames == 16000


def test_overwrite_refusal(tmp_path, fast_model):
    good = _wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert run("separate", good, "-o", out, "-m", fast_model).exit_code == 0
    target = out / "a_spk1.wav"
    target.write_bytes(b"keep me")
    r = run("separate", good, "-o", out, "-m", fast_model)
    assert r.exit_code == 1 and "exists" in r.stderr and "--overwrite" in r.stderr
    assert target.read_bytes() == b"keep me"
    assert run("separate", good, "-o", out, "-m", fast_model, "--overwrite").exit_code == 0
    assert sf.info(target).frames == SR
    # an output that would replace an input is refused even with --overwrite
    b = _wav(tmp_path / "b.wav", seconds=2.0)
    clash = _wav(tmp_path / "b_spk1.wav")
    r = run("separate", b, clash, "-o", tmp_path, "-m", fast_model, "--overwrite")
    assert r.exit_code == 1 and "would overwrite an input" in r.stderr
    assert sf.info(clash).frames == SR


def _tree(root: Path) -> list[Path]:
    files = [_wav(root / "a" / "one.wav", seed=1), _wav(root / "a" / "b" / "two.wav", seed=2),
             _wav(root / "three.wav", seed=3), _wav(root / "c" / "four.flac", seed=4)]
    (root / "notes.txt").write_text("not audio")
    return files


def test_batch_mirrors_tree_resumes_and_writes_manifest(tmp_path, fast_model):
    root, out = tmp_path / "in", tmp_path / "out"
    files = _tree(root)
    bad = root / "c" / "broken.wav"
    bad.write_bytes(b"RIFFxxxxWAVEjunk")
    manifest = tmp_path / "m.jsonl"
    r = run("batch", root, "-o", out, "-m", fast_model, "--manifest", manifest, "--json", "--jobs", "2")
    assert r.exit_code == 1  # the broken file failed, the others are done
    for f in files:
        rel = f.relative_to(root)
        for k in (1, 2):
            assert (out / rel.parent / f"{f.stem}_spk{k}.wav").is_file()
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    by_input = {Path(m["input"]).name: m for m in lines}
    assert set(by_input) == {"one.wav", "two.wav", "three.wav", "four.flac", "broken.wav"}
    assert by_input["broken.wav"]["status"] == "error" and "broken.wav" in by_input["broken.wav"]["error"]
    assert by_input["two.wav"]["outputs"] == [str(out / "a" / "b" / f"two_spk{k}.wav") for k in (1, 2)]
    assert str(bad) in r.stderr
    # rerun: finished inputs are skipped (files untouched), the bad one is retried
    stamp = (out / "three_spk1.wav").stat().st_mtime_ns
    bad.unlink()
    r = run("batch", root, "-o", out, "-m", fast_model, "--manifest", manifest, "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"ok": 0, "failed": 0, "skipped": 4}
    assert (out / "three_spk1.wav").stat().st_mtime_ns == stamp
    assert len(manifest.read_text().splitlines()) == 9
    r = run("batch", root, "-o", out, "-m", fast_model, "--overwrite", "--json", "--glob", "*.flac")
    assert json.loads(r.stdout)["summary"] == {"ok": 1, "failed": 0, "skipped": 0}


def test_batch_output_inside_input_tree_is_not_reprocessed(tmp_path, fast_model):
    root = tmp_path / "in"
    _tree(root)
    assert run("batch", root, "-o", root / "sep", "-m", fast_model).exit_code == 0
    r = run("batch", root, "-o", root / "sep", "-m", fast_model, "--json")
    assert json.loads(r.stdout)["summary"] == {"ok": 0, "failed": 0, "skipped": 4}


def test_batch_with_nothing_to_do_warns_and_succeeds(tmp_path, fast_model):
    root = tmp_path / "in"
    _tree(root)
    r = run("batch", root, "-o", tmp_path / "out", "-m", fast_model, "--glob", "*.flca", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["summary"] == {"ok": 0, "failed": 0, "skipped": 0}
    assert f"sepcli: warning: no audio files under {root} matching --glob '*.flca'; nothing to do" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run("batch", tmp_path / "empty", "-o", tmp_path / "out", "-m", fast_model, "--quiet")
    assert r.exit_code == 0 and "no audio files under" in r.stderr
    r = run("batch", root, "-o", tmp_path / "out", "-m", fast_model, "--glob", "*.wav", "--json")
    assert "warning" not in r.stderr


@pytest.mark.parametrize("n", [2, 3])
def test_shards_cover_every_file_exactly_once(tmp_path, fast_model, n):
    root = tmp_path / "in"
    files = _tree(root) + [_wav(root / "d" / f"x{i}.wav", seed=10 + i) for i in range(3)]
    seen = []
    for i in range(n):
        r = run("batch", root, "-o", tmp_path / "out", "-m", fast_model, "--shard", f"{i}/{n}", "--json")
        assert r.exit_code == 0
        seen += [x["input"] for x in json.loads(r.stdout)["results"] if x["status"] == "ok"]
    assert sorted(seen) == sorted(str(f) for f in files)
    assert len(seen) == len(set(seen))


def test_torchrun_environment_selects_the_shard(tmp_path, fast_model):
    root = tmp_path / "in"
    files = _tree(root)
    seen = []
    for rank in range(2):
        r = run("batch", root, "-o", tmp_path / "out", "-m", fast_model, "--json",
                env={"RANK": str(rank), "WORLD_SIZE": "2"})
        doc = json.loads(r.stdout)
        assert doc["shard"] == [rank, 2]
        seen += [x["input"] for x in doc["results"]]
    assert sorted(seen) == sorted(str(f) for f in files)
    assert run("batch", root, "-o", tmp_path / "o", "-m", fast_model, "--shard", "2/2").exit_code == 2
    for env in ({"RANK": "5", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}):  # not a shard: say so
        r = run("batch", root, "-o", tmp_path / "o", "-m", fast_model, env=env)
        assert r.exit_code == 2 and r.stderr.startswith(f"sepcli: error: RANK={env['RANK']} WORLD_SIZE=2 ")
        assert not (tmp_path / "o").exists()
    r = run("batch", root, "-o", tmp_path / "o", "-m", fast_model, "--json", env={"WORLD_SIZE": "3"})  # no RANK
    assert r.exit_code == 0 and json.loads(r.stdout)["shard"] == [0, 1]


def test_models_list_and_info(tmp_path, fast_model, monkeypatch):
    zoo = tmp_path / "zoo"
    folder = bandsplit_folder(zoo / "tiny-band", sample_rate=SR)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(aliases=["default"], eval={"si_snri_db": 1.5})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "MODEL_CARD.md").write_text("# tiny-band\nA test card.\n")
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    r = run("models", "--json")
    assert r.exit_code == 0
    row = next(m for m in json.loads(r.stdout) if m["name"] == "tiny-band")
    assert row["params"] == 15 and row["arch"] == "test-bandsplit" and row["sample_rate"] == SR
    assert row["size_bytes"] == (folder / "weights.safetensors").stat().st_size
    r = run("models", "info", "default")  # the alias resolves to the zoo folder
    assert r.exit_code == 0 and "tiny-band" in r.stdout and "A test card." in r.stdout
    assert run("models", "info", "nope").exit_code == 2
    out = tmp_path / "o"
    assert run("separate", _wav(tmp_path / "z.wav"), "-o", out).exit_code == 0  # -m default
    assert (out / "z_spk2.wav").is_file()


def test_models_info_of_a_pt_weights_file(tmp_path):
    import torch
    from safetensors.torch import load_file

    from sepcli.runtime.loader import weights_summary

    folder = bandsplit_folder(tmp_path / "band", sample_rate=SR)
    state = load_file(folder / "weights.safetensors")
    torch.save(state, folder / "model.pt")
    r = run("models", "info", folder / "model.pt")
    assert r.exit_code == 0 and "test-bandsplit" in r.stdout, r.stdout
    # the figures it prints (15 parameters show as 0.00 M here) come from the .pt itself, not a missing safetensors
    assert weights_summary(folder / "model.pt") == (15, (folder / "model.pt").stat().st_size)
    torch.save({"state": state, "extra": LFS_POINTER.__class__}, folder / "objects.pth")  # a pickled class
    r = run("models", "info", folder / "objects.pth")  # refused as `separate -m` refuses it
    assert r.exit_code == 1 and r.stderr.startswith(f"sepcli: error: {folder / 'objects.pth'}: not a plain weights")


LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 2212908\n")


def test_unreadable_weights_are_skipped_by_models_and_one_line_elsewhere(tmp_path, monkeypatch):
    """A Git LFS pointer or garbage in weights.safetensors: `models` lists the good models and warns once per bad
    one; `models info` and `separate -m` say what is wrong in one line, exit 1."""
    zoo = tmp_path / "zoo"
    bandsplit_folder(zoo / "good-band", sample_rate=SR)
    lfs = bandsplit_folder(zoo / "lfs-band", sample_rate=SR)
    (lfs / "weights.safetensors").write_text(LFS_POINTER)
    junk = bandsplit_folder(zoo / "junk-band", sample_rate=SR)
    (junk / "weights.safetensors").write_bytes(np.random.default_rng(0).bytes(3000))
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))

    for args in (["models", "--json"], ["models"]):
        r = run(*args)
        assert r.exit_code == 0, r.stderr
        if args[-1] == "--json":
            names = {m["name"] for m in json.loads(r.stdout)}
            assert "good-band" in names and not names & {"lfs-band", "junk-band"}
        else:
            assert "good-band" in r.stdout and "lfs-band" not in r.stdout
        warnings = r.stderr.strip().splitlines()
        assert len(warnings) == 2 and all(w.startswith("sepcli: warning: ") for w in warnings), warnings
        for folder, w in zip((junk, lfs), warnings):  # listed in folder order: junk-band, lfs-band
            assert str(folder) in w and "not a readable safetensors file" in w
        assert "git lfs pull" in warnings[1]

    for folder in (lfs, junk):
        want = f"sepcli: error: {folder / 'weights.safetensors'}: not a readable safetensors file ("
        r = run("models", "info", folder)
        assert r.exit_code == 1 and r.stderr.startswith(want) and r.stderr.count("\n") == 1, r.stderr
        r = run("separate", _wav(tmp_path / "a.wav"), "-o", tmp_path / "out", "-m", folder)
        assert r.exit_code == 1 and r.stderr.startswith(want) and r.stderr.count("\n") == 1, r.stderr
    assert run("models", "info", "lfs-band").exit_code == 1  # by zoo name too


def _site_model(zoo, folder, **cfg_change):
    mine = bandsplit_folder(zoo / folder, sample_rate=SR)
    cfg = json.loads((mine / "config.json").read_text())
    (mine / "config.json").write_text(json.dumps({**cfg, **cfg_change}))
    return mine


def test_an_extra_zoo_taking_the_default_alias_is_said(tmp_path, monkeypatch):
    mine = _site_model(tmp_path / "zoo", "site-band", aliases=["default"])
    monkeypatch.setenv("SEPCLI_ZOO", str(tmp_path / "zoo"))
    r = run("models", "--json")
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert r.exit_code == 0 and rows["site-band"]["aliases"] == ["default"] and rows["s4m-tiny-16k"]["aliases"] == []
    shipped = Path(rows["s4m-tiny-16k"]["path"])
    assert r.stderr == f"sepcli: warning: 'default' of zoo model {shipped} names {mine} (SEPCLI_ZOO is searched " \
                       "first)\n"
    r = run("models", "info", "default")
    assert r.exit_code == 0 and str(mine) in r.stdout and "site-band" in r.stdout


@pytest.mark.parametrize("change", [{"name": "s4m-tiny-16k"}, {"aliases": ["s4m-tiny-16k"]}])
def test_an_extra_zoo_reusing_a_shipped_name_is_said_and_listed_as_it_resolves(tmp_path, monkeypatch, change):
    from sepcli.runtime import registry

    mine = _site_model(tmp_path / "zoo", "site-band", **change)
    monkeypatch.setenv("SEPCLI_ZOO", str(tmp_path / "zoo"))
    r = run("models", "--json")
    assert r.exit_code == 0 and r.stderr.startswith("sepcli: warning: ") and r.stderr.count("\n") == 1, r.stderr
    listed = {a: m["path"] for m in json.loads(r.stdout) if m["installed"] for a in [m["name"], *m["aliases"]]}
    for ident, path in listed.items():  # what `models` lists is what -m reaches
        assert str(registry.resolve(ident)) == path, ident
    if "name" in change:  # the shipped model is reached by none of its names, `default` included: said
        assert listed["s4m-tiny-16k"] == str(mine) and "default" not in listed
        assert f"is hidden: its name 's4m-tiny-16k' and its aliases 'default' name {mine} or nothing" in r.stderr
    else:  # names win over aliases in resolve: the site model's alias is hidden, not the shipped model
        assert listed["s4m-tiny-16k"] != str(mine) and f"'s4m-tiny-16k' of zoo model {mine} names" in r.stderr


def test_unreadable_config_is_skipped_by_models_with_a_warning(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    bandsplit_folder(zoo / "good-band", sample_rate=SR)
    bad = bandsplit_folder(zoo / "bad-band", sample_rate=SR)
    (bad / "config.json").write_text("{ not json")
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    r = run("models", "--json")
    names = [m["name"] for m in json.loads(r.stdout)]
    assert r.exit_code == 0 and "good-band" in names and "bad-band" not in names
    assert r.stderr.startswith(f"sepcli: warning: skipped zoo model {bad}: {bad / 'config.json'}: not readable JSON")


def test_bench_reports_rtf(fast_model):
    r = run("bench", "-m", fast_model, "--seconds", "2", "--repeat", "1", "--json")
    assert r.exit_code == 0, r.stderr
    fig = json.loads(r.stdout)
    assert fig["input_s"] == 2 and fig["rtf_total"] > 0 and 0 <= fig["outside_model_share"] <= 1
    assert "scan_backend" in fig


@pytest.mark.parametrize("args,option", [(["--seconds", "0"], "--seconds"), (["--seconds", "-3"], "--seconds"),
                                         (["--seconds", "inf"], "--seconds"), (["--seconds", "nan"], "--seconds"),
                                         (["--seconds", "1e9"], "--seconds"),  # held in memory: 116 TiB
                                         (["--repeat", "0"], "--repeat"), (["--repeat", "-1"], "--repeat")])
def test_bench_refuses_lengths_and_repeats_out_of_range(fast_model, args, option):
    r = run("bench", "-m", fast_model, "--repeat", "1", "--json", *args)  # the last --repeat wins
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stdout == "" and "Invalid value" in r.stderr and option in r.stderr


def test_import_spmamba_needs_a_source_once(tmp_path, fake_converter):
    for args in ([], ["--config", tmp_path / "c.yml"],  # nothing to import
                 [tmp_path / "r.zip", "--checkpoint", tmp_path / "x.pth"],  # two sources
                 [tmp_path / "r.zip", "--name", "a", "--out", tmp_path / "o"]):  # two destinations
        r = run("models", "import-spmamba", *args)
        assert r.exit_code == 2 and r.stderr.startswith("sepcli: error: ") and r.stderr.count("\n") == 1, args
    assert fake_converter == []


@pytest.fixture
def fake_converter(monkeypatch):
    """A stand-in for sepcli.runtime.spmamba_import (so tests check the CLI's wiring and error handling, not the
    converter); returns the list of its calls (config, source, out_dir, name). Names 'broken' and 'badconf' raise
    its errors."""
    import types

    calls = []
    fake = types.ModuleType("sepcli.runtime.spmamba_import")

    class CheckpointError(Exception):
        pass

    class ConfigError(CheckpointError):
        pass

    def import_release(source, out_dir, *, name, config=None, provenance=None, replace=False):
        calls.append((config and Path(config), Path(source), Path(out_dir), name))
        if name == "broken":
            raise CheckpointError(f"{source}: not an SPMamba checkpoint")
        if name == "badconf":
            raise ConfigError(f"{config}: audionet.audionet_config.emb_dim must be a positive integer, got -4")
        return types.SimpleNamespace(folder=Path(out_dir), checkpoint_member="best_model.pth",
                                     notes=["took best_model.pth"])

    def suggest_name(source, config=None):
        return "spmamba-libri2mix"

    fake.CheckpointError, fake.ConfigError = CheckpointError, ConfigError
    fake.import_release, fake.suggest_name = import_release, suggest_name
    monkeypatch.setitem(sys.modules, "sepcli.runtime.spmamba_import", fake)
    return calls


def test_import_spmamba_calls_the_converter(tmp_path, fake_converter):
    """The command is wired to sepcli.runtime.spmamba_import.import_release: a checkpoint it cannot import exits 1,
    a bad conf.yml (ConfigError) is a usage error, exit 2; its notes go to stderr."""
    calls = fake_converter
    cfg, ck = tmp_path / "conf.yml", tmp_path / "best_model.pth"
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--out", tmp_path / "spm")
    assert r.exit_code == 0 and str(tmp_path / "spm") in r.stdout
    assert r.stderr == "sepcli: note: took best_model.pth\n"
    assert calls[-1] == (cfg, ck, tmp_path / "spm", "spm")
    r = run("models", "import-spmamba", ck, "--config", cfg, "--out", tmp_path / "spm2")  # SOURCE form
    assert r.exit_code == 0 and calls[-1] == (cfg, ck, tmp_path / "spm2", "spm2")
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--out", tmp_path / "broken")
    assert r.exit_code == 1 and r.stderr.startswith("sepcli: error: ") and "not an SPMamba" in r.stderr
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--out", tmp_path / "badconf")
    assert r.exit_code == 2 and r.stderr == f"sepcli: error: {cfg}: audionet.audionet_config.emb_dim must be a " \
                                           "positive integer, got -4\n"


@pytest.mark.parametrize("name", ["../escaped", "..", ".", ".hidden", "a/b", "a\\b", "", " ", "tab\tname",
                                  "x.safetensors", "w.pt", "default", "fast", "band-folder", "band-name"])
def test_import_spmamba_name_is_a_new_plain_folder_name(tmp_path, monkeypatch, fake_converter, name):
    """--name is one folder-name component (nothing written outside the store) that no model uses as its folder,
    name or alias (a new model must not shadow `default`): refused with exit 2 before any work."""
    zoo = tmp_path / "zoo"
    folder = bandsplit_folder(zoo / "band-folder", sample_rate=SR, name="band-name")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["aliases"] = ["fast"]
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    before = sorted(tmp_path.rglob("*"))
    r = run("models", "import-spmamba", "--config", tmp_path / "c.yml", "--checkpoint", tmp_path / "x.pth",
            "--name", name)
    assert r.exit_code == 2, (name, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sepcli: error: --name: ")
    assert fake_converter == [] and sorted(tmp_path.rglob("*")) == before


def test_import_spmamba_installs_into_the_user_store_and_guards_out_into_a_zoo(tmp_path, monkeypatch,
                                                                               fake_converter, _sepcli_home):
    zoo = tmp_path / "zoo"
    bandsplit_folder(zoo / "band", sample_rate=SR)
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    cfg, ck = tmp_path / "c.yml", tmp_path / "x.pth"
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--name", "my-spmamba")
    assert r.exit_code == 0, r.stderr
    assert fake_converter[-1] == (cfg, ck, _sepcli_home / "models" / "my-spmamba", "my-spmamba")
    r = run("models", "import-spmamba", tmp_path / "SPMamba-LibriMix.zip")  # no --name: the name from conf.yml
    assert r.exit_code == 0, r.stderr
    assert fake_converter[-1] == (None, tmp_path / "SPMamba-LibriMix.zip",
                                  _sepcli_home / "models" / "spmamba-libri2mix", "spmamba-libri2mix")
    assert "-m spmamba-libri2mix" in r.stdout
    # --out straight into a zoo folder follows the same rules; elsewhere any folder name is fine
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--out", zoo / "default")
    assert r.exit_code == 2 and "already" in r.stderr and len(fake_converter) == 2
    r = run("models", "import-spmamba", ck, "--config", cfg, "--out", _sepcli_home / "models" / "default")
    assert r.exit_code == 2 and "already" in r.stderr and len(fake_converter) == 2  # the store (not made yet) too
    r = run("models", "import-spmamba", "--config", cfg, "--checkpoint", ck, "--out", tmp_path / "mine" / "default")
    assert r.exit_code == 0 and fake_converter[-1][2] == tmp_path / "mine" / "default"


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("idle,flag,want", [(0.2, [], 1), (3.0, [], 2), (0.2, ["--threads", "2"], 2)])
def test_default_threads_are_the_idle_cpus_unless_told(tmp_path, fast_model, monkeypatch, restore_threads,
                                                       idle, flag, want):
    from sepcli.runtime import device

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "DEFAULT_THREADS", 2)
    monkeypatch.setattr(device, "idle_cpus", lambda: idle)
    src = _wav(tmp_path / "a.wav")
    r = run("separate", src, "-o", tmp_path / "out", "-m", fast_model, "--json", *flag)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["runtime"]["threads"] == want


@pytest.mark.parametrize("cmd", ["separate", "batch"])
def test_a_name_template_that_makes_inputs_collide_is_refused_before_any_work(tmp_path, fast_model, cmd):
    a, b = _wav(tmp_path / "in" / "a.wav", seed=1), _wav(tmp_path / "in" / "b.wav", seed=2)
    out = tmp_path / "out"
    args = [a, b] if cmd == "separate" else [tmp_path / "in"]
    r = run(cmd, *args, "-o", out, "-m", fast_model, "--name", "speaker{k}.{ext}", "--overwrite")
    assert r.exit_code == 2, r.stderr
    want = f"sepcli: error: {a} and {b} would both write {out / 'speaker1.wav'} (put {{stem}} in --name)"
    assert r.stderr.strip() == want
    assert not out.exists()
    ok = run(cmd, *args, "-o", out, "-m", fast_model, "--name", "{k}/{stem}.{ext}")  # distinct per input: fine
    assert ok.exit_code == 0 and sorted(p.name for p in (out / "1").iterdir()) == ["a.wav", "b.wav"]


@pytest.mark.parametrize("cmd", ["separate", "batch"])
@pytest.mark.parametrize("name,problem", [("{stem}_spk{k!s:.0}.{ext}", "gives the same file name to several speakers"),
                                          ("{stem}_" + "x" * 250 + "{k}.{ext}", "is longer than 255 bytes")])
def test_a_name_template_bad_for_every_input_is_refused_before_any_work(tmp_path, fast_model, cmd, name, problem):
    """Templates that pass the template check (they have {k}) yet are bad whatever the stem: one usage error."""
    a, b = _wav(tmp_path / "in" / "a.wav", seed=1), _wav(tmp_path / "in" / "b.wav", seed=2)
    args = [a, b] if cmd == "separate" else [tmp_path / "in"]
    r = run(cmd, *args, "-o", tmp_path / "out", "-m", fast_model, "--name", name)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and problem in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    if "255" in problem:  # the name shown is one an input would get, not the plain stem the check also tries
        assert "output name 'a_" in r.stderr or "output name 'b_" in r.stderr, r.stderr


def test_a_name_template_too_long_only_for_short_stems_is_not_refused(tmp_path, fast_model):
    """Padding with a 2-byte character makes a short stem's name the longest: the plain stem the check tries
    ('x') is over 255 bytes, the real inputs' names are not, and they are separated."""
    a = _wav(tmp_path / "in" / "meeting_2024-01-05.wav", seed=1)
    b = _wav(tmp_path / "in" / "interview_alice.wav", seed=2)
    r = run("separate", a, b, "-o", tmp_path / "out", "-m", fast_model, "--name", "{stem:\u00e9>130}_{k}.{ext}")
    assert r.exit_code == 0, r.stderr
    assert len(list((tmp_path / "out").iterdir())) == 4


@pytest.mark.parametrize("cmd", ["separate", "batch"])
def test_one_input_whose_output_name_is_too_long_fails_alone(tmp_path, fast_model, cmd):
    """The up-front collision check leaves an input whose own output name is bad to fail in its turn."""
    long = "x" * 250  # 250 + ".wav" is a valid input name; with "_spk1.wav" its output name is over 255 bytes
    a, b = _wav(tmp_path / "in" / f"{long}.wav", seed=1), _wav(tmp_path / "in" / "b.wav", seed=2)
    out = tmp_path / "out"
    args = [a, b] if cmd == "separate" else [tmp_path / "in"]
    r = run(cmd, *args, "-o", out, "-m", fast_model)
    assert r.exit_code == 1, r.stderr
    assert "longer than 255 bytes" in r.stderr and long in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["b_spk1.wav", "b_spk2.wav"]


def test_batch_manifest_that_cannot_be_opened_is_one_line(tmp_path, fast_model):
    _wav(tmp_path / "in" / "a.wav")
    for manifest, why in ((tmp_path / "no" / "such" / "m.jsonl", "No such file or directory"),
                          (tmp_path / "in", "Is a directory")):
        r = run("batch", tmp_path / "in", "-o", tmp_path / "out", "-m", fast_model, "--manifest", manifest)
        assert r.exit_code == 2
        assert r.stderr.strip() == f"sepcli: error: {manifest}: cannot append the manifest here ({why})"


def test_batch_redoes_an_input_whose_output_was_damaged(tmp_path, fast_model):
    _wav(tmp_path / "in" / "a.wav", seconds=1.5)
    out = tmp_path / "out"
    assert run("batch", tmp_path / "in", "-o", out, "-m", fast_model).exit_code == 0
    good = (out / "a_spk2.wav").read_bytes()
    (out / "a_spk1.wav").write_bytes(b"")  # emptied since (a full disk, a tool gone wrong)
    r = run("batch", tmp_path / "in", "-o", out, "-m", fast_model, "--json")
    res = json.loads(r.stdout)["results"][0]
    assert r.exit_code == 0 and res["status"] == "ok" and "replaced_damaged_output" in res["flags"]
    assert sf.info(out / "a_spk1.wav").frames == int(1.5 * SR) and (out / "a_spk2.wav").read_bytes() == good
    again = json.loads(run("batch", tmp_path / "in", "-o", out, "-m", fast_model, "--json").stdout)
    assert again["results"][0]["status"] == "skipped"  # whole again: finished
    for damage in ("cut", "short"):  # cut short (the header declares more), or rewritten shorter than the input
        if damage == "cut":
            (out / "a_spk2.wav").write_bytes(good[: len(good) // 2])
        else:
            sf.write(out / "a_spk2.wav", np.zeros(SR // 2, np.float32), SR)
        res = json.loads(run("batch", tmp_path / "in", "-o", out, "-m", fast_model, "--json").stdout)["results"][0]
        assert res["status"] == "ok" and "replaced_damaged_output" in res["flags"], damage
        assert (out / "a_spk2.wav").read_bytes() == good


def test_output_folder_made_for_a_run_that_writes_nothing_is_removed(tmp_path, fast_model):
    bad = tmp_path / "fake.wav"
    bad.write_bytes(b"not audio" * 100)
    r = run("separate", bad, "-o", tmp_path / "o1", "-m", fast_model)
    assert r.exit_code == 1 and not (tmp_path / "o1").exists()
    r = run("separate", bad, "-o", tmp_path / "n1" / "n2" / "o", "-m", fast_model)  # with the parents it made
    assert r.exit_code == 1 and not (tmp_path / "n1").exists()
    (tmp_path / "o2").mkdir()  # a folder that was there before stays
    assert run("separate", bad, "-o", tmp_path / "o2", "-m", fast_model).exit_code == 1 and (tmp_path / "o2").is_dir()
    _wav(tmp_path / "in" / "a.wav")
    r = run("batch", tmp_path / "in", "-o", tmp_path / "o3", "-m", fast_model, "--jobs", "0")
    assert r.exit_code == 2 and "--jobs must be at least 1" in r.stderr and not (tmp_path / "o3").exists()


def test_a_newline_in_a_file_name_stays_on_the_error_line(tmp_path, fast_model):
    bad = tmp_path / "new\nline.wav"
    bad.write_bytes(b"not audio" * 100)
    r = run("separate", bad, "-o", tmp_path / "out", "-m", fast_model)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and "new\\nline.wav: cannot decode audio" in lines[0], r.stderr


def test_the_error_line_escapes_controls_and_keeps_other_characters(tmp_path, fast_model, capsys):
    """Control characters, line/paragraph separators and bidi overrides are escaped; a no-break space, a
    narrow no-break space and a zero-width joiner (an emoji's) are parts of a name and are shown as they are."""
    name = "a\u00a0b\u202fc\U0001F469\u200d\U0001F4BB\x1b[31m\u2028\u202eZ"
    bad = tmp_path / f"{name}.wav"
    bad.write_bytes(b"not audio" * 100)
    r = run("separate", bad, "-o", tmp_path / "out", "-m", fast_model)
    want = "a\u00a0b\u202fc\U0001F469\u200d\U0001F4BB" + "\\x1b[31m\\u2028\\u202eZ.wav"
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert want in r.stderr, r.stderr
    r = run("separate", tmp_path / "no\u00a0such.wav", "-o", tmp_path / "out", "-m", fast_model)  # a UsageError
    assert "no\u00a0such.wav" in r.stderr, r.stderr
    c, d = _wav(tmp_path / "in" / "c  d\te.wav", seed=1), _wav(tmp_path / "in" / "f.wav", seed=2)  # a UsageError
    r = run("separate", c, d, "-o", tmp_path / "out", "-m", fast_model, "--name", "{k}.{ext}")
    assert r.exit_code == 2 and "c  d\\te.wav and " in r.stderr, r.stderr  # the name as it is, tab escaped
    from sepcli import cli

    assert cli._one_line("\u00a0lead.wav:\n   wrapped\t message \u00a0") == "\u00a0lead.wav: wrapped message \u00a0"
    cli._error("bad\udcffname.wav")  # an undecodable byte of a name (surrogateescape): escaped, whatever the locale
    assert capsys.readouterr().err == "sepcli: error: bad\\udcffname.wav\n"


@pytest.mark.parametrize("args,problem", [
    (["separate", "x.wav", "-o", "out", "--batch-size", "abc"], "Invalid value for '--batch-size'"),
    (["separate", "x.wav", "-o", "out", "--bogus"], "No such option: --bogus"),
    (["batch"], "Missing argument"),
])
def test_option_parser_errors_are_one_line_with_exit_code_2(tmp_path, args, problem):
    """Through the installed entry point (sepcli.cli:run, as `python -m sepcli`), not Typer's boxed panel."""
    p = subprocess.run([sys.executable, "-m", "sepcli", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("sepcli: error: ") and problem in lines[0] and "--help" in lines[0]
    assert p.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("raised,code,err", [(KeyboardInterrupt, 130, ""),
                                              (EOFError, 1, "\nsepcli: error: aborted (end of input)\n")])
def test_a_ctrl_c_or_eof_no_command_handled_is_no_traceback(monkeypatch, capsys, raised, code, err):
    """Typer turns a KeyboardInterrupt that no command handled (one during start-up) into exit 130, and an
    EOFError into Abort, which the entry point says in one line (after the empty line Typer writes first, to end
    a prompt's line): no traceback either way."""
    from sepcli import cli
    from sepcli.runtime import registry

    def boom():
        raise raised()

    monkeypatch.setattr(sys, "argv", ["sepcli", "models"])
    monkeypatch.setattr(registry, "zoo_conflicts", boom)
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == code
    assert capsys.readouterr().err == err


def test_an_output_name_taken_by_a_folder_is_named_in_the_error(tmp_path, fast_model):
    src = _wav(tmp_path / "in" / "a.wav")
    (tmp_path / "out" / "a_spk1.wav").mkdir(parents=True)
    r = run("separate", src, "-o", tmp_path / "out", "-m", fast_model, "--overwrite")
    assert r.exit_code == 1
    assert r.stderr.strip() == (f"sepcli: error: {src}: {tmp_path / 'out' / 'a_spk1.wav'}: is a folder; the output "
                                "cannot replace it")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_spk1.wav"]  # nothing else left
