"""Import of official SPMamba checkpoints (sepcli.runtime.spmamba_import) in both released formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.nets.spmamba import SPMamba
from sepcli.runtime.spmamba_import import CheckpointError, ConfigError, import_spmamba

torch.set_num_threads(1)
runner = CliRunner()

# The official configs/spmamba-librimix.yml network and data sections (JusperLee/SPMamba), as data.
OFFICIAL_LIBRIMIX_YML = """\
audionet:
  audionet_name: SPMamba
  audionet_config:
    input_dim: 64
    n_srcs: 2
    n_fft: 256
    stride: 64
    window: hann
    n_imics: 1
    n_layers: 6
    lstm_hidden_units: 256
    attn_n_head: 4
    attn_approx_qk_dim: 512
    emb_dim: 16
    emb_ks: 8
    emb_hs: 1
    activation: prelu
    eps: 1.0e-5
    use_builtin_complex: False
datamodule:
  data_name: Libri2MixDataModule
  data_config:
    n_src: 2
    sample_rate: 8000
    segment: 3.0
exp:
  exp_name: SPMamba-Libri2Mix
"""


def small_yml(emb_dim: int = 4) -> str:
    """A conf.yml of the official form with a small network (fast forwards in tests), naming it SPMamba."""
    from tests.spmamba_release import small_yml as release_form

    return release_form(emb_dim=emb_dim, audionet_name="SPMamba", exp_name="SPMamba-test")


def official_model(yml_text: str, seed: int = 0) -> SPMamba:
    import yaml

    doc = yaml.safe_load(yml_text)
    torch.manual_seed(seed)
    model = SPMamba(sample_rate=doc["datamodule"]["data_config"]["sample_rate"],
                    **doc["audionet"]["audionet_config"]).eval()
    with torch.no_grad():  # move every parameter away from its init so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def save_best_model(model: SPMamba, path: Path) -> Path:
    # look2hear BaseModel.serialize(): model_name, state_dict (no prefix), model_args, infos
    torch.save({"model_name": "SPMamba", "state_dict": model.state_dict(), "model_args": {"n_sample_rate": 2},
                "infos": {"software_versions": {"torch_version": "2.1.0", "pytorch_lightning_version": "2.1.0"}}},
               path)
    return path


def save_lightning(model: SPMamba, path: Path) -> Path:
    sd = {"audio_model." + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 41, "global_step": 12345, "pytorch-lightning_version": "2.1.0", "state_dict": sd,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 41}}}},
                "callbacks": {"ModelCheckpoint{'monitor': 'val_loss/dataloader_idx_0'}": {"best_model_score":
                                                                                          torch.tensor(-15.2)}},
                "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                                      "param_groups": [{"lr": 0.001, "params": [0]}]}],
                "lr_schedulers": [{"best": -15.2, "patience": 10}],
                "hyper_parameters": {"config": {"optimizer": {"lr": 0.001}}}}, path)
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["best_model", "lightning"])
def test_round_trip_gives_identical_outputs(tmp_path, fmt):
    from sepcli.runtime.loader import load_model

    yml = write(tmp_path / "conf.yml", small_yml())
    model = official_model(small_yml(), seed=1)
    ckpt = (save_best_model(model, tmp_path / "best_model.pth") if fmt == "best_model"
            else save_lightning(model, tmp_path / "epoch=41.ckpt"))
    folder = import_spmamba(yml, ckpt, tmp_path / "imported", name="my-spmamba")
    assert folder == tmp_path / "imported"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.safetensors"]

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["arch"] == "spmamba" and cfg["name"] == "my-spmamba"
    assert cfg["sample_rate"] == 8000 and cfg["n_src"] == 2
    assert cfg["arch_args"]["emb_dim"] == 4 and cfg["arch_args"]["sample_rate"] == 8000
    assert cfg["segment"] > 0 and 0 <= cfg["overlap"] <= 0.5 and cfg["input_loudness"] is None
    assert cfg["provenance"]["checkpoint"] == ckpt.name
    assert cfg["provenance"]["checkpoint_format"] == fmt
    if fmt == "lightning":
        assert cfg["provenance"]["epoch"] == 41

    loaded = load_model(folder)
    assert loaded.sample_rate == 8000 and loaded.n_src == 2
    x = torch.randn(2, 700)
    with torch.no_grad():
        want = model(x)
        got = loaded.network(x)
    assert torch.equal(got, want)


def test_official_librimix_config_full_size(tmp_path):
    yml = write(tmp_path / "conf.yml", OFFICIAL_LIBRIMIX_YML)
    model = official_model(OFFICIAL_LIBRIMIX_YML, seed=2)
    ckpt = save_lightning(model, tmp_path / "last.ckpt")
    folder = import_spmamba(yml, ckpt, tmp_path / "spm8k")
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "weights.safetensors"))
    assert sum(t.numel() for t in tensors.values()) == 6_094_498
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v), k
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["name"] == "spm8k" and cfg["provenance"]["exp_name"] == "SPMamba-Libri2Mix"


def test_wrong_shapes_fail_clearly_and_write_nothing(tmp_path):
    yml = write(tmp_path / "conf.yml", small_yml(emb_dim=8))  # config says emb_dim 8, checkpoint has 4
    ckpt = save_best_model(official_model(small_yml(emb_dim=4)), tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError) as info:
        import_spmamba(yml, ckpt, tmp_path / "out")
    msg = str(info.value)
    assert "\n" not in msg and "best_model.pth" in msg and "wrong shape" in msg
    assert "conv.0.weight (4, 2, 3, 3) != (8, 2, 3, 3)" in msg
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    yml = write(tmp_path / "conf.yml", small_yml())
    sd = official_model(small_yml()).state_dict()
    del sd["deconv.bias"]
    sd["extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "best_model.pth"
    torch.save({"model_name": "SPMamba", "state_dict": sd}, ckpt)
    with pytest.raises(CheckpointError, match=r"1 missing: deconv\.bias.*1 unexpected: extra\.weight"):
        import_spmamba(yml, ckpt, tmp_path / "out")


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    yml = write(tmp_path / "conf.yml", small_yml())
    ckpt = tmp_path / "best_model.pth"
    torch.save({"state_dict": {"conv.0.weight": torch.zeros(1)}, "payload": _Evil(str(marker))}, ckpt)
    with pytest.raises(CheckpointError, match="weights_only") as info:
        import_spmamba(yml, ckpt, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # one line: the file, what it is, the global torch refused; never torch's advice to load it unsafely
    msg = str(info.value)
    assert msg.startswith(f"{ckpt}: not a plain weights checkpoint") and "\n" not in msg
    assert "refused global io.open" in msg or "refused global builtins.open" in msg, msg
    assert "False" not in msg and "trust" not in msg
    r = runner.invoke(app, ["models", "import-spmamba", "--config", str(yml), "--checkpoint", str(ckpt),
                            "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr == f"sepcli: error: {msg}\n"
    assert not marker.exists()


@pytest.mark.parametrize("key,value", [("emb_dim", "-4"), ("n_layers", "0"), ("emb_ks", "2.5"),
                                       ("attn_n_head", "true"), ("eps", "-1.0"), ("window", "[1, 2]")])
def test_nonsensical_config_values_are_one_line_usage_errors(tmp_path, key, value):
    """A value no SPMamba can have (e.g. emb_dim: -4 made torch raise a RuntimeError traceback) is refused as data:
    one line naming conf.yml, the key and the value; the CLI exits 2 and writes nothing."""
    import re

    text = small_yml()
    text, n = re.subn(rf"^(\s+{key}:) .*$", rf"\1 {value}", text, flags=re.M)
    assert n == 1
    yml = write(tmp_path / "conf.yml", text)
    ckpt = save_best_model(official_model(small_yml()), tmp_path / "best_model.pth")
    with pytest.raises(ConfigError) as info:
        import_spmamba(yml, ckpt, tmp_path / "out")
    msg = str(info.value)
    assert msg.startswith(f"{yml}: audionet.audionet_config.{key} must be ") and "\n" not in msg
    assert msg.endswith(f"got {yaml_value(value)!r}"), msg
    r = runner.invoke(app, ["models", "import-spmamba", "--config", str(yml), "--checkpoint", str(ckpt),
                            "--out", str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr == f"sepcli: error: {msg}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pth", "conf.yml"]


def yaml_value(text: str):
    import yaml

    return yaml.safe_load(text)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_imported_folder_gets_the_modes_of_the_umask(tmp_path, umask):
    """Not tempfile's 0700 folder and safetensors' 0600 file: the folder and files an ordinary mkdir / open
    would make, so other users can read an installed model (0755/0644 under umask 022)."""
    import os
    import stat

    yml = write(tmp_path / "conf.yml", small_yml())
    ckpt = save_best_model(official_model(small_yml()), tmp_path / "best_model.pth")
    old = os.umask(umask)
    try:
        folder = import_spmamba(yml, ckpt, tmp_path / "zoo" / "spm")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o777 & ~umask  # the parent it created
    for f in ("config.json", "weights.safetensors"):
        assert stat.S_IMODE((folder / f).stat().st_mode) == 0o666 & ~umask, f


def test_bad_config_and_files(tmp_path):
    ckpt = save_best_model(official_model(small_yml()), tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError, match="audionet"):
        import_spmamba(write(tmp_path / "a.yml", "foo: 1\n"), ckpt, tmp_path / "o1")
    with pytest.raises(CheckpointError, match="invalid YAML"):
        import_spmamba(write(tmp_path / "b.yml", "a: [1,\n"), ckpt, tmp_path / "o2")
    with pytest.raises(CheckpointError, match="not found"):
        import_spmamba(write(tmp_path / "c.yml", small_yml()), tmp_path / "nope.pth", tmp_path / "o3")
    with pytest.raises(CheckpointError, match="TFGridNet"):
        import_spmamba(write(tmp_path / "d.yml", small_yml().replace("audionet_name: SPMamba",
                                                                     "audionet_name: TFGridNet")),
                       ckpt, tmp_path / "o4")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(CheckpointError, match="already exists"):
        import_spmamba(tmp_path / "c.yml", ckpt, tmp_path / "taken")
    assert (tmp_path / "taken" / "x").read_text() == "keep"
    garbage = write(tmp_path / "garbage.pth", "not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        import_spmamba(tmp_path / "c.yml", garbage, tmp_path / "o5")


def test_absurd_config_sizes_are_refused_without_allocating(tmp_path):
    # A config whose network would need terabytes (embedding width 2**20) against a small checkpoint: shapes are
    # compared on the meta device before any memory is allocated, so this is a shape mismatch, not a failed (or,
    # with overcommit, an OOM-killing) allocation.
    yml = write(tmp_path / "conf.yml", small_yml(emb_dim=2**20))
    ckpt = save_best_model(official_model(small_yml()), tmp_path / "best_model.pth")
    with pytest.raises(CheckpointError) as info:
        import_spmamba(yml, ckpt, tmp_path / "out")
    msg = str(info.value)
    assert not isinstance(info.value, ConfigError) and "wrong shape (checkpoint != config)" in msg, msg
    assert str(2**20) in msg and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- the released files (import_release)
import hashlib  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import zipfile  # noqa: E402

from sepcli.runtime import archive  # noqa: E402
from sepcli.runtime.spmamba_import import import_release, official_key, suggest_name  # noqa: E402
from tests.spmamba_release import (  # noqa: E402
    make_release,
    random_spmamba,
    release_checkpoint,
    release_key,
    release_zip,
)
from tests.spmamba_release import small_yml as release_yml  # noqa: E402


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """tempfile's folder pointed at an empty folder of this test's, to show that no sepcli-import-* folder is left
    in it (torch may create folders of its own there)."""
    t = tmp_path / "systmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def assert_nothing_left(parent: Path, own_tmp: Path, out: str = "out") -> None:
    """No model folder `out`, no temporary (dot) folder beside it, nothing in the temporary folder."""
    assert not (parent / out).exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(".")] == []
    assert list(own_tmp.glob("sepcli*")) == []


def test_release_zip_imports_the_renamed_tensors_and_separates_identically(tmp_path, own_tmp):
    """The release as published: TFGridNetMamba in conf.yml and in the checkpoint, `.layers.` keys, a TorchVersion
    object in infos, everything in a sub-folder of the zip. Our network from the import has exactly the source
    network's tensors (under our names) and gives exactly its output."""
    from safetensors.torch import load_file

    from sepcli.runtime.loader import load_model

    zpath, model = make_release(tmp_path / "SPMamba-LibriMix.zip", seed=3)
    with zipfile.ZipFile(zpath) as zf:  # the test file is in the release format
        obj = torch.load(io.BytesIO(zf.read("SPMamba-LibriMix/best_model.pth")), weights_only=False)
    assert obj["model_name"] == "TFGridNetMamba"
    assert type(obj["infos"]["software_versions"]["torch_version"]).__name__ == "TorchVersion"
    assert any(".layers." in k for k in obj["state_dict"]) and not any("_blocks." in k for k in obj["state_dict"])

    result = import_release(zpath, tmp_path / "out", name="spm")
    assert result.folder == tmp_path / "out" and result.checkpoint_member == "SPMamba-LibriMix/best_model.pth"
    assert result.notes == []
    tensors = load_file(str(tmp_path / "out" / "weights.safetensors"))
    assert tensors.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(tensors[k], v), k
        assert torch.equal(obj["state_dict"][release_key(k)], v), k  # the renaming is the inverse of ours
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    prov = cfg["provenance"]
    assert cfg["name"] == "spm" and cfg["sample_rate"] == 8000
    assert prov["archive"] == zpath.name and prov["archive_sha256"] == hashlib.sha256(zpath.read_bytes()).hexdigest()
    assert prov["checkpoint"] == "SPMamba-LibriMix/best_model.pth" and prov["model_name"] == "TFGridNetMamba"
    assert prov["trained_with_torch"] == torch.__version__
    loaded = load_model(tmp_path / "out")
    x = torch.randn(1, 900)
    with torch.no_grad():
        assert torch.equal(loaded.network(x), model(x))
    assert_nothing_left(tmp_path, own_tmp, out="nothing")
    # the allowance for TorchVersion was for that one load only
    assert not any(getattr(g, "__name__", "") == "TorchVersion" for g in torch.serialization.get_safe_globals())


