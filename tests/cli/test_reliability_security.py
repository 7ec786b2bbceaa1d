"""Untrusted checkpoints, configs and names.

- Every torch.load in the product (sepcli/, recipes/, benchmarks/) passes weights_only=True, and nothing uses
  pickle, yaml.load, np.load(allow_pickle=True), eval or exec (checked on the syntax tree, not by regex).
- A malicious pickle (its __reduce__ would create a file) given as weights.pt, as weights.safetensors, or
  inside a training checkpoint does not run: one-line error, exit 1, the file is not created.
- config.json is data: code-looking strings are never evaluated.
- No output path leaves the output folder through --name templates ('..', absolute, '~') or input names
  ("...wav" has the stem ".."); an output name that is a symbolic link pointing outside is replaced (with
  --overwrite), never written through.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.faultnets import register, run_cli
from tests.testnets import bandsplit_folder, synthetic_sources

register()
SR = 8000
ROOT = Path(__file__).resolve().parents[2]


run = run_cli


def _product_sources() -> list[Path]:
    out = []
    for d in ("sepcli", "recipes", "benchmarks"):
        if (ROOT / d).is_dir():
            out += sorted((ROOT / d).rglob("*.py"))
    return out


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_no_unsafe_deserialisation_in_the_product():
    problems, loads = [], 0
    for path in _product_sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if name == "torch.load":
                loads += 1
                w = kw.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("pickle.load", "pickle.loads", "cPickle.load", "dill.load", "joblib.load", "eval",
                          "exec", "yaml.load", "yaml.unsafe_load", "marshal.loads"):
                problems.append(f"{where}: {name}")
            elif name.endswith("np.load") or name == "numpy.load":
                a = kw.get("allow_pickle")
                if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
    assert loads >= 1  # the scan sees the loader's torch.load (a scan that finds nothing proves nothing)
    assert problems == []


class _Evil:
    """Unpickling calls open(marker, "w"), creating the marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_model(tmp_path: Path, how: str) -> tuple[Path, Path]:
    marker = tmp_path / f"PWNED-{how}"
    folder = bandsplit_folder(tmp_path / how, sample_rate=SR)
    if how == "pt":
        torch.save({"fir": _Evil(marker)}, folder / "weights.pt")
        return folder / "weights.pt", marker
    if how == "ckpt_state_dict":
        torch.save({"state_dict": {"fir": torch.zeros(1, 1, 15)}, "extra": _Evil(marker)}, folder / "model.ckpt")
        return folder / "model.ckpt", marker
    if how == "safetensors":
        torch.save({"fir": _Evil(marker)}, folder / "weights.safetensors")  # a pickle under the safe name
        return folder, marker
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["pt", "ckpt_state_dict", "safetensors"])
def test_malicious_pickle_does_not_run(tmp_path, how):
    target, marker = _evil_model(tmp_path, how)
    src = tmp_path / "a.wav"
    sf.write(src, synthetic_sources(SR, SR).sum(0), SR)
    r = run("separate", src, "-o", tmp_path / "out", "-m", target)
    assert r.exit_code == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    expected = "not a plain weights checkpoint" if how != "safetensors" else "not a readable safetensors file"
    assert expected in lines[0] and str(target if how != "safetensors" else target / "weights.safetensors") in lines[0]
    if how != "safetensors":  # names the global torch refused, never torch's advice to load with weights_only=False
        assert "refused global io.open" in lines[0] or "refused global builtins.open" in lines[0], lines[0]
        assert "False" not in lines[0] and "trust" not in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    # positive control: the payload is live, an unsafe load would have run it
    file = target
    if how == "safetensors":  # torch.load treats a .safetensors name specially: load the same bytes as .pt
        file = tmp_path / "same-bytes.pt"
        file.write_bytes((target / "weights.safetensors").read_bytes())
    torch.load(file, weights_only=False)  # test-only, on our own payload
    assert marker.exists()


def test_config_strings_are_never_evaluated(tmp_path):
    marker = tmp_path / "PWNED-config"
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    folder = bandsplit_folder(tmp_path / "m", sample_rate=SR)
    src = tmp_path / "a.wav"
    sf.write(src, synthetic_sources(SR, SR).sum(0), SR)
    for field, value in (("arch", code), ("arch_args", {"taps": code}), ("sample_rate", code),
                         ("segment", code), ("name", {"__class__": code})):
        cfg = json.loads((folder / "config.json").read_text())
        cfg[field] = value
        (folder / "config.json").write_text(json.dumps(cfg))
        r = run("separate", src, "-o", tmp_path / "out", "-m", folder)
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, (field, r.stderr)
        assert "config.json" in r.stderr and not marker.exists(), field
        bandsplit_folder(tmp_path / "m", sample_rate=SR)  # restore


