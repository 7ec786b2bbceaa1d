"""Import of official SPMamba checkpoints (sepcli.runtime.spmamba_import) in both released formats."""

from __future__ import annotations

import json
import textwrap
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
    """A conf.yml of the official form with a small network (fast forwards in tests)."""
    return textwrap.dedent(f"""\
        audionet:
          audionet_name: SPMamba
          audionet_config:
            input_dim: 64
            n_srcs: 2
            n_fft: 32
            stride: 8
            window: hann
            n_imics: 1
            n_layers: 2
            lstm_hidden_units: 16
            attn_n_head: 2
            attn_approx_qk_dim: 32
            emb_dim: {emb_dim}
            emb_ks: 4
            emb_hs: 1
            activation: prelu
            eps: 1.0e-5
            use_builtin_complex: False
        datamodule:
          data_name: Libri2MixDataModule
          data_config:
            sample_rate: 8000
        exp:
          exp_name: SPMamba-test
        """)


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