@pytest.mark.parametrize("kind", ["zip", "folder", "file"])
@pytest.mark.parametrize("model_name,release_naming", [("TFGridNetMamba", True), ("SPMamba", False),
                                                       ("SPMamba", True), ("TFGridNetMamba", False)])
def test_zip_folder_and_file_sources_with_both_namings(tmp_path, own_tmp, kind, model_name, release_naming):
    text = release_yml(audionet_name=model_name)
    model = random_spmamba(text, seed=5)
    ck = release_checkpoint(model, model_name=model_name, release_naming=release_naming)
    config = None
    if kind == "zip":
        source = release_zip(tmp_path / "release.zip", text, ck, folder="a/b/")
    elif kind == "folder":
        source = tmp_path / "unzipped"
        (source / "SPMamba").mkdir(parents=True)
        (source / "SPMamba" / "conf.yml").write_text(text)
        (source / "SPMamba" / "best_model.pth").write_bytes(ck)
    else:
        source = tmp_path / "best_model.pth"
        source.write_bytes(ck)
        config = write(tmp_path / "conf.yml", text)
    import_release(source, tmp_path / "out", name="spm", config=config)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "out" / "weights.safetensors"))
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert list(own_tmp.glob("sepcli*")) == []


def test_official_key_renames_only_the_mamba_layers():
    assert official_key("blocks.0.intra_mamba.layers.0.mixer.A_log") == \
        "blocks.0.intra_mamba.forward_blocks.0.mixer.A_log"
    assert official_key("blocks.1.inter_mamba.backward_layers.0.norm.weight") == \
        "blocks.1.inter_mamba.backward_blocks.0.norm.weight"
    assert official_key("blocks.0.intra_mamba.forward_blocks.0.mixer.D") == \
        "blocks.0.intra_mamba.forward_blocks.0.mixer.D"
    assert official_key("conv.0.weight") == "conv.0.weight"
    # our network has no other component of those names, so the renaming cannot touch another tensor
    keys = random_spmamba(release_yml()).state_dict()
    assert not any(p in ("layers", "backward_layers") for k in keys for p in k.split("."))


