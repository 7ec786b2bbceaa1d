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
weights.safetensors (fp32), written to a temporary folder first and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

PREFIX = "audio_model."
DEFAULT_SEGMENT = 4.0
DEFAULT_OVERLAP = 0.25
_SHOW = 5  # problems listed in an error


class CheckpointError(ValueError):
    """The config or checkpoint cannot be imported; str() names the file and the problem in one line."""


def _one_line(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit] or type(exc).__name__


def read_official_config(config_yml: Path) -> tuple[dict, int, dict]:
    """(arch_args, sample_rate, extra provenance) from an official conf.yml. Raises CheckpointError."""
    import yaml

    try:
        doc = yaml.safe_load(Path(config_yml).read_text())
    except OSError as exc:
        raise CheckpointError(f"{config_yml}: cannot read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{config_yml}: invalid YAML ({_one_line(exc)})") from None
    net = doc.get("audionet") if isinstance(doc, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("audionet_config"), dict):
        raise CheckpointError(f"{config_yml}: no 'audionet.audionet_config' section (not an SPMamba conf.yml?)")
    model_name = net.get("audionet_name", "SPMamba")
    if model_name != "SPMamba":
        raise CheckpointError(f"{config_yml}: audionet_name is {model_name!r}, only 'SPMamba' can be imported")
    args = dict(net["audionet_config"])
    datamodule = doc.get("datamodule") if isinstance(doc.get("datamodule"), dict) else {}
    data_cfg = datamodule.get("data_config") if isinstance(datamodule.get("data_config"), dict) else {}
    sr = data_cfg.get("sample_rate", args.get("sample_rate"))
    if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
        raise CheckpointError(f"{config_yml}: no valid datamodule.data_config.sample_rate (got {sr!r})")
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
        raise CheckpointError(f"{checkpoint}: cannot be loaded safely with torch.load(weights_only=True) "
                              f"({_one_line(exc)})") from None
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
        if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):  # saved from DDP
            sd = {k[len("module."):]: v for k, v in sd.items()}
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{checkpoint}: state_dict entries that are not tensors: {', '.join(bad[:_SHOW])}")
    return sd, fmt, details


def match_state_dict(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """Raise CheckpointError listing the first missing, unexpected and wrongly shaped keys, if any."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("wrong shape (checkpoint != config)", shapes), ("missing", missing),
                         ("unexpected", unexpected)):
        if items:
            more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            parts.append(f"{len(items)} {label}: {'; '.join(items[:_SHOW])}{more}")
    raise CheckpointError(f"{checkpoint}: does not match the SPMamba described by the config: " + " | ".join(parts))


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
    try:
        model = SPMamba(**args)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_yml}: audionet_config does not describe an SPMamba "
                              f"({_one_line(exc)})") from None
    sd, fmt, details = read_checkpoint(checkpoint)
    match_state_dict(model.state_dict(), sd, checkpoint)
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
        os.chmod(tmp, 0o755)
        save_file(tensors, str(tmp / "weights.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
