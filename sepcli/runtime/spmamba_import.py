"""Import an official SPMamba checkpoint (JusperLee/SPMamba) into a sepcli model folder.

`import_spmamba(config_yml, checkpoint, out_dir, name)` reads the official training config (conf.yml: the
network is `audionet.audionet_config`, the sample rate `datamodule.data_config.sample_rate`) and a checkpoint in
either released format:
- `best_model.pth`: a dict whose `state_dict` holds the network's tensors without prefix
  (look2hear's `BaseModel.serialize()`: model_name, state_dict, model_args, infos);
- a Lightning `.ckpt`: the network's tensors under `state_dict` with the prefix `audio_model.`, beside
  Lightning's own entries (epoch, optimizer_states, ...), which are ignored.
The checkpoint is read with `torch.load(weights_only=True)` only (no arbitrary unpickling). The tensors must
match sepcli's SPMamba built from the config key for key and shape (strict), else CheckpointError lists the
first problems. The folder gets config.json (arch "spmamba", arch_args = audionet_config + sample_rate) and
weights.safetensors (fp32), written to a temporary folder first and renamed into place when complete, with the
modes of ordinary files under the user's umask (sepcli.runtime.permissions), so other users can read the model.

Problems in conf.yml (unreadable, not SPMamba, a value such as `emb_dim: -4`) raise ConfigError, a CheckpointError
the CLI reports as a usage error; a checkpoint holding pickled Python objects is refused with a message naming
the refused global (sepcli.runtime.loader.torch_load_problem).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .loader import one_line, state_dict_mismatch, torch_load_problem, without_ddp_prefix
from .permissions import apply_default_modes

PREFIX = "audio_model."
DEFAULT_SEGMENT = 4.0
DEFAULT_OVERLAP = 0.25
_SHOW = 5  # problems listed in an error


class CheckpointError(ValueError):
    """The config or checkpoint cannot be imported; str() names the file and the problem in one line."""


class ConfigError(CheckpointError):
    """conf.yml cannot be read or does not describe an SPMamba that can be built."""


# audionet_config keys of the official SPMamba and the values they accept (others are left to SPMamba itself)
_POSITIVE_INTS = ("n_srcs", "n_fft", "stride", "n_imics", "n_layers", "lstm_hidden_units", "attn_n_head",
                  "attn_approx_qk_dim", "emb_dim", "emb_ks", "emb_hs")


def _check_audionet_config(args: dict, config_yml: Path) -> dict:
    """Values of audionet_config checked as data before any tensor is made; returns them (eps as a float)."""
    where = f"{config_yml}: audionet.audionet_config"
    out = dict(args)
    for key in _POSITIVE_INTS:
        if key in out:
            v = out[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{where}.{key} must be a positive integer, got {v!r}")
    if out.get("input_dim") is not None:
        v = out["input_dim"]
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{where}.input_dim must be a positive integer or null, got {v!r}")
    if "eps" in out:
        v = out["eps"]
        try:  # YAML reads 1e-5 (no dot) as a string
            eps = float(v) if isinstance(v, str) else v
        except ValueError:
            eps = None
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"{where}.eps must be a positive number, got {v!r}")
        out["eps"] = float(eps)
    for key in ("window", "activation"):
        if key in out and not isinstance(out[key], str):
            raise ConfigError(f"{where}.{key} must be a string, got {out[key]!r}")
    if "use_builtin_complex" in out and not isinstance(out["use_builtin_complex"], bool):
        raise ConfigError(f"{where}.use_builtin_complex must be true or false, got {out['use_builtin_complex']!r}")
    return out


def read_official_config(config_yml: Path) -> tuple[dict, int, dict]:
    """(arch_args, sample_rate, extra provenance) from an official conf.yml. Raises CheckpointError."""
    import yaml

    try:
        doc = yaml.safe_load(Path(config_yml).read_text())
    except OSError as exc:
        raise ConfigError(f"{config_yml}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{config_yml}: not a text file (not UTF-8)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_yml}: invalid YAML ({one_line(exc)})") from None
    net = doc.get("audionet") if isinstance(doc, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("audionet_config"), dict):
        raise ConfigError(f"{config_yml}: no 'audionet.audionet_config' section (not an SPMamba conf.yml?)")
    model_name = net.get("audionet_name", "SPMamba")
    if model_name != "SPMamba":
        raise ConfigError(f"{config_yml}: audionet_name is {model_name!r}, only 'SPMamba' can be imported")
    args = _check_audionet_config(net["audionet_config"], config_yml)
    datamodule = doc.get("datamodule") if isinstance(doc.get("datamodule"), dict) else {}
    data_cfg = datamodule.get("data_config") if isinstance(datamodule.get("data_config"), dict) else {}
    sr = data_cfg.get("sample_rate", args.get("sample_rate"))
    if not isinstance(sr, int) or isinstance(sr, bool) or not (1000 <= sr <= 192000):  # as loader.validate_config
        raise ConfigError(f"{config_yml}: no valid datamodule.data_config.sample_rate, an integer in Hz "
                          f"1000-192000 (got {sr!r})")
    args["sample_rate"] = sr
    extra = {}
    exp = doc.get("exp")
    if isinstance(exp, dict) and isinstance(exp.get("exp_name"), str):
        extra["exp_name"] = exp["exp_name"]
    if isinstance(datamodule.get("data_name"), str):
        extra["data_name"] = datamodule["data_name"]
    return args, sr, extra


def read_checkpoint(checkpoint: Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """(state_dict without prefix, format name, provenance details) from best_model.pth or a Lightning .ckpt."""
    if not Path(checkpoint).is_file():
        raise CheckpointError(f"{checkpoint}: file not found")
    try:
        obj = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for unsafe content, zip or EOF errors, ...
        raise CheckpointError(f"{checkpoint}: {torch_load_problem(exc)}") from None
    details: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
        for key in ("model_name", "epoch", "global_step", "pytorch-lightning_version"):
            if isinstance(obj.get(key), (str, int)):
                details[key] = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj  # a bare state_dict
    else:
        raise CheckpointError(f"{checkpoint}: holds no 'state_dict' (expected best_model.pth or a Lightning .ckpt)")
    if any(isinstance(k, str) and k.startswith(PREFIX) for k in sd):
        fmt = "lightning"
        sd = {k[len(PREFIX):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(PREFIX)}
    else:
        fmt = "best_model" if "model_name" in details or "infos" in obj else "state_dict"
        sd = without_ddp_prefix(sd)
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{checkpoint}: state_dict entries that are not tensors: {', '.join(bad[:_SHOW])}")
    return sd, fmt, details


def match_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """Raise CheckpointError listing the first wrongly shaped, missing and unexpected keys, if any."""
    problem = state_dict_mismatch(expected, got, show=_SHOW, names=("checkpoint", "config"))
    if problem:
        raise CheckpointError(f"{checkpoint}: does not match the SPMamba described by the config: {problem}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_spmamba(config_yml: Path, checkpoint: Path, out_dir: Path, name: str | None = None) -> Path:
    """Write a sepcli model folder for an official SPMamba checkpoint; returns the folder.

    Raises CheckpointError (a ValueError) for an unreadable or unsafe checkpoint, a config that does not
    describe SPMamba, mismatched keys or shapes, or an existing non-empty `out_dir`; nothing is written then.
    """
    from safetensors.torch import save_file

    from ..nets.spmamba import SPMamba

    config_yml, checkpoint, out_dir = Path(config_yml), Path(checkpoint), Path(out_dir)
    args, sr, extra = read_official_config(config_yml)
    try:  # on the meta device first: shapes only, no memory, so a config with absurd sizes cannot exhaust RAM
        with torch.device("meta"):
            expected = SPMamba(**args).state_dict()
    except Exception as exc:  # noqa: BLE001 - unknown keys (TypeError), values SPMamba refuses, torch errors
        raise ConfigError(f"{config_yml}: audionet_config does not describe an SPMamba "
                          f"({type(exc).__name__}: {one_line(exc)})") from None
    sd, fmt, details = read_checkpoint(checkpoint)
    match_state_dict(expected, sd, checkpoint)  # the network is now known to be the checkpoint's size
    model = SPMamba(**args)
    model.load_state_dict(sd, strict=True)  # exact fit checked above

    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: already exists and is not an empty folder")
    name = name or out_dir.name
    cfg = {
        "name": name,
        "arch": "spmamba",
        "arch_args": args,
        "sample_rate": sr,
        "n_src": int(args.get("n_srcs", 2)),
        "segment": DEFAULT_SEGMENT,
        "overlap": DEFAULT_OVERLAP,
        "input_loudness": None,
        "aliases": [],
        "description": f"SPMamba imported from an official checkpoint ({checkpoint.name}), {sr} Hz.",
        "provenance": {
            "source": "official SPMamba (JusperLee/SPMamba), imported with sepcli models import-spmamba",
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": _sha256(checkpoint),
            "checkpoint_format": fmt,
            "config": config_yml.name,
            **extra,
            **details,
        },
        "eval": {},
    }
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        apply_default_modes(tmp)  # mkdtemp made it 0700, save_file 0600: readable by others as umask allows
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass
class ImportResult:
    """What import_release installed: the model `folder`, the checkpoint it took (`checkpoint_member`: its name
    inside the archive or folder, for messages only, never used as a path) and `notes`, one line each, for the
    user (e.g. which of several checkpoints was taken)."""

    folder: Path
    checkpoint_member: str
    notes: list[str] = field(default_factory=list)


def import_release(source: Path, out_dir: Path, *, name: str, config: Path | None = None,
                   provenance: dict | None = None, replace: bool = False) -> ImportResult:
    """Install an official SPMamba release as the sepcli model folder `out_dir` named `name`.

    `source` is the release zip (conf.yml and best_model.pth or a Lightning .ckpt anywhere inside; members are
    read with size caps into temporary files of our own naming, see sepcli.runtime.archive), a folder holding
    them, or a checkpoint file (then `config` is required). `config`, when given, is used instead of the conf.yml
    found in the source. Both model names (SPMamba, TFGridNetMamba) and both Mamba key namings (`.layers.` /
    `.backward_layers.` of the release, `.forward_blocks.` / `.backward_blocks.`) are accepted; the checkpoint is
    read with torch.load(weights_only=True) allowing exactly torch.torch_version.TorchVersion besides tensors.

    The folder is built in a temporary sibling and renamed into place when complete. An existing non-empty
    `out_dir` is an error unless `replace`, which swaps it for the new one only after the new one is complete.
    `provenance` is merged into config.json's provenance (e.g. the pull helper's url and sha256).

    Raises ConfigError (a bad or missing conf.yml: a usage error) or CheckpointError (anything else: an unreadable
    or unsafe archive or checkpoint, weights that do not fit the config), one line naming the file; nothing is
    left behind then, neither `out_dir` nor a temporary folder.
    """
    raise NotImplementedError