def test_a_checkpoint_file_needs_config_and_a_checkpoint_with_both_namings_is_refused(tmp_path, own_tmp):
    model = random_spmamba(release_yml())
    ck = tmp_path / "best_model.pth"
    ck.write_bytes(release_checkpoint(model))
    with pytest.raises(ConfigError, match="--config"):
        import_release(ck, tmp_path / "out", name="x")
    sd = model.state_dict()
    both = {**sd, **{release_key(k): v for k, v in sd.items()}}
    torch.save({"model_name": "TFGridNetMamba", "state_dict": both}, ck)
    with pytest.raises(CheckpointError, match="both namings"):
        import_release(ck, tmp_path / "out", name="x", config=write(tmp_path / "conf.yml", release_yml()))
    torch.save({"model_name": "TFGridNet", "state_dict": sd}, ck)
    with pytest.raises(CheckpointError, match="model_name is 'TFGridNet'"):
        import_release(ck, tmp_path / "out", name="x", config=tmp_path / "conf.yml")
    assert_nothing_left(tmp_path, own_tmp)


class _System:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):  # unpickling this would run a shell command
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):  # unpickling this would evaluate Python code
        return (eval, (self.code,))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_release_whose_pickle_would_run_code_is_refused_and_nothing_runs(tmp_path, own_tmp, payload):
    """TorchVersion is allowed, nothing else: a best_model.pth in the release format (TorchVersion in infos) that
    also carries os.system or eval is refused, naming the global, and the payload, which would create a file,
    never runs."""
    marker = tmp_path / f"pwned-{payload}"
    evil = _System(f"touch {marker}") if payload == "system" else _Eval(f"open({str(marker)!r}, 'w')")
    text = release_yml()
    zpath = release_zip(tmp_path / "release.zip", text, release_checkpoint(random_spmamba(text), payload=evil))
    with pytest.raises(CheckpointError) as info:
        import_release(zpath, tmp_path / "out", name="x")
    msg = str(info.value)
    want = "posix.system" if payload == "system" else "eval"  # torch names a builtin by its bare name
    assert msg.startswith(f"{zpath}:SPMamba-LibriMix/best_model.pth: not a plain weights checkpoint"), msg
    assert msg.endswith(f"(refused global {want})") and "\n" not in msg
    assert not marker.exists()
    r = runner.invoke(app, ["models", "import-spmamba", str(zpath), "--name", "evil"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr == f"sepcli: error: {msg}\n"
    assert not marker.exists()
    assert_nothing_left(tmp_path, own_tmp)


def test_a_conf_yml_of_another_sample_rate_is_one_line_naming_both(tmp_path, own_tmp):
    """Weights of an 8 kHz release (n_fft 256: 129 frequency bins) with the conf.yml of a 16 kHz one (n_fft 512)."""
    weights_yml = release_yml(n_fft=256, stride=64, sample_rate=8000)
    ck = release_checkpoint(random_spmamba(weights_yml))
    zpath = release_zip(tmp_path / "release.zip", release_yml(n_fft=512, stride=128, sample_rate=16000), ck)
    with pytest.raises(CheckpointError) as info:
        import_release(zpath, tmp_path / "out", name="x")
    msg = str(info.value)
    assert not isinstance(info.value, ConfigError) and "\n" not in msg
    assert msg == (f"{zpath}:SPMamba-LibriMix/best_model.pth: the weights are a 8000 Hz model (129 frequency "
                   f"bins, n_fft 256) but {zpath}:SPMamba-LibriMix/conf.yml says 16000 Hz with n_fft 512 (257 bins): "
                   "give the conf.yml released with this checkpoint")
    assert_nothing_left(tmp_path, own_tmp)
    # the same weights with a conf.yml that says 16000 Hz but keeps n_fft 256: imported, with a note
    zpath = release_zip(tmp_path / "r2.zip", release_yml(n_fft=256, stride=64, sample_rate=16000), ck)
    result = import_release(zpath, tmp_path / "out", name="x")
    assert len(result.notes) == 1 and "says 16000 Hz" in result.notes[0] and "official 8000 Hz" in result.notes[0]


def test_several_checkpoints_best_model_is_taken_and_said(tmp_path, own_tmp):
    text = release_yml()
    model = random_spmamba(text, seed=7)
    other = release_checkpoint(random_spmamba(text, seed=8))
    zpath = release_zip(tmp_path / "release.zip", text, release_checkpoint(model), folder="exp/SPMamba/",
                        extra={"exp/SPMamba/last.pth": other, "exp/SPMamba/epoch=99.ckpt": b"not read",
                               "best_model.pth.bak/x.yml": b"a: 1", "__MACOSX/exp/SPMamba/._best_model.pth": b"junk",
                               "exp/SPMamba/.hidden/best_model.pth": b"junk"})
    result = import_release(zpath, tmp_path / "out", name="x")
    assert result.checkpoint_member == "exp/SPMamba/best_model.pth"
    took = f"{zpath} holds 3 checkpoints: took exp/SPMamba/best_model.pth (not "
    assert any(n.startswith(took) for n in result.notes), result.notes
    assert any("took exp/SPMamba/conf.yml as the training config" in n for n in result.notes)
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "out" / "weights.safetensors"))
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    r = runner.invoke(app, ["models", "import-spmamba", str(zpath), "--name", "spm"], catch_exceptions=False)
    assert r.exit_code == 0
    notes = [ln for ln in r.stderr.splitlines() if ln.startswith("sepcli: note: ")]
    assert any("took exp/SPMamba/best_model.pth" in n for n in notes), r.stderr
    # no best_model.pth: another .pth before a .ckpt
    zpath = release_zip(tmp_path / "r2.zip", text, b"", extra={"w/final.pth": release_checkpoint(model),
                                                              "w/last.ckpt": b"x"})
    with zipfile.ZipFile(zpath) as zf:
        names = zf.namelist()
    import sepcli.runtime.spmamba_import as imp

    ck, conf, notes = imp.choose([n for n in names if not n.endswith("best_model.pth")], "r2.zip", True)
    assert (ck, conf) == ("w/final.pth", "SPMamba-LibriMix/conf.yml") and "took w/final.pth" in notes[0]


