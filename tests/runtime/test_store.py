"""The user model store (sepcli.runtime.store), how names reach its models, `models` / `models remove` /
`models default`, and imports into it from the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.runtime import registry, store
from tests.spmamba_release import make_release
from tests.testnets import bandsplit_folder, synthetic_sources

SR = 8000
runner = CliRunner()


def run(*args, **kw):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False, **kw)


def rows(*args) -> dict:
    r = run("models", "--json", *args)
    assert r.exit_code == 0, r.stderr
    return {m["name"]: m for m in json.loads(r.stdout)}


def shipped_default() -> Path:
    return next(e.folder for e in registry._scan() if e.source == registry.SHIPPED and "default" in e.aliases)


def test_home_is_sepcli_home_else_xdg_else_local_share(monkeypatch, tmp_path, _sepcli_home):
    assert store.home() == _sepcli_home and store.models_dir() == _sepcli_home / "models"
    assert store.downloads_dir() == _sepcli_home / "downloads"
    monkeypatch.delenv("SEPCLI_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store.home() == tmp_path / "xdg" / "sepcli" and store.models_dir() == tmp_path / "xdg" / "sepcli" / "models"
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # invalid under the XDG spec: ignored
    assert store.home() == tmp_path / "h" / ".local" / "share" / "sepcli"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert store.home() == tmp_path / "h" / ".local" / "share" / "sepcli"
    assert not (tmp_path / "h").exists()  # nothing is created by asking


def test_import_into_the_xdg_store_then_separate_from_another_directory(tmp_path, monkeypatch):
    """No SEPCLI_HOME: the release goes to $XDG_DATA_HOME/sepcli/models/<name from conf.yml>, and `-m NAME`
    reaches it from any working directory, giving the source network's separation."""
    monkeypatch.delenv("SEPCLI_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "dl").mkdir()
    zpath, model = make_release(tmp_path / "dl" / "SPMamba-LibriMix.zip", seed=4)
    r = run("models", "import-spmamba", zpath)
    folder = tmp_path / "xdg" / "sepcli" / "models" / "spmamba-libri2mix"
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == f"wrote {folder} (use it with -m spmamba-libri2mix)"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mix = synthetic_sources(3000, SR, seed=1).sum(0)
    sf.write("mix.wav", mix, SR, subtype="FLOAT")
    r = run("separate", "mix.wav", "-o", "out", "-m", "spmamba-libri2mix", "--segment", "0", "--loudness", "off",
            "--subtype", "FLOAT", "--precision", "fp32")  # auto is bf16 for SPMamba on a CPU with AMX
    assert r.exit_code == 0, r.stderr
    a, _ = sf.read("out/mix_spk1.wav", dtype="float32")
    with torch.no_grad():
        want = model(torch.from_numpy(sf.read("mix.wav", dtype="float32")[0])[None])[0]
    assert a.shape == (3000,)
    # --segment 0 --loudness off: the network's own samples (no gain, its order), within 1e-4 of the peak
    b, _ = sf.read("out/mix_spk2.wav", dtype="float32")
    got = np.stack([a, b])
    assert np.abs(got - want.numpy()).max() <= 1e-4 * np.abs(want.numpy()).max()
    # a second import of the same release without --name: its name is taken, said, nothing written
    r = run("models", "import-spmamba", zpath)
    assert r.exit_code == 2 and r.stderr.endswith("(give --name)\n")
    assert r.stderr.startswith("sepcli: error: the name from conf.yml: 'spmamba-libri2mix' is already taken by "
                               "zoo model")
    assert sorted(p.name for p in folder.parent.iterdir()) == ["spmamba-libri2mix"]


@pytest.fixture
def three_sources(tmp_path, monkeypatch, _sepcli_home):
    """A SEPCLI_ZOO model and a user model beside the shipped ones."""
    site = bandsplit_folder(tmp_path / "zoo" / "site-band", sample_rate=SR)
    monkeypatch.setenv("SEPCLI_ZOO", str(tmp_path / "zoo"))
    mine = bandsplit_folder(_sepcli_home / "models" / "my-band", sample_rate=SR)
    return site, mine


def test_models_lists_every_source_with_its_path(three_sources):
    site, mine = three_sources
    listed = rows()
    assert listed["site-band"]["source"] == "SEPCLI_ZOO" and listed["site-band"]["path"] == str(site)
    assert listed["my-band"]["source"] == "user" and listed["my-band"]["path"] == str(mine)
    assert listed["s4m-tiny-16k"]["source"] == "shipped"
    assert [n for n, m in listed.items() if m["default"]] == ["s4m-tiny-16k"]
    assert listed["s4m-tiny-16k"]["default_why"] == "alias 'default' of a shipped model"
    r = run("models")
    assert r.exit_code == 0 and "my-band" in r.stdout and "SEPCLI_ZOO" in r.stdout and " user " in r.stdout
    assert "* default: s4m-tiny-16k (alias 'default' of a shipped model)" in r.stdout
    for name, m in listed.items():  # what `models` lists as installed is what -m reaches (catalogue rows are not)
        if m["installed"]:
            assert str(registry.resolve(name)) == m["path"]


def test_remove_deletes_user_models_only(three_sources):
    site, mine = three_sources
    shipped = shipped_default()
    for name, source, folder in (("site-band", "SEPCLI_ZOO", site), ("s4m-tiny-16k", "shipped", shipped)):
        r = run("models", "remove", name)
        assert r.exit_code == 2 and r.stderr == (f"sepcli: error: {name!r} is a {source} model ({folder}): only models "
                                                 f"in your model store ({store.models_dir()}) can be removed\n")
        assert (folder / "config.json").is_file()
    r = run("models", "remove", "default")  # an alias is not a name to remove by
    assert r.exit_code == 2 and "no installed model named 'default'" in r.stderr and shipped.is_dir()
    r = run("models", "remove", "nope")
    assert r.exit_code == 2 and r.stderr.startswith("sepcli: error: no installed model named 'nope' (installed: ")
    r = run("models", "remove", "my-band")
    assert r.exit_code == 0 and r.stdout == f"removed my-band ({mine})\n" and r.stderr == ""
    assert not mine.exists() and list(store.models_dir().iterdir()) == []  # no temporary left either
    assert "my-band" not in rows()


def test_default_set_reset_and_the_env_override(three_sources, tmp_path, monkeypatch):
    site, mine = three_sources
    shipped = shipped_default()
    r = run("models", "default")
    assert r.exit_code == 0 and r.stdout == f"default model: s4m-tiny-16k ({shipped}), the alias default\n"
    r = run("models", "default", "my-band")
    assert r.exit_code == 0 and r.stdout.startswith(f"default model: my-band ({mine})")
    assert json.loads(store.settings_path().read_text()) == {"default_model": "my-band"}
    assert sorted(p.name for p in store.home().iterdir()) == ["models", "settings.json"]  # no temporary file left
    assert registry.resolve("default") == mine
    listed = rows()
    assert listed["my-band"]["default"] and listed["my-band"]["default_why"] == "user setting (sepcli models default)"
    assert not listed["s4m-tiny-16k"]["default"]
    assert listed["s4m-tiny-16k"]["aliases"] == []  # its alias `default` no longer leads to it: not listed
    r = run("models", "info", "default")
    assert r.exit_code == 0 and str(mine) in r.stdout
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_sources(SR, SR, seed=2).sum(0), SR)
    r = run("separate", wav, "-o", tmp_path / "o1", "--json")  # no -m: the user's default
    assert r.exit_code == 0, r.stderr
    assert "my-band" in r.stdout and "s4m-tiny-16k" not in r.stdout

    monkeypatch.setenv("SEPCLI_MODEL", "site-band")  # overrides the user's setting
    assert registry.resolve("default") == site
    listed = rows()
    assert listed["site-band"]["default"] and listed["site-band"]["default_why"] == "SEPCLI_MODEL"
    r = run("models", "default")
    assert r.stdout == f"default model: site-band ({site}), from SEPCLI_MODEL\n"
    r = run("models", "default", "s4m-tiny-16k")
    assert r.exit_code == 0 and r.stderr == "sepcli: warning: SEPCLI_MODEL=site-band overrides it in this shell\n"
    monkeypatch.setenv("SEPCLI_MODEL", "nope")
    r = run("separate", wav, "-o", tmp_path / "o2")
    assert r.exit_code == 2 and r.stderr.startswith("sepcli: error: SEPCLI_MODEL=nope: unknown model 'nope'")
    monkeypatch.delenv("SEPCLI_MODEL")

    assert registry.resolve("default") == shipped  # set to the shipped model by name above
    r = run("models", "default", "--reset")
    assert r.exit_code == 0 and r.stdout.startswith("your default model is reset")
    assert json.loads(store.settings_path().read_text()) == {} and registry.resolve("default") == shipped
    assert rows()["s4m-tiny-16k"]["aliases"] == ["default"]
    assert run("models", "default", "--reset").stdout.startswith("no default model was set")