@pytest.mark.parametrize("template", ["../{stem}_{k}.{ext}", "/tmp/{stem}_{k}.{ext}", "{stem}/../../{k}.{ext}",
                                      "~/{stem}{k}.{ext}", "a/../../b{k}.{ext}", "{stem}_{k}/../../x{k}.{ext}",
                                      "//{k}.{ext}", "{k}/../../../{stem}.{ext}"])
def test_name_templates_cannot_escape(tmp_path, model, template):
    out = tmp_path / "box" / "out"
    src = tmp_path / "a.wav"
    sf.write(src, synthetic_sources(SR, SR).sum(0), SR)
    before = sorted(p for p in tmp_path.rglob("*"))
    r = run("separate", src, "-o", out, "-m", model, "--name", template)
    assert r.exit_code == 2 and "must stay inside the output folder" in r.stderr, r.stderr
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    r = run("batch", tmp_path, "-o", out, "-m", model, "--name", template)
    assert r.exit_code == 2 and sorted(p for p in tmp_path.rglob("*")) == before


def test_input_names_cannot_escape(tmp_path, model):
    """Stems "." and ".." (files "..wav", "...wav") with a template that makes the stem a folder: ".." fails
    alone with one line, "." stays inside; in batch, names such as "~user" or "-rf" are ordinary names inside
    the output folder (hidden files are not batch inputs). Nothing is written outside the output folder."""
    root = tmp_path / "in"
    root.mkdir()
    x = synthetic_sources(SR, SR).sum(0)
    for name in ("...wav", "..wav", "~user.wav", "-rf.wav", "ok.wav"):
        sf.write(root / name, x, SR, format="WAV")
    out = tmp_path / "box" / "out"
    r = run("separate", root / "...wav", root / "..wav", "-o", out, "-m", model, "--name", "{stem}/{k}.{ext}")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        (f"sepcli: error: {root / '...wav'}: output name '../1.wav' must stay inside the output folder "
        f"(no absolute paths or '..')")]
    r = run("batch", root, "-o", out, "-m", model, "--name", "{stem}/{k}.{ext}")
    assert r.exit_code == 0, r.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.wav") if not p.is_relative_to(root))
    assert written == sorted(["box/out/1.wav", "box/out/2.wav"]
                             + [f"box/out/{s}/{k}.wav" for s in ("~user", "-rf", "ok") for k in (1, 2)])


def test_output_symlink_is_replaced_not_written_through(tmp_path, model):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(victim, out / "a_spk1.wav")
    src = tmp_path / "a.wav"
    sf.write(src, synthetic_sources(SR, SR).sum(0), SR)
    r = run("separate", src, "-o", out, "-m", model)
    assert r.exit_code == 1 and "exists (use --overwrite" in r.stderr and victim.read_text() == "precious"
    assert not (out / "a_spk2.wav").exists()
    r = run("separate", src, "-o", out, "-m", model, "--overwrite")
    assert r.exit_code == 0, r.stderr
    assert victim.read_text() == "precious" and not (out / "a_spk1.wav").is_symlink()
    assert np.isfinite(sf.read(out / "a_spk1.wav")[0]).all()


def test_garbage_checkpoint_is_not_described_as_holding_python_objects(tmp_path):
    from sepcli.runtime.loader import torch_load_problem

    (tmp_path / "g.pt").write_text("garbage")
    with pytest.raises(Exception) as info:
        torch.load(tmp_path / "g.pt", weights_only=True)
    msg = torch_load_problem(info.value)
    assert msg.startswith("not a readable PyTorch checkpoint (damaged, or not a checkpoint") and "\n" not in msg
    assert "weights_only=False" not in msg


def test_truncated_checkpoint_message_ends_on_a_whole_sentence(tmp_path):
    from sepcli.runtime.loader import torch_load_problem

    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "full.pt").read_bytes()[:2000])  # a copy cut short
    with pytest.raises(Exception) as info:
        torch.load(tmp_path / "cut.pt", weights_only=True)
    msg = torch_load_problem(info.value)
    assert msg.startswith("not a readable PyTorch checkpoint (RuntimeError: PytorchStreamReader failed"), msg
    assert msg.endswith(")") and not msg.endswith("file is)") and len(msg) < 240 and "\n" not in msg, msg