def _symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("evil", ["../../evil.txt", "SPMamba/../../../evil.txt", "/tmp/sepcli-evil.txt",
                                  "..\\..\\evil.txt", "C:/evil.txt"])
def test_zip_slip_names_are_refused_and_nothing_is_written_outside(tmp_path, own_tmp, monkeypatch, evil):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    text = release_yml()
    zpath = release_zip(tmp_path / "release.zip", text, release_checkpoint(random_spmamba(text)),
                        extra={evil: b"owned"})
    before = sorted(tmp_path.rglob("*"))
    r = runner.invoke(app, ["models", "import-spmamba", str(zpath), "--name", "x"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr == f"sepcli: error: {zpath}: member name {evil!r} points outside the archive's folder; refused\n"
    assert sorted(tmp_path.rglob("*")) == before
    assert not Path("/tmp/sepcli-evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (work / evil).exists()
    assert list(own_tmp.glob("sepcli*")) == []


def test_symlink_members_are_never_followed_or_taken(tmp_path, own_tmp, monkeypatch):
    """A symbolic-link member (to a file outside, and one named like the checkpoint) is not a candidate: the real
    files are imported and no link is made."""
    monkeypatch.chdir(tmp_path)
    text = release_yml()
    model = random_spmamba(text, seed=9)
    zpath = tmp_path / "release.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(_symlink_member("SPMamba/link", "../../outside"), "../../outside")
        zf.writestr(_symlink_member("best_model.pth", "/etc/passwd"), "/etc/passwd")
        zf.writestr("SPMamba/conf.yml", text)
        zf.writestr("SPMamba/best_model.pth", release_checkpoint(model))
    result = import_release(zpath, tmp_path / "out", name="x")
    assert result.checkpoint_member == "SPMamba/best_model.pth" and result.notes == []
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))
    assert not (tmp_path.parent.parent / "outside").exists()
    # only links: no checkpoint at all
    with zipfile.ZipFile(tmp_path / "links.zip", "w") as zf:
        zf.writestr(_symlink_member("best_model.pth", "/etc/passwd"), "/etc/passwd")
        zf.writestr("conf.yml", text)
    with pytest.raises(CheckpointError, match="no checkpoint in it"):
        import_release(tmp_path / "links.zip", tmp_path / "out2", name="x")
    assert_nothing_left(tmp_path, own_tmp, out="out2")


BOMB_MB = 300


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A release zip whose best_model.pth inflates to 300 MB of zeros (about 300 kB on disk)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("SPMamba/conf.yml", release_yml())
        with zf.open("SPMamba/best_model.pth", "w", force_zip64=True) as f:
            for _ in range(BOMB_MB):
                f.write(zeros)
    return path


@pytest.fixture
def inflated(monkeypatch):
    """Counts the bytes zipfile inflates while the test runs."""
    count = [0]
    real = zipfile.ZipExtFile.read

    def read(self, n=-1):
        out = real(self, n)
        count[0] += len(out)
        return out

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read)
    return count