@pytest.mark.parametrize("args,why", [(["nope"], "no installed model named 'nope' (installed: "),
                                      (["default"], "'default' is what this command sets"),
                                      (["./my-band"], "no installed model named './my-band'"),
                                      (["my-band", "--reset"], "give NAME or --reset, not both")])
def test_default_needs_an_installed_model(three_sources, args, why):
    r = run("models", "default", *args)
    assert r.exit_code == 2 and r.stderr.startswith(f"sepcli: error: {why}") and r.stderr.count("\n") == 1
    assert not store.settings_path().exists()


def test_a_removed_default_is_one_clear_line_when_used(three_sources, tmp_path):
    site, mine = three_sources
    assert run("models", "default", "my-band").exit_code == 0
    r = run("models", "remove", "my-band")
    assert r.exit_code == 0 and r.stderr == ("sepcli: warning: 'my-band' was your default model: run `sepcli models "
                                             "default --reset` or choose another\n")
    want = ("your default model 'my-band' (set with `sepcli models default`) is not installed any more: run "
            "`sepcli models default --reset` or choose another")
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_sources(SR, SR, seed=2).sum(0), SR)
    for args in (["separate", wav, "-o", tmp_path / "o"], ["separate", wav, "-o", tmp_path / "o", "-m", "default"],
                 ["models", "info", "default"]):
        r = run(*args)
        assert r.exit_code == 2 and r.stderr == f"sepcli: error: {want}\n", (args, r.stderr)
    assert not (tmp_path / "o").exists()
    r = run("models", "default")
    assert r.exit_code == 1 and r.stderr == f"sepcli: error: {want}\n"
    r = run("models", "--json")  # the list is still shown, with the problem said
    assert r.exit_code == 0 and r.stderr == f"sepcli: warning: {want}\n"
    assert not any(m["default"] for m in json.loads(r.stdout))
    assert run("models", "default", "--reset").exit_code == 0
    assert registry.resolve("default") == shipped_default()


