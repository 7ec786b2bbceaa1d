"""Model registry, loader (config validation, safe weight loading) and device choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sepcli
from sepcli.runtime import registry
from sepcli.runtime.device import inference_dtype, select_device
from sepcli.runtime.loader import ModelError, UnknownModel, load_model, read_config, weights_summary
from tests.testnets import BandSplit, bandsplit_folder, lowpass_taps


def test_load_folder_builds_network_and_loads_weights(tmp_path):
    folder = bandsplit_folder(tmp_path / "m", sample_rate=16000, segment=2.0)
    m = load_model(folder)
    assert isinstance(m.network, BandSplit) and not m.network.training
    torch.testing.assert_close(m.network.fir.data, lowpass_taps(15))
    assert (m.sample_rate, m.n_src, m.segment, m.overlap, m.input_loudness) == (16000, 2, 2.0, 0.25, None)
    assert weights_summary(folder) == (15, (folder / "weights.safetensors").stat().st_size)


@pytest.mark.parametrize("key,value,needle", [
    ("arch", 3, "'arch'"), ("sample_rate", "16k", "'sample_rate'"), ("n_src", 0, "'n_src'"),
    ("segment", -1, "'segment'"), ("overlap", 0.9, "'overlap'"), ("input_loudness", "loud", "'input_loudness'"),
    ("aliases", "default", "'aliases'"), ("arch_args", [1], "'arch_args'"), ("arch", "nonexistent", "unknown"),
    ("arch_args", {"bogus": 1}, "arch_args"),
])
def test_bad_config_values_are_clear_errors(tmp_path, key, value, needle):
    folder = bandsplit_folder(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as e:
        load_model(folder)
    assert needle in str(e.value) and "config.json" in str(e.value)


def test_broken_json_and_weights(tmp_path):
    folder = bandsplit_folder(tmp_path / "m")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="invalid JSON"):
        read_config(folder)
    folder = bandsplit_folder(tmp_path / "m2")
    (folder / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="safetensors"):
        load_model(folder)
    folder = bandsplit_folder(tmp_path / "m3")
    from safetensors.torch import save_file

    save_file({"fir": torch.zeros(1, 1, 9)}, str(folder / "weights.safetensors"))
    with pytest.raises(ModelError, match="do not match"):
        load_model(folder)
    save_file({"other": torch.zeros(1)}, str(folder / "weights.safetensors"))
    with pytest.raises(ModelError, match="1 missing"):
        load_model(folder)
    (folder / "weights.safetensors").unlink()
    (folder / "weights.pt").write_bytes(b"")
    with pytest.raises(ModelError, match="safetensors only"):
        load_model(folder)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pt_files_load_with_weights_only(tmp_path):
    folder = bandsplit_folder(tmp_path / "m")
    torch.save({"state_dict": {"fir": lowpass_taps(15) * 2}}, folder / "ckpt.pt")
    m = load_model(folder / "ckpt.pt")
    torch.testing.assert_close(m.network.fir.data, lowpass_taps(15) * 2)
    torch.save({"model": {"module.fir": lowpass_taps(15) * 3}}, folder / "ddp.pt")  # saved from a DDP wrapper
    torch.testing.assert_close(load_model(folder / "ddp.pt").network.fir.data, lowpass_taps(15) * 3)
    torch.save({"fir": _Evil()}, folder / "evil.pth")
    with pytest.raises(ModelError, match="weights_only"):
        load_model(folder / "evil.pth")


def test_registry_resolves_names_aliases_and_paths(tmp_path, monkeypatch):
    zoo = tmp_path / "zoo"
    folder = bandsplit_folder(zoo / "band-folder", name="band-name")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["aliases"] = ["default", "fast"]
    (folder / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("SEPCLI_ZOO", str(zoo))
    for name in ("band-folder", "band-name", "default", "fast", str(folder)):
        assert registry.resolve(name).resolve() == folder.resolve()
    with pytest.raises(registry.ModelNotFound) as e:
        registry.resolve("nope")
    assert "band-name" in str(e.value) and "default" in str(e.value)
    with pytest.raises(registry.ModelNotFound, match="no such"):
        registry.resolve(str(tmp_path / "missing"))
    with pytest.raises(registry.ModelNotFound, match="no config.json"):
        registry.resolve(str(tmp_path))
    with pytest.raises(UnknownModel, match="unknown model"):  # a ModelError the CLI maps to exit 2
        load_model("nope")
    # in a working directory that happens to hold an empty folder `default/` and a file `fast`: still the zoo's
    work = tmp_path / "work"
    (work / "default").mkdir(parents=True)
    (work / "fast").write_text("notes")
    (work / "nope").mkdir()
    monkeypatch.chdir(work)
    for name in ("default", "fast"):
        assert registry.resolve(name).resolve() == folder.resolve()
    with pytest.raises(registry.ModelNotFound, match="no config.json"):  # no zoo model of that name: as before
        registry.resolve("nope")
    with pytest.raises(registry.ModelNotFound, match="no config.json"):  # a path is a path
        registry.resolve("./default")
    bandsplit_folder(zoo / ".band-folder.old", name="band-name")  # left by a killed replacement: not listed
    assert [e.folder.name for e in registry.list_zoo() if e.name == "band-name"] == ["band-folder"]
    local = bandsplit_folder(work / "band-name")  # a model folder here wins over the zoo's name
    assert registry.resolve("band-name").resolve() == local.resolve()


def test_zoo_includes_the_repository_models_folder():
    repo_models = Path(sepcli.__file__).resolve().parent.parent / "models"
    if repo_models.is_dir():
        assert repo_models.resolve() in [p.resolve() for p in registry.zoo_dirs()]


def test_device_choice():
    assert select_device("cpu").type == "cpu"
    assert inference_dtype(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert select_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="CUDA"):
            select_device("cuda")
    with pytest.raises(ValueError):
        select_device("tpu")