def _patch_sizes(data: bytes, member: str, size: int) -> bytes:
    """The zip `data` with `member`'s uncompressed size changed to `size` in its central directory entry (what
    zipfile trusts) and its local header: a header that lies."""
    data = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(member)
    name = member.encode()
    central = data.find(b"PK\x01\x02")
    while central != -1:  # the central directory entry of `member`
        n = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46:central + 46 + n]) == name:
            break
        central = data.find(b"PK\x01\x02", central + 4)
    assert central != -1 and struct.unpack_from("<I", data, central + 24)[0] == info.file_size
    struct.pack_into("<I", data, central + 24, size)
    struct.pack_into("<I", data, info.header_offset + 22, size)
    return bytes(data)


def test_a_zip_bomb_is_refused_before_inflating(bomb, tmp_path, own_tmp, inflated):
    assert bomb.stat().st_size < 2 << 20
    r = runner.invoke(app, ["models", "import-spmamba", str(bomb), "--name", "boom"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"sepcli: error: {bomb}: member 'SPMamba/best_model.pth' would inflate ")
    assert f"to {BOMB_MB}.0 MiB (over 100 times: a zip bomb?); refused" in r.stderr
    assert inflated[0] < 64 << 10  # conf.yml at most
    home = Path(os.environ["SEPCLI_HOME"])
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []
    assert list(own_tmp.glob("sepcli*")) == []


def test_a_member_whose_header_lies_about_its_size_is_refused(bomb, tmp_path, own_tmp, inflated):
    """The bomb's checkpoint declared as 5000 bytes (passes the ratio check): reading stops at the declared size
    and the member is refused as damaged, not inflated to 300 MB. Declared larger than it is: refused too."""
    lying = tmp_path / "lying.zip"
    lying.write_bytes(_patch_sizes(bomb.read_bytes(), "SPMamba/best_model.pth", 5000))
    with pytest.raises(CheckpointError) as info:
        import_release(lying, tmp_path / "out", name="x")
    assert str(info.value).startswith(f"{lying}: member 'SPMamba/best_model.pth' is damaged (Bad CRC-32"), info.value
    assert inflated[0] < 1 << 20
    assert_nothing_left(tmp_path, own_tmp)

    text = release_yml()
    good = release_zip(tmp_path / "good.zip", text, release_checkpoint(random_spmamba(text)))
    with zipfile.ZipFile(good) as zf:
        size = zf.getinfo("SPMamba-LibriMix/best_model.pth").file_size
    longer = tmp_path / "longer.zip"
    longer.write_bytes(_patch_sizes(good.read_bytes(), "SPMamba-LibriMix/best_model.pth", size + 1000))
    with pytest.raises(CheckpointError) as info:
        import_release(longer, tmp_path / "out", name="x")
    msg = str(info.value)
    assert msg.startswith(f"{longer}: member 'SPMamba-LibriMix/best_model.pth' ") and "\n" not in msg
    assert "shorter than its header says" in msg or "damaged" in msg or "truncated" in msg, msg
    assert_nothing_left(tmp_path, own_tmp)


def test_the_read_cap_stops_a_member_whatever_its_header(tmp_path, own_tmp, monkeypatch):
    """With the caps lowered below the test release's sizes: the total, and the cap of one member's copy."""
    text = release_yml()
    zpath = release_zip(tmp_path / "release.zip", text, release_checkpoint(random_spmamba(text)))
    monkeypatch.setattr(archive, "MAX_TOTAL", 10_000)
    with pytest.raises(CheckpointError, match=r"members would inflate to .* over the .* limit; refused"):
        import_release(zpath, tmp_path / "out", name="x")
    monkeypatch.setattr(archive, "MAX_TOTAL", 2 << 30)
    import sepcli.runtime.spmamba_import as imp

    monkeypatch.setattr(imp, "CHECKPOINT_CAP", 10_000)
    with pytest.raises(CheckpointError, match=r"member 'SPMamba-LibriMix/best_model.pth' is .* over the .* limit"):
        import_release(zpath, tmp_path / "out", name="x")
    assert_nothing_left(tmp_path, own_tmp)
    with archive.SafeZip(zpath) as zf:  # a member larger than declared is cut at the cap while reading
        m = next(m for m in zf.members if m.name.endswith(".pth"))
        object.__setattr__(m, "size", 100)  # as if the header said 100 bytes
        with pytest.raises(archive.ArchiveError, match="larger than its header says"):
            zf.copy(m, tmp_path / "copy", cap=1 << 30)
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "garbage", "empty"])
def test_a_truncated_or_corrupt_zip_is_one_line_exit_1(tmp_path, own_tmp, damage):
    text = release_yml()
    good = release_zip(tmp_path / "release.zip", text, release_checkpoint(random_spmamba(text))).read_bytes()
    bad = tmp_path / "bad.zip"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "corrupt":  # bytes in the middle of the deflated checkpoint flipped
        data = bytearray(good)
        for i in range(len(data) // 2, len(data) // 2 + 64):
            data[i] ^= 0xA5
        bad.write_bytes(bytes(data))
    elif damage == "garbage":
        bad.write_bytes(np_bytes(5000))
    else:
        bad.write_bytes(b"")
    r = runner.invoke(app, ["models", "import-spmamba", str(bad), "--name", "x"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith(f"sepcli: error: {bad}"), r.stderr
    assert "Traceback" not in r.stderr
    if damage != "corrupt":
        assert "not a readable zip archive" in r.stderr
    else:
        assert "damaged" in r.stderr or "truncated" in r.stderr or "not a readable" in r.stderr, r.stderr
    home = Path(os.environ["SEPCLI_HOME"])
    assert not (home / "models").exists() or list((home / "models").iterdir()) == []
    assert list(own_tmp.glob("sepcli*")) == []


def np_bytes(n: int) -> bytes:
    import numpy as np

    return np.random.default_rng(0).bytes(n)


def test_no_conf_yml_is_a_usage_error_and_another_config_can_be_given(tmp_path, own_tmp):
    text = release_yml()
    model = random_spmamba(text)
    zpath = tmp_path / "noconf.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("x/best_model.pth", release_checkpoint(model))
    r = runner.invoke(app, ["models", "import-spmamba", str(zpath), "--name", "x"], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr == f"sepcli: error: {zpath}: no conf.yml in it; give the training config " \
                                            "with --config\n"
    conf = write(tmp_path / "conf.yml", text)
    r = runner.invoke(app, ["models", "import-spmamba", str(zpath), "--config", str(conf), "--out",
                            str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "out" / "config.json").read_text())["provenance"]["config"] == "conf.yml"


def test_suggested_names(tmp_path):
    zpath, _ = make_release(tmp_path / "r.zip")
    assert suggest_name(zpath) == "spmamba-libri2mix"
    assert suggest_name(zpath, write(tmp_path / "c.yml", release_yml(exp_name="Echo2Mix"))) == "spmamba-echo2mix"
    text = release_yml(exp_name="''").replace("data_name: Libri2MixDataModule", "data_name: WHAMDataModule")
    assert suggest_name(zpath, write(tmp_path / "d.yml", text)) == "spmamba-wham"
    text = text.replace("data_name: WHAMDataModule", "other: 1")
    assert suggest_name(zpath, write(tmp_path / "e.yml", text)) == "spmamba-8k"


def test_replace_swaps_a_model_only_when_the_new_one_is_complete(tmp_path, own_tmp):
    z1, m1 = make_release(tmp_path / "r1.zip", seed=1)
    z2, m2 = make_release(tmp_path / "r2.zip", seed=2)
    out = tmp_path / "models" / "spm"
    import_release(z1, out, name="spm", provenance={"url": "https://example.invalid/r1.zip", "sha256": "ab" * 32})
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["url"] == "https://example.invalid/r1.zip" and prov["sha256"] == "ab" * 32
    before = (out / "weights.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="already exists and is not an empty folder"):
        import_release(z2, out, name="spm")
    assert (out / "weights.safetensors").read_bytes() == before
    bad = tmp_path / "bad.zip"
    bad.write_bytes(z2.read_bytes()[:1000])
    with pytest.raises(CheckpointError):
        import_release(bad, out, name="spm", replace=True)  # a failed replacement keeps the old model
    assert (out / "weights.safetensors").read_bytes() == before
    import_release(z2, out, name="spm", replace=True)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "weights.safetensors"))
    assert all(torch.equal(tensors[k], v) for k, v in m2.state_dict().items())
    assert sorted(p.name for p in out.parent.iterdir()) == ["spm"]
    assert list(own_tmp.glob("sepcli*")) == []


def test_a_config_given_as_source_is_said(tmp_path):
    conf = write(tmp_path / "conf.yml", release_yml())
    r = runner.invoke(app, ["models", "import-spmamba", str(conf)], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr == (f"sepcli: error: {conf}: a config, not a release: give the release zip, "
                                             "its folder or the checkpoint, and this file with --config\n")
    ck = tmp_path / "best_model.pth"
    ck.write_bytes(release_checkpoint(random_spmamba(release_yml())))
    r = runner.invoke(app, ["models", "import-spmamba", str(ck)], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr == (f"sepcli: error: {ck}: a checkpoint file needs its training config: "
                                             "give --config conf.yml\n")


def test_an_interrupted_replacement_keeps_the_previous_model(tmp_path, own_tmp, monkeypatch):
    """Ctrl-C (or SIGTERM) between moving the old model aside and renaming the new one into place: the old model
    is put back, not deleted with the temporaries (the finally removed it, leaving no model at all)."""
    import sepcli.runtime.spmamba_install as imp  # its os.replace renames the model into place

    z1, _ = make_release(tmp_path / "r1.zip", seed=1)
    z2, _ = make_release(tmp_path / "r2.zip", seed=2)
    out = tmp_path / "models" / "spm"
    import_release(z1, out, name="spm")
    before = (out / "weights.safetensors").read_bytes()
    real, calls = os.replace, []

    def replace(src, dst):
        if Path(dst) == out and not calls:  # the new model's rename into place (the first rename to `out`)
            calls.append(src)
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(imp.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        import_release(z2, out, name="spm", replace=True)
    monkeypatch.setattr(imp.os, "replace", real)
    assert calls and Path(calls[0]).name.startswith(".spm.")  # the interruption came at that rename
    assert (out / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["spm"]
    assert list(own_tmp.glob("sepcli*")) == []


@pytest.mark.parametrize("name,data", [("notes.txt", b"hello\n"), ("mix.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ")])
def test_a_source_of_another_kind_is_said_as_such(tmp_path, name, data):
    """A file that is neither a zip nor a checkpoint (by its ending) was called 'a checkpoint file' that needs
    --config: the line now says what SOURCE may be. With --config it is still tried as a checkpoint (any name)."""
    src = tmp_path / name
    src.write_bytes(data)
    r = runner.invoke(app, ["models", "import-spmamba", str(src)], catch_exceptions=False)
    assert r.exit_code == 2 and r.stderr == (
        f"sepcli: error: {src}: not a release zip, a release folder or a checkpoint (.pth, .pt, .ckpt); "
        "a checkpoint under another name needs --config conf.yml\n")
    r = runner.invoke(app, ["models", "import-spmamba", str(src), "--config", str(write(tmp_path / "conf.yml",
                                                                                          release_yml())),
                            "--name", "x"], catch_exceptions=False)
    assert r.exit_code == 1 and r.stderr.startswith(f"sepcli: error: {src}: ") and r.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "conf.yml"])  # nothing written


def test_a_checkpoint_whose_own_records_are_a_zip_bomb_is_refused_before_loading(tmp_path, own_tmp, monkeypatch):
    """A PyTorch checkpoint is itself a zip, and torch.load inflates deflated records (measured: a 195 kB file
    loaded as a 200 MB tensor). Inside a release zip it passes the outer checks (deflated data does not deflate
    again), so the checkpoint's own records get the same limits before torch reads it. Limits lowered so that a
    4 MB tensor of zeros stands for the bomb."""
    import sepcli.runtime.spmamba_import as imp

    text = release_yml()
    model = random_spmamba(text)
    plain = zipfile.ZipFile(io.BytesIO(release_checkpoint(model, padding=torch.zeros(1 << 20))))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # every record deflated
        for info in plain.infolist():
            zf.writestr(info.filename, plain.read(info.filename))
    zpath = release_zip(tmp_path / "release.zip", text, buf.getvalue())
    monkeypatch.setattr(archive, "RATIO_FLOOR", 1 << 20)
    loads = []
    real = imp._load_pickle
    monkeypatch.setattr(imp, "_load_pickle", lambda p: loads.append(p) or real(p))
    with pytest.raises(CheckpointError) as info:
        import_release(zpath, tmp_path / "out", name="x")
    msg = str(info.value)
    assert msg.startswith(f"{zpath}:SPMamba-LibriMix/best_model.pth (a PyTorch zip): member ") and "\n" not in msg
    assert "(over 100 times: a zip bomb?); refused" in msg and loads == []
    assert_nothing_left(tmp_path, own_tmp)
    monkeypatch.setattr(archive, "RATIO_FLOOR", 4 << 20)  # the real limits: the same file imports
    import_release(zpath, tmp_path / "out", name="x")