def test_an_unreadable_settings_file_is_one_line(three_sources, tmp_path):
    store.settings_path().write_text("{ not json")
    r = run("models", "default", "my-band")
    assert r.exit_code == 1 and r.stderr == f"sepcli: error: {store.settings_path()}: not valid JSON (fix or delete " \
                                            "it)\n"
    r = run("models", "info", "default")
    assert r.exit_code == 2 and r.stderr.startswith(f"sepcli: error: {store.settings_path()}: not valid JSON")


def test_failed_imports_leave_no_model_in_the_store(tmp_path, _sepcli_home):
    zpath, _ = make_release(tmp_path / "r.zip")
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(zpath.read_bytes()[:-200])
    r = run("models", "import-spmamba", damaged, "--name", "spm")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    models = _sepcli_home / "models"
    assert not models.exists() or list(models.iterdir()) == []
    assert "spm" not in rows() and [n for n, m in rows().items() if m["source"] == "user"] == []
    # a folder left by a crash (a dot name, or no config.json) is never listed as a model
    (models / ".spm.abc123").mkdir(parents=True)
    (models / ".spm.abc123" / "config.json").write_text("{}")
    (models / "half").mkdir()
    assert [n for n, m in rows().items() if m["source"] == "user"] == []
    r = run("models", "import-spmamba", zpath, "--name", "spm")
    assert r.exit_code == 0 and rows()["spm"]["source"] == "user"
    assert os.path.samefile(rows()["spm"]["path"], models / "spm")


@pytest.mark.parametrize("failure", ["disk full", "safetensors error", "SIGTERM", "SIGINT"])
def test_an_import_cut_short_leaves_nothing(tmp_path, monkeypatch, _sepcli_home, failure):
    """The weights file fails half-written (a full disk, as OSError or as safetensors' own error) or the command
    is interrupted there: exit 1 (or 128 + the signal) with one line, and no model, no temporary folder, nothing
    in the temporary directory."""
    import errno
    import signal
    import tempfile

    import safetensors.torch

    from sepcli.cli import Interrupted

    zpath, _ = make_release(tmp_path / "r.zip")
    own_tmp = tmp_path / "systmp"
    own_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(own_tmp))

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        if failure == "disk full":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if failure == "safetensors error":
            raise safetensors.SafetensorError("Error while serializing: IoError(No space left on device)")
        raise Interrupted(signal.SIGTERM if failure == "SIGTERM" else signal.SIGINT)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    r = run("models", "import-spmamba", zpath, "--name", "spm")
    models = _sepcli_home / "models"
    if failure.startswith("SIG"):
        signum = signal.SIGTERM if failure == "SIGTERM" else signal.SIGINT
        assert r.exit_code == 128 + signum
        assert r.stderr == f"sepcli: error: interrupted by {failure}: nothing installed\n"
    else:
        assert r.exit_code == 1 and r.stderr.startswith(f"sepcli: error: {models / 'spm'}: cannot write (")
        assert "No space left on device" in r.stderr and r.stderr.count("\n") == 1
    assert list(models.iterdir()) == [] and list(own_tmp.glob("sepcli*")) == []  # (torch may put its own there)
    assert "spm" not in rows()


def test_a_user_model_taking_a_shipped_name_is_said(_sepcli_home):
    """Made by hand (imports refuse taken names): the store is searched before the shipped zoo, and `models`
    says which name reaches which model."""
    import json as _json

    mine = bandsplit_folder(_sepcli_home / "models" / "mine", sample_rate=SR)
    cfg = _json.loads((mine / "config.json").read_text())
    (mine / "config.json").write_text(_json.dumps({**cfg, "aliases": ["default"]}))
    r = run("models", "--json")
    assert r.exit_code == 0
    assert r.stderr == f"sepcli: warning: 'default' of zoo model {shipped_default()} names {mine} (user models are " \
                       "searched before shipped ones)\n"
    listed = {m["name"]: m for m in json.loads(r.stdout)}
    assert listed["mine"]["default"] and listed["mine"]["default_why"] == "alias 'default' of a user model"
    assert registry.resolve("default") == mine


def test_a_model_not_installed_is_a_usage_error_and_nothing_touches_the_network(tmp_path, monkeypatch):
    """`-m` naming a model that is not installed (e.g. a release not yet pulled) never downloads: one line, exit 2,
    no socket opened, nothing written to the store."""
    import socket

    def no_network(*args, **kw):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    wav = tmp_path / "a.wav"
    sf.write(wav, synthetic_sources(SR, SR, seed=2).sum(0), SR)
    for args in (["separate", wav, "-o", tmp_path / "o", "-m"], ["batch", tmp_path, "-o", tmp_path / "o", "-m"],
                 ["models", "info"]):
        r = run(*args, "spmamba-libri2mix")
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "'spmamba-libri2mix'" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists() and not store.home().joinpath("models").exists()
    with pytest.raises(registry.UnknownName) as info:
        registry.resolve("spmamba-libri2mix")
    assert info.value.name == "spmamba-libri2mix"


def test_a_store_that_cannot_be_created_is_one_line_exit_1(tmp_path, monkeypatch):
    """SEPCLI_HOME naming a file (as a read-only or unwritable home would): the import fails with one line naming
    the model folder and the reason, no traceback (it raised NotADirectoryError out of mkdir)."""
    zpath, _ = make_release(tmp_path / "r.zip")
    home = tmp_path / "home-is-a-file"
    home.write_text("x")
    monkeypatch.setenv("SEPCLI_HOME", str(home))
    r = run("models", "import-spmamba", zpath, "--name", "spm")
    assert r.exit_code == 1
    assert r.stderr == f"sepcli: error: {home / 'models' / 'spm'}: cannot write (Not a directory)\n"
    assert home.read_text() == "x"
